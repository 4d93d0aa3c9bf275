// The `auto` query's cascade, evaluated and calibrated: a cheap encoder's exact search results, and XL's for the
// same queries, replayed under every threshold of the rule in src/encoder/policy.ts (escalate to XL when the first
// two scores are close, or when the first results' labels disagree). Half the queries (seeded) choose the
// thresholds: the cheapest rule, in mean FLOPs, whose 1-NN accuracy is within `tolerance` of XL's on that half by a
// margin of `confidenceSe` standard errors of the paired difference. Without that margin a rule that escalates little
// passes on the luck of the half: v5's "M alone" was within 0.2 points on its calibration half and 0.92 below on the
// held-out one (reports/cifar10-v5), a gap of two standard errors of a rule whose top-1 differs from XL's on a
// tenth of the queries. The other half, held out, reports what the rule does, and a sweep of the margin threshold on
// it is the cascade's series on the recall-vs-cost plot.
import { type CascadeCalibration, type CascadeRule, escalates, shouldEscalate } from '../encoder/policy.ts';
import { mixSeed, mulberry32, permutation } from '../train/rng.ts';
import type { TopK } from '../index/exact-search.ts';
import type { EncoderResult } from './result.ts';

const CASCADE_TOLERANCE = 0.002; // 0.2 points of 1-NN accuracy below XL's
const CONFIDENCE_SE = 1; // ... and that with one standard error to spare
const AGREEMENT_K = 10;
const AGREEMENTS = [0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1]; // escalate below; 0: labels never escalate
const MARGIN_QUANTILES = 40; // margin thresholds: this many quantiles of the cheap encoder's margins, plus never and always
// Scores are cosines, best first, so a margin lies in [0, 2]: these thresholds mean never and always (and, unlike
// infinities, survive JSON).
const NEVER = 0;
const ALWAYS = 3;

export interface CascadeInput {
  cheap: { spec: string; flopsRel: number; topk: TopK }[]; // first-stage candidates, on every query
  wide: { spec: string; flopsRel: number; topk: TopK }; // XL, on every query (the recall ground truth too)
  dbLabels: ArrayLike<number>;
  queryLabels: ArrayLike<number>; // -1: a class the database lacks (a miss)
  seed: number;
  tolerance?: number;
  confidenceSe?: number;
}

export interface CascadePoint {
  minMargin: number;
  flopsRel: number; // mean FLOPs per query / XL's
  accuracy: number; // 1-NN
  recall10: number; // of XL's neighbours
  escalated: number; // share of queries that ran the wide encoder
}

export interface CascadeEvaluation {
  rule: CascadeCalibration; // the calibrated rule (calibration.json's `cascade`)
  series: CascadePoint[]; // held-out half, the chosen first encoder and label threshold, over margin thresholds
}

/** Per query facts of one first-stage encoder. */
interface Facts {
  margin: Float64Array;
  agreement: Float64Array;
  correct: Uint8Array; // the cheap top-1 has the query's label
  recall10: Float64Array; // |cheap top-10 ∩ XL top-10| / 10
}

