// A result's Pareto frontier as the calibration file that src/encoder/budget.ts reads.
import path from 'node:path';
import { type Calibration, CALIBRATION_VERSION, type CalibrationEntry } from '../encoder/budget.ts';
import type { RecallCostResult } from './result.ts';

/** The calibration file's content: the frontier entries of a result. */
export function toCalibration(r: RecallCostResult): Calibration {
  const frontier = r.frontier.map((id) => r.encoders.find((e) => e.id === id)!).map((e): CalibrationEntry => ({
    spec: e.spec,
    family: e.family as 'uniform' | 'mixnmatch',
    flops: e.flops,
    flopsRel: e.flopsRel,
    params: e.params,
    encodeMs: e.encodeMs,
    accuracy: e.all!.accuracy,
    recall10: e.all!.recall10,
  }));
  return {
    version: CALIBRATION_VERSION,
    source: 'measured',
    modelId: r.modelId,
    createdAt: r.createdAt,
    metric: `1-NN label accuracy of queries against the XL-encoded database (${r.dataset.queryCount} queries of ${path.basename(r.dataset.queries)} against ${r.dataset.dbSize} of ${path.basename(r.dataset.db)})`,
    xlFlops: r.xlFlops,
    dataset: { db: r.dataset.db, queries: r.dataset.queries, dbSize: r.dataset.dbSize, queryCount: r.dataset.queryCount },
    notes: r.notes.filter((n) => /trustworthy|subset/.test(n)),
    frontier,
    ...(r.cascade ? { cascade: r.cascade.rule } : {}),
    ...(r.regionCopies ? { regions: { grid: r.regionCopies.grid, penalty: r.regionCopies.penalty } } : {}),
    ...(r.hnsw?.searchEf ? { search: { ef: r.hnsw.searchEf, tolerance: r.hnsw.searchEfTolerance!, dbSize: r.hnsw.dbSize, M: r.hnsw.params.M, efConstruction: r.hnsw.params.efConstruction } } : {}),
  };
}
