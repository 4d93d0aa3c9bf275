// Retrieval metrics over TopK lists: 1-NN label accuracy, mAP@k with class labels, agreement of top-1 labels, and
// the Pareto frontier of cost against quality. Neighbour recall against a ground truth is recallAtK, beside the exact
// search in src/index/exact-search.ts.
import type { TopK } from '../index/exact-search.ts';

/** Fraction of queries whose top-1 database item has the query's label. Queries labelled -1 count as misses. */
export function oneNnAccuracy(found: TopK, dbLabels: ArrayLike<number>, queryLabels: ArrayLike<number>): number {
  checkLabels(found, queryLabels);
  if (found.n === 0) return NaN;
  let ok = 0;
  for (let q = 0; q < found.n; q++) if (queryLabels[q] >= 0 && dbLabels[found.indices[q * found.k]] === queryLabels[q]) ok++;
  return ok / found.n;
}

/**
 * mAP@k with class labels: AP@k = (1 / min(k, R)) * Σ_{i<=k} P@i · rel_i, R being the number of database items
 * of the query's class (so missing relevant items is penalised). Queries with R = 0 count as 0.
 */
export function meanAveragePrecision(found: TopK, dbLabels: ArrayLike<number>, queryLabels: ArrayLike<number>, k: number, relevantPerClass: Map<number, number>): number {
  checkLabels(found, queryLabels);
  if (k > found.k) throw new RangeError(`mAP@${k} needs ${k} results per query, have ${found.k}`);
  if (found.n === 0) return NaN;
  let sum = 0;
  for (let q = 0; q < found.n; q++) {
    const label = queryLabels[q];
    const R = label >= 0 ? relevantPerClass.get(label) ?? 0 : 0;
    if (R === 0) continue;
    let hits = 0;
    let ap = 0;
    for (let i = 0; i < k; i++) {
      if (dbLabels[found.indices[q * found.k + i]] === label) {
        hits++;
        ap += hits / (i + 1);
      }
    }
    sum += ap / Math.min(k, R);
  }
  return sum / found.n;
}

/** Number of database items of each label. */
export function labelCounts(labels: ArrayLike<number>): Map<number, number> {
  const m = new Map<number, number>();
  for (let i = 0; i < labels.length; i++) m.set(labels[i], (m.get(labels[i]) ?? 0) + 1);
  return m;
}

/** Fraction of queries whose top-1 database item has the same label under both result lists. */
export function top1LabelAgreement(a: TopK, b: TopK, dbLabels: ArrayLike<number>): number {
  if (a.n !== b.n) throw new RangeError(`${a.n} vs ${b.n} queries`);
  if (a.n === 0) return NaN;
  let same = 0;
  for (let q = 0; q < a.n; q++) if (dbLabels[a.indices[q * a.k]] === dbLabels[b.indices[q * b.k]]) same++;
  return same / a.n;
}

export interface TargetRecall {
  queries: number;
  recall1: number; // the target is the top result
  recall10: number; // the target is among the top 10 (top k when k < 10)
}

/**
 * How often each query finds its one known target (`target[q]`, a database row): at rank 1 and within the top 10.
 * `rows`: only these queries (default every query).
 */
export function targetRecall(found: TopK, target: ArrayLike<number>, rows?: ArrayLike<number>): TargetRecall {
  if (target.length !== found.n) throw new RangeError(`${target.length} targets for ${found.n} queries`);
  const k = Math.min(10, found.k);
  const n = rows ? rows.length : found.n;
  let hits1 = 0;
  let hitsK = 0;
  for (let i = 0; i < n; i++) {
    const q = rows ? rows[i] : i;
    const top = found.indices.subarray(q * found.k, q * found.k + k);
    if (top[0] === target[q]) hits1++;
    if (top.includes(target[q])) hitsK++;
  }
  return { queries: n, recall1: hits1 / n, recall10: hitsK / n };
}

function checkLabels(found: TopK, queryLabels: ArrayLike<number>): void {
  if (queryLabels.length !== found.n) throw new RangeError(`${queryLabels.length} query labels for ${found.n} queries`);
}

export function median(xs: ArrayLike<number>): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * The Pareto frontier: the points that no other point beats at lower or equal cost. Sorted by cost, both cost and
 * quality strictly increasing. Points with a non-finite quality are ignored.
 */
export function paretoFrontier<T>(points: T[], cost: (p: T) => number, quality: (p: T) => number): T[] {
  const sorted = points.filter((p) => Number.isFinite(quality(p)) && Number.isFinite(cost(p))).sort((a, b) => cost(a) - cost(b) || quality(b) - quality(a));
  const out: T[] = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (!last || (quality(p) > quality(last) && cost(p) > cost(last))) out.push(p);
  }
  return out;
}
