// Results of a search over whole-image and region embeddings (src/data/regions.ts), merged into one list of images.
// An image scores the better of its whole-image similarity and its best region's similarity less `penalty`: without
// the penalty, a region of some other image (a patch of sky, a face) outranks the original of a copy that keeps the
// whole picture (grayscale, heavy JPEG); with it, a region wins only when it is clearly closer, as for a crop.
import type { TopK } from './exact-search.ts';

/**
 * Per query, the k best images of `whole` (rows are images) and `regions` (rows map to images through `imageOf`),
 * a region's score lowered by `penalty`; each image once, at its better score. Ties keep the whole-image hit. The
 * first place is exact; a later image found by only one list carries that list's score (its other may be higher).
 */
export function mergeRegionTopK(whole: TopK, regions: TopK, imageOf: (regionRow: number) => number, penalty: number, k = whole.k): TopK {
  if (whole.n !== regions.n) throw new RangeError(`whole has ${whole.n} queries, regions ${regions.n}`);
  if (!(penalty >= 0)) throw new RangeError(`region penalty must be >= 0, got ${penalty}`);
  const out: TopK = { n: whole.n, k, indices: new Int32Array(whole.n * k).fill(-1), scores: new Float32Array(whole.n * k).fill(-Infinity) };
  const best = new Map<number, number>();
  for (let q = 0; q < whole.n; q++) {
    best.clear();
    for (let j = 0; j < whole.k; j++) {
      const image = whole.indices[q * whole.k + j];
      if (image >= 0) best.set(image, Math.max(best.get(image) ?? -Infinity, whole.scores[q * whole.k + j]));
    }
    for (let j = 0; j < regions.k; j++) {
      const row = regions.indices[q * regions.k + j];
      if (row < 0) continue;
      const image = imageOf(row);
      const score = regions.scores[q * regions.k + j] - penalty;
      if (score > (best.get(image) ?? -Infinity)) best.set(image, score);
    }
    const ranked = [...best].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, k);
    ranked.forEach(([image, score], j) => {
      out.indices[q * k + j] = image;
      out.scores[q * k + j] = score;
    });
  }
  return out;
}
