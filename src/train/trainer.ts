// `matvit train`: MatFormer training of all granularities on shared weights (or an ordinary fixed-width ViT
// baseline with the same recipe). Each step is one onnxruntime run of the step graph; AdamW runs in JS.
// Resumable: the run directory holds the latest state (weights, optimiser moments, step), written atomically
// every few minutes and at each epoch end; every random choice derives from (seed, step), so a resumed run
// ends exactly where an uninterrupted one would.
import fs from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import { DEFAULT_CONFIG, GRANULARITIES, type Granularity, type MatViTConfig, TINY_CONFIG, parseHeadCounts, parseSubmodel } from '../encoder/config.ts';
import { loadModel, saveModel } from '../encoder/checkpoint.ts';
import { isDecayed, paramShapes } from '../encoder/layout.ts';
import { initParams, toTensorMap } from '../encoder/matvit.ts';
import { initTf } from '../encoder/backend.ts';
import { CheckpointError, type TensorMap, loadSafetensors, saveSafetensors } from '../encoder/safetensors.ts';
import { loadLabelledPixels } from '../data/labelled.ts';
import { logger } from '../log.ts';
import { type AdamWSlot, adamwStep, learningRate } from './adamw.ts';
import { copyViews, makeBatch } from './augment.ts';
import { orderHeadsByImportance } from './head-order.ts';
import { COPY_EDITS, JpegRoundTrip } from './copy-edits.ts';
import { toNchw } from '../encoder/runtime.ts';
import { Progress } from '../progress.ts';
import { mixSeed, mulberry32, permutation } from './rng.ts';
import { CONSISTENCY_TERMS, type ConsistencyWeights, buildConsistencyGraph, buildEvalGraph, buildTrainGraph } from './step-graph.ts';

