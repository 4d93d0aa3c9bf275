// npx tsx scripts/bench-scaleout.ts [--gallery datasets/cifar10-test.tar.gz] [--vectors SRC,SRC...] [--queries 200]
//                                   [--skip-throughput] [--skip-search]
// What scaling out costs and gives, with the engines the tests use (PGlite + pgvector over the wire protocol,
// Debian's redis-server), both started here, and the shipped model:
// - indexing throughput of the gallery: single-process `matvit index` into the PostgreSQL store, against the queue
//   with 1 and with 2 local `matvit worker` processes (one encoder thread each), all on this machine's cores;
// - queue overhead per job: BullMQ jobs of the size `matvit index --queue` sends (64 archive members), through a
//   worker that does nothing, enqueue to completion;
// - search: recall@10 against exact search and latency per query of pgvector (hnsw.ef_search = the default ef,
//   through the socket) next to hnswlib in process, over the embeddings of the `--vectors` sources (default: the
//   60,000 CIFAR-10 images of ../shared/datasets/cifar10, else the 10,000 of the gallery), held-out queries.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { Encoder } from '../src/encoder/runtime.ts';
import { bruteForceTopK, recallAtK, topKFromHits } from '../src/index/exact-search.ts';
import { HNSW_DEFAULTS, HnswIndex, normalize } from '../src/index/hnsw.ts';
import { indexSources } from '../src/index/indexer.ts';
import { openIndex } from '../src/index/service.ts';
import { batchJobs } from '../src/queue/jobs.ts';
import { iterateImageSource } from '../src/data/sources.ts';
import { EmbeddedStore } from '../src/store/embedded.ts';
import { openStore } from '../src/store/open.ts';
import { startPostgres } from '../tests/helpers/pglite.ts';
import { startRedis } from '../tests/helpers/redis.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.join(root, '../shared/datasets/cifar10');
const defaultVectors = fs.existsSync(path.join(shared, 'train.tar.gz')) ? `${shared}/train.tar.gz,${shared}/test.tar.gz` : path.join(root, 'datasets/cifar10-test.tar.gz');
const { values: args } = parseArgs({
  options: {
    gallery: { type: 'string', default: path.join(root, 'datasets/cifar10-test.tar.gz') },
    vectors: { type: 'string', default: defaultVectors },
    queries: { type: 'string', default: '200' },
    jobs: { type: 'string', default: '500' },
    'skip-throughput': { type: 'boolean', default: false },
    'skip-search': { type: 'boolean', default: false },
  },
});
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-scaleout-'));
const pgs = await startPostgres();
const redis = await startRedis();
const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

function matvit(cmd: string[]): { done: Promise<{ code: number | null; stdout: string; stderr: string }>; kill: (s: NodeJS.Signals) => void; ready: Promise<void> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...cmd], { cwd: root, env: { ...process.env, LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let ready!: () => void;
  const readyP = new Promise<void>((r) => (ready = r));
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    if (/worker ready/.test(stderr)) ready();
  });
  return { done: new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr }))), kill: (s) => child.kill(s), ready: readyP };
}

async function throughput(): Promise<void> {
  const n = 10_000;
  await pgs.reset();
  const single = await matvit(['index', args.gallery, '--store', pgs.url, '--json']).done;
  if (single.code !== 0) throw new Error(single.stderr);
  const s = JSON.parse(single.stdout);
  const singleRate = (s.indexed + s.duplicates) / s.seconds;
  console.log(`single-process matvit index into PostgreSQL: ${s.indexed} images in ${s.seconds.toFixed(1)} s = ${singleRate.toFixed(0)} images/s`);
  for (const workers of [1, 2]) {
    await pgs.reset();
    const flush = new Redis(redis.url);
    await flush.flushall();
    flush.disconnect();
    const procs = Array.from({ length: workers }, () => matvit(['worker', '--queue', redis.url, '--store', pgs.url, '--threads', '1']));
    await Promise.all(procs.map((p) => p.ready)); // the model loaded and the encoder warm before the clock starts
    const r = await matvit(['index', args.gallery, '--queue', redis.url, '--store', pgs.url, '--json']).done;
    if (r.code !== 0) throw new Error(r.stderr);
    const q = JSON.parse(r.stdout);
    const rate = n / q.seconds;
    console.log(`${workers} worker${workers > 1 ? 's' : ''} through the queue: ${q.indexed} images in ${q.seconds.toFixed(1)} s = ${rate.toFixed(0)} images/s (${((100 * rate) / singleRate).toFixed(0)}% of single-process; ${q.jobs} jobs)`);
    procs.forEach((p) => p.kill('SIGTERM'));
    await Promise.all(procs.map((p) => p.done));
  }
}

