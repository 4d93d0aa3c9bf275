// The query-cost budget: which submodel to encode a query with, given a fraction of XL's FLOPs and/or a latency
// limit. The choice comes from a calibration file written next to the model by `npm run eval` (the Pareto frontier
// of 1-NN accuracy against FLOPs, measured against an XL-encoded database), or, when there is none, from the four
// uniform granularities ordered by FLOPs.
import fs from 'node:fs';
import path from 'node:path';
import { readModelConfig } from './checkpoint.ts';
import { DEFAULT_CONFIG, GRANULARITIES, type MatViTConfig, countFlops, countParams, parseSubmodel } from './config.ts';
import type { CascadeCalibration } from './policy.ts';
import { writeFileAtomic } from '../durable-file.ts';

export const CALIBRATION_FILE = 'calibration.json';
export const CALIBRATION_VERSION = 1;

/** One query encoder on the frontier. */
export interface CalibrationEntry {
  spec: string; // "S", "XL" or a Mix'n'Match list such as "S,S,M,M,L,XL"
  family: 'uniform' | 'mixnmatch';
  flops: number; // per query image
  flopsRel: number; // flops / XL flops, in (0, 1]
  params: number;
  encodeMs: number | null; // measured median batch-1 encode time on onnxruntime, 1 thread (null: not measured)
  accuracy: number | null; // 1-NN label accuracy against the XL-encoded database (null: not measured)
  recall10: number | null; // neighbour recall@10 against exact search with the XL query
}

export interface Calibration {
  version: number;
  /** 'measured': written by the evaluation; 'default': made up from the config when no file exists. */
  source: 'measured' | 'default';
  modelId: string; // the embedding space it was measured for (Encoder.modelId)
  createdAt: string | null;
  metric: string; // what `accuracy` is
  xlFlops: number;
  dataset?: { db: string; queries: string; dbSize: number; queryCount: number };
  notes?: string[];
  /** Sorted by flops; flops and accuracy both strictly increase along it (for 'default': accuracy is null). */
  frontier: CalibrationEntry[];
  /** The `auto` query's cascade (src/encoder/policy.ts), when the evaluation calibrated one. */
  cascade?: CascadeCalibration;
  /** Each uniform width's HNSW search beam, from the evaluation's ef sweep (src/eval/hnsw.ts chooseSearchEf). */
  search?: SearchCalibration;
  /** Region vectors (src/data/regions.ts): the penalty a region's similarity takes, chosen by the copies task. */
  regions?: { grid: number; penalty: number };
  /** Set by loadCalibration when the caller's modelId differs from the one the file was measured for. */
  stale?: boolean;
}

export interface SearchCalibration {
  ef: Record<string, number>; // the smallest swept ef within `tolerance` of the encoder's best recall@10 of XL's neighbours
  tolerance: number;
  dbSize: number; // vectors in the swept index
  M: number;
  efConstruction: number;
}

export interface BudgetRequest {
  budget?: number; // fraction of XL FLOPs, 0 < budget <= 1
  maxEncodeMs?: number; // largest acceptable median batch-1 encode time, > 0
}

export interface EncoderChoice {
  spec: string;
  entry: CalibrationEntry;
  /** false when nothing satisfied the request and the cheapest entry was returned instead. */
  fits: boolean;
  reason: string;
}

export class BudgetError extends RangeError {
  override name = 'BudgetError';
}

export class CalibrationError extends Error {
  override name = 'CalibrationError';
}

export const calibrationPath = (modelPath: string) => path.join(path.dirname(modelPath), CALIBRATION_FILE);

