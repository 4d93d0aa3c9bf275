// Retrieval metrics over TopK lists: neighbour recall against a ground truth, 1-NN label accuracy, mAP@k with
// class labels, agreement of top-1 labels, and the Pareto frontier of cost against quality.
import type { TopK } from './exact-search.ts';

/**
 * Mean over queries of |found top k ∩ truth top k| / k. Row i of `found` is compared with row i of `truth`
 * (pass selectRows(truth, subset) when found covers a subset of the queries).
 */
export function neighbourRecall(found: TopK, truth: TopK, k: number): number {
  if (found.n !== truth.n) throw new RangeError(`found has ${found.n} queries, truth ${truth.n}`);
  if (k > found.k || k > truth.k) throw new RangeError(`recall@${k} needs ${k} results per query (found ${found.k}, truth ${truth.k})`);
  if (found.n === 0) return NaN;
  let hits = 0;
  for (let q = 0; q < found.n; q++) {
    const t = truth.indices.subarray(q * truth.k, q * truth.k + k);
    const f = found.indices.subarray(q * found.k, q * found.k + k);
    for (let i = 0; i < k; i++) if (t.includes(f[i])) hits++;
  }
  return hits / (found.n * k);
}

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

/** Fraction of queries whose top-1 database item is the same item under both result lists. */
export function top1Agreement(a: TopK, b: TopK): number {
  if (a.n !== b.n) throw new RangeError(`${a.n} vs ${b.n} queries`);
  if (a.n === 0) return NaN;
  let same = 0;
  for (let q = 0; q < a.n; q++) if (a.indices[q * a.k] === b.indices[q * b.k]) same++;
  return same / a.n;
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
