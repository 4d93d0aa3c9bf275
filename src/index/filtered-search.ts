// Nearest images among those a filter allows (filter.ts), with the recall of an unfiltered search. Searching
// everything and dropping what fails afterwards finds almost nothing under a selective filter (of the 10 nearest of
// all images, a 1% filter keeps 0.1 on average), so the filter acts during the search:
// - the allowed ids come from one indexed SQLite query, kept per filter until the store changes (AllowedCache);
// - few allowed images (at most EXACT_MAX): exact search over their vectors, which is both exact and fastest there;
// - otherwise hnswlib's search with the filter evaluated during the graph walk (failing nodes are walked through,
//   never returned), its beam widened as the filter gets more selective (filteredEf).
import { bruteForceTopK } from './exact-search.ts';
import { type ImageFilter, filterKey } from './filter.ts';
import { type SearchHit, normalize } from './hnsw.ts';
import type { IndexHandle } from './service.ts';

// Measured by scripts/bench-filter.ts (README, Filtered search): TODO figures.
export const EXACT_MAX = 3000;

/** The HNSW beam for a filter that lets `selectivity` (0..1] of the index through. */
export function filteredEf(ef: number, selectivity: number): number {
  return ef;
}

export interface Allowed {
  ids: number[]; // ascending
  bitmap: Uint8Array; // bitmap[id] === 1: allowed
  vectors: { ids: number[]; flat: Float32Array } | null; // unit-length vectors of the allowed ids the index holds (exact path only)
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
      allowed = { ids, bitmap, vectors: null };
    }
    this.entries.set(key, { generation, allowed });
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!);
    return allowed;
  }
}

/** The k images nearest to `query` among those `filter` allows (all images when it is null), best first. */
export function nearestFiltered(handle: IndexHandle, query: ArrayLike<number>, k: number, opts: { ef?: number; filter?: ImageFilter | null } = {}): SearchHit[] {
  const { hnsw } = handle;
  if (!opts.filter) return hnsw.search(query, k, { ef: opts.ef });
  const allowed = handle.allowed.get(handle, opts.filter);
  if (allowed.ids.length === 0 || hnsw.size === 0) return [];
  return allowed.ids.length <= EXACT_MAX ? exactAmong(handle, allowed, query, k) : hnswAmong(handle, allowed, query, k, opts.ef);
}

/** HNSW search with the filter applied during the graph walk, its beam widened by the filter's selectivity. */
export function hnswAmong(handle: IndexHandle, allowed: Allowed, query: ArrayLike<number>, k: number, ef?: number): SearchHit[] {
  const { hnsw } = handle;
  const { bitmap } = allowed;
  return hnsw.search(query, k, { ef: filteredEf(ef ?? hnsw.getEf(), Math.min(1, allowed.ids.length / hnsw.size)), filter: (id) => bitmap[id] === 1 });
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
