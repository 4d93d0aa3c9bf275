// What an evaluation returns and writes as results.json: the types the tasks fill in and the report, the plot and
// the calibration read. Kept apart from the code that runs the tasks so that readers of a result never import it.
import type { CascadeEvaluation } from './cascade.ts';
import type { EncoderFamily } from './encoders.ts';
import type { EditsFile } from './copies.ts';
import type { HnswParams, HnswRow } from './hnsw.ts';
import type { TargetRecall } from './metrics.ts';

// recall: every query encoder against the XL database (with the Pareto frontier and the HNSW ef sweep); self: stored
// images encoded by each query encoder must find their own XL entry; copies: the near-duplicate task; own: each
// uniform granularity and baseline as the encoder of both database and queries (the paper's same-encoder 1-NN
// accuracy).
export type Task = 'recall' | 'self' | 'copies' | 'own';
export const TASKS: Task[] = ['recall', 'self', 'copies', 'own'];
/** What `--task all` runs: own is a separate report (it replaces the XL database). */
export const DEFAULT_TASKS: Task[] = ['recall', 'self', 'copies'];

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
  /** Self-retrieval: stored images encoded by this encoder, searched in the XL database; a hit is the image's own entry. */
  self?: TargetRecall | null;
  copies: Record<string, TargetRecall> | null; // per edit and 'all'
  /** The copies of the held-out originals against the database without and with region vectors (task-copies.ts). */
  copiesRegions?: { whole: Record<string, TargetRecall>; regions: Record<string, TargetRecall> } | null;
  own: { accuracy: number; map10: number } | null; // the own task: database and queries both from this encoder
}

export interface HnswReport {
  params: HnswParams;
  buildSeconds: number;
  dbSize: number;
  rows: HnswRow[];
  searchEf?: Record<string, number>; // each swept encoder's search beam (chooseSearchEf); absent in older results
  searchEfTolerance?: number;
}

/** Everything measured for one MatViT (the evaluated model, or the one `--compare` names). */
export interface ModelReport {
  label: string; // the model's folder name: what the report's tables call it
  modelPath: string;
  modelId: string;
  xlFlops: number;
  encoders: EncoderResult[];
  frontier: string[]; // encoder ids on the Pareto frontier (1-NN accuracy on every query vs FLOPs)
  hnsw: HnswReport | null;
  cascade?: CascadeEvaluation | null; // the `auto` query (src/eval/cascade.ts)
  regionCopies?: RegionCopiesReport | null; // the copies task with region vectors in the database
}

/** How the region-vector database was built and its penalty chosen (src/eval/task-copies.ts). */
export interface RegionCopiesReport {
  grid: number; // grid x grid half-side regions per image (src/data/regions.ts)
  dbVectors: number; // region vectors in the database, beside one whole-image vector per image
  penalty: number; // subtracted from a region's similarity: chosen on the calibration half, reported on the other
  calibrationCopies: number; // copies of the even-numbered originals
  heldOutCopies: number; // copies of the odd-numbered ones: what copiesRegions reports
  /** XL's copies of the calibration half at each penalty swept: the worst edit's recall@1 (the rule maximises it) and the mean over edits. */
  sweep: { penalty: number; worstEdit: string; worst: number; mean: number }[];
}

export interface RecallCostResult extends ModelReport {
  version: 1;
  createdAt: string;
  seed: number;
  tasks: Task[];
  dataset: { db: string; queries: string; dbSize: number; queryCount: number; commonQueries: number; classes: string[]; limit: number | null };
  mixnmatchSubset: boolean; // Mix'n'Match lists were evaluated on a seeded subset of the queries
  self?: { seed: number; queries: number } | null; // the stored images used as self-retrieval queries
  copies: { seed: number; originals: number; copies: number; dbSize: number; edits: EditsFile['edits'] } | null;
  /** The model named by --compare, measured on the same data in the same run; null when there is none. */
  compare?: ModelReport | null;
  // latencyCoreShare: CPU time / wall time of the batch-1 latency runs (about 1 when they had a core to themselves)
  environment: { cpus: number; cpu: string; node: string; latencyCoreShare: number; threads: number };
  timings: Record<string, number>; // seconds
  notes: string[];
  files?: Record<string, string>;
  calibrationFile?: string;
}

/** The evaluated model first, then the compared one. */
export const modelsOf = (r: RecallCostResult): ModelReport[] => (r.compare ? [r, r.compare] : [r]);