export function evaluateCascade(input: CascadeInput): CascadeEvaluation {
  const n = input.wide.topk.n;
  if (n < 2) throw new RangeError(`the cascade needs at least 2 queries, got ${n}`);
  const tolerance = input.tolerance ?? CASCADE_TOLERANCE;
  const confidenceSe = input.confidenceSe ?? CONFIDENCE_SE;
  const order = permutation(n, mulberry32(mixSeed(input.seed, 7)));
  const calib = Int32Array.from(order.slice(0, n >> 1)).sort();
  const held = Int32Array.from(order.slice(n >> 1)).sort();
  const xlCorrect = Uint8Array.from({ length: n }, (_, q) => (top1Correct(input.wide.topk, q, input.dbLabels, input.queryLabels) ? 1 : 0));
  const xlAccuracy = (rows: Int32Array) => mean(rows, (q) => xlCorrect[q]);

  let best: { rule: CascadeRule; point: CascadePoint; facts: Facts; flopsRel: number } | null = null;
  for (const cheap of input.cheap) {
    const facts = factsOf(cheap.topk, input.wide.topk, input.dbLabels, input.queryLabels);
    for (const minMargin of marginThresholds(facts.margin, calib)) {
      for (const minAgreement of AGREEMENTS) {
        const rule: CascadeRule = { first: cheap.spec, then: input.wide.spec, minMargin, minAgreement, agreementK: AGREEMENT_K };
        const point = replay(rule, facts, xlCorrect, calib, cheap.flopsRel, input.wide.flopsRel);
        if (point.accuracy - confidenceSe * pairedSe(rule, facts, xlCorrect, calib) < xlAccuracy(calib) - tolerance) continue;
        if (!best || point.flopsRel < best.point.flopsRel) best = { rule, point, facts, flopsRel: cheap.flopsRel };
      }
    }
  }
  if (!best) throw new Error('no cascade rule reached the target (always escalating should): check the inputs');
  const { rule, facts, flopsRel } = best;
  const heldPoint = replay(rule, facts, xlCorrect, held, flopsRel, input.wide.flopsRel);
  const series = marginThresholds(facts.margin, held).map((m) => replay({ ...rule, minMargin: m }, facts, xlCorrect, held, flopsRel, input.wide.flopsRel));
  return {
    rule: {
      ...rule,
      target: `the fewest mean FLOPs with 1-NN accuracy within ${(100 * tolerance).toFixed(1)} points of ${input.wide.spec}'s on the calibration half${confidenceSe ? `, by ${confidenceSe} standard error${confidenceSe === 1 ? '' : 's'} of the paired difference` : ''}`,
      calibrationQueries: calib.length,
      heldOut: { queries: held.length, accuracy: heldPoint.accuracy, xlAccuracy: xlAccuracy(held), recall10: heldPoint.recall10, flopsRel: heldPoint.flopsRel, escalated: heldPoint.escalated },
    },
    series,
  };
}

/** The cascade's outcome over `rows`, each query decided by `escalates`, the rule the server runs. */
function replay(rule: CascadeRule, f: Facts, xlCorrect: Uint8Array, rows: Int32Array, cheapFlops: number, wideFlops: number): CascadePoint {
  let correct = 0;
  let recall = 0;
  let escalated = 0;
  for (const q of rows) {
    if (escalates(rule, f.margin[q], f.agreement[q])) {
      escalated++;
      correct += xlCorrect[q];
      recall += 1;
    } else {
      correct += f.correct[q];
      recall += f.recall10[q];
    }
  }
  const m = rows.length;
  return { minMargin: rule.minMargin, flopsRel: cheapFlops + (wideFlops * escalated) / m, accuracy: correct / m, recall10: recall / m, escalated: escalated / m };
}

/** Standard error of the mean paired difference in top-1 correctness, cascade minus XL, over `rows`. */
function pairedSe(rule: CascadeRule, f: Facts, xlCorrect: Uint8Array, rows: Int32Array): number {
  let sum = 0;
  let sumSq = 0; // a difference is -1, 0 or 1: its square is whether the two disagree
  for (const q of rows) {
    const d = escalates(rule, f.margin[q], f.agreement[q]) ? 0 : f.correct[q] - xlCorrect[q];
    sum += d;
    sumSq += d * d;
  }
  const m = rows.length;
  return Math.sqrt(Math.max(0, sumSq / m - (sum / m) ** 2) / m);
}

function factsOf(cheap: TopK, xl: TopK, dbLabels: ArrayLike<number>, queryLabels: ArrayLike<number>): Facts {
  const n = cheap.n;
  const f: Facts = { margin: new Float64Array(n), agreement: new Float64Array(n), correct: new Uint8Array(n), recall10: new Float64Array(n) };
  const k = Math.min(10, cheap.k, xl.k);
  for (let q = 0; q < n; q++) {
    const hits = Array.from({ length: Math.min(AGREEMENT_K, cheap.k) }, (_, i) => ({ score: cheap.scores[q * cheap.k + i], label: dbLabels[cheap.indices[q * cheap.k + i]] }));
    const e = shouldEscalate({ first: '', then: '', minMargin: NEVER, minAgreement: 0, agreementK: AGREEMENT_K }, hits);
    f.margin[q] = e.margin;
    f.agreement[q] = e.agreement ?? 1;
    f.correct[q] = top1Correct(cheap, q, dbLabels, queryLabels) ? 1 : 0;
    const truth = xl.indices.subarray(q * xl.k, q * xl.k + k);
    let hit = 0;
    for (let i = 0; i < k; i++) if (truth.includes(cheap.indices[q * cheap.k + i])) hit++;
    f.recall10[q] = hit / k;
  }
  return f;
}

