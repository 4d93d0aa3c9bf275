// Region views (src/data/regions.ts) and the merge of whole-image and region results (src/index/region-merge.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import sharp from 'sharp';
import { decodeImage } from '../src/data/images.ts';
import { doubleSize, regionOffsets, regionViews } from '../src/data/regions.ts';
import type { TopK } from '../src/index/exact-search.ts';
import { mergeRegionTopK } from '../src/index/region-merge.ts';
import { mulberry32 } from '../src/train/rng.ts';

test('regionViews cuts grid x grid half-side squares at the offsets, row-major', () => {
  const size = 6;
  const side = 2 * size;
  // every pixel says where it is: R = row, G = column, B = 7
  const double = new Uint8Array(side * side * 3);
  for (let y = 0; y < side; y++) for (let x = 0; x < side; x++) double.set([y, x, 7], (y * side + x) * 3);
  assert.deepEqual(regionOffsets(size, 3), [0, 3, 6]);
  assert.deepEqual(regionOffsets(size, 1), [3]); // one region: the centre
  const views = regionViews(double, size, 3);
  assert.equal(views.length, 9 * size * size * 3);
  for (let r = 0; r < 9; r++) {
    const [top, left] = [regionOffsets(size, 3)[Math.floor(r / 3)], regionOffsets(size, 3)[r % 3]];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const at = ((r * size + y) * size + x) * 3;
        assert.deepEqual([...views.subarray(at, at + 3)], [top + y, left + x, 7], `region ${r} pixel (${y}, ${x})`);
      }
    }
  }
  assert.throws(() => regionViews(double.subarray(3), size), /expected a 12x12 RGB image/);
  assert.throws(() => regionOffsets(size, 0), /positive integer/);
});

test('doubleSize then regionViews gives the regions of the file decoded at twice the size', async () => {
  const size = 32;
  const rand = mulberry32(3);
  const raw = Buffer.from(Array.from({ length: size * size * 3 }, (_, i) => (i % 3 === 0 ? (i >> 4) & 255 : Math.floor(rand() * 256))));
  const png = await sharp(raw, { raw: { width: size, height: size, channels: 3 } }).png().toBuffer();
  const atSize = (await decodeImage(png, size)).pixels;
  const atDouble = (await decodeImage(png, 2 * size)).pixels;
  // An image held at model size (the evaluation's) and an upload decoded at 2x (what indexing will do) agree.
  assert.deepEqual(regionViews(await doubleSize(atSize, size), size), regionViews(atDouble, size));
});

/** A TopK of one query from [index, score] pairs. */
const topk = (hits: [number, number][]): TopK => ({ n: 1, k: hits.length, indices: Int32Array.from(hits, (h) => h[0]), scores: Float32Array.from(hits, (h) => h[1]) });
const ranked = (t: TopK) => [...t.indices].map((id, j) => [id, Number(t.scores[j].toFixed(4))]);

test('mergeRegionTopK: an image once, at the better of its whole score and its best region less the penalty', () => {
  const whole = topk([[5, 0.8], [2, 0.7], [9, 0.6]]);
  // region rows: row r belongs to image floor(r / 4)
  const regions = topk([[12, 0.9], [13, 0.88], [20, 0.75], [8, 0.72]]); // images 3, 3, 5, 2
  const imageOf = (row: number) => Math.floor(row / 4);
  assert.deepEqual(ranked(mergeRegionTopK(whole, regions, imageOf, 0, 3)), [[3, 0.9], [5, 0.8], [2, 0.72]]);
  // a penalty of 0.15 drops image 3's region below image 5's whole-image score; image 2 keeps its whole score
  assert.deepEqual(ranked(mergeRegionTopK(whole, regions, imageOf, 0.15, 3)), [[5, 0.8], [3, 0.75], [2, 0.7]]);
  // a large penalty gives back the whole-image ranking
  assert.deepEqual(ranked(mergeRegionTopK(whole, regions, imageOf, 1, 3)), ranked(whole));
  assert.throws(() => mergeRegionTopK(whole, regions, imageOf, -0.1), /penalty must be >= 0/);
  assert.throws(() => mergeRegionTopK(whole, { ...regions, n: 2 }, imageOf, 0), /whole has 1 queries, regions 2/);
});

test('mergeRegionTopK keeps each query to its own rows and pads short lists with -1', () => {
  const whole: TopK = { n: 2, k: 2, indices: Int32Array.from([0, 1, 1, 0]), scores: Float32Array.from([0.9, 0.1, 0.8, 0.2]) };
  const regions: TopK = { n: 2, k: 1, indices: Int32Array.from([4, 0]), scores: Float32Array.from([0.97, 0.3]) }; // images 2 and 0
  const merged = mergeRegionTopK(whole, regions, (row) => Math.floor(row / 2), 0.05, 3);
  const query = (q: number) => [...merged.indices.subarray(q * 3, q * 3 + 3)].map((id, j) => [id, Number(merged.scores[q * 3 + j].toFixed(4))]);
  assert.deepEqual(query(0), [[2, 0.92], [0, 0.9], [1, 0.1]]);
  assert.deepEqual(query(1), [[1, 0.8], [0, 0.25], [-1, -Infinity]]); // image 0's region (0.3 - 0.05) beats its whole 0.2
});
