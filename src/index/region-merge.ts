// Results of a search over whole-image and region embeddings (src/data/regions.ts), merged into one list of images.
// An image scores the better of its whole-image similarity and its best region's similarity less `penalty`: without
// the penalty, a region of some other image (a patch of sky, a face) outranks the original of a copy that keeps the
// whole picture (grayscale, heavy JPEG); with it, a region wins only when it is clearly closer, as for a crop.
import type { TopK } from './exact-search.ts';
import type { SearchHit } from './hnsw.ts';

type ScoredImage = Pick<SearchHit, 'id' | 'score'>;

/**
 * One query's k best images from its whole-image hits and its region hits (`id`: the region's image), a region's
 * score lowered by `penalty`; each image once, at its better score, best first. Ties keep the whole-image hit, then
 * the lower id. The first place is exact; a later image found by only one list carries that list's score (its other
 * may be higher).
 */
export function mergeRegionHits(whole: Iterable<ScoredImage>, regions: Iterable<ScoredImage>, penalty: number, k: number): SearchHit[] {
  if (!(penalty >= 0) || !Number.isFinite(penalty)) throw new RangeError(`region penalty must be >= 0 and finite, got ${penalty}`);
  const best = new Map<number, SearchHit>();
  for (const { id, score } of whole) if (score > (best.get(id)?.score ?? -Infinity)) best.set(id, { id, score });
  for (const { id, score } of regions) if (score - penalty > (best.get(id)?.score ?? -Infinity)) best.set(id, { id, score: score - penalty, region: true });
  return [...best.values()].sort((a, b) => b.score - a.score || a.id - b.id).slice(0, k);
}

/**
 * mergeRegionHits for every query of `whole` (rows are images) and `regions` (rows map to images through
 * `imageOf`): the evaluation's exact-search results.
 */
export function mergeRegionTopK(whole: TopK, regions: TopK, imageOf: (regionRow: number) => number, penalty: number, k = whole.k): TopK {
  if (whole.n !== regions.n) throw new RangeError(`whole has ${whole.n} queries, regions ${regions.n}`);
  const out: TopK = { n: whole.n, k, indices: new Int32Array(whole.n * k).fill(-1), scores: new Float32Array(whole.n * k).fill(-Infinity) };
  const hits = function* (t: TopK, q: number, map: (row: number) => number) {
    for (let j = 0; j < t.k; j++) if (t.indices[q * t.k + j] >= 0) yield { id: map(t.indices[q * t.k + j]), score: t.scores[q * t.k + j] };
  };
  for (let q = 0; q < whole.n; q++) {
    mergeRegionHits(hits(whole, q, (row) => row), hits(regions, q, imageOf), penalty, k).forEach(({ id, score }, j) => {
      out.indices[q * k + j] = id;
      out.scores[q * k + j] = score;
    });
  }
  return out;
}