export const TrainOptions = z.object({
  data: z.string(), // training images: folder, .tar.gz or IDX
  out: z.string(), // run directory
  model: z.enum(['default', 'tiny']).default('default'),
  attnHeads: z.string().optional(), // nested attention heads, e.g. "S=2": the heads each granularity keeps (default: all)
  epochs: z.number().int().positive().default(30),
  batchSize: z.number().int().positive().default(128),
  lr: z.number().positive().default(1e-3),
  minLr: z.number().nonnegative().default(1e-5),
  warmupEpochs: z.number().nonnegative().default(3),
  weightDecay: z.number().nonnegative().default(0.05),
  clipNorm: z.number().nonnegative().default(1),
  labelSmoothing: z.number().min(0).max(0.5).default(0.1),
  // sample: one granularity per step (the paper); sum: all four (the official code); consistency: XL on labels
  // beside a sampled student width on a copy view, tied to XL by distillation and a cross-width InfoNCE
  objective: z.enum(['sample', 'sum', 'consistency']).default('sample'),
  // the paper's XL-weighted sampling (S/M/L/XL), its best XL at a small cost to S
  probs: z.array(z.number().nonnegative()).length(4).default([0.17, 0.2, 0.22, 0.41]),
  // consistency terms (optional so that runs started before they existed keep their identity)
  kdWeight: z.number().nonnegative().optional(),
  kdTemp: z.number().positive().optional(),
  cosWeight: z.number().nonnegative().optional(),
  nceWeight: z.number().nonnegative().optional(),
  nceTemp: z.number().positive().optional(),
  rankWeight: z.number().nonnegative().optional(),
  rankTemp: z.number().positive().optional(),
  rankBank: z.number().int().nonnegative().optional(), // XL embeddings of recent batches the ranking also runs over
  xlPull: z.number().nonnegative().optional(), // weight of XL's pull toward the student's embedding (default 0: off)
  xlPullWidths: z.array(z.enum(GRANULARITIES)).min(1).optional(), // the student widths XL is pulled toward (default L)
  studentProbs: z.array(z.number().nonnegative()).length(4).optional(), // the student width's sampling (S/M/L/XL)
  copyCropArea: z.tuple([z.number().gt(0).max(1), z.number().gt(0).max(1)]).refine(([a, b]) => a <= b, 'min above max').optional(), // the copy view's crop area range
  init: z.string().optional(), // start from this model's weights (fine-tuning) instead of a fresh initialisation
  baseline: z.enum(GRANULARITIES).optional(), // train one fixed FFN width: an independently trained ViT
  valSize: z.number().int().nonnegative().default(5000),
  limit: z.number().int().positive().optional(), // use only the first N training images (tests, quick runs)
  seed: z.number().int().default(0),
  pad: z.number().int().nonnegative().default(4),
  // not part of the run's identity: may change between resumes
  checkpointMinutes: z.number().positive().default(5),
  threads: z.number().int().positive().default(2),
  maxSteps: z.number().int().positive().optional(), // stop (with a checkpoint) after this global step
  logEvery: z.number().int().positive().default(20), // steps between metrics.jsonl lines
}).superRefine((o, ctx) => {
  // Options that would do nothing are refused rather than silently entering the run's identity.
  const flags = { kdWeight: '--kd-weight', kdTemp: '--kd-temp', cosWeight: '--cos-weight', nceWeight: '--nce-weight', nceTemp: '--nce-temp', rankWeight: '--rank-weight', rankTemp: '--rank-temp', rankBank: '--rank-bank', xlPull: '--xl-pull', xlPullWidths: '--xl-pull-widths', studentProbs: '--student-probs', copyCropArea: '--copy-crop-area' } as const;
  const given = Object.entries(flags).filter(([k]) => o[k as keyof typeof flags] !== undefined).map(([, f]) => f);
  if (o.objective !== 'consistency' && given.length) ctx.addIssue({ code: 'custom', path: ['objective'], message: `${given.join(', ')} only apply to --objective consistency` });
  if (o.rankBank && !o.rankWeight) ctx.addIssue({ code: 'custom', path: ['rankBank'], message: '--rank-bank only applies with a --rank-weight above 0' });
  if (o.xlPullWidths && !o.xlPull) ctx.addIssue({ code: 'custom', path: ['xlPullWidths'], message: '--xl-pull-widths only applies with an --xl-pull above 0' });
  if (o.objective === 'consistency' && o.baseline) ctx.addIssue({ code: 'custom', path: ['baseline'], message: 'a baseline trains one width: it cannot be combined with --objective consistency' });
});
export type TrainOptions = z.infer<typeof TrainOptions>;
// --init only seeds step 0 (the weights it named are recorded in the model's metadata): a moved file must not block a resume.
const VOLATILE: (keyof TrainOptions)[] = ['checkpointMinutes', 'threads', 'maxSteps', 'logEvery', 'out', 'data', 'init'];

/** The consistency objective's settings, defaults filled in (recorded in the model's metadata and the model card). */
export function consistencySettings(o: TrainOptions): ConsistencyWeights & { pullWidths: Granularity[]; studentProbs: number[]; copyCropArea: readonly [number, number] } {
  return { kd: o.kdWeight ?? 1, kdTemp: o.kdTemp ?? 2, cos: o.cosWeight ?? 1, nce: o.nceWeight ?? 1, nceTemp: o.nceTemp ?? 0.1, rank: o.rankWeight ?? 0, rankTemp: o.rankTemp ?? 0.05, rankBank: o.rankBank ?? 0, pull: o.xlPull ?? 0, pullWidths: o.xlPullWidths ?? ['L'], studentProbs: o.studentProbs ?? [0.35, 0.2, 0.2, 0.25], copyCropArea: o.copyCropArea ?? COPY_EDITS.crop.area };
}

export const STATE_FILE = 'train-state.safetensors';
export const MODEL_FILE = 'model.safetensors';
export const METRICS_FILE = 'metrics.jsonl';

interface RunState {
  step: number;
  elapsedSec: number;
  params: TensorMap;
  m: TensorMap;
  v: TensorMap;
  val: Record<string, number>;
  bank?: RankBank;
}

