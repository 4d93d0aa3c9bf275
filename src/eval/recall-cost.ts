// Recall-vs-cost evaluation (issue 6): the database is encoded once with the full XL model; every query encoder
// (uniform S/M/L/XL, the monotone Mix'n'Match lists, independently trained baselines) encodes the queries, which
// are searched exactly against it. Each task is one function over a shared context (src/eval/context.ts): recall
// (neighbour recall@1/@10 against exact search with the XL query, 1-NN label accuracy, mAP@10, top-1 label agreement
// with XL, the Pareto frontier, an HNSW ef sweep at XL and S), self (stored images find their own XL entry), copies
// (the near-duplicate task) and, on request, own (same-encoder search). With `compare`, a second MatViT runs every
// task on the same data and both land in one report. The evaluated model's frontier and its cascade become its
// calibration file, from which src/encoder/budget.ts (budgets) and src/encoder/policy.ts (auto) choose the encoder.
import os from 'node:os';
import path from 'node:path';
import { saveCalibration } from '../encoder/budget.ts';
import { DEFAULT_MODEL_PATH, loadModel } from '../encoder/checkpoint.ts';
import type { LabelledPixels } from '../data/labelled.ts';
import { mixSeed } from '../train/rng.ts';
import { toCalibration } from './calibration.ts';
import { type EvalRun, type ModelContext, StageProgress, loadSubset, modelLabel, openModel } from './context.ts';
import { type EditsFile, loadEdits } from './copies.ts';
import type { EncoderFamily } from './encoders.ts';
import { labelCounts } from './metrics.ts';
import { writeReport } from './report.ts';
import { DEFAULT_TASKS, type ModelReport, type RecallCostResult, type Task } from './result.ts';
import { type CopySet, copiesTask, describeCopies, makeCopySet } from './task-copies.ts';
import { type HnswSweepOptions, hnswTask } from './task-hnsw.ts';
import { ownTask } from './task-own.ts';
import { recallTask } from './task-recall.ts';
import { DEFAULT_SELF_QUERIES, selfTask } from './task-self.ts';

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

export interface RecallCostOptions {
  modelPath?: string; // the MatViT (default: the shipped model)
  compare?: string; // a second MatViT measured the same way in the same run (e.g. a new version of the model)
  db?: string | LabelledPixels; // any source loadLabelledPixels takes, or pixels already loaded
  queries?: string | LabelledPixels;
  tasks?: Task[]; // default DEFAULT_TASKS
  baselines?: string[]; // baseline model files or folders; default: every baseline found beside the model's folder
  mixnmatch?: string[]; // Mix'n'Match lists to evaluate; default every monotone list
  mixnmatchQueries?: number; // queries per Mix'n'Match list (a seeded subset); default DEFAULT_MIXNMATCH_QUERIES
  selfQueries?: number; // stored images used as self-retrieval queries; default DEFAULT_SELF_QUERIES
  limit?: number; // cap database and queries at N images (a seeded sample of each)
  seed?: number;
  threads?: number; // onnxruntime threads for bulk encoding and exact search (latency always uses 1)
  batch?: number;
  latencyRuns?: number; // batch-1 runs per encoder for the median encode time (0: skip)
  hnsw?: false | HnswSweepOptions;
  copies?: { edits?: string | EditsFile; originals?: number; regionGrid?: number }; // regionGrid 0: no region vectors
  outDir?: string; // write results.json, results.csv, summary.md, recall-vs-cost.svg here
  writeCalibration?: boolean; // write <model dir>/calibration.json (default false)
  progress?: boolean; // progress bar on stderr (default true)
  cacheDir?: string; // dataset cache (loadLabelledPixels)
}

