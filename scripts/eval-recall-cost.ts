// npm run eval [-- --model models/matvit-cifar10/model.safetensors --db ../shared/datasets/cifar10/train.tar.gz
//   --queries ../shared/datasets/cifar10/test.tar.gz --task all|recall|self|copies|own --mixnmatch-queries 5000
//   --baselines models/baseline-S,models/baseline-M --compare models/matvit-cifar10-v1 --self-queries 1000
//   --limit 300 --seed 0 --threads 2 --out reports/cifar10]
// Recall-vs-cost evaluation of every query encoder (uniform S/M/L/XL, the monotone Mix'n'Match lists, any
// independently trained baselines) against a database encoded once with XL, an HNSW ef sweep, self-retrieval
// (stored images find their own XL entry) and the near-duplicate task (edits in scripts/copies-edits.json; the
// uniform widths also against a database with each image's 3 x 3 region vectors, --copies-region-grid). Writes
// results.json, results.csv, summary.md and recall-vs-cost.svg under reports/<name>/, and the Pareto frontier as
// <model dir>/calibration.json (full runs). --task own (same-encoder search: each granularity and baseline encodes
// database and queries) writes reports/cifar10-own. --compare MODEL measures a second MatViT (file or folder) the
// same way in the same run, into the same report (reports/<name>-compare by default; the calibration stays the
// evaluated model's).
// Quick look: npm run eval -- --limit 300 --threads 1   (writes reports/cifar10-limit300, no calibration)
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import fs from 'node:fs';
import { DEFAULT_REGION_GRID } from '../src/data/regions.ts';
import { DEFAULT_MODEL_PATH } from '../src/encoder/checkpoint.ts';
import { ConfigError } from '../src/encoder/config.ts';
import { CheckpointError } from '../src/encoder/safetensors.ts';
import { UsageError } from '../src/errors.ts';
import { DEFAULT_MIXNMATCH_QUERIES, evaluateRecallCost } from '../src/eval/recall-cost.ts';
import { DEFAULT_TASKS, TASKS, type Task } from '../src/eval/result.ts';
import { DEFAULT_HNSW_EFS } from '../src/eval/task-hnsw.ts';
import { DEFAULT_SELF_QUERIES } from '../src/eval/task-self.ts';

const usage = `usage: npm run eval -- [--model FILE] [--compare MODEL] [--db SOURCE] [--queries SOURCE]
  [--task all|${TASKS.join('|')}[,...]] [--baselines PATH[,PATH]] [--mixnmatch LIST ...] [--mixnmatch-queries N]
  [--self-queries ${DEFAULT_SELF_QUERIES}] [--limit N] [--seed N] [--threads N]
  [--latency-runs N] [--hnsw-ef ${DEFAULT_HNSW_EFS.join(',')}] [--hnsw-queries N] [--no-hnsw] [--copies-edits FILE] [--copies-originals N] [--copies-region-grid N (0: none)]
  [--name NAME | --out DIR] [--calibration auto|yes|no] [--batch N] [--quiet]`;