/** The fallback when no calibration exists: uniform S, M, L, XL ordered by FLOPs, quality unknown. */
export function defaultCalibration(config: MatViTConfig = DEFAULT_CONFIG, modelId = 'unknown'): Calibration {
  const xlFlops = countFlops(config, parseSubmodel('XL', config));
  const frontier = GRANULARITIES.map((g): CalibrationEntry => {
    const sub = parseSubmodel(g, config);
    const flops = countFlops(config, sub);
    return { spec: g, family: 'uniform', flops, flopsRel: flops / xlFlops, params: countParams(config, sub), encodeMs: null, accuracy: null, recall10: null };
  });
  return { version: CALIBRATION_VERSION, source: 'default', modelId, createdAt: null, metric: 'none (not calibrated: uniform granularities by FLOPs)', xlFlops, frontier };
}

/**
 * Reads `<model dir>/calibration.json`. Without one, returns defaultCalibration of the model's config (read from
 * the checkpoint header; DEFAULT_CONFIG if that is unreadable too). A file that exists but is invalid throws
 * CalibrationError. With opts.modelId, `stale` tells whether the file was measured for another checkpoint.
 */
export function loadCalibration(modelPath: string, opts: { modelId?: string; config?: MatViTConfig } = {}): Calibration {
  const file = calibrationPath(modelPath);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return defaultCalibration(opts.config ?? readConfig(modelPath) ?? DEFAULT_CONFIG, opts.modelId);
  }
  const cal = parseCalibration(text, file);
  if (opts.modelId !== undefined) cal.stale = cal.modelId !== opts.modelId;
  return cal;
}

export function parseCalibration(text: string, source = 'calibration'): Calibration {
  let c: Calibration;
  try {
    c = JSON.parse(text);
  } catch {
    throw new CalibrationError(`${source} is not valid JSON`);
  }
  if (!c || typeof c !== 'object' || !Array.isArray(c.frontier) || c.frontier.length === 0) throw new CalibrationError(`${source} has no frontier`);
  if (c.version !== CALIBRATION_VERSION) throw new CalibrationError(`${source} has version ${c.version}; expected ${CALIBRATION_VERSION}`);
  for (const e of c.frontier) {
    if (typeof e?.spec !== 'string' || !(e.flopsRel > 0) || !Number.isFinite(e.flops)) throw new CalibrationError(`${source}: bad frontier entry ${JSON.stringify(e)}`);
  }
  if (c.cascade !== undefined && !isCascade(c.cascade)) throw new CalibrationError(`${source}: bad cascade ${JSON.stringify(c.cascade)}`);
  if (c.search !== undefined && !(c.search && typeof c.search.ef === 'object' && Object.values(c.search.ef).every((ef) => Number.isInteger(ef) && ef > 0))) {
    throw new CalibrationError(`${source}: bad search ef ${JSON.stringify(c.search)}`);
  }
  if (c.regions !== undefined && !(Number.isInteger(c.regions?.grid) && c.regions.grid > 0 && c.regions.penalty >= 0 && Number.isFinite(c.regions.penalty))) {
    throw new CalibrationError(`${source}: bad regions ${JSON.stringify(c.regions)}`);
  }
  c.frontier.sort((a, b) => a.flops - b.flops);
  return c;
}

// The penalty chosen for the shipped MatViT v4 when a calibration has none (reports/cifar10-regions: 0.10, where
// XL's worst copy edit was best on the calibration half).
const DEFAULT_REGION_PENALTY = 0.1;

/** What a region's similarity is lowered by when a search merges region vectors (src/index/region-merge.ts). */
export function regionPenaltyOf(cal: Calibration): number {
  return cal.regions?.penalty ?? DEFAULT_REGION_PENALTY;
}

/** The fields auto reads from a cascade (a hand-edited file must fail at load, not on the first auto query). */
function isCascade(x: CascadeCalibration): boolean {
  const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
  return typeof x?.first === 'string' && typeof x.then === 'string' && num(x.minMargin) && num(x.minAgreement) &&
    Number.isInteger(x.agreementK) && x.agreementK > 0 && num(x.heldOut?.flopsRel);
}

export function saveCalibration(modelPath: string, cal: Calibration): string {
  const file = calibrationPath(modelPath);
  const { stale: _s, ...rest } = cal;
  writeFileAtomic(file, JSON.stringify(rest, null, 2) + '\n');
  return file;
}

