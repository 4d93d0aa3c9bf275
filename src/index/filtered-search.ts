// Nearest images among those a filter allows (filter.ts), with the recall of an unfiltered search. Searching
// everything and dropping what fails afterwards finds almost nothing under a selective filter (of the 10 nearest of
// all images, a 1% filter keeps 0.1 on average), so the filter acts during the search:
// - the allowed ids come from one indexed SQLite query, kept per filter until the store changes (AllowedCache);
// - few allowed images (at most EXACT_MAX): exact search over their vectors, which is both exact and fastest there;
// - otherwise hnswlib's search with the filter evaluated during the graph walk: failing nodes are walked through,
//   never returned, and the walk ends only once ef passing nodes are found, so recall holds without a wider ef (at
//   the index's ef 160, recall@10 0.998-1.000 from 1% to 50% selectivity: scripts/bench-filter.ts, README);
// - but a filter that follows the embedding (a label) leaves the walk's entry far from every passing node, and the
//   walk then crosses much of the graph (a 10% label filter: 7-18 ms, against 1 ms for a random 10% one). Each cached
//   filter keeps its walks' mean time and goes to exact search once that is slower than exact search's estimate.
import { bruteForceTopK } from './exact-search.ts';
import { type ImageFilter, filterKey } from './filter.ts';
import { type SearchHit, normalize } from './hnsw.ts';
import { mergeRegionHits } from './region-merge.ts';
import type { IndexHandle, RegionIndex } from './service.ts';

// scripts/bench-filter.ts on 59,000 CIFAR-10 XL embeddings (dim 128), S queries, median ms per search, exact over the
// allowed vectors / filtered HNSW walk (ef 160), random metadata filters (2 cores, shared, load average ~8):
//   606 allowed 0.08 / 23 (a walk this selective visits much of the graph), 1,783 0.22 / 7.2, 2,984 0.38 / 3.0,
//   4,783 0.61 / 1.22, 5,915 0.77 / 1.29, 8,801 1.14 / 0.90, 11,718 1.73 / 0.69, 29,323 7.9 / 0.36.
// The two cross near 7,000 allowed vectors.
export const EXACT_MAX = 7000;
/** Exact search's cost per allowed vector and dimension, from the same measurement (0.13 ms per 1,000 at dim 128). */
const EXACT_MS_PER_VECTOR_DIM = 0.13 / (1000 * 128);
/** Above this many allowed vectors, exact search is not tried even after slow walks (its vectors stay in memory). */
const EXACT_CAP = 25_000;

export interface Allowed {
  ids: number[]; // ascending
  bitmap: Uint8Array; // bitmap[id] === 1: allowed
  vectors: { ids: number[]; flat: Float32Array } | null; // unit-length vectors of the allowed ids the index holds (exact path only)
  walkMs: number | null; // mean time of this filter's HNSW walks (exponentially weighted), null before the first
}

/** The allowed ids of recent filters, each valid for the store generation it was read at. */
export class AllowedCache {
  private readonly entries = new Map<string, { generation: number; allowed: Allowed }>();
  constructor(private readonly capacity = 16) {}

  get(handle: IndexHandle, filter: ImageFilter): Allowed {
    const key = filterKey(filter);
    const generation = handle.store.generation(handle.modelId);
    const hit = this.entries.get(key);
    this.entries.delete(key); // re-inserted below: the Map's order is the least recently used first
    let allowed = hit && hit.generation === generation ? hit.allowed : null;
    if (!allowed) {
      const ids = handle.store.filteredIds(filter);
      const bitmap = new Uint8Array(ids.length ? ids[ids.length - 1] + 1 : 0);
      for (const id of ids) bitmap[id] = 1;
      allowed = { ids, bitmap, vectors: null, walkMs: null };
    }
    this.entries.set(key, { generation, allowed });
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!);
    return allowed;
  }
}