function fail(message: string): never {
  process.stderr.write(`eval-recall-cost: ${message}\n${usage}\n`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      model: { type: 'string', default: DEFAULT_MODEL_PATH },
      compare: { type: 'string' },
      db: { type: 'string' },
      queries: { type: 'string' },
      task: { type: 'string', default: 'all' },
      baselines: { type: 'string', multiple: true },
      mixnmatch: { type: 'string', multiple: true },
      'mixnmatch-queries': { type: 'string', default: String(DEFAULT_MIXNMATCH_QUERIES) },
      'self-queries': { type: 'string', default: String(DEFAULT_SELF_QUERIES) },
      limit: { type: 'string' },
      seed: { type: 'string', default: '0' },
      threads: { type: 'string', default: String(Math.min(2, os.cpus().length)) },
      'latency-runs': { type: 'string', default: '30' },
      'hnsw-ef': { type: 'string', default: DEFAULT_HNSW_EFS.join(',') },
      'hnsw-queries': { type: 'string' },
      'no-hnsw': { type: 'boolean', default: false },
      'copies-edits': { type: 'string' },
      'copies-originals': { type: 'string' },
      'copies-region-grid': { type: 'string', default: String(DEFAULT_REGION_GRID) },
      name: { type: 'string' },
      out: { type: 'string' },
      calibration: { type: 'string', default: 'auto' },
      batch: { type: 'string', default: '128' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  fail((err as Error).message);
}
const a = parsed.values;
if (a.help) {
  process.stdout.write(usage + '\n');
  process.exit(0);
}

const int = (name: string, v: string | undefined, min = 0): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}, got "${v}"`);
  return n;
};
const tasks: Task[] = a.task === 'all' ? DEFAULT_TASKS : a.task!.split(',').map((t) => (TASKS.includes(t as Task) ? (t as Task) : fail(`--task must be all or a list of ${TASKS.join(', ')}, got "${a.task}"`)));
// A model folder stands for its model.safetensors, as --baselines takes it.
const modelFile = (p: string) => (fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() ? path.join(p, 'model.safetensors') : p);
const compare = a.compare === undefined ? undefined : modelFile(a.compare);
if (compare !== undefined && !fs.existsSync(compare)) fail(`--compare: no model at ${compare}`);
const limit = int('limit', a.limit, 1);
const efs = a['hnsw-ef']!.split(',').map((x) => int('hnsw-ef', x.trim(), 1)!);
if (!['auto', 'yes', 'no'].includes(a.calibration!)) fail(`--calibration must be auto, yes or no, got "${a.calibration}"`);
// The own task alone gets its own folder, so that it never replaces the full report.
const name = a.name ?? `cifar10${tasks.length === 1 && tasks[0] === 'own' ? '-own' : ''}${compare ? '-compare' : ''}${limit !== undefined ? `-limit${limit}` : ''}`;
const outDir = path.resolve(a.out ?? path.join(import.meta.dirname, '..', 'reports', name));
const writeCalibration = a.calibration === 'yes' || (a.calibration === 'auto' && limit === undefined && tasks.includes('recall'));

try {
  const r = await evaluateRecallCost({
    modelPath: modelFile(a.model!),
    compare,
    db: a.db,
    queries: a.queries,
    tasks,
    baselines: a.baselines?.flatMap((b) => b.split(',')).filter(Boolean),
    mixnmatch: a.mixnmatch,
    mixnmatchQueries: int('mixnmatch-queries', a['mixnmatch-queries'], 1),
    selfQueries: int('self-queries', a['self-queries'], 1),
    limit,
    seed: int('seed', a.seed),
    threads: int('threads', a.threads, 1),
    batch: int('batch', a.batch, 1),
    latencyRuns: int('latency-runs', a['latency-runs']),
    hnsw: a['no-hnsw'] ? false : { efs, queries: int('hnsw-queries', a['hnsw-queries'], 1) },
    copies: { edits: a['copies-edits'], originals: int('copies-originals', a['copies-originals'], 1), regionGrid: int('copies-region-grid', a['copies-region-grid']) },
    outDir,
    writeCalibration,
    progress: !a.quiet,
  });
  const lines = [`report: ${path.join(outDir, 'summary.md')} (${r.encoders.length} query encoders, ${r.timings.total.toFixed(0)} s)`];
  if (r.frontier.length) lines.push(`frontier: ${r.frontier.map((id) => { const e = r.encoders.find((x) => x.id === id)!; return `${id} (${e.flopsRel.toFixed(2)} XL, acc ${e.all!.accuracy.toFixed(4)})`; }).join('  ')}`);
  lines.push(r.calibrationFile ? `calibration: ${r.calibrationFile}` : 'calibration: not written (a --limit run, no recall task, or --calibration no)');
  for (const n of r.notes) lines.push(`note: ${n}`);
  console.log(lines.join('\n'));
} catch (err) {
  process.stderr.write(`eval-recall-cost: ${(err as Error).message}\n`);
  process.exit(err instanceof UsageError || err instanceof ConfigError || err instanceof CheckpointError ? 2 : 1); // bad input: 2, as the CLI
}