/**
 * The best frontier entry within the request: the most accurate one whose FLOPs fraction is at most `budget` and
 * whose measured encode time is at most `maxEncodeMs` (an unmeasured time is taken to fit, and the reason says
 * so). With no request, the most accurate entry. When nothing fits, the cheapest entry (S on every frontier
 * this project writes) with fits = false and the reason. Throws BudgetError only for invalid arguments.
 */
export function pickEncoder(cal: Calibration, req: BudgetRequest = {}): EncoderChoice {
  const { budget, maxEncodeMs } = req;
  if (budget !== undefined && !(typeof budget === 'number' && budget > 0 && budget <= 1)) {
    throw new BudgetError(`budget must be a fraction of XL FLOPs in (0, 1], got ${budget}`);
  }
  if (maxEncodeMs !== undefined && !(typeof maxEncodeMs === 'number' && maxEncodeMs > 0)) {
    throw new BudgetError(`maxEncodeMs must be a positive number of milliseconds, got ${maxEncodeMs}`);
  }
  if (cal.frontier.length === 0) throw new CalibrationError('the calibration has an empty frontier');
  const frontier = [...cal.frontier].sort((a, b) => a.flops - b.flops);
  const EPS = 1e-9; // a budget of exactly an entry's fraction selects it despite rounding in the file
  const fitsFlops = (e: CalibrationEntry) => budget === undefined || e.flopsRel <= budget + EPS;
  const fitsMs = (e: CalibrationEntry) => maxEncodeMs === undefined || e.encodeMs === null || e.encodeMs <= maxEncodeMs;
  const fitting = frontier.filter((e) => fitsFlops(e) && fitsMs(e));
  const what = describeRequest(req);
  const staleNote = cal.stale ? ` (calibration measured for ${cal.modelId}, not the current model)` : '';
  const basis = cal.source === 'default' ? 'no calibration file: uniform granularities by FLOPs' : `calibrated 1-NN accuracy`;

  if (fitting.length === 0) {
    const cheapest = frontier[0];
    const why = !fitsFlops(cheapest)
      ? `the cheapest encoder ${cheapest.spec} needs ${fmt(cheapest.flopsRel)} of XL FLOPs`
      : `the cheapest encoder ${cheapest.spec} takes ${cheapest.encodeMs?.toFixed(3)} ms`;
    return { spec: cheapest.spec, entry: cheapest, fits: false, reason: `nothing fits ${what}: ${why}; falling back to ${cheapest.spec}${staleNote}` };
  }
  // Most accurate; unknown accuracy (default calibration) ranks by FLOPs, bigger being better.
  const best = fitting.reduce((a, b) => ((b.accuracy ?? -1) > (a.accuracy ?? -1) || ((b.accuracy ?? -1) === (a.accuracy ?? -1) && b.flops > a.flops) ? b : a));
  const acc = best.accuracy !== null ? `1-NN accuracy ${best.accuracy.toFixed(4)}, ` : '';
  const ms = best.encodeMs !== null ? `, ${best.encodeMs.toFixed(3)} ms` : maxEncodeMs !== undefined ? ', encode time not measured' : '';
  return { spec: best.spec, entry: best, fits: true, reason: `${best.spec}: ${acc}${fmt(best.flopsRel)} of XL FLOPs${ms}; best within ${what} (${basis})${staleNote}` };
}

function describeRequest({ budget, maxEncodeMs }: BudgetRequest): string {
  const parts = [];
  if (budget !== undefined) parts.push(`budget ${fmt(budget)} of XL FLOPs`);
  if (maxEncodeMs !== undefined) parts.push(`${maxEncodeMs} ms`);
  return parts.length ? parts.join(' and ') : 'no limit';
}

const fmt = (x: number) => x.toFixed(3);

/** The model config from a checkpoint's header (not its weights); null if unreadable. */
function readConfig(modelPath: string): MatViTConfig | null {
  try {
    return readModelConfig(modelPath);
  } catch {
    return null;
  }
}
