// The HNSW ef sweep (part of the recall task): one hnswlib graph over the XL database, searched at several ef with
// the queries of every uniform width; recall@10 against exact search with the same queries and with XL's, and from
// it each width's search beam (chooseSearchEf), which the calibration hands to the server.
import { GRANULARITIES } from '../encoder/config.ts';
import { selectRows } from '../index/exact-search.ts';
import { mixSeed } from '../train/rng.ts';
import { type ModelContext, lap, sampleSorted } from './context.ts';
import { DEFAULT_HNSW, type HnswParams, type HnswRow, SEARCH_EF_TOLERANCE, buildHnsw, chooseSearchEf, hnswSweep } from './hnsw.ts';

export const DEFAULT_HNSW_EFS = [10, 16, 32, 64, 128, 160, 256]; // 160: HNSW_DEFAULTS.ef

export interface HnswSweepOptions {
  efs?: number[];
  M?: number;
  efConstruction?: number;
  queries?: number; // a seeded subset of the queries (default all)
}

export function hnswTask(ctx: ModelContext, opts: HnswSweepOptions = {}): void {
  const { run, xlTruth } = ctx;
  if (!xlTruth) throw new Error('the HNSW sweep needs the recall task first');
  const since = performance.now();
  run.progress.stage = 'hnsw';
  const { seed } = run.settings;
  const params: HnswParams = { ...DEFAULT_HNSW, seed: mixSeed(seed, 5) % 100000 };
  if (opts.M !== undefined) params.M = opts.M;
  if (opts.efConstruction !== undefined) params.efConstruction = opts.efConstruction;
  const efs = opts.efs ?? DEFAULT_HNSW_EFS;
  const nDb = run.db.rows.length;
  const nq = run.qs.rows.length;
  const dim = ctx.ckpt.config.width;
  run.progress.log(`building HNSW over ${nDb} XL vectors (M ${params.M}, efConstruction ${params.efConstruction})`);
  const { index, seconds } = buildHnsw(ctx.dbEmb, nDb, dim, params);
  const hq = Math.min(nq, opts.queries || nq);
  const pos = hq < nq ? sampleSorted(nq, hq, mixSeed(seed, 6)) : null;
  const rows: HnswRow[] = [];
  for (const spec of [...GRANULARITIES].reverse()) {
    const emb = ctx.queryEmbeddings.get(spec);
    const exact = ctx.topks.get(spec);
    if (!emb || !exact) continue;
    const q = pos ? gatherRows(emb, dim, pos) : emb;
    rows.push(...hnswSweep(index, spec, q, hq, dim, efs, pos ? selectRows(exact, pos) : exact, pos ? selectRows(xlTruth, pos) : xlTruth, 10));
  }
  ctx.hnsw = { params, buildSeconds: seconds, dbSize: nDb, rows, searchEf: chooseSearchEf(rows), searchEfTolerance: SEARCH_EF_TOLERANCE };
  if (pos) ctx.note(`the HNSW sweep used a seeded subset of ${hq} queries`);
  lap(run, 'hnsw', since);
}

function gatherRows(m: Float32Array, dim: number, rows: ArrayLike<number>): Float32Array {
  const out = new Float32Array(rows.length * dim);
  for (let i = 0; i < rows.length; i++) out.set(m.subarray(rows[i] * dim, (rows[i] + 1) * dim), i * dim);
  return out;
}
