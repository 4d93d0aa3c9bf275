// The recall task: every query encoder encodes the queries and searches the XL database; its results are compared
// with XL's own (neighbour recall, label agreement) and with the labels (1-NN accuracy, mAP@10). Then the Pareto
// frontier of 1-NN accuracy against FLOPs, which becomes the calibration.
import { mergeRows, selectRows } from '../index/exact-search.ts';
import { type ModelContext, lap, metricsOn, runQueries } from './context.ts';
import { cascadeOfUniform } from './cascade.ts';
import { paretoFrontier } from './metrics.ts';

export async function recallTask(ctx: ModelContext): Promise<void> {
  const { run, uniform, baselines, mnm, common, results } = ctx;
  const nq = run.qs.rows.length;
  const allPositions = Int32Array.from({ length: nq }, (_, i) => i);
  run.progress.start((uniform.length + baselines.length) * nq + mnm.length * common.length);
  const perQuery: number[] = [];
  const order = [uniform.find((u) => u.spec === 'XL')!, ...uniform.filter((u) => u.spec !== 'XL'), ...baselines, ...mnm];
  for (const ref of order) {
    run.progress.stage = ref.id;
    const positions = ref.family === 'mixnmatch' ? common : allPositions;
    const encStart = performance.now();
    const { emb, found } = await runQueries(ctx, ref, positions);
    if (ref.family === 'uniform') ctx.queryEmbeddings.set(ref.spec, emb);
    if (ref.family === 'uniform') perQuery.push((performance.now() - encStart) / 1000 / nq);
    if (ref.family === 'uniform' && perQuery.length === uniform.length && mnm.length) {
      // The uniform encoders ran on every query: project the Mix'n'Match stage from their cost per query.
      const sec = perQuery.reduce((x, y) => x + y, 0) / perQuery.length;
      const line = `measured ${(sec * 1000).toFixed(2)} ms per query per encoder (encode + exact search over ${run.db.rows.length}, mean of the uniform encoders); ` +
        `${mnm.length} Mix'n'Match lists x ${nq} queries would take about ${(mnm.length * nq * sec / 60).toFixed(1)} min, x ${common.length} queries about ${(mnm.length * common.length * sec / 60).toFixed(1)} min`;
      run.progress.log(line);
      ctx.note(line);
    }
    if (ref.id === 'XL') ctx.xlTruth = found;
    if (ref.family !== 'baseline') ctx.topks.set(ref.id, found);
    const r = results.get(ref.id)!;
    if (ref.family === 'mixnmatch') {
      r.common = metricsOn(ctx, found, common);
      if (!ctx.mixnmatchSubset) r.all = r.common;
    } else {
      r.all = metricsOn(ctx, found, allPositions);
      r.common = ctx.mixnmatchSubset ? metricsOn(ctx, selectRows(found, common), common) : r.all;
    }
  }
  await frontier(ctx, allPositions);
  if (ctx.xlTruth) ctx.cascade = cascadeOfUniform(results, ctx.topks, run.db.labels, run.qLabels, run.settings.seed);
}

/**
 * First on the queries every encoder ran on. With Mix'n'Match subsampled that frontier only ranks candidates (on
 * 5,000 queries an accuracy near 0.7 has a standard error of about 0.65 points), so its Mix'n'Match lists then run
 * on the remaining queries too; the frontier that is reported and calibrated compares encoders on every query.
 */
async function frontier(ctx: ModelContext, allPositions: Int32Array): Promise<void> {
  const { run, mnm, common, results } = ctx;
  const nq = allPositions.length;
  const matvit = [...results.values()].filter((r) => r.family !== 'baseline' && r.common);
  for (const r of paretoFrontier(matvit, (x) => x.flops, (x) => x.common!.accuracy)) r.onCommonFrontier = true;
  if (ctx.mixnmatchSubset) {
    const since = performance.now();
    const inCommon = new Set(common);
    const rest = allPositions.filter((p) => !inCommon.has(p));
    const candidates = mnm.filter((m) => results.get(m.id)!.onCommonFrontier);
    run.progress.start(candidates.length * rest.length);
    for (const ref of candidates) {
      run.progress.stage = `all queries ${ref.id}`;
      const { found } = await runQueries(ctx, ref, rest);
      const merged = mergeRows([{ topk: ctx.topks.get(ref.id)!, rows: common }, { topk: found, rows: rest }], nq);
      results.get(ref.id)!.all = metricsOn(ctx, merged, allPositions);
    }
    if (candidates.length) ctx.note(`the ${candidates.length} Mix'n'Match lists on the frontier of the ${common.length}-query subset were re-measured on all ${nq} queries; the frontier and the calibration compare encoders on all ${nq}`);
    lap(run, 'frontierAllQueries', since);
  }
  ctx.frontier = paretoFrontier(matvit.filter((r) => r.all), (r) => r.flops, (r) => r.all!.accuracy);
  for (const r of ctx.frontier) r.onFrontier = true;
}
