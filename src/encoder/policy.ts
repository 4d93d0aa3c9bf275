// The query policy: given a request and the model's calibration, which encoders run. One place for every way a
// query's cost is chosen (a named encoder, a FLOPs budget, the server's default, and `auto`: the cascade), used by
// the server and the CLI alike.
//
// The cascade is the retrieval analogue of speculative decoding: encode with a cheap submodel, search, and encode
// again with a wide one only when the cheap result looks uncertain: a small margin between the first two scores, or
// disagreement among the labels of the first results. Its thresholds are calibrated on held-out queries by the
// evaluation (src/eval/cascade.ts) and saved in calibration.json beside the frontier.
import { type Calibration, pickEncoder } from './budget.ts';

export const AUTO = 'auto';

export interface CascadeRule {
  first: string; // the cheap encoder every query runs
  then: string; // the wide encoder an uncertain query runs next
  minMargin: number; // escalate when top-1 score - top-2 score is below this
  minAgreement: number; // escalate when the share of the first `agreementK` results sharing the top result's label is below this
  agreementK: number;
}

/** The rule plus how it was chosen and what it measured (calibration.json). */
export interface CascadeCalibration extends CascadeRule {
  target: string; // what the threshold was chosen for
  calibrationQueries: number; // queries the thresholds were chosen on
  heldOut: { queries: number; accuracy: number; xlAccuracy: number; recall10: number; flopsRel: number; escalated: number };
}

export interface QueryRequest {
  ffn?: string; // a spec, or 'auto'
  budget?: number; // fraction of XL FLOPs
  maxEncodeMs?: number; // largest acceptable calibrated batch-1 encode time
}

/**
 * Which encoders a query runs: one, or a cascade. `spec` is the (first) encoder; `ef`, when set, the HNSW beam its
 * search needs (the calibrated beam of a uniform width, or LOAD_EF under load); a request's own ef overrides it.
 */
export type QueryPlan =
  | { chosenBy: 'ffn' | 'default'; spec: string; reason?: string; ef?: number }
  | { chosenBy: 'budget'; spec: string; reason: string; fits: boolean; ef?: number }
  | { chosenBy: 'cascade'; spec: string; rule: CascadeRule; reason: string; ef?: undefined }
  | { chosenBy: 'load'; spec: string; reason: string; ef: number };

/**
 * The HNSW beam of a query stepped down under load (unless it names its own): at ef 160 the search is about a third
 * of the main thread's time per query, and a cheap encoder's own error dwarfs what a narrower beam loses. On the shipped model, S
 * queries find 0.6833 of XL's exact top-10 at ef 64 against 0.6846 at ef 160, in half the search time (reports/cifar10,
 * HNSW sweep over 50,000 vectors).
 */
export const LOAD_EF = 64;

/**
 * What `auto` runs, from the normal plan down to the cheapest: first the cascade (or, without a usable one, the most
 * accurate calibrated encoder), then every calibrated frontier entry cheaper than that, most accurate first. The
 * load controller steps down it when the latency target is at risk.
 */
export function autoLadder(cal: Calibration): string[] {
  const usable = cal.cascade && !cal.stale ? cal.cascade : null;
  const best = pickEncoder(cal).entry;
  const top = usable ? { label: `${usable.first}→${usable.then}`, flopsRel: usable.heldOut.flopsRel } : { label: best.spec, flopsRel: best.flopsRel };
  const cheaper = cal.frontier.filter((e) => e.flopsRel < top.flopsRel && e.spec !== top.label);
  const rank = (e: (typeof cheaper)[number]) => e.accuracy ?? e.flopsRel; // uncalibrated: bigger is better
  return [top.label, ...cheaper.sort((a, b) => rank(b) - rank(a)).map((e) => e.spec)];
}

/**
 * The plan for a request: `ffn` names an encoder (or `auto`), `budget` and `maxEncodeMs` pick the best calibrated
 * encoder within them, and without either the caller's default (which may be `auto`) applies. `auto` without a
 * calibrated cascade runs the most accurate calibrated encoder, and says so. `stepDown` (from the server's load
 * controller) moves an `auto` query that many steps down autoLadder, to cheaper plans; named encoders never move.
 */