/** A ring of XL embeddings from recent steps (--rank-bank), part of the state so that a resumed run matches. */
interface RankBank {
  z: Float32Array; // [size, D]
  pushed: number; // embeddings written since the start; slot (pushed % size) is the next one written
}

function modelConfig(o: TrainOptions): MatViTConfig {
  const base = o.model === 'tiny' ? TINY_CONFIG : DEFAULT_CONFIG;
  return o.attnHeads ? { ...base, attnHeads: parseHeadCounts(o.attnHeads, base) } : base;
}

/** The options that make a run what it is (a state saved before a key became volatile still matches). */
function identity(o: Record<string, unknown>): string {
  return JSON.stringify(Object.fromEntries(Object.entries(o).filter(([k]) => !VOLATILE.includes(k as keyof TrainOptions))));
}

function freshState(c: MatViTConfig, o: TrainOptions): RunState {
  const params = o.init ? initialWeights(o.init, c) : toTensorMap(initParams(c, o.seed));
  const zeros = () => Object.fromEntries(Object.entries(params).map(([k, t]) => [k, { shape: t.shape, data: new Float32Array(t.data.length) }]));
  const bank = o.rankBank ? { z: new Float32Array(o.rankBank * c.width), pushed: 0 } : undefined;
  return { step: 0, elapsedSec: 0, params, m: zeros(), v: zeros(), val: {}, bank };
}

/**
 * Weights to fine-tune from: a trained MatViT of the same configuration, with its classification head. Its heads
 * may be nested differently (the weights' layout is the same); one trained with whole heads has each layer's heads
 * sorted by importance first, so that nesting keeps the heads that matter most.
 */
function initialWeights(file: string, c: MatViTConfig): TensorMap {
  const ckpt = loadModel(file, { requireHead: true });
  const { attnHeads: initHeads, ...initShape } = ckpt.config;
  const { attnHeads, ...runShape } = c;
  if (JSON.stringify(initShape) !== JSON.stringify(runShape)) throw new CheckpointError(`--init ${file} has another model configuration than this run's`);
  if (!attnHeads || initHeads) return ckpt.params;
  const { params, order } = orderHeadsByImportance(ckpt.params, c);
  logger.info({ order }, 'heads of --init sorted by importance for nesting (each layer\'s old head indices, most important first)');
  return params;
}

function loadState(file: string, o: TrainOptions): RunState {
  const ckpt = loadModel(file, { requireHead: true });
  const saved = identity(JSON.parse(ckpt.metadata['train.options'] ?? '{}'));
  if (saved !== identity(o)) {
    const a = JSON.parse(saved);
    const b = JSON.parse(identity(o));
    const diff = Object.keys({ ...a, ...b }).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
    throw new CheckpointError(`${file} belongs to a run with different options (${diff.join(', ')}); use another --out or delete it to start over`);
  }
  const { tensors } = loadSafetensors(file); // the optimiser moments sit beside the weights
  const moments = (kind: string) =>
    Object.fromEntries(Object.keys(ckpt.params).map((k) => {
      const t = tensors[`adam.${kind}.${k}`];
      if (!t) throw new CheckpointError(`${file}: optimiser state adam.${kind}.${k} is missing`);
      return [k, t];
    }));
  let bank: RankBank | undefined;
  if (o.rankBank) {
    if (!tensors['rank.bank']) throw new CheckpointError(`${file}: the ranking bank rank.bank is missing`);
    bank = { z: tensors['rank.bank'].data, pushed: Number(ckpt.metadata['train.rank_bank_pushed']) };
  }
  return { step: Number(ckpt.metadata['train.step']), elapsedSec: Number(ckpt.metadata['train.elapsed_sec']), params: ckpt.params, m: moments('m'), v: moments('v'), val: JSON.parse(ckpt.metadata['train.val'] ?? '{}'), bank };
}