/** Never, quantiles of the margins over `rows`, always. */
function marginThresholds(margins: Float64Array, rows: Int32Array): number[] {
  const sorted = Float64Array.from(rows, (q) => margins[q]).sort();
  const qs = Array.from({ length: MARGIN_QUANTILES - 1 }, (_, i) => sorted[Math.floor(((i + 1) / MARGIN_QUANTILES) * sorted.length)]);
  return [NEVER, ...new Set(qs.filter((m) => m > NEVER)), ALWAYS];
}

const top1Correct = (t: TopK, q: number, dbLabels: ArrayLike<number>, queryLabels: ArrayLike<number>) => queryLabels[q] >= 0 && dbLabels[t.indices[q * t.k]] === queryLabels[q];

function mean(rows: Int32Array, f: (q: number) => number): number {
  let s = 0;
  for (const q of rows) s += f(q);
  return s / rows.length;
}

/** The hook in the recall task: the cascade over its uniform encoders (every query), first stages cheaper than XL. */
export function cascadeOfUniform(results: Map<string, EncoderResult>, topks: Map<string, TopK>, dbLabels: ArrayLike<number>, queryLabels: ArrayLike<number>, seed: number): CascadeEvaluation | null {
  const uniform = [...results.values()].filter((r) => r.family === 'uniform' && topks.has(r.id));
  const wide = uniform.find((r) => r.spec === 'XL');
  if (!wide || uniform.length < 2) return null;
  const at = (r: EncoderResult) => ({ spec: r.spec, flopsRel: r.flopsRel, topk: topks.get(r.id)! });
  return evaluateCascade({ cheap: uniform.filter((r) => r !== wide).map(at), wide: at(wide), dbLabels, queryLabels, seed });
}

/** The cascade's series on the recall-vs-cost plot (src/eval/plot.ts): its held-out points and the chosen rule. */
export function cascadeLayers(c: CascadeEvaluation): object[] {
  const x = { field: 'flopsRel', type: 'quantitative' } as const;
  const y = { field: 'accuracy', type: 'quantitative' } as const;
  const color = '#2ca02c';
  const { first, then, heldOut } = c.rule;
  const chosen = [{ flopsRel: heldOut.flopsRel, accuracy: heldOut.accuracy, label: `auto: cascade ${first}→${then}, ${(100 * heldOut.escalated).toFixed(0)}% escalated (held-out half)` }];
  const tooltip = [{ field: 'minMargin', format: '.4f' }, { field: 'flopsRel', format: '.3f' }, { field: 'accuracy', format: '.4f' }, { field: 'recall10', format: '.3f' }, { field: 'escalated', format: '.2f' }];
  return [
    { data: { values: c.series }, mark: { type: 'line', point: { size: 14, color }, color, strokeWidth: 1.2, opacity: 0.8 }, encoding: { x, y, tooltip } },
    { data: { values: chosen }, mark: { type: 'point', shape: 'diamond', filled: true, size: 130, color }, encoding: { x, y } },
    { data: { values: chosen }, mark: { type: 'text', dx: 8, dy: 14, align: 'left', fontSize: 10, color }, encoding: { x, y, text: { field: 'label' } } },
  ];
}

/** The cascade's section of summary.md (src/eval/report.ts). */
export function cascadeMarkdown(c: CascadeEvaluation, modelLabel?: string): string[] {
  const { first, then, minMargin, minAgreement, agreementK, heldOut: h, calibrationQueries } = c.rule;
  const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
  return [
    `## The \`auto\` query: a cascade${modelLabel ? ` (\`${modelLabel}\`)` : ''}`, '',
    `\`${first}\` first; \`${then}\` again when the first two scores are within ${minMargin.toFixed(4)} or fewer than ${Math.round(100 * minAgreement)}% of the first ${agreementK} results share the top result's label. ` +
      `Thresholds chosen on ${calibrationQueries} queries (${c.rule.target}); on the ${h.queries} held out:`, '',
    '| measure | cascade | XL |', '| --- | ---: | ---: |',
    `| 1-NN accuracy | ${pct(h.accuracy)} | ${pct(h.xlAccuracy)} |`,
    `| mean FLOPs / XL's | ${h.flopsRel.toFixed(3)} | 1 |`,
    `| recall@10 of XL's neighbours | ${h.recall10.toFixed(3)} | 1 |`,
    `| queries escalated | ${pct(h.escalated)} | - |`, '',
  ];
}
