// The shared context every evaluation task works over. An EvalRun holds what all models share: the options, the
// database and query images, progress, timings and notes. A ModelContext holds one MatViT's side: its query encoders,
// the database encoded once with its XL, exact search over it, XL's own results (the ground truth of neighbour
// recall) and the results each task fills in.
import path from 'node:path';
import { adapterFor, adaptersPath } from '../encoder/adapters.ts';
import { type ModelCheckpoint, loadModel } from '../encoder/checkpoint.ts';
import { countFlops, countParams, parseSubmodel } from '../encoder/config.ts';
import { Encoder } from '../encoder/runtime.ts';
import { type LabelledPixels, loadLabelledPixels } from '../data/labelled.ts';
import { ExactSearch, type TopK, recallAtK, selectRows } from '../index/exact-search.ts';
import { logger } from '../log.ts';
import { Progress } from '../progress.ts';
import { mixSeed, mulberry32, permutation } from '../train/rng.ts';
import { type QueryEncoderRef, baselineGranularity, findBaselines, mixnmatchEncoders, uniformEncoders } from './encoders.ts';
import type { CascadeEvaluation } from './cascade.ts';
import { encodeImages, measureLatency, singleImage } from './encoding.ts';
import { meanAveragePrecision, oneNnAccuracy, top1LabelAgreement } from './metrics.ts';
import type { EncoderResult, HnswReport, Metrics, RegionCopiesReport, Task } from './result.ts';

export interface Subset {
  data: LabelledPixels;
  rows: Int32Array; // image indices into data
  labels: Int32Array;
  source: string;
}

