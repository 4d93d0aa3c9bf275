// The HNSW sweep: one hnswlib-node index over the XL database ('ip' space on L2-normalised vectors), searched at
// several ef with queries from one encoder; recall@k against exact search and the median time per query.
import hnswlib from 'hnswlib-node';
import { HNSW_DEFAULTS } from '../index/hnsw.ts';
import { type TopK, recallAtK } from '../index/exact-search.ts';
import { median } from './metrics.ts';

export interface HnswParams {
  M: number;
  efConstruction: number;
  seed: number;
}

/** The product's graph parameters (src/index/hnsw.ts), so that the sweep measures the index `matvit index` builds. */
export const DEFAULT_HNSW: HnswParams = { M: HNSW_DEFAULTS.M, efConstruction: HNSW_DEFAULTS.efConstruction, seed: 100 };

export interface HnswRow {
  encoder: string; // query encoder id
  ef: number;
  queries: number;
  recall10: number; // against exact search with the same query vectors (the index's own error)
  recall10VsXl: number; // against exact search with the XL query (index error plus query-encoder error)
  medianMs: number; // per query, searchKnn only
  meanMs: number;
}

/**
 * Recall@10 of XL's neighbours a narrower beam may give up: 0.002 (0.2 points). A cheap query encoder's own error
 * dwarfs that (S finds about 0.69 of XL's top 10 at any ef), so it can search with a much narrower beam than XL.
 */
export const SEARCH_EF_TOLERANCE = 0.002;

/**
 * Each encoder's search beam: the smallest swept ef whose recall@10 against exact search with the XL query is within
 * `tolerance` of the best that encoder reaches at any swept ef.
 */
export function chooseSearchEf(rows: HnswRow[], tolerance = SEARCH_EF_TOLERANCE): Record<string, number> {
  const out: Record<string, number> = {};
  for (const encoder of new Set(rows.map((r) => r.encoder))) {
    const mine = rows.filter((r) => r.encoder === encoder).sort((a, b) => a.ef - b.ef);
    const best = Math.max(...mine.map((r) => r.recall10VsXl));
    out[encoder] = mine.find((r) => r.recall10VsXl >= best - tolerance)!.ef;
  }
  return out;
}

export function buildHnsw(db: Float32Array, rows: number, dim: number, p: HnswParams = DEFAULT_HNSW, onProgress?: (done: number) => void): { index: hnswlib.HierarchicalNSW; seconds: number } {
  const t0 = performance.now();
  const index = new hnswlib.HierarchicalNSW('ip', dim);
  index.initIndex(rows, p.M, p.efConstruction, p.seed);
  for (let r = 0; r < rows; r++) {
    index.addPoint(Array.from(db.subarray(r * dim, (r + 1) * dim)), r);
    if (onProgress && (r + 1) % 1000 === 0) onProgress(r + 1);
  }
  return { index, seconds: (performance.now() - t0) / 1000 };
}

/** Searches every query at each ef. `exact` and `xlTruth` are TopK lists of the same queries, in order. */
export function hnswSweep(index: hnswlib.HierarchicalNSW, encoder: string, queries: Float32Array, n: number, dim: number, efs: number[], exact: TopK, xlTruth: TopK, k = 10): HnswRow[] {
  const size = index.getCurrentCount();
  k = Math.min(k, size, exact.k, xlTruth.k);
  const vecs = Array.from({ length: n }, (_, q) => Array.from(queries.subarray(q * dim, (q + 1) * dim)));
  const rows: HnswRow[] = [];
  for (const ef of efs) {
    index.setEf(Math.max(ef, k));
    const found: TopK = { n, k, indices: new Int32Array(n * k), scores: new Float32Array(n * k) };
    const ms = new Float64Array(n);
    for (let q = 0; q < n; q++) {
      const t0 = performance.now();
      const r = index.searchKnn(vecs[q], k);
      ms[q] = performance.now() - t0;
      // hnswlib returns the nearest first for 'ip' in version 3; sort anyway so the order never depends on it.
      const order = r.neighbors.map((id, j) => ({ id, d: r.distances[j] })).sort((a, b) => a.d - b.d || a.id - b.id);
      order.forEach((o, j) => {
        found.indices[q * k + j] = o.id;
        found.scores[q * k + j] = 1 - o.d;
      });
    }
    rows.push({
      encoder,
      ef,
      queries: n,
      recall10: recallAtK(found, exact, k),
      recall10VsXl: recallAtK(found, xlTruth, k),
      medianMs: median(ms),
      meanMs: ms.reduce((a, b) => a + b, 0) / Math.max(1, n),
    });
  }
  return rows;
}
