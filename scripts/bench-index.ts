// npx tsx scripts/bench-index.ts [--quick] [--source datasets/cifar10-test.tar.gz] [--folder] [--threads N] [--encoder-threads 1,2]
//                                [--rounds 2] [--skip-index] [--skip-hnsw] [--queries 1000]
//                                [--efs 32,48,64,96,128,160,192,256] [--ef-constructions 128,200] [--m 12,16]
// 1. Indexing end to end: the 10,000 CIFAR-10 test images into a fresh store (read, hash, decode, XL encoding,
//    SQLite, HNSW; archive members keep their originals, which are their own thumbnails; with --folder the members are
//    written out first and indexed as files, which the store does not copy, as `matvit index` of a folder) with
//    `--threads` encoder threads (default: what `matvit index` picks; one single-thread worker each), against the
//    encoder alone on the same images already decoded, for each of `--encoder-threads` in two layouts (one session
//    with t onnxruntime threads; t single-thread workers, as indexing runs it), measured in the same run and
//    alternated (encoder, index, encoder, index, encoder) so that both see the same background load. Ratios are given
//    against the encoder alone in indexing's layout and against its fastest layout. They are what to compare across
//    runs: the machine has two cores and is often shared (a training job), and the kernel gives each process group a
//    fair share. Each round also gives the store's size per image (SQLite and HNSW file, once closed).
// 2. HNSW: CIFAR-10's 60,000 images (train + test) encoded with XL, of which 1,000 spread over train and test are held
//    out as queries (encoded with XL and with S) and 59,000 are stored through the service; recall@10 against exact
//    search and median single-query latency for each ef and each graph (--m x --ef-constructions), marking
//    HNSW_DEFAULTS.ef. Embeddings are cached per model id in .cache/bench-index/.
// --quick: 1,000 images to index, 5,000 embeddings, 200 queries. Results are also written as JSON to runs/bench-index/.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadLabelledPixels } from '../src/data/labelled.ts';
import { DEFAULT_MODEL_PATH } from '../src/encoder/checkpoint.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { ExactSearch, type TopK, recallAtK, topKFromHits } from '../src/index/exact-search.ts';
import { HNSW_DEFAULTS } from '../src/index/hnsw.ts';
import { DEFAULT_BATCH_SIZE, defaultEncoderThreads, indexSources } from '../src/index/indexer.ts';
import { EncoderPool } from '../src/encoder/pool.ts';
import { addEmbeddings, openIndex } from '../src/index/service.ts';
import { EmbeddedStore } from '../src/store/embedded.ts';
import { contentHash } from '../src/index/store.ts';
import { cifarEmbeddings, encodeAll, images, root } from './cifar-embeddings.ts';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    folder: { type: 'boolean', default: false },
    model: { type: 'string', default: DEFAULT_MODEL_PATH },
    source: { type: 'string', default: path.join(root, 'datasets/cifar10-test.tar.gz') },
    train: { type: 'string', default: path.join(root, '../shared/datasets/cifar10/train.tar.gz') },
    threads: { type: 'string' },
    'encoder-threads': { type: 'string', default: '1,2' },
    'batch-size': { type: 'string', default: String(DEFAULT_BATCH_SIZE) },
    rounds: { type: 'string', default: '2' },
    'skip-index': { type: 'boolean', default: false },
    'skip-hnsw': { type: 'boolean', default: false },
    efs: { type: 'string', default: '32,48,64,96,128,160,192,256' },
    'ef-constructions': { type: 'string', default: String(HNSW_DEFAULTS.efConstruction) },
    m: { type: 'string', default: String(HNSW_DEFAULTS.M) },
    queries: { type: 'string' },
    out: { type: 'string', default: path.join(root, 'runs/bench-index') },
  },
});
const quick = args.quick;
const threads = args.threads === undefined ? await defaultEncoderThreads() : Number(args.threads);
const batchSize = Number(args['batch-size']);
const K = 10;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const cpuMs = () => {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1000;
};

/** What else the machine is doing: load average and other busy processes (a training job, say). */
function conditions(): { loadavg: number[]; busy: string[] } {
  const busy: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid)) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      if (stat[0] === 'R' && cmd && !cmd.includes('bench-index')) busy.push(`${pid} ${cmd.slice(0, 100)}`);
    } catch {
      // gone meanwhile
    }
  }
  return { loadavg: os.loadavg().map((x) => Number(x.toFixed(2))), busy };
}

