// npx tsx scripts/bench-filter.ts [--quick] [--queries 300] [--threads 2] [--seed 17]
// Filtered search (src/index/filtered-search.ts) on CIFAR-10's 60,000 images encoded with XL (scripts/cifar-embeddings.ts:
// 59,000 stored with their class label and seeded synthetic metadata {pct: 0..99, tenth: 0..9, permille: 0..999},
// 1,000 held out as queries, encoded with XL and with S).
// 1. Filters of about 50%, 10%, 1% and 0.1% selectivity (labels, metadata, both): recall@10 against exact filtered
//    search and median / p99 latency of the search as the service runs it (allowed ids cached), beside post-filtering
//    (the 10 nearest of everything, minus those that fail) as the naive reference; and the time to read a filter's
//    allowed ids from SQLite (once per filter and store change).
// 2. The crossover: exact search over the allowed vectors against the filtered HNSW walk, by number of allowed
//    images (random metadata filters), which sets EXACT_MAX; and the walk's recall at the index's ef.
// --quick: 5,000 images (test set only), 100 queries. Results are also written as JSON to runs/bench-filter/.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_MODEL_PATH } from '../src/encoder/checkpoint.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { bruteForceTopK } from '../src/index/exact-search.ts';
import { parseWhere } from '../src/index/filter.ts';
import { type Allowed, AllowedCache, EXACT_MAX, exactAmong, hnswAmong, nearestFiltered } from '../src/index/filtered-search.ts';
import { type SearchHit, normalize } from '../src/index/hnsw.ts';
import { type IndexHandle, addEmbeddings, openIndex } from '../src/index/service.ts';
import { contentHash } from '../src/index/store.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { cifarEmbeddings, root } from './cifar-embeddings.ts';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    model: { type: 'string', default: DEFAULT_MODEL_PATH },
    test: { type: 'string', default: path.join(root, 'datasets/cifar10-test.tar.gz') },
    train: { type: 'string', default: path.join(root, '../shared/datasets/cifar10/train.tar.gz') },
    queries: { type: 'string' },
    threads: { type: 'string', default: '2' },
    seed: { type: 'string', default: '17' },
    out: { type: 'string', default: path.join(root, 'runs/bench-filter') },
  },
});
const quick = args.quick;
const K = 10;
const nq = Number(args.queries ?? (quick ? 100 : 300));

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const median = (xs: number[]) => quantile(xs, 0.5);

const encoder = Encoder.load(args.model, { threads: Number(args.threads) });
const data = await cifarEmbeddings(encoder, { test: args.test, train: quick ? null : args.train, limit: quick ? 5000 : 60_000, queries: 1000 });
await encoder.close();
const dim = encoder.dim;
const queries = { XL: data.queries.XL.slice(0, nq), S: data.queries.S.slice(0, nq) };

// ---- the store: every image with its label and seeded metadata ---------------------------------------------------
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-filter-'));
const modelId = `bench:${encoder.modelId}`;
const rand = mulberry32(Number(args.seed));
let handle: IndexHandle = openIndex(dir, modelId, dim, { writer: true });
const rowOfId = new Map<number, number>();
for (let i = 0; i < data.db.length; i += 1000) {
  const results = addEmbeddings(
    handle,
    data.db.slice(i, i + 1000).map((vector, j) => ({
      image: {
        source: `/cifar10/${data.labels[i + j]}/${i + j}.png`,
        contentHash: contentHash(Buffer.from(`bench-filter ${i + j}`)),
        width: 32,
        height: 32,
        format: 'png',
        label: data.labels[i + j],
        metadata: { pct: Math.floor(rand() * 100), tenth: Math.floor(rand() * 10), permille: Math.floor(rand() * 1000) },
      },
      vector,
    })),
  );
  results.forEach((r, j) => rowOfId.set(r.id, i + j));
}
handle.close();
handle = openIndex(dir, modelId, dim); // a reader that loads the saved file, as `matvit serve` does
const n = handle.hnsw.size;
const unit = data.db.map((v) => Float32Array.from(normalize(v)));
console.log(`${n} vectors stored; ${nq} queries each of XL and S; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} (2 cores, shared)`);

/** Exact filtered top k of each query: the reference. */
function truth(allowed: Allowed, qs: Float32Array[]): number[][] {
  const flat = new Float32Array(allowed.ids.length * dim);
  allowed.ids.forEach((id, i) => flat.set(unit[rowOfId.get(id)!], i * dim));
  const queryFlat = new Float32Array(qs.length * dim);
  qs.forEach((q, i) => queryFlat.set(normalize(q), i * dim));
  const top = bruteForceTopK(flat, allowed.ids.length, dim, queryFlat, qs.length, K);
  return qs.map((_, i) => Array.from(top.indices.subarray(i * top.k, (i + 1) * top.k), (r) => allowed.ids[r]));
}
const recall = (found: SearchHit[], want: number[]) => found.filter((h) => want.includes(h.id)).length / Math.min(K, want.length);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function timed(fn: () => SearchHit[]): { hits: SearchHit[]; ms: number } {
  const t0 = performance.now();
  const hits = fn();
  return { hits, ms: performance.now() - t0 };
}