/** Loads a source (or takes loaded pixels) and keeps a seeded sample of `limit` images when asked. */
export async function loadSubset(src: string | LabelledPixels, size: number, limit: number | undefined, seed: number, cacheDir?: string): Promise<Subset> {
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

/** One progress bar per stage, counting encoded images; silent (log lines only) when progress is off. */
export class StageProgress {
  private bar: { update(v: number, info?: Record<string, string | number>): void; log(line: string): void; stop(): void } | null = null;
  private done = 0;
  stage = '';
  constructor(private enabled: boolean) {}

  start(total: number, stage = this.stage): void {
    this.stop();
    this.done = 0;
    this.stage = stage;
    if (this.enabled) this.bar = new Progress(total, 0, 1, 'img');
  }
  tick = (n: number): void => this.bar?.update((this.done += n), { at: this.stage });
  log(line: string): void {
    if (this.bar) this.bar.log(line);
    else logger.info(line);
  }
  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}

export interface RunSettings {
  seed: number;
  tasks: Task[];
  threads: number; // onnxruntime threads for bulk encoding and exact search (latency always uses 1)
  batch: number;
  latencyRuns: number; // batch-1 runs per encoder for the median encode time (0: skip)
  baselines?: string[];
  mixnmatch?: string[];
  mixnmatchQueries: number;
}

export interface EvalRun {
  settings: RunSettings;
  db: Subset;
  qs: Subset;
  qLabels: Int32Array; // query labels as database class indices (-1: a class the database does not have)
  relevant: Map<number, number>; // database images per class (mAP)
  progress: StageProgress;
  notes: string[];
  timings: Record<string, number>; // seconds
  latencyClock: { cpuMs: number; wallMs: number }; // CPU and wall time of the batch-1 latency runs
}

/** Adds the seconds since `since` to timings[name]. */
export function lap(run: EvalRun, name: string, since: number): void {
  run.timings[name] = (run.timings[name] ?? 0) + (performance.now() - since) / 1000;
}

export interface ModelContext {
  run: EvalRun;
  label: string;
  modelPath: string;
  ckpt: ModelCheckpoint;
  modelId: string;
  xlFlops: number;
  uniform: QueryEncoderRef[];
  baselines: QueryEncoderRef[];
  mnm: QueryEncoderRef[]; // Mix'n'Match lists (only with the recall task)
  results: Map<string, EncoderResult>;
  dbEmb: Float32Array; // the database encoded with XL, one row per db.rows entry
  search: ExactSearch; // exact top 10 over dbEmb
  /** Query positions (into qs.rows) every encoder runs on: a seeded subset when Mix'n'Match is subsampled. */
  common: Int32Array;
  mixnmatchSubset: boolean;
  xlTruth: TopK | null; // exact results of the XL queries: the ground truth of neighbour recall
  topks: Map<string, TopK>; // recall task: uniform encoders on every query, Mix'n'Match lists on `common`
  queryEmbeddings: Map<string, Float32Array>; // the uniform widths' query embeddings, for the HNSW sweep
  frontier: EncoderResult[];
  cascade: CascadeEvaluation | null; // the `auto` query's cascade over the uniform encoders (recall task)
  regionCopies: RegionCopiesReport | null; // the copies task with region vectors (task-copies.ts)
  hnsw: HnswReport | null;
  note(line: string): void; // a note of the report, naming the model when the run compares two
}

/** The folder name of a model file: how the report names a model. */
export const modelLabel = (modelPath: string) => path.basename(path.dirname(path.resolve(modelPath)));

/**
 * Loads a MatViT, finds its query encoders, and encodes the database once with its XL. Baselines are those given in
 * the settings, or else those found beside `baselinesBeside` (the evaluated model's folder, also for a compared one).
 */
export async function openModel(run: EvalRun, modelPath: string, label: string, opts: { baselinesBeside?: string; nameInNotes?: boolean } = {}): Promise<ModelContext> {
  const s = run.settings;
  const ckpt = loadModel(modelPath);
  if (baselineGranularity(ckpt)) throw new Error(`${modelPath} is a baseline (trained only at ${ckpt.metadata.trained_granularities}); evaluate the MatViT and name baselines with --baselines`);
  const c = ckpt.config;
  if (c.imageSize !== run.db.data.size) throw new Error(`${modelPath} takes ${c.imageSize}x${c.imageSize} images; the evaluation data is ${run.db.data.size}x${run.db.data.size}`);
  const xlFlops = countFlops(c, parseSubmodel('XL', c));

  const uniform = uniformEncoders(modelPath, ckpt);
  const { encoders: baselines, notes: baselineNotes } = findBaselines(opts.baselinesBeside ?? modelPath, c, s.baselines);
  const note = (n: string) => run.notes.includes(n) || run.notes.push(n);
  baselineNotes.forEach(note);
  if (baselines.length === 0) note('no independently trained baselines found (models/baseline-*/model.safetensors); none evaluated');
  const adapted = Object.keys(ckpt.adapters ?? {}).filter((spec) => adapterFor(ckpt.adapters, spec)); // the ones a query runs with
  if (adapted.length > 0) {
    note(`${opts.nameInNotes ? `${label}: ` : ''}query adapters (\`matvit adapt\`, ${path.basename(adaptersPath(modelPath))}) map ${adapted.map((a) => `\`${a}\``).join(', ')} toward XL; every other query encoder runs bare`);
  }
  const mnm = s.tasks.includes('recall') ? mixnmatchEncoders(modelPath, ckpt, s.mixnmatch) : [];
  const nq = run.qs.rows.length;
  const mnmQueries = Math.min(nq, s.mixnmatchQueries);
  const mixnmatchSubset = mnm.length > 0 && mnmQueries < nq;
  const common = mixnmatchSubset ? sampleSorted(nq, mnmQueries, mixSeed(s.seed, 3)) : Int32Array.from({ length: nq }, (_, i) => i);
  if (mixnmatchSubset) {
    note(`Mix'n'Match lists were evaluated on a seeded subset of ${mnmQueries} of the ${nq} queries (--mixnmatch-queries); uniform granularities and baselines on all ${nq}. The plot compares every encoder on that subset.`);
  }

  const results = new Map<string, EncoderResult>();
  for (const ref of [...uniform, ...baselines, ...mnm]) {
    const sub = parseSubmodel(ref.spec, ref.ckpt.config);
    const flops = countFlops(ref.ckpt.config, sub);
    results.set(ref.id, {
      id: ref.id, family: ref.family, spec: ref.spec, modelId: new Encoder(ref.ckpt, ref.modelPath).modelId,
      flops, flopsRel: flops / xlFlops, params: countParams(ref.ckpt.config, sub), encodeMs: null,
      all: null, common: null, onCommonFrontier: false, onFrontier: false, self: null, copies: null, own: null,
    });
  }

  const since = performance.now();
  run.progress.start(run.db.rows.length, `db XL (${label})`);
  const bulkXl = new Encoder(ckpt, modelPath, { threads: s.threads });
  const dbEmb = await encodeImages(bulkXl, 'XL', run.db.data.pixels, c.imageSize, run.db.rows, { batch: s.batch, onBatch: run.progress.tick }).finally(() => bulkXl.close());
  lap(run, 'encodeDatabase', since);
  const searchStart = performance.now();
  const search = await ExactSearch.create(dbEmb, run.db.rows.length, c.width, { k: 10, threads: s.threads });
  lap(run, 'search', searchStart);
  return {
    run, label, modelPath, ckpt, modelId: new Encoder(ckpt, modelPath).modelId, xlFlops, uniform, baselines, mnm, results, dbEmb, search,
    common, mixnmatchSubset, xlTruth: null, topks: new Map(), queryEmbeddings: new Map(), frontier: [], cascade: null, regionCopies: null, hnsw: null,
    note: (line) => run.notes.push(opts.nameInNotes ? `${label}: ${line}` : line),
  };
}

/** Runs fn with a bulk encoder for `ref`; measures the encoder's batch-1 latency the first time it is used. */
export async function withEncoder<T>(ctx: ModelContext, ref: QueryEncoderRef, fn: (enc: Encoder) => Promise<T>): Promise<T> {
  const { run } = ctx;
  const s = run.settings;
  const enc = new Encoder(ref.ckpt, ref.modelPath, { threads: s.threads });
  try {
    const r = ctx.results.get(ref.id)!;
    if (r.encodeMs === null && s.latencyRuns > 0) {
      // Batch-1 latency runs on one thread on this thread: the process should get a whole core meanwhile. The share
      // it got (CPU time / wall time over every latency measurement) says whether something else competed for the cores.
      const since = performance.now();
      const lat = s.threads === 1 ? enc : new Encoder(ref.ckpt, ref.modelPath, { threads: 1 });
      await lat.info(ref.spec); // session creation is not part of the measurement
      const cpu0 = process.cpuUsage();
      const wall0 = performance.now();
      const image = singleImage(run.qs.data.pixels, run.qs.data.size, run.qs.rows[0]);
      r.encodeMs = await measureLatency(lat, ref.spec, image, s.latencyRuns).finally(() => (lat !== enc ? lat.close() : undefined));
      const cpu = process.cpuUsage(cpu0);
      run.latencyClock.cpuMs += (cpu.user + cpu.system) / 1000;
      run.latencyClock.wallMs += performance.now() - wall0;
      lap(run, 'latency', since);
    }
    return await fn(enc);
  } finally {
    await enc.close();
  }
}

/** Encodes images `rows` of `pixels` with `ref` and searches the model's XL database with them. */
export async function encodeAndSearch(ctx: ModelContext, ref: QueryEncoderRef, pixels: Uint8Array, rows: ArrayLike<number>, search = ctx.search): Promise<{ emb: Float32Array; found: TopK }> {
  const { run } = ctx;
  return withEncoder(ctx, ref, async (enc) => {
    let since = performance.now();
    const emb = await encodeImages(enc, ref.spec, pixels, run.db.data.size, rows, { batch: run.settings.batch, onBatch: run.progress.tick });
    lap(run, 'encodeQueries', since);
    since = performance.now();
    const found = await search.search(emb, rows.length);
    lap(run, 'search', since);
    return { emb, found };
  });
}

/** Encodes the queries at `positions` (into qs.rows) with `ref` and searches the XL database with them. */
export const runQueries = (ctx: ModelContext, ref: QueryEncoderRef, positions: Int32Array) =>
  encodeAndSearch(ctx, ref, ctx.run.qs.data.pixels, Int32Array.from(positions, (p) => ctx.run.qs.rows[p]));

/** Metrics of results for the queries at `pos`, against exact search with the XL query. */
export function metricsOn(ctx: ModelContext, t: TopK, pos: Int32Array): Metrics {
  const { run } = ctx;
  const k = ctx.search.k;
  const labels = Int32Array.from(pos, (p) => run.qLabels[p]);
  const gt = pos.length === run.qs.rows.length ? ctx.xlTruth! : selectRows(ctx.xlTruth!, pos);
  return {
    queries: pos.length,
    recall1: recallAtK(t, gt, 1),
    recall10: recallAtK(t, gt, Math.min(10, k)),
    accuracy: oneNnAccuracy(t, run.db.labels, labels),
    map10: meanAveragePrecision(t, run.db.labels, labels, Math.min(10, k), run.relevant),
    top1LabelAgreement: top1LabelAgreement(t, gt, run.db.labels),
  };
}