function saveState(dir: string, o: TrainOptions, c: MatViTConfig, s: RunState): void {
  const tensors: TensorMap = { ...s.params };
  for (const [k, t] of Object.entries(s.m)) tensors[`adam.m.${k}`] = t;
  for (const [k, t] of Object.entries(s.v)) tensors[`adam.v.${k}`] = t;
  if (s.bank) tensors['rank.bank'] = { shape: [s.bank.z.length / c.width, c.width], data: s.bank.z };
  saveSafetensors(path.join(dir, STATE_FILE), tensors, {
    format: 'matvit/1',
    config: JSON.stringify(c),
    'train.step': String(s.step),
    'train.elapsed_sec': s.elapsedSec.toFixed(1),
    'train.options': identity(o),
    'train.val': JSON.stringify(s.val),
    ...(s.bank ? { 'train.rank_bank_pushed': String(s.bank.pushed) } : {}),
  });
}

/** Trained granularities of a run: all four for MatViT, one for a baseline. */
export function trainedGranularities(o: Pick<TrainOptions, 'baseline'>): Granularity[] {
  return o.baseline ? [o.baseline] : [...GRANULARITIES];
}

function exportModel(dir: string, o: TrainOptions, c: MatViTConfig, s: RunState, epoch: number): void {
  saveModel(path.join(dir, MODEL_FILE), c, s.params, {
    'trained_granularities': trainedGranularities(o).join(','),
    'train.step': String(s.step),
    'train.epoch': String(epoch),
    'train.val_top1': JSON.stringify(s.val),
    'train.objective': JSON.stringify(o.objective === 'consistency' ? { objective: 'consistency', ...consistencySettings(o), init: o.init } : { objective: o.objective }),
  });
}

function smoothedTargets(labels: ArrayLike<number>, classes: number, eps: number): Float32Array {
  const t = new Float32Array(labels.length * classes).fill(eps / classes);
  for (let i = 0; i < labels.length; i++) t[i * classes + labels[i]] += 1 - eps;
  return t;
}

function sessionOptions(threads: number): ort.InferenceSession.SessionOptions {
  return { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential' };
}

function paramFeeds(names: string[], params: TensorMap): Record<string, ort.Tensor> {
  return Object.fromEntries(names.map((n) => [n, new ort.Tensor('float32', params[n].data, params[n].shape)]));
}

export interface Validation {
  top1: Record<string, number>; // top-1 accuracy of each submodel
  cosToXl: Record<string, number>; // mean cosine of each submodel's embedding to XL's, same images (with XL among the specs)
}

/** Top-1 accuracy of each submodel on a labelled set (no augmentation), and how close its embeddings are to XL's. */
export async function evaluateSubmodels(c: MatViTConfig, params: TensorMap, pixels: Uint8Array, labels: Int32Array, indices: Int32Array, specs: string[], threads: number): Promise<Validation> {
  const g = buildEvalGraph(c, specs.map((s) => parseSubmodel(s, c)));
  const sess = await ort.InferenceSession.create(g.onnx, sessionOptions(threads));
  const feeds = paramFeeds(g.paramNames, params);
  const correct = new Array(specs.length).fill(0);
  const cosSum = new Array(specs.length).fill(0);
  const xl = specs.indexOf('XL');
  const D = c.width;
  const B = 250;
  for (let i = 0; i < indices.length; i += B) {
    const idx = indices.subarray(i, i + B);
    const out = await sess.run({ ...feeds, pixels: new ort.Tensor('float32', makeBatch(pixels, c.imageSize, idx, Math.random), [idx.length, 3, c.imageSize, c.imageSize]) });
    const ref = xl >= 0 ? (out[`features_${xl}`].data as Float32Array) : undefined;
    specs.forEach((_, k) => {
      const logits = out[`logits_${k}`].data as Float32Array;
      const feats = out[`features_${k}`].data as Float32Array;
      for (let b = 0; b < idx.length; b++) {
        let best = 0;
        for (let j = 1; j < c.numClasses; j++) if (logits[b * c.numClasses + j] > logits[b * c.numClasses + best]) best = j;
        if (best === labels[idx[b]]) correct[k]++;
        if (ref) cosSum[k] += cosine(feats.subarray(b * D, (b + 1) * D), ref.subarray(b * D, (b + 1) * D));
      }
    });
  }
  await sess.release();
  const n = Math.max(1, indices.length);
  return {
    top1: Object.fromEntries(specs.map((s, k) => [s, correct[k] / n])),
    cosToXl: xl >= 0 ? Object.fromEntries(specs.map((s, k) => [s, cosSum[k] / n])) : {},
  };
}

/** Top-1 accuracy of each submodel on a labelled set (no augmentation). */
export async function evaluateTop1(...args: Parameters<typeof evaluateSubmodels>): Promise<Record<string, number>> {
  return (await evaluateSubmodels(...args)).top1;
}

function cosine(a: Float32Array, b: Float32Array): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb + 1e-24);
}

