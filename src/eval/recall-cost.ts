// Recall-vs-cost evaluation (issue 6): the database is encoded once with the full XL model; every query encoder
// (uniform S/M/L/XL, the monotone Mix'n'Match lists, independently trained baselines) encodes the queries, which
// are searched exactly against it. Reported per encoder: FLOPs, parameters, median batch-1 encode time, neighbour
// recall@1/@10 against exact search with the XL query, 1-NN label accuracy, mAP@10, top-1 label agreement with XL;
// an HNSW ef sweep at XL and S; the near-duplicate (copies) task; and, on request, same-encoder search (own). The
// Pareto frontier of 1-NN accuracy against FLOPs becomes the model's calibration file, which src/encoder/budget.ts
// turns into a query-encoder choice.
import os from 'node:os';
import path from 'node:path';
import { saveCalibration } from '../encoder/budget.ts';
import { DEFAULT_MODEL_PATH, loadModel } from '../encoder/checkpoint.ts';
import { countFlops, countParams, parseSubmodel } from '../encoder/config.ts';
import { Encoder } from '../encoder/runtime.ts';
import { type LabelledPixels, loadLabelledPixels } from '../data/labelled.ts';
import { logger } from '../log.ts';
import { Progress } from '../progress.ts';
import { mixSeed, mulberry32, permutation } from '../train/rng.ts';
import { type CopyRecall, type EditsFile, copiesRecall, loadEdits, makeCopies } from './copies.ts';
import { type EncoderFamily, type QueryEncoderRef, baselineGranularity, findBaselines, mixnmatchEncoders, uniformEncoders } from './encoders.ts';
import { encodeImages, measureLatency, singleImage } from './encoding.ts';
import { ExactSearch, type TopK, mergeRows, selectRows } from './exact-search.ts';
import { DEFAULT_HNSW, type HnswParams, type HnswRow, buildHnsw, hnswSweep } from './hnsw.ts';
import { labelCounts, meanAveragePrecision, neighbourRecall, oneNnAccuracy, paretoFrontier, top1LabelAgreement } from './metrics.ts';
import { toCalibration } from './calibration.ts';
import { type CascadeEvaluation, cascadeOfUniform } from './cascade.ts';
import { writeReport } from './report.ts';

const projectRoot = path.resolve(import.meta.dirname, '../..');
export const DEFAULT_DB = path.resolve(projectRoot, '../shared/datasets/cifar10/train.tar.gz');
export const DEFAULT_QUERIES = path.resolve(projectRoot, '../shared/datasets/cifar10/test.tar.gz');
export const DEFAULT_EDITS = path.join(projectRoot, 'scripts/copies-edits.json');
/**
 * Queries for each Mix'n'Match list (a seeded subset; uniform encoders and baselines always get every query).
 * Measured on this 2-core machine while a training run held both cores: 2.4-3.1 ms per query per encoder (encode
 * plus exact search), so 80 lists x 10,000 queries would take 30-40 min. Unloaded, with 2 threads, about 0.6 ms
 * (the platform notes' encoder speed): 8 min for the 80 lists on all queries and about 11 min in all, too close
 * to the 15-minute limit; 5,000 queries bring the full default run to an estimated 6-7 minutes.
 */
export const DEFAULT_MIXNMATCH_QUERIES = 5000;
export const DEFAULT_HNSW_EFS = [10, 16, 32, 64, 128, 160, 256]; // 160: HNSW_DEFAULTS.ef

// recall: every query encoder against the XL database; copies: the near-duplicate task; own: each uniform
// granularity and baseline as the encoder of both database and queries (the paper's same-encoder 1-NN accuracy).
export type Task = 'recall' | 'copies' | 'own';