async function queueOverhead(): Promise<void> {
  const connection = new Redis(redis.url, { maxRetriesPerRequest: null });
  const name = 'bench-overhead';
  const items = [];
  for await (const item of iterateImageSource(args.gallery)) {
    items.push(item);
    if (items.length === 64) break;
  }
  const first = await batchJobs((async function* () { yield* items; })()).next();
  const data = first.value!.data;
  const jobs = Number(args.jobs);
  const queue = new Queue(name, { connection });
  const eventsConnection = connection.duplicate();
  const events = new QueueEvents(name, { connection: eventsConnection });
  await events.waitUntilReady();
  let left = jobs;
  const done = new Promise<void>((resolve) => events.on('completed', () => --left === 0 && resolve()));
  const worker = new Worker(name, async () => ({ indexed: 0, duplicates: 0, failed: [] }), { connection, concurrency: 2 });
  await worker.waitUntilReady();
  const t0 = performance.now();
  await queue.addBulk(Array.from({ length: jobs }, (_, i) => ({ name: 'index', data, opts: { jobId: `j-${i}` } })));
  await done;
  const ms = performance.now() - t0;
  console.log(`queue overhead: ${jobs} jobs of 64 archive members (${(JSON.stringify(data).length / 1024).toFixed(0)} KB each) enqueued, taken, completed and reported in ${ms.toFixed(0)} ms = ${(ms / jobs).toFixed(2)} ms per job (${((ms / jobs) / 64).toFixed(3)} ms per image)`);
  await worker.close();
  await events.close();
  await queue.close();
  connection.disconnect();
  eventsConnection.disconnect();
}

async function search(): Promise<void> {
  // Embeddings as `matvit index` makes them, in an embedded store; then the same vectors into PostgreSQL.
  const encoder = Encoder.load(undefined, { threads: Math.max(1, os.availableParallelism()) });
  const local = new EmbeddedStore(openIndex(path.join(tmp, 'vectors'), encoder.modelId, encoder.dim, { writer: true, config: encoder.config }));
  const sources = args.vectors.split(',');
  const t0 = performance.now();
  const r = await indexSources(local, encoder, sources);
  console.log(`encoded ${r.indexed} images of ${sources.map((s) => path.basename(s)).join(', ')} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const sqlite = local.handle.store;
  const all: { id: number; vector: Float32Array }[] = [...sqlite.iterateEmbeddings(encoder.modelId)];
  const nq = Number(args.queries);
  const queries = all.splice(all.length - nq, nq); // held out: the last images (test set) query the rest
  const dim = encoder.dim;
  const db = new Float32Array(all.length * dim);
  all.forEach((e, i) => db.set(normalize(e.vector), i * dim));
  const qs = new Float32Array(nq * dim);
  queries.forEach((e, i) => qs.set(normalize(e.vector), i * dim));
  const truth = bruteForceTopK(db, all.length, dim, qs, nq, 10);
  const rowOf = new Map(all.map((e, i) => [e.id, i]));

  const hnsw = HnswIndex.create('bench', dim, { initialCapacity: all.length });
  let t = performance.now();
  for (const e of all) hnsw.add(e.id, e.vector);
  const hnswBuild = (performance.now() - t) / 1000;
  const timedSearch = async (fn: (q: Float32Array) => Promise<{ id: number; score: number }[]> | { id: number; score: number }[]) => {
    const ms: number[] = [];
    const lists = [];
    for (let i = 0; i < nq; i++) {
      const q = qs.subarray(i * dim, (i + 1) * dim);
      const s = performance.now();
      lists.push(await fn(q));
      ms.push(performance.now() - s);
    }
    return { recall: recallAtK(topKFromHits(lists, 10, (id) => rowOf.get(id)!), truth, 10), p50: quantile(ms, 0.5), p95: quantile(ms, 0.95) };
  };
  for (const ef of [HNSW_DEFAULTS.ef, 40]) {
    const h = await timedSearch((q) => hnsw.search(q, 10, { ef }));
    console.log(`hnswlib (in process), ${all.length} vectors, ef ${ef}: recall@10 ${h.recall.toFixed(4)}, ${h.p50.toFixed(3)} ms median, ${h.p95.toFixed(3)} ms p95 (built in ${hnswBuild.toFixed(1)} s)`);
  }

  await pgs.reset();
  const store = await openStore(pgs.url, { modelId: encoder.modelId, dim, config: encoder.config }, { writer: true });
  t = performance.now();
  const rows = sqlite.getImages(all.map((e) => e.id));
  for (let i = 0; i < all.length; i += 1000) {
    await store.add(all.slice(i, i + 1000).map((e, j) => ({ image: { ...rows[i + j], original: undefined, thumbnail: undefined }, vector: e.vector })));
  }
  console.log(`pgvector: ${all.length} vectors added (HNSW index kept up to date) in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  const pgIdOf = new Map((await store.rows(Array.from({ length: all.length }, (_, i) => i + 1))).map((row) => [row.id, sqlite.findByHash(row.contentHash)!.id]));
  for (const ef of [HNSW_DEFAULTS.ef, 40]) {
    const p = await timedSearch(async (q) => (await store.nearest(q, 10, ef)).map((h) => ({ id: pgIdOf.get(h.id)!, score: h.score })));
    console.log(`pgvector (PGlite over the socket), ${all.length} vectors, ef ${ef}: recall@10 ${p.recall.toFixed(4)}, ${p.p50.toFixed(3)} ms median, ${p.p95.toFixed(3)} ms p95`);
  }
  await store.close();
  await local.close();
  await encoder.close();
}

try {
  console.log(`${new Date().toISOString()}, ${os.availableParallelism()} cores, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  if (!args['skip-throughput']) await throughput();
  await queueOverhead();
  if (!args['skip-search']) await search();
} finally {
  await redis.stop();
  await pgs.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
}