export interface TrainResult {
  step: number;
  totalSteps: number;
  finished: boolean;
  val: Record<string, number>;
}

export async function train(options: TrainOptions): Promise<TrainResult> {
  const o = TrainOptions.parse(options);
  const c = modelConfig(o);
  fs.mkdirSync(o.out, { recursive: true });
  const stateFile = path.join(o.out, STATE_FILE);
  const metricsFile = path.join(o.out, METRICS_FILE);

  const data = await loadLabelledPixels(o.data, c.imageSize, { limit: o.limit });
  if (data.classes.length > c.numClasses) throw new Error(`${o.data} has ${data.classes.length} classes; the model head has ${c.numClasses}`);
  const n = data.labels.length;
  const valSize = Math.min(o.valSize, Math.floor(n / 5));
  const split = permutation(n, mulberry32(mixSeed(o.seed, 0xda7a)));
  const valIdx = split.subarray(0, valSize);
  const trainIdx = split.subarray(valSize);
  const stepsPerEpoch = Math.floor(trainIdx.length / o.batchSize);
  if (stepsPerEpoch === 0) throw new Error(`only ${trainIdx.length} training images: fewer than one batch of ${o.batchSize}`);
  const totalSteps = o.epochs * stepsPerEpoch;
  const warmupSteps = Math.round(o.warmupEpochs * stepsPerEpoch);

  await initTf(); // for the initial weights (the tfjs model's own initialiser)
  const s = fs.existsSync(stateFile) ? loadState(stateFile, o) : freshState(c, o);
  if (s.step > 0) logger.info({ step: s.step, totalSteps, out: o.out }, 'resuming from checkpoint');
  truncateMetrics(metricsFile, s.step);
  fs.writeFileSync(path.join(o.out, 'command.txt'), `matvit train ${process.argv.slice(3).join(' ')}\n`);

  const names = paramShapes(c, true).map(([name]) => name);
  const shapes = Object.fromEntries(paramShapes(c, true));
  const slots: AdamWSlot[] = names.map((k) => ({ param: s.params[k].data, m: s.m[k].data, v: s.v[k].data, decay: isDecayed(k, shapes[k]) }));
  const granularities = trainedGranularities(o);
  const sessions = new Map<string, Promise<ort.InferenceSession>>();
  const consistency = o.objective === 'consistency' ? consistencySettings(o) : undefined;
  // A step graph per granularity list (sample, sum) or per student width (consistency: XL + the student).
  const session = (specs: string[]) => {
    const key = specs.join('+');
    const build = () =>
      consistency
        ? buildConsistencyGraph(c, o.batchSize, parseSubmodel(specs[1], c), { ...consistency, pull: consistency.pullWidths.includes(specs[1] as Granularity) ? consistency.pull : 0 })
        : buildTrainGraph(c, o.batchSize, specs.map((sp) => parseSubmodel(sp, c)));
    if (!sessions.has(key)) sessions.set(key, ort.InferenceSession.create(build().onnx, sessionOptions(o.threads)));
    return sessions.get(key)!;
  };
  const draw = (probs: number[], rand: () => number): Granularity => {
    let r = rand() * probs.reduce((a, b) => a + b, 0);
    for (let i = 0; i < 4; i++) if ((r -= probs[i]) < 0) return GRANULARITIES[i];
    return 'XL';
  };
  const pickSpecs = (rand: () => number): string[] => {
    if (o.baseline) return [o.baseline];
    if (o.objective === 'sum') return [...GRANULARITIES];
    if (consistency) return ['XL', draw(consistency.studentProbs, rand)];
    return [draw(o.probs, rand)];
  };
  const jpeg = new JpegRoundTrip();
  const shape = [o.batchSize, 3, c.imageSize, c.imageSize];
  /** The step's image inputs: one light view, and with consistency the copy view (`pixels_b`) beside it. */
  const pixelFeeds = async (idx: Int32Array, rand: () => number): Promise<Record<string, ort.Tensor>> => {
    const feeds = { pixels: new ort.Tensor('float32', makeBatch(data.pixels, c.imageSize, idx, rand, { pad: o.pad, flip: true }), shape) };
    if (!consistency) return feeds;
    const second = await copyViews(data.pixels, c.imageSize, idx, rand, jpeg, { cropArea: consistency.copyCropArea });
    return { ...feeds, pixels_b: new ort.Tensor('float32', toNchw(second, c.imageSize), shape) };
  };

  let stopSignal: string | undefined;
  const onSignal = (sig: string) => () => {
    stopSignal = sig;
  };
  const sigint = onSignal('SIGINT');
  const sigterm = onSignal('SIGTERM');
  process.on('SIGINT', sigint).on('SIGTERM', sigterm);

  const progress = new Progress(totalSteps, s.step, o.batchSize);
  const metrics = fs.openSync(metricsFile, 'a');
  let lastCkpt = Date.now();
  let t0 = Date.now();
  let epochPerm: { epoch: number; perm: Int32Array } | undefined;
  const endStep = Math.min(totalSteps, o.maxSteps ?? totalSteps);
  try {
    while (s.step < endStep && !stopSignal) {
      const epoch = Math.floor(s.step / stepsPerEpoch);
      if (epochPerm?.epoch !== epoch) epochPerm = { epoch, perm: permutation(trainIdx.length, mulberry32(mixSeed(o.seed, epoch, 1))) };
      const rand = mulberry32(mixSeed(o.seed, s.step, 2));
      const specs = pickSpecs(rand);
      const at = (s.step % stepsPerEpoch) * o.batchSize;
      const idx = Int32Array.from(epochPerm.perm.subarray(at, at + o.batchSize), (j) => trainIdx[j]);
      const labels = Int32Array.from(idx, (j) => data.labels[j]);
      const feeds = {
        ...paramFeeds(names, s.params),
        ...(await pixelFeeds(idx, rand)),
        targets: new ort.Tensor('float32', smoothedTargets(labels, c.numClasses, o.labelSmoothing), [o.batchSize, c.numClasses]),
        ...(s.bank ? bankFeeds(s.bank, o.batchSize, c.width) : {}),
      };
      const out = await (await session(specs)).run(feeds);
      if (s.bank) pushToBank(s.bank, out['embedding_xl'].data as Float32Array, c.width);
      const loss = (out.loss.data as Float32Array)[0] / (consistency ? 1 : specs.length);
      const terms = consistency ? Object.fromEntries(CONSISTENCY_TERMS.map((t) => [t, +(out[`loss.${t}`].data as Float32Array)[0].toFixed(5)])) : undefined;
      if (!Number.isFinite(loss)) throw new Error(`loss is ${loss} at step ${s.step}: stopping without saving this step`);
      const lr = learningRate(s.step, totalSteps, warmupSteps, o.lr, o.minLr);
      const gradNorm = adamwStep(slots, names.map((k) => out[`grad.${k}`].data as Float32Array), s.step + 1, lr, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: o.weightDecay, clipNorm: o.clipNorm });
      const acc = trainAccuracy(out['logits_0'].data as Float32Array, labels, c.numClasses);
      s.step++;
      const now = Date.now();
      s.elapsedSec += (now - t0) / 1000;
      t0 = now;
      progress.update(s.step, { loss, lr, spec: specs.join('+') });
      if (s.step % o.logEvery === 0) fs.writeSync(metrics, JSON.stringify({ type: 'step', step: s.step, epoch: s.step / stepsPerEpoch, loss, acc, lr, gradNorm, ffn: specs.join('+'), terms, elapsedSec: +s.elapsedSec.toFixed(1) }) + '\n');
      const epochDone = s.step % stepsPerEpoch === 0;
      if (epochDone) {
        const specsToEval = o.baseline ? [o.baseline] : s.step === totalSteps ? [...granularities] : ['S', 'XL'];
        const { top1: val, cosToXl } = await evaluateSubmodels(c, s.params, data.pixels, data.labels, valIdx, specsToEval, o.threads);
        s.val = { ...s.val, ...val };
        fs.writeSync(metrics, JSON.stringify({ type: 'eval', step: s.step, epoch: s.step / stepsPerEpoch, val, cosToXl, elapsedSec: +s.elapsedSec.toFixed(1) }) + '\n');
        progress.log(`epoch ${s.step / stepsPerEpoch}/${o.epochs}: val top-1 ${Object.entries(val).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(', ')}`);
        exportModel(o.out, o, c, s, s.step / stepsPerEpoch);
      }
      if (epochDone || Date.now() - lastCkpt > o.checkpointMinutes * 60_000) {
        saveState(o.out, o, c, s);
        lastCkpt = Date.now();
      }
    }
    if (s.step > 0) saveState(o.out, o, c, s);
  } finally {
    progress.stop();
    fs.closeSync(metrics);
    process.off('SIGINT', sigint).off('SIGTERM', sigterm);
    for (const p of sessions.values()) await (await p).release();
  }
  if (stopSignal) logger.warn({ step: s.step, signal: stopSignal }, 'stopped by signal; checkpoint saved, rerun the same command to resume');
  return { step: s.step, totalSteps, finished: s.step >= totalSteps, val: s.val };
}