/** Region hits a search with region vectors reads: an image's regions may take several of the first places. */
export const regionHitsWanted = (k: number) => Math.max(20, 2 * k);

/**
 * The k images nearest to `query` among those `filter` allows (all images when it is null), best first. With
 * `regionPenalty`, region vectors count too (mergeRegionHits): their index is searched with the filter applied
 * during the walk.
 */
export function nearestFiltered(handle: IndexHandle, query: ArrayLike<number>, k: number, opts: { ef?: number; filter?: ImageFilter | null; regionPenalty?: number } = {}): SearchHit[] {
  const whole = nearestImages(handle, query, k, opts);
  const { regions } = handle;
  if (opts.regionPenalty === undefined || !regions || regions.hnsw.size === 0) return whole;
  return mergeRegionHits(whole, nearestRegions(handle, regions, query, k, opts), opts.regionPenalty, k);
}

/** The regions nearest to `query` among the allowed images', as hits of their images (one per region). */
function nearestRegions(handle: IndexHandle, regions: RegionIndex, query: ArrayLike<number>, k: number, opts: { ef?: number; filter?: ImageFilter | null }): SearchHit[] {
  const bitmap = opts.filter ? handle.allowed.get(handle, opts.filter).bitmap : null;
  const { perImage } = regions;
  const filter = bitmap ? (label: number) => bitmap[Math.floor(label / perImage)] === 1 : undefined;
  return regions.hnsw.search(query, regionHitsWanted(k), { ef: opts.ef, filter }).map((h) => ({ id: Math.floor(h.id / perImage), score: h.score }));
}

function nearestImages(handle: IndexHandle, query: ArrayLike<number>, k: number, opts: { ef?: number; filter?: ImageFilter | null }): SearchHit[] {
  const { hnsw } = handle;
  if (!opts.filter) return hnsw.search(query, k, { ef: opts.ef });
  const allowed = handle.allowed.get(handle, opts.filter);
  if (allowed.ids.length === 0 || hnsw.size === 0) return [];
  const n = allowed.ids.length;
  const walkSlower = allowed.walkMs !== null && n <= EXACT_CAP && allowed.walkMs > n * hnsw.dim * EXACT_MS_PER_VECTOR_DIM;
  if (n <= EXACT_MAX || walkSlower) return exactAmong(handle, allowed, query, k);
  const t0 = performance.now();
  const hits = hnswAmong(handle, allowed, query, k, opts.ef);
  const ms = performance.now() - t0;
  allowed.walkMs = allowed.walkMs === null ? ms : 0.8 * allowed.walkMs + 0.2 * ms;
  return hits;
}

/** HNSW search with the filter applied during the graph walk. */
export function hnswAmong(handle: IndexHandle, allowed: Allowed, query: ArrayLike<number>, k: number, ef?: number): SearchHit[] {
  const { bitmap } = allowed;
  return handle.hnsw.search(query, k, { ef, filter: (id) => bitmap[id] === 1 });
}

/** Exact search over the allowed vectors (read from the index once per cached filter). */
export function exactAmong(handle: IndexHandle, allowed: Allowed, query: ArrayLike<number>, k: number): SearchHit[] {
  const { hnsw } = handle;
  if (!allowed.vectors) {
    const ids: number[] = [];
    const flat = new Float32Array(allowed.ids.length * hnsw.dim);
    for (const id of allowed.ids) {
      const v = hnsw.vector(id); // undefined: no embedding of this model (or deleted since the ids were read)
      if (v) flat.set(v, ids.push(id) * hnsw.dim - hnsw.dim);
    }
    allowed.vectors = { ids, flat: flat.subarray(0, ids.length * hnsw.dim) };
  }
  const { ids, flat } = allowed.vectors;
  if (ids.length === 0) return [];
  const top = bruteForceTopK(flat, ids.length, hnsw.dim, Float32Array.from(normalize(query)), 1, k);
  return Array.from(top.indices, (row, j) => ({ id: ids[row], score: top.scores[j] }));
}