/** Bytes of the files in a folder and its sub-folders. */
function folderBytes(dir: string): number {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).reduce((sum, e) => sum + (e.isFile() ? fs.statSync(path.join(e.parentPath, e.name)).size : 0), 0);
}

// ---- 1. indexing end to end vs the encoder alone ------------------------------------------------------------------

interface IndexRound {
  encoderOnly: Record<string, number>; // layout ('2 threads', '2 workers') -> images/s, mean of the passes before and after
  endToEnd: number; // images/s
  ratio: number; // against the encoder alone in the layout indexing uses (`threads` single-thread workers)
  ratioBest: number; // against the encoder alone in its fastest layout
  indexed: number;
  seconds: number;
  cpuMsPerImage: { endToEnd: number; encoderOnly: number };
  encoderBusy: number | null; // fraction of the end-to-end time the encoder worker was running the model
  encodeMsPerImage: number | null; // its model time per image, to set against 1000 / encoderOnly
  storeBytesPerImage: number; // the store folder once closed (SQLite and HNSW file) over the images indexed
}

async function benchIndexing(encoder: Encoder) {
  const limit = quick ? 1000 : undefined;
  const size = encoder.config.imageSize;
  const data = await loadLabelledPixels(args.source, size, { limit });
  const imgs = images(data.pixels, size, data.labels.length);
  let source = args.source;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-index-'));
  if (quick || args.folder) {
    // The images as a folder of files (--folder; --quick: the first 1,000, as the archive cannot be cut short).
    source = path.join(tmp, 'images');
    const { iterateImageSource } = await import('../src/data/sources.ts');
    let n = 0;
    for await (const item of iterateImageSource(args.source)) {
      if (n++ >= imgs.length) break;
      const file = path.join(source, item.label ?? '', path.basename(item.path));
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, item.bytes);
    }
  }
  // The encoder alone, in two layouts per thread count t: one session with t onnxruntime threads on this thread, and
  // t single-thread workers with each batch split between them (what indexSources runs).
  const threadCounts = [...new Set([threads, ...args['encoder-threads'].split(',').map(Number)])];
  const layouts = new Map<string, (imgs: Uint8Array[]) => Promise<unknown>>();
  const batches = (xs: Uint8Array[]) => Array.from({ length: Math.ceil(xs.length / batchSize) }, (_, i) => xs.slice(i * batchSize, (i + 1) * batchSize));
  const started: { close(): Promise<void> }[] = [];
  for (const t of threadCounts) {
    const e = t === threads ? encoder : Encoder.load(args.model, { threads: t });
    if (e.modelId !== encoder.modelId) throw new Error(`the model changed during the run (${encoder.modelId} -> ${e.modelId}): run again`);
    if (e !== encoder) started.push(e);
    layouts.set(`${t} thread${t > 1 ? 's' : ''}`, (xs) => encodeAll(e, xs, 'XL', batchSize));
    const off = await EncoderPool.start(e, { threads: t });
    started.push(off);
    layouts.set(`${t} worker${t > 1 ? 's' : ''}`, (xs) => Promise.all(batches(xs).map((b) => off.encode(b)))); // all queued: never waiting
  }
  const indexLayout = `${threads} worker${threads > 1 ? 's' : ''}`;
  for (const run of layouts.values()) await run(imgs.slice(0, 2 * batchSize)); // session creation and warm-up

  /** The encoder alone in each layout: images/s and CPU ms per image. */
  const encoderOnly = async () => {
    const out: Record<string, { rate: number; cpu: number }> = {};
    for (const [name, run] of layouts) {
      const t0 = performance.now();
      const c0 = cpuMs();
      await run(imgs);
      out[name] = { rate: imgs.length / ((performance.now() - t0) / 1000), cpu: (cpuMs() - c0) / imgs.length };
    }
    return out;
  };
  const rounds: IndexRound[] = [];
  let before = await encoderOnly();
  for (let r = 0; r < Number(args.rounds); r++) {
    const store = path.join(tmp, `store-${r}`);
    const handle = new EmbeddedStore(openIndex(store, encoder.modelId, encoder.dim, { writer: true, config: encoder.config }));
    const c0 = cpuMs();
    const report = await indexSources(handle, encoder, [source], { batchSize });
    const cpu = (cpuMs() - c0) / Math.max(1, report.indexed);
    await handle.close(); // checkpoints the WAL into the database file
    const storeBytes = folderBytes(store);
    fs.rmSync(store, { recursive: true, force: true });
    if (report.indexed !== imgs.length) throw new Error(`indexed ${report.indexed} of ${imgs.length} (failed: ${JSON.stringify(report.failed.slice(0, 3))})`);
    const afterEnc = await encoderOnly();
    const enc = Object.fromEntries([...layouts.keys()].map((k) => [k, (before[k].rate + afterEnc[k].rate) / 2]));
    const best = Math.max(...Object.values(enc));
    const e2e = report.indexed / report.seconds;
    const busy = report.encodeSeconds === undefined ? null : report.encodeSeconds / report.seconds;
    const encMs = report.encodeSeconds === undefined ? null : (report.encodeSeconds * 1000) / report.indexed;
    const encCpu = (before[indexLayout].cpu + afterEnc[indexLayout].cpu) / 2;
    const storeBytesPerImage = storeBytes / report.indexed;
    rounds.push({ encoderOnly: enc, endToEnd: e2e, ratio: e2e / enc[indexLayout], ratioBest: e2e / best, indexed: report.indexed, seconds: report.seconds, cpuMsPerImage: { endToEnd: cpu, encoderOnly: encCpu }, encoderBusy: busy, encodeMsPerImage: encMs, storeBytesPerImage });
    const encText = [...layouts.keys()].map((k) => `${enc[k].toFixed(0)} with ${k} (${before[k].rate.toFixed(0)} before, ${afterEnc[k].rate.toFixed(0)} after)`).join(', ');
    console.log(`round ${r + 1}: end to end ${e2e.toFixed(0)} images/s (${report.seconds.toFixed(1)} s, ${indexLayout}), store ${(storeBytes / 1e6).toFixed(1)} MB = ${storeBytesPerImage.toFixed(0)} bytes per image; encoder only: ${encText} images/s`);
    console.log(`  ratio ${(e2e / enc[indexLayout]).toFixed(3)} against the encoder alone in the same layout, ${(e2e / best).toFixed(3)} against its fastest`);
    console.log(
      `  CPU ${cpu.toFixed(2)} ms/image end to end vs ${encCpu.toFixed(2)} encoder only; encoder workers busy ${busy === null ? '?' : `${(100 * busy).toFixed(0)}%`} of the time, ${encMs === null ? '?' : encMs.toFixed(2)} ms/image of model time (encoder only: ${(1000 / enc[indexLayout]).toFixed(2)})`,
    );
    before = afterEnc;
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  for (const e of started) await e.close();
  return {
    source: args.source,
    asFolder: quick || args.folder,
    images: imgs.length,
    threads,
    batchSize,
    rounds,
    medianRatio: median(rounds.map((r) => r.ratio)),
    medianRatioBest: median(rounds.map((r) => r.ratioBest)),
    medianEndToEnd: median(rounds.map((r) => r.endToEnd)),
    storeBytesPerImage: median(rounds.map((r) => r.storeBytesPerImage)),
  };
}