export async function evaluateRecallCost(opts: RecallCostOptions = {}): Promise<RecallCostResult> {
  const t0 = performance.now();
  const modelPath = path.resolve(opts.modelPath ?? DEFAULT_MODEL_PATH);
  const run = await loadRun(opts, loadModel(modelPath).config.imageSize);
  const { tasks } = run.settings;
  const editsFile = tasks.includes('copies') ? (typeof opts.copies?.edits === 'object' ? opts.copies.edits : loadEdits(opts.copies?.edits ?? DEFAULT_EDITS)) : null;

  const paths = [modelPath, ...(opts.compare ? [path.resolve(opts.compare)] : [])];
  const labels = paths.map(modelLabel);
  if (labels.length === 2 && labels[0] === labels[1]) labels[1] += ' (compared)';
  let copySet: CopySet | null = null;
  const models: ModelContext[] = [];
  for (const [i, p] of paths.entries()) {
    const ctx = await openModel(run, p, labels[i], { baselinesBeside: modelPath, nameInNotes: paths.length > 1 });
    try {
      // Task order matters only where one task uses another's results: the HNSW sweep reuses the recall task's
      // queries, and copies runs the Mix'n'Match lists on the recall frontier.
      if (tasks.includes('recall')) {
        await recallTask(ctx);
        if (opts.hnsw !== false) hnswTask(ctx, opts.hnsw);
      }
      if (tasks.includes('self')) await selfTask(ctx, opts.selfQueries ?? DEFAULT_SELF_QUERIES);
      if (tasks.includes('own')) await ownTask(ctx);
      if (editsFile) {
        copySet ??= await makeCopySet(run, editsFile, opts.copies?.originals);
        await copiesTask(ctx, copySet, opts.copies?.regionGrid);
      }
    } finally {
      await ctx.search.release();
    }
    models.push(ctx);
  }
  run.progress.stop();

  run.timings.total = (performance.now() - t0) / 1000;
  const { cpuMs, wallMs } = run.latencyClock;
  const coreShare = wallMs > 0 ? cpuMs / wallMs : 1;
  if (coreShare < 0.85) {
    run.notes.push(`batch-1 encode times were measured with ${(100 * coreShare).toFixed(0)}% of a core (CPU time / wall time): something else was running, so they are not trustworthy`);
  } else {
    run.notes.push('encode and search times are wall-clock medians of this run on this machine; compare them within the run');
  }
  const [main, compared] = models;
  const nq = run.qs.rows.length;
  const result: RecallCostResult = {
    version: 1,
    createdAt: new Date().toISOString(),
    ...modelReport(main),
    seed: run.settings.seed,
    tasks,
    dataset: { db: run.db.source, queries: run.qs.source, dbSize: run.db.rows.length, queryCount: nq, commonQueries: main.common.length, classes: run.db.data.classes, limit: opts.limit ?? null },
    mixnmatchSubset: main.mixnmatchSubset,
    self: tasks.includes('self') ? { seed: mixSeed(run.settings.seed, 7), queries: Math.min(run.db.rows.length, opts.selfQueries ?? DEFAULT_SELF_QUERIES) } : null,
    copies: copySet ? describeCopies(copySet, run.db.rows.length) : null,
    compare: compared ? modelReport(compared) : null,
    environment: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? 'unknown', node: process.version, latencyCoreShare: Number(coreShare.toFixed(3)), threads: run.settings.threads },
    timings: run.timings,
    notes: run.notes,
  };
  if (opts.outDir) result.files = await writeReport(result, opts.outDir);
  if (opts.writeCalibration) {
    if (result.frontier.length === 0) throw new Error('no frontier to calibrate with: run the recall task');
    result.calibrationFile = saveCalibration(modelPath, toCalibration(result));
  }
  return result;
}

/** The data and settings every model of the run shares. */
async function loadRun(opts: RecallCostOptions, imageSize: number): Promise<EvalRun> {
  const seed = opts.seed ?? 0;
  const run: EvalRun = {
    settings: {
      seed,
      tasks: opts.tasks ?? DEFAULT_TASKS,
      threads: opts.threads ?? 1,
      batch: opts.batch ?? 128,
      latencyRuns: opts.latencyRuns ?? 30,
      baselines: opts.baselines,
      mixnmatch: opts.mixnmatch,
      mixnmatchQueries: opts.mixnmatchQueries ?? DEFAULT_MIXNMATCH_QUERIES,
    },
    db: null!,
    qs: null!,
    qLabels: null!,
    relevant: null!,
    progress: new StageProgress(opts.progress !== false),
    notes: [],
    timings: {},
    latencyClock: { cpuMs: 0, wallMs: 0 },
  };
  const since = performance.now();
  run.db = await loadSubset(opts.db ?? DEFAULT_DB, imageSize, opts.limit, mixSeed(seed, 1), opts.cacheDir);
  run.qs = await loadSubset(opts.queries ?? DEFAULT_QUERIES, imageSize, opts.limit, mixSeed(seed, 2), opts.cacheDir);
  run.timings.load = (performance.now() - since) / 1000;
  // Labels are matched by class name, so database and queries may come from different sources.
  const dbClass = new Map(run.db.data.classes.map((name, i) => [name, i]));
  run.qLabels = Int32Array.from(run.qs.labels, (l) => dbClass.get(run.qs.data.classes[l]) ?? -1);
  const unmatched = run.qLabels.filter((l) => l < 0).length;
  if (unmatched) run.notes.push(`${unmatched} queries have a class that is not in the database; they count as misses in accuracy and mAP`);
  run.relevant = labelCounts(run.db.labels);
  return run;
}

/** One model's part of the result, its encoders in report order. */
function modelReport(ctx: ModelContext): ModelReport {
  const encoders = [...ctx.results.values()].sort((a, b) => familyRank(a.family) - familyRank(b.family) || a.flops - b.flops || a.id.localeCompare(b.id));
  return {
    label: ctx.label, modelPath: ctx.modelPath, modelId: ctx.modelId, xlFlops: ctx.xlFlops, encoders,
    frontier: ctx.frontier.map((r) => r.id), cascade: ctx.cascade, hnsw: ctx.hnsw, regionCopies: ctx.regionCopies,
  };
}

const familyRank = (f: EncoderFamily) => ({ uniform: 0, mixnmatch: 1, baseline: 2 })[f];