// ---- 1. selectivities ----------------------------------------------------------------------------------------------
const FILTERS = [
  { name: '~50%: five labels', where: ['label=airplane,automobile,bird,cat,deer'] },
  { name: '~20%: two labels', where: ['label=cat,dog'] },
  { name: '~10%: one label', where: ['label=cat'] },
  { name: '~10%: metadata', where: ['meta.tenth=3'] },
  { name: '~1%: metadata', where: ['meta.pct=7'] },
  { name: '~1%: label AND metadata', where: ['label=dog', 'meta.tenth=4'] },
  { name: '~0.1%: metadata', where: ['meta.permille=42'] },
  { name: '~0.1%: label AND metadata', where: ['label=ship', 'meta.pct=1'] },
];
const selectivityRows = [];
for (const f of FILTERS) {
  const filter = parseWhere(f.where)!;
  handle.allowed = new AllowedCache(); // cold: the allowed ids are read from SQLite
  const t0 = performance.now();
  const allowed = handle.allowed.get(handle, filter);
  const idsMs = performance.now() - t0;
  const row: Record<string, unknown> = { filter: f.name, where: f.where.join(' '), allowed: allowed.ids.length, selectivity: allowed.ids.length / n, idsMs, path: '' };
  for (const [spec, qs] of Object.entries(queries)) {
    const want = truth(allowed, qs);
    qs.slice(0, 20).forEach((q) => nearestFiltered(handle, q, K, { filter })); // warm-up (and the exact path's vectors)
    const runs = qs.map((q) => timed(() => nearestFiltered(handle, q, K, { filter })));
    const post = qs.map((q) => handle.hnsw.search(q, K).filter((h) => allowed.bitmap[h.id] === 1));
    row.path = allowed.vectors ? (allowed.walkMs === null ? 'exact' : 'hnsw, then exact') : 'hnsw';
    row[`recall${spec}`] = mean(runs.map((r, i) => recall(r.hits, want[i])));
    row[`medianMs${spec}`] = median(runs.map((r) => r.ms));
    row[`p99Ms${spec}`] = quantile(runs.map((r) => r.ms), 0.99);
    row[`postRecall${spec}`] = mean(post.map((hits, i) => recall(hits, want[i])));
  }
  selectivityRows.push(row);
}
console.log('\nfiltered search (allowed ids cached) against exact filtered search; post-filtering beside it');
console.log('filter                        allowed  select.  path              ids ms  recall XL  recall S  median ms XL/S  p99 ms XL/S  post-filter recall XL/S');
for (const r of selectivityRows) {
  const f = (x: unknown, d: number) => (x as number).toFixed(d);
  console.log(
    `${String(r.filter).padEnd(28)}  ${String(r.allowed).padStart(7)}  ${(100 * (r.selectivity as number)).toFixed(2).padStart(6)}%  ${String(r.path).padEnd(16)}  ${f(r.idsMs, 1).padStart(6)}  ${f(r.recallXL, 4).padStart(9)}  ${f(r.recallS, 4).padStart(8)}  ${`${f(r.medianMsXL, 3)} / ${f(r.medianMsS, 3)}`.padStart(14)}  ${`${f(r.p99MsXL, 2)} / ${f(r.p99MsS, 2)}`.padStart(11)}  ${`${f(r.postRecallXL, 3)} / ${f(r.postRecallS, 3)}`.padStart(12)}`,
  );
}

// ---- 2. the crossover: exact against the filtered HNSW walk, by allowed count ---------------------------------------
const crossoverRows = [];
for (const m of quick ? [1, 2, 5, 10, 20] : [1, 2, 3, 5, 8, 10, 15, 20, 50]) {
  const filter = parseWhere([`meta.pct=${Array.from({ length: m }, (_, i) => i).join(',')}`])!;
  const allowed = handle.allowed.get(handle, filter);
  const qs = queries.S; // S queries: the harder case for HNSW
  const want = truth(allowed, qs);
  const row: Record<string, number> = { allowed: allowed.ids.length };
  qs.slice(0, 20).forEach((q) => exactAmong(handle, allowed, q, K));
  const exact = qs.map((q) => timed(() => exactAmong(handle, allowed, q, K)));
  const walk = qs.map((q) => timed(() => hnswAmong(handle, allowed, q, K)));
  row.exactMs = median(exact.map((r) => r.ms));
  row.hnswMs = median(walk.map((r) => r.ms));
  row.hnswRecall = mean(walk.map((r, i) => recall(r.hits, want[i])));
  crossoverRows.push(row);
}
console.log(`\nexact over the allowed vectors against the filtered HNSW walk (S queries; EXACT_MAX ${EXACT_MAX}, index ef ${handle.hnsw.getEf()})`);
console.log('allowed  exact ms  hnsw ms  hnsw recall');
for (const r of crossoverRows) {
  console.log(`${String(r.allowed).padStart(7)}  ${r.exactMs.toFixed(3).padStart(8)}  ${r.hnswMs.toFixed(3).padStart(7)}  ${r.hnswRecall.toFixed(4).padStart(11)}`);
}

handle.close();
fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(args.out, { recursive: true });
const file = path.join(args.out, `${new Date().toISOString().replace(/[:.]/g, '-')}${quick ? '-quick' : ''}.json`);
fs.writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), model: encoder.modelId, vectors: n, queries: nq, loadavg: os.loadavg(), exactMax: EXACT_MAX, selectivity: selectivityRows, crossover: crossoverRows }, null, 2) + '\n');
console.log(`results: ${path.relative(root, file)}`);