// ---- 2. HNSW recall@10 and latency on 59,000 real embeddings -------------------------------------------------------

async function embeddings(encoder: Encoder) {
  const nq = Number(args.queries ?? (quick ? 200 : 1000));
  const { db, queries } = await cifarEmbeddings(encoder, { test: args.source, train: quick ? null : args.train, limit: quick ? 5000 : 60_000, queries: nq, batchSize });
  return { db, queries };
}

async function benchHnsw(encoder: Encoder) {
  const { db, queries } = await embeddings(encoder);
  const efs = args.efs.split(',').map(Number);
  const flat = (vs: Float32Array[]) => {
    const m = new Float32Array(vs.length * encoder.dim);
    vs.forEach((v, i) => m.set(v, i * encoder.dim));
    return m;
  };
  const t0 = performance.now();
  const exact = await ExactSearch.create(flat(db), db.length, encoder.dim, { k: K, threads });
  const truth: Record<string, TopK> = {};
  for (const [spec, qs] of Object.entries(queries)) truth[spec] = await exact.search(flat(qs), qs.length);
  await exact.release();
  console.log(`exact top-${K} of ${Object.values(queries).flat().length} queries over ${db.length} vectors: ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const builds = [];
  const graphs = args.m.split(',').flatMap((M) => args['ef-constructions'].split(',').map((efC) => ({ M: Number(M), efConstruction: Number(efC) })));
  for (const { M, efConstruction } of graphs) {
    const store = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-hnsw-'));
    const modelId = `bench:${encoder.modelId}`;
    let handle = openIndex(store, modelId, encoder.dim, { writer: true, hnsw: { M, efConstruction } });
    const b0 = performance.now();
    for (let i = 0; i < db.length; i += 1000) {
      addEmbeddings(
        handle,
        db.slice(i, i + 1000).map((vector, j) => ({ image: { source: `cifar10/${i + j}`, contentHash: contentHash(Buffer.from(`bench ${i + j}`)), width: 32, height: 32, format: 'jpeg' }, vector })),
      );
    }
    const buildSeconds = (performance.now() - b0) / 1000;
    handle.close(); // saves the file: the search below runs on the index as every later open loads it
    handle = openIndex(store, modelId, encoder.dim);
    const rows = [];
    for (const ef of efs) {
      const row: Record<string, number | boolean> = { ef, default: ef === HNSW_DEFAULTS.ef };
      for (const [spec, qs] of Object.entries(queries)) {
        qs.slice(0, 50).forEach((q) => handle.hnsw.search(q, K, { ef })); // warm-up
        const ms: number[] = [];
        const found = qs.map((q) => {
          const s = performance.now();
          const hits = handle.hnsw.search(q, K, { ef });
          ms.push(performance.now() - s);
          return hits;
        });
        row[`recall${spec}`] = recallAtK(topKFromHits(found, K, (id) => id - 1), truth[spec], K); // the store gives row i id i + 1
        row[`medianMs${spec}`] = median(ms);
      }
      rows.push(row);
    }
    handle.close();
    fs.rmSync(store, { recursive: true, force: true });
    console.log(`\nHNSW M ${M}, ef-construction ${efConstruction}: ${db.length} vectors stored and inserted in ${buildSeconds.toFixed(1)} s (${((buildSeconds * 1000) / db.length).toFixed(3)} ms each)`);
    console.log('   ef  recall@10 XL q  recall@10 S q  median ms XL  median ms S');
    for (const r of rows) {
      const f = (x: unknown, d: number) => (x as number).toFixed(d);
      console.log(`${String(r.ef).padStart(5)}  ${f(r.recallXL, 4).padStart(14)}  ${f(r.recallS, 4).padStart(13)}  ${f(r.medianMsXL, 3).padStart(12)}  ${f(r.medianMsS, 3).padStart(11)}${r.default ? '  <- HNSW_DEFAULTS.ef' : ''}`);
    }
    const ok = rows.find((r) => (r.recallXL as number) >= 0.98 && (r.recallS as number) >= 0.98);
    console.log(ok ? `smallest ef with recall@10 >= 0.98 for both query encoders: ${ok.ef}` : 'no ef reached recall@10 0.98');
    builds.push({ M, efConstruction, vectors: db.length, buildSeconds, rows });
  }
  return { queries: queries.XL.length, k: K, defaultEf: HNSW_DEFAULTS.ef, builds };
}

// ---- main -----------------------------------------------------------------------------------------------------------

const encoder = Encoder.load(args.model, { threads });
const start = conditions();
console.log(`model ${encoder.modelId}, onnxruntime threads ${threads}, batch ${batchSize}${quick ? ', quick' : ''}`);
console.log(`load average ${start.loadavg.join(' ')}; other running processes: ${start.busy.length ? start.busy.join('; ') : 'none'}`);
const result: Record<string, unknown> = { date: new Date().toISOString(), model: encoder.modelId, quick, conditionsAtStart: start };
if (!args['skip-index']) result.indexing = await benchIndexing(encoder);
if (!args['skip-hnsw']) result.hnsw = await benchHnsw(encoder);
result.conditionsAtEnd = conditions();
await encoder.close();
const ix = result.indexing as Awaited<ReturnType<typeof benchIndexing>> | undefined;
if (ix) {
  console.log(
    `\nindexing: median end-to-end ${ix.medianEndToEnd.toFixed(0)} images/s, ${ix.storeBytesPerImage.toFixed(0)} store bytes per image; median ratio to the encoder alone ${ix.medianRatio.toFixed(3)} (same layout), ${ix.medianRatioBest.toFixed(3)} (its fastest layout)`,
  );
}
console.log(`load average at the end ${(result.conditionsAtEnd as { loadavg: number[] }).loadavg.join(' ')}`);
fs.mkdirSync(args.out, { recursive: true });
const file = path.join(args.out, `${new Date().toISOString().replace(/[:.]/g, '-')}${quick ? '-quick' : ''}.json`);
fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
console.log(`results: ${path.relative(root, file)}`);