/** The bank and its mask: a slot not yet written scores -1e4, so it takes no part in either ranking. */
function bankFeeds(bank: RankBank, batch: number, D: number): Record<string, ort.Tensor> {
  const size = bank.z.length / D;
  const bias = new Float32Array(batch * size);
  for (let slot = Math.min(bank.pushed, size); slot < size; slot++) for (let b = 0; b < batch; b++) bias[b * size + slot] = -1e4;
  return { rank_bank: new ort.Tensor('float32', bank.z, [size, D]), rank_bank_bias: new ort.Tensor('float32', bias, [batch, size]) };
}

/** Writes this step's XL embeddings over the oldest slots. */
function pushToBank(bank: RankBank, embeddings: Float32Array, D: number): void {
  const size = bank.z.length / D;
  for (let b = 0; b < embeddings.length / D; b++, bank.pushed++) bank.z.set(embeddings.subarray(b * D, (b + 1) * D), (bank.pushed % size) * D);
}

function trainAccuracy(logits: Float32Array, labels: Int32Array, classes: number): number {
  let ok = 0;
  for (let b = 0; b < labels.length; b++) {
    let best = 0;
    for (let j = 1; j < classes; j++) if (logits[b * classes + j] > logits[b * classes + best]) best = j;
    if (best === labels[b]) ok++;
  }
  return ok / labels.length;
}

/** Drops metric lines written after the checkpoint we resume from, so the log matches the state. */
function truncateMetrics(file: string, step: number): void {
  if (!fs.existsSync(file)) return;
  const kept = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l && JSON.parse(l).step <= step);
  fs.writeFileSync(file, kept.map((l) => l + '\n').join(''));
}