export interface RecallCostOptions {
  modelPath?: string; // the MatViT (default: the shipped model)
  db?: string | LabelledPixels; // any source loadLabelledPixels takes, or pixels already loaded
  queries?: string | LabelledPixels;
  tasks?: Task[]; // default both
  baselines?: string[]; // baseline model files or folders; default: every baseline found beside the model's folder
  mixnmatch?: string[]; // Mix'n'Match lists to evaluate; default every monotone list
  mixnmatchQueries?: number; // queries per Mix'n'Match list (a seeded subset); default DEFAULT_MIXNMATCH_QUERIES
  limit?: number; // cap database and queries at N images (a seeded sample of each)
  seed?: number;
  threads?: number; // onnxruntime threads for bulk encoding and exact search (latency always uses 1)
  batch?: number;
  latencyRuns?: number; // batch-1 runs per encoder for the median encode time (0: skip)
  hnsw?: false | { efs?: number[]; M?: number; efConstruction?: number; queries?: number };
  copies?: { edits?: string | EditsFile; originals?: number };
  outDir?: string; // write results.json, results.csv, summary.md, recall-vs-cost.svg here
  writeCalibration?: boolean; // write <model dir>/calibration.json (default false)
  progress?: boolean; // progress bar on stderr (default true)
  cacheDir?: string; // dataset cache (loadLabelledPixels)
}

export interface Metrics {
  queries: number;
  recall1: number; // |top-1 ∩ XL's top-1|: the share of queries whose top result is the one XL's query finds
  recall10: number; // |top-10 ∩ XL's top-10| / 10
  accuracy: number; // 1-NN label accuracy
  map10: number; // mAP@10 with class labels
  top1LabelAgreement: number; // the top result has the same label as XL's top result
}

export interface EncoderResult {
  id: string;
  family: EncoderFamily;
  spec: string;
  modelId: string;
  flops: number;
  flopsRel: number; // relative to the evaluated MatViT's XL
  params: number;
  encodeMs: number | null; // median batch-1 encode time, onnxruntime, 1 thread
  /** On every query (uniform and baselines; Mix'n'Match too when it is not subsampled). */
  all: Metrics | null;
  /** On the queries every encoder was evaluated on (the Mix'n'Match subset, or all): the plot compares these. */
  common: Metrics | null;
  onCommonFrontier: boolean; // on the Pareto frontier of `common` accuracy
  onFrontier: boolean; // on the Pareto frontier of `all` accuracy, among the encoders measured on every query
  copies: Record<string, CopyRecall> | null; // per edit and 'all'
  own: { accuracy: number; map10: number } | null; // the own task: database and queries both from this encoder
}

export interface RecallCostResult {
  version: 1;
  createdAt: string;
  modelPath: string;
  modelId: string;
  seed: number;
  tasks: Task[];
  dataset: { db: string; queries: string; dbSize: number; queryCount: number; commonQueries: number; classes: string[]; limit: number | null };
  mixnmatchSubset: boolean; // Mix'n'Match lists were evaluated on a seeded subset of the queries
  xlFlops: number;
  encoders: EncoderResult[];
  frontier: string[]; // encoder ids on the Pareto frontier (1-NN accuracy on every query vs FLOPs)
  hnsw: { params: HnswParams; buildSeconds: number; dbSize: number; rows: HnswRow[] } | null;
  cascade?: CascadeEvaluation | null; // the `auto` query (src/eval/cascade.ts)
  copies: { seed: number; originals: number; copies: number; dbSize: number; edits: EditsFile['edits'] } | null;
  // latencyCoreShare: CPU time / wall time of the batch-1 latency runs (about 1 when they had a core to themselves)
  environment: { cpus: number; cpu: string; node: string; latencyCoreShare: number; threads: number };
  timings: Record<string, number>; // seconds
  notes: string[];
  files?: Record<string, string>;
  calibrationFile?: string;
}

interface Subset {
  data: LabelledPixels;
  rows: Int32Array; // image indices into data
  labels: Int32Array;
  source: string;
}

/** Loads a source (or takes loaded pixels) and keeps a seeded sample of `limit` images when asked. */
async function loadSubset(src: string | LabelledPixels, size: number, limit: number | undefined, seed: number, cacheDir?: string): Promise<Subset> {
  const data = typeof src === 'string' ? await loadLabelledPixels(src, size, { cacheDir }) : src;
  if (data.size !== size) throw new Error(`images are ${data.size}x${data.size}; the model takes ${size}x${size}`);
  const n = data.labels.length;
  const rows = limit !== undefined && limit < n ? sampleSorted(n, limit, seed) : Int32Array.from({ length: n }, (_, i) => i);
  return { data, rows, labels: Int32Array.from(rows, (r) => data.labels[r]), source: typeof src === 'string' ? src : 'in-memory' };
}