export function planQuery(req: QueryRequest, cal: Calibration, defaultFfn = 'XL', stepDown = 0): QueryPlan {
  if (req.budget !== undefined || req.maxEncodeMs !== undefined) {
    const choice = pickEncoder(cal, { budget: req.budget, maxEncodeMs: req.maxEncodeMs });
    return { chosenBy: 'budget', spec: choice.spec, reason: choice.reason, fits: choice.fits, ...searchEf(cal, choice.spec) };
  }
  const ffn = req.ffn ?? defaultFfn;
  const chosenBy = req.ffn === undefined ? 'default' : 'ffn';
  if (ffn.toLowerCase() !== AUTO) return { chosenBy, spec: ffn, ...searchEf(cal, ffn) };
  if (stepDown > 0) {
    const ladder = autoLadder(cal);
    const step = Math.min(stepDown, ladder.length - 1);
    if (step > 0) return { chosenBy: 'load', spec: ladder[step], ef: LOAD_EF, reason: `auto under load: ${ladder[step]}, ${step} step${step > 1 ? 's' : ''} below ${ladder[0]}, searched with ef ${LOAD_EF}` };
  }
  const rule = cal.cascade;
  if (!rule || cal.stale) {
    const best = pickEncoder(cal);
    const why = rule ? 'the calibration was measured for another checkpoint' : 'the calibration has no cascade';
    return { chosenBy, spec: best.spec, reason: `auto: ${why}; ${best.reason}` };
  }
  const { first, then, minMargin, minAgreement, agreementK } = rule;
  return {
    chosenBy: 'cascade',
    spec: first,
    rule: { first, then, minMargin, minAgreement, agreementK },
    reason: `${first}, then ${then} when the first two scores are within ${minMargin.toFixed(4)} or fewer than ${Math.round(100 * minAgreement)}% of the first ${agreementK} results share the top label`,
  };
}

/**
 * The calibrated search beam of an encoder, when the calibration is this model's and swept it (uniform widths; the
 * spec as written, so "s" finds S's). A cascade keeps the index's beam: its thresholds were chosen on exact search.
 */
function searchEf(cal: Calibration, spec: string): { ef?: number } {
  const ef = cal.stale ? undefined : cal.search?.ef[spec.trim().toUpperCase()];
  return ef === undefined ? {} : { ef };
}

export interface Escalation {
  escalate: boolean;
  margin: number; // top-1 score - top-2 score (Infinity with fewer than two results)
  agreement: number | null; // share of the first agreementK results with the top result's label; null: no labels
  why: string;
}

/**
 * Whether a cheap result is uncertain enough to run the wide encoder. `hits` are the cheap search's results, best
 * first. Labels count only when the top result has one (a gallery without labels is judged by the margin alone).
 */
export function shouldEscalate(rule: CascadeRule, hits: { score: number; label: string | number | null }[]): Escalation {
  if (hits.length === 0) return { escalate: true, margin: 0, agreement: null, why: 'no results' };
  const margin = hits.length >= 2 ? hits[0].score - hits[1].score : Infinity;
  const top = hits[0].label;
  const first = hits.slice(0, rule.agreementK);
  const agreement = top === null ? null : first.filter((h) => h.label === top).length / first.length;
  const escalate = escalates(rule, margin, agreement);
  const why = !escalate
    ? 'confident'
    : margin < rule.minMargin
      ? `margin ${margin.toFixed(4)} < ${rule.minMargin.toFixed(4)}`
      : `label agreement ${agreement!.toFixed(2)} < ${rule.minAgreement.toFixed(2)}`;
  return { escalate, margin, agreement, why };
}

/** The rule itself, on the two measures of a cheap result (the evaluation replays it over many thresholds). */
export function escalates(rule: Pick<CascadeRule, 'minMargin' | 'minAgreement'>, margin: number, agreement: number | null): boolean {
  return margin < rule.minMargin || (agreement !== null && agreement < rule.minAgreement);
}