/** m distinct integers of 0..n-1, seeded, in increasing order. */
export function sampleSorted(n: number, m: number, seed: number): Int32Array {
  return permutation(n, mulberry32(seed)).slice(0, Math.min(m, n)).sort();
}

const noProgress = { update() {}, log(line: string) { logger.info(line); }, stop() {} };

export async function evaluateRecallCost(opts: RecallCostOptions = {}): Promise<RecallCostResult> {
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const lap = (name: string, since: number) => (timings[name] = (timings[name] ?? 0) + (performance.now() - since) / 1000);
  const notes: string[] = [];
  const seed = opts.seed ?? 0;
  const tasks = opts.tasks ?? ['recall', 'copies'];
  const threads = opts.threads ?? 1;
  const latencyRuns = opts.latencyRuns ?? 30;
  const batch = opts.batch ?? 128;
  const modelPath = path.resolve(opts.modelPath ?? DEFAULT_MODEL_PATH);
  // Batch-1 latency runs on one thread on this thread: the process should get a whole core meanwhile. The share it
  // got (CPU time / wall time over every latency measurement) says whether something else competed for the cores.
  const latencyClock = { cpuMs: 0, wallMs: 0 };

  const ckpt = loadModel(modelPath);
  if (baselineGranularity(ckpt)) throw new Error(`${modelPath} is a baseline (trained only at ${ckpt.metadata.trained_granularities}); evaluate the MatViT and name baselines with --baselines`);
  const c = ckpt.config;
  const modelId = new Encoder(ckpt, modelPath).modelId;
  const xlFlops = countFlops(c, parseSubmodel('XL', c).widths);

  // ---- data ------------------------------------------------------------------------------------------------------
  let since = performance.now();
  const db = await loadSubset(opts.db ?? DEFAULT_DB, c.imageSize, opts.limit, mixSeed(seed, 1), opts.cacheDir);
  const qs = await loadSubset(opts.queries ?? DEFAULT_QUERIES, c.imageSize, opts.limit, mixSeed(seed, 2), opts.cacheDir);
  lap('load', since);
  const nDb = db.rows.length;
  const nq = qs.rows.length;
  // Labels are matched by class name, so database and queries may come from different sources.
  const dbClass = new Map(db.data.classes.map((name, i) => [name, i]));
  const qLabels = Int32Array.from(qs.labels, (l) => dbClass.get(qs.data.classes[l]) ?? -1);
  const unmatched = qLabels.filter((l) => l < 0).length;
  if (unmatched) notes.push(`${unmatched} queries have a class that is not in the database; they count as misses in accuracy and mAP`);
  const relevant = labelCounts(db.labels);

  // ---- encoders --------------------------------------------------------------------------------------------------
  const uniform = uniformEncoders(modelPath, ckpt);
  const { encoders: baselines, notes: baselineNotes } = findBaselines(modelPath, c, opts.baselines);
  notes.push(...baselineNotes);
  if (baselines.length === 0) notes.push('no independently trained baselines found (models/baseline-*/model.safetensors); none evaluated');
  const mnm = tasks.includes('recall') ? mixnmatchEncoders(modelPath, ckpt, opts.mixnmatch) : [];
  const mnmQueries = Math.min(nq, opts.mixnmatchQueries ?? DEFAULT_MIXNMATCH_QUERIES);
  const mixnmatchSubset = mnm.length > 0 && mnmQueries < nq;
  const common = mixnmatchSubset ? sampleSorted(nq, mnmQueries, mixSeed(seed, 3)) : Int32Array.from({ length: nq }, (_, i) => i);
  if (mixnmatchSubset) {
    notes.push(`Mix'n'Match lists were evaluated on a seeded subset of ${mnmQueries} of the ${nq} queries (--mixnmatch-queries); uniform granularities and baselines on all ${nq}. The plot compares every encoder on that subset.`);
  }

  const results = new Map<string, EncoderResult>();
  const refs = [...uniform, ...baselines, ...mnm];
  const describe = (ref: QueryEncoderRef): EncoderResult => {
    const w = parseSubmodel(ref.spec, ref.ckpt.config).widths;
    const flops = countFlops(ref.ckpt.config, w);
    const r: EncoderResult = {
      id: ref.id, family: ref.family, spec: ref.spec, modelId: new Encoder(ref.ckpt, ref.modelPath).modelId,
      flops, flopsRel: flops / xlFlops, params: countParams(ref.ckpt.config, w), encodeMs: null,
      all: null, common: null, onCommonFrontier: false, onFrontier: false, copies: null, own: null,
    };
    results.set(ref.id, r);
    return r;
  };
  for (const ref of refs) describe(ref);

  // ---- progress: one bar per stage (recall, then copies), counting encoded images ----------------------------------
  const editsFile = tasks.includes('copies') ? resolveEdits(opts.copies?.edits) : null;
  const nOriginals = editsFile ? Math.min(nq, opts.copies?.originals ?? editsFile.originals) : 0;
  let bar: { update(v: number, info?: Record<string, string | number>): void; log(line: string): void; stop(): void } = noProgress;
  let done = 0;
  let stage = '';
  const startBar = (total: number) => {
    bar.stop();
    done = 0;
    bar = opts.progress === false ? noProgress : new Progress(total, 0, 1, 'img');
  };
  const tick = (n: number) => bar.update((done += n), { at: stage });
  startBar(nDb + (tasks.includes('recall') ? (uniform.length + baselines.length) * nq + mnm.length * common.length : 0));

  // ---- database: XL, once ----------------------------------------------------------------------------------------
  stage = 'db XL';
  since = performance.now();
  const bulkXl = new Encoder(ckpt, modelPath, { threads });
  const dbEmb = await encodeImages(bulkXl, 'XL', db.data.pixels, c.imageSize, db.rows, { batch, onBatch: tick });
  await bulkXl.close();
  lap('encodeDatabase', since);
  since = performance.now();
  const search = await ExactSearch.create(dbEmb, nDb, c.width, { k: 10, threads });
  lap('search', since);
  const k = search.k;

  const latencyImage = singleImage(qs.data.pixels, c.imageSize, qs.rows[0]);
  /** Encodes `rows` (positions in qs.rows, or given pixels) with one encoder; also measures its latency once. */
  const withEncoder = async <T>(ref: QueryEncoderRef, fn: (enc: Encoder) => Promise<T>): Promise<T> => {
    const enc = new Encoder(ref.ckpt, ref.modelPath, { threads });
    try {
      const r = results.get(ref.id)!;
      if (r.encodeMs === null && latencyRuns > 0) {
        const s = performance.now();
        const lat = threads === 1 ? enc : new Encoder(ref.ckpt, ref.modelPath, { threads: 1 });
        await lat.info(ref.spec); // session creation is not part of the measurement
        const cpu0 = process.cpuUsage();
        const wall0 = performance.now();
        r.encodeMs = await measureLatency(lat, ref.spec, latencyImage, latencyRuns);
        const cpu = process.cpuUsage(cpu0);
        latencyClock.cpuMs += (cpu.user + cpu.system) / 1000;
        latencyClock.wallMs += performance.now() - wall0;
        if (lat !== enc) await lat.close();
        lap('latency', s);
      }
      return await fn(enc);
    } finally {
      await enc.close();
    }
  };

  // ---- recall task ------------------------------------------------------------------------------------------------
  let xlTruth: TopK | null = null;
  const topks = new Map<string, TopK>(); // uniform encoders on every query; Mix'n'Match lists on `common`
  const queryEmbeddings = new Map<string, Float32Array>(); // XL and S, for the HNSW sweep
  const allPositions = Int32Array.from({ length: nq }, (_, i) => i);
  /** Encodes the queries at `positions` (into qs.rows) with one encoder and searches the database with them. */
  const runQueries = (ref: QueryEncoderRef, positions: Int32Array) =>
    withEncoder(ref, async (enc) => {
      let s = performance.now();
      const emb = await encodeImages(enc, ref.spec, qs.data.pixels, c.imageSize, Int32Array.from(positions, (p) => qs.rows[p]), { batch, onBatch: tick });
      lap('encodeQueries', s);
      s = performance.now();
      const found = await search.search(emb, positions.length);
      lap('search', s);
      return { emb, found };
    });
  /** Metrics of results for the queries at `pos`, against exact search with the XL query. */
  const metricsOn = (t: TopK, pos: Int32Array): Metrics => {
    const labels = Int32Array.from(pos, (p) => qLabels[p]);
    const gt = pos.length === nq ? xlTruth! : selectRows(xlTruth!, pos);
    return {
      queries: pos.length,
      recall1: neighbourRecall(t, gt, 1),
      recall10: neighbourRecall(t, gt, Math.min(10, k)),
      accuracy: oneNnAccuracy(t, db.labels, labels),
      map10: meanAveragePrecision(t, db.labels, labels, Math.min(10, k), relevant),
      top1LabelAgreement: top1LabelAgreement(t, gt, db.labels),
    };
  };
  if (tasks.includes('recall')) {
    const perQuery: number[] = [];
    const order = [uniform.find((u) => u.spec === 'XL')!, ...uniform.filter((u) => u.spec !== 'XL'), ...baselines, ...mnm];
    for (const ref of order) {
      stage = ref.id;
      const positions = ref.family === 'mixnmatch' ? common : allPositions;
      const encStart = performance.now();
      const { emb, found } = await runQueries(ref, positions);
      if (ref.family === 'uniform' && (ref.spec === 'XL' || ref.spec === 'S')) queryEmbeddings.set(ref.spec, emb);
      if (ref.family === 'uniform') perQuery.push((performance.now() - encStart) / 1000 / nq);
      if (ref.family === 'uniform' && perQuery.length === uniform.length && mnm.length) {
        // The uniform encoders ran on every query: project the Mix'n'Match stage from their cost per query.
        const sec = perQuery.reduce((x, y) => x + y, 0) / perQuery.length;
        const line = `measured ${(sec * 1000).toFixed(2)} ms per query per encoder (encode + exact search over ${nDb}, mean of the uniform encoders); ` +
          `${mnm.length} Mix'n'Match lists x ${nq} queries would take about ${(mnm.length * nq * sec / 60).toFixed(1)} min, x ${common.length} queries about ${(mnm.length * common.length * sec / 60).toFixed(1)} min`;
        bar.log(line);
        notes.push(line);
      }
      if (ref.id === 'XL') xlTruth = found;
      if (ref.family !== 'baseline') topks.set(ref.id, found);
      const r = results.get(ref.id)!;
      if (ref.family === 'mixnmatch') {
        r.common = metricsOn(found, common);
        if (!mixnmatchSubset) r.all = r.common;
      } else {
        r.all = metricsOn(found, allPositions);
        r.common = mixnmatchSubset ? metricsOn(selectRows(found, common), common) : r.all;
      }
    }
  }

  // ---- frontier ---------------------------------------------------------------------------------------------------
  // First on the queries every encoder ran on. With Mix'n'Match subsampled that frontier only ranks candidates (on
  // 5,000 queries an accuracy near 0.7 has a standard error of about 0.65 points), so its Mix'n'Match lists then run
  // on the remaining queries too; the frontier that is reported and calibrated compares encoders on every query.
  const matvit = [...results.values()].filter((r) => r.family !== 'baseline' && r.common);
  for (const r of paretoFrontier(matvit, (x) => x.flops, (x) => x.common!.accuracy)) r.onCommonFrontier = true;
  if (mixnmatchSubset) {
    since = performance.now();
    const inCommon = new Set(common);
    const rest = allPositions.filter((p) => !inCommon.has(p));
    const candidates = mnm.filter((m) => results.get(m.id)!.onCommonFrontier);
    startBar(candidates.length * rest.length);
    for (const ref of candidates) {
      stage = `all queries ${ref.id}`;
      const { found } = await runQueries(ref, rest);
      const merged = mergeRows([{ topk: topks.get(ref.id)!, rows: common }, { topk: found, rows: rest }], nq);
      results.get(ref.id)!.all = metricsOn(merged, allPositions);
    }
    if (candidates.length) notes.push(`the ${candidates.length} Mix'n'Match lists on the frontier of the ${common.length}-query subset were re-measured on all ${nq} queries; the frontier and the calibration compare encoders on all ${nq}`);
    lap('frontierAllQueries', since);
  }
  const frontier = paretoFrontier(matvit.filter((r) => r.all), (r) => r.flops, (r) => r.all!.accuracy);
  for (const r of frontier) r.onFrontier = true;
  const cascade = xlTruth ? cascadeOfUniform(results, topks, db.labels, qLabels, seed) : null;

  // ---- HNSW sweep -------------------------------------------------------------------------------------------------
  let hnsw: RecallCostResult['hnsw'] = null;
  if (tasks.includes('recall') && opts.hnsw !== false && xlTruth) {
    stage = 'hnsw';
    since = performance.now();
    const params: HnswParams = { ...DEFAULT_HNSW, seed: mixSeed(seed, 5) % 100000, ...(opts.hnsw ? pick(opts.hnsw, ['M', 'efConstruction']) : {}) };
    const efs = (opts.hnsw && opts.hnsw.efs) || DEFAULT_HNSW_EFS;
    bar.log(`building HNSW over ${nDb} XL vectors (M ${params.M}, efConstruction ${params.efConstruction})`);
    const { index, seconds } = buildHnsw(dbEmb, nDb, c.width, params);
    const hq = Math.min(nq, (opts.hnsw && opts.hnsw.queries) || nq);
    const pos = hq < nq ? sampleSorted(nq, hq, mixSeed(seed, 6)) : null;
    const rows: HnswRow[] = [];
    for (const spec of ['XL', 'S']) {
      const emb = queryEmbeddings.get(spec);
      const exact = topks.get(spec);
      if (!emb || !exact) continue;
      const q = pos ? gatherRows(emb, c.width, pos) : emb;
      rows.push(...hnswSweep(index, spec, q, hq, c.width, efs, pos ? selectRows(exact, pos) : exact, pos ? selectRows(xlTruth, pos) : xlTruth, 10));
    }
    hnsw = { params, buildSeconds: seconds, dbSize: nDb, rows };
    if (pos) notes.push(`the HNSW sweep used a seeded subset of ${hq} queries`);
    lap('hnsw', since);
  }

  // ---- own task: database and queries from the same encoder --------------------------------------------------------
  // The MatViT's granularities each search a database they encoded themselves, and so does every independently
  // trained baseline: the comparison the paper makes between the two families, apart from cross-encoder search.
  if (tasks.includes('own')) {
    since = performance.now();
    const own = [...uniform, ...baselines];
    startBar(own.length * (nDb + nq));
    for (const ref of own) {
      stage = `own ${ref.id}`;
      const found = await withEncoder(ref, async (enc) => {
        const rows = (set: Subset) => encodeImages(enc, ref.spec, set.data.pixels, c.imageSize, set.rows, { batch, onBatch: tick });
        const dbOwn = ref.family === 'uniform' && ref.spec === 'XL' ? dbEmb : await rows(db);
        const ownSearch = await ExactSearch.create(dbOwn, nDb, ref.ckpt.config.width, { k: 10, threads });
        try {
          return await ownSearch.search(await rows(qs), nq);
        } finally {
          await ownSearch.release();
        }
      });
      results.get(ref.id)!.own = { accuracy: oneNnAccuracy(found, db.labels, qLabels), map10: meanAveragePrecision(found, db.labels, qLabels, Math.min(10, k), relevant) };
    }
    lap('own', since);
  }

  // ---- copies task ------------------------------------------------------------------------------------------------
  let copies: RecallCostResult['copies'] = null;
  if (editsFile) {
    stage = 'copies';
    since = performance.now();
    const frontierIds = new Set(frontier.filter((r) => r.family === 'mixnmatch').map((r) => r.id));
    const copyRefs = [...uniform, ...baselines, ...mnm.filter((m) => frontierIds.has(m.id))];
    startBar(nOriginals * editsFile.edits.length * (copyRefs.length + 1) + nOriginals);
    const copySeed = mixSeed(editsFile.seed, seed);
    const originals = sampleSorted(nq, nOriginals, mixSeed(copySeed, 4)); // positions in qs.rows
    const originalImages = Int32Array.from(originals, (p) => qs.rows[p]);
    let madeSoFar = 0;
    const made = await makeCopies(qs.data.pixels, c.imageSize, originalImages, editsFile.edits, copySeed, (n) => {
      tick(n - madeSoFar);
      madeSoFar = n;
    });
    lap('makeCopies', since);
    // Database: every database image (as distractors) plus the originals, all encoded with XL.
    const enc = new Encoder(ckpt, modelPath, { threads });
    const origEmb = await encodeImages(enc, 'XL', qs.data.pixels, c.imageSize, originalImages, { batch, onBatch: tick });
    await enc.close();
    const copyDb = new Float32Array((nDb + nOriginals) * c.width);
    copyDb.set(dbEmb);
    copyDb.set(origEmb, nDb * c.width);
    const copySearch = await ExactSearch.create(copyDb, nDb + nOriginals, c.width, { k: 10, threads });
    const target = Int32Array.from(made.original, (o) => nDb + o);
    const names = editsFile.edits.map((e) => e.name);
    const allCopies = Int32Array.from({ length: made.count }, (_, i) => i);
    for (const ref of copyRefs) {
      stage = `copies ${ref.id}`;
      const found = await withEncoder(ref, async (e) => {
        const emb = await encodeImages(e, ref.spec, made.pixels, c.imageSize, allCopies, { batch, onBatch: tick });
        return copySearch.search(emb, made.count);
      });
      results.get(ref.id)!.copies = copiesRecall(found, target, made.edit, names);
    }
    await copySearch.release();
    copies = { seed: copySeed, originals: nOriginals, copies: made.count, dbSize: nDb + nOriginals, edits: editsFile.edits };
    lap('copies', since);
  }
  await search.release();
  bar.stop();

  // ---- result -----------------------------------------------------------------------------------------------------
  timings.total = (performance.now() - t0) / 1000;
  const coreShare = latencyClock.wallMs > 0 ? latencyClock.cpuMs / latencyClock.wallMs : 1;
  if (coreShare < 0.85) {
    notes.push(`batch-1 encode times were measured with ${(100 * coreShare).toFixed(0)}% of a core (CPU time / wall time): something else was running, so they are not trustworthy`);
  } else {
    notes.push('encode and search times are wall-clock medians of this run on this machine; compare them within the run');
  }
  const ordered = [...results.values()].sort((a, b) => familyRank(a.family) - familyRank(b.family) || a.flops - b.flops || a.id.localeCompare(b.id));
  const result: RecallCostResult = {
    version: 1,
    createdAt: new Date().toISOString(),
    modelPath,
    modelId,
    seed,
    tasks,
    dataset: { db: db.source, queries: qs.source, dbSize: nDb, queryCount: nq, commonQueries: common.length, classes: db.data.classes, limit: opts.limit ?? null },
    mixnmatchSubset,
    xlFlops,
    encoders: ordered,
    frontier: frontier.map((r) => r.id),
    hnsw,
    cascade,
    copies,
    environment: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? 'unknown', node: process.version, latencyCoreShare: Number(coreShare.toFixed(3)), threads },
    timings,
    notes,
  };
  if (opts.outDir) result.files = await writeReport(result, opts.outDir);
  if (opts.writeCalibration) {
    if (frontier.length === 0) throw new Error('no frontier to calibrate with: run the recall task');
    result.calibrationFile = saveCalibration(modelPath, toCalibration(result));
  }
  return result;
}

function resolveEdits(e: string | EditsFile | undefined): EditsFile {
  return typeof e === 'object' ? e : loadEdits(e ?? DEFAULT_EDITS);
}

function gatherRows(m: Float32Array, dim: number, rows: ArrayLike<number>): Float32Array {
  const out = new Float32Array(rows.length * dim);
  for (let i = 0; i < rows.length; i++) out.set(m.subarray(rows[i] * dim, (rows[i] + 1) * dim), i * dim);
  return out;
}

function pick<T extends object, K extends keyof T>(o: T, keys: K[]): Partial<Pick<T, K>> {
  return Object.fromEntries(keys.filter((key) => o[key] !== undefined).map((key) => [key, o[key]])) as Partial<Pick<T, K>>;
}

const familyRank = (f: EncoderFamily) => ({ uniform: 0, mixnmatch: 1, baseline: 2 })[f];
