// npx tsx scripts/probe-width-error.ts [--model models/matvit-cifar10/model.safetensors] [--threads 2]
// Is a narrow width's recall@10 of XL's neighbours set by how far its embedding is from XL's, or by where the error
// points? For each uniform width: its mean cosine to XL's embedding of the same query and its recall@10 of XL's exact
// top-10 (the report's measure). Beside them, XL's own queries moved by random noise to a given cosine from
// themselves: a width whose error hurt recall no more than isotropic noise would sit on that curve. Also the gap
// between XL's 10th and 11th similarities, which is how far a neighbour near the cut can move before it swaps, and
// how much of each width's error lies in the database's top principal directions, where neighbours differ most.
// Needs ../shared/datasets (CIFAR-10 train as the database, test as the queries). About 70 s on 2 cores.
import { parseArgs } from 'node:util';
import { loadLabelledPixels } from '../src/data/labelled.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { encodeImages } from '../src/eval/encoding.ts';
import { ExactSearch, recallAtK } from '../src/index/exact-search.ts';
import { mulberry32 } from '../src/train/rng.ts';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: 'models/matvit-cifar10/model.safetensors' },
    threads: { type: 'string', default: '2' },
  },
});
const threads = Number(args.threads);
const enc = Encoder.load(args.model, { threads });
const size = enc.config.imageSize;
const dim = enc.dim;
const db = await loadLabelledPixels('../shared/datasets/cifar10/train.tar.gz', size);
const queries = await loadLabelledPixels('../shared/datasets/cifar10/test.tar.gz', size);
const nq = queries.labels.length;
const every = (n: number) => Int32Array.from({ length: n }, (_, i) => i);

/** Rows scaled to unit length, in place. */
function normalizeRows(a: Float32Array): Float32Array {
  for (let i = 0; i < a.length; i += dim) {
    let s = 0;
    for (let j = 0; j < dim; j++) s += a[i + j] ** 2;
    const n = Math.sqrt(s);
    for (let j = 0; j < dim; j++) a[i + j] /= n;
  }
  return a;
}

const dbXl = normalizeRows(await encodeImages(enc, 'XL', db.pixels, size, every(db.labels.length)));
const qXl = normalizeRows(await encodeImages(enc, 'XL', queries.pixels, size, every(nq)));
const search = await ExactSearch.create(dbXl, db.labels.length, dim, { k: 11, threads });
const truth = await search.search(qXl, nq);
const meanCosToXl = (q: Float32Array) => {
  let s = 0;
  for (let i = 0; i < q.length; i++) s += q[i] * qXl[i];
  return s / nq;
};

/** The database's top principal directions (power iteration with deflation on its covariance), unit rows. */
function principalDirections(x: Float32Array, n: number, count: number): Float64Array[] {
  const mean = new Float64Array(dim);
  for (let i = 0; i < n; i++) for (let j = 0; j < dim; j++) mean[j] += x[i * dim + j] / n;
  const cov = new Float64Array(dim * dim);
  const row = new Float64Array(dim);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < dim; j++) row[j] = x[i * dim + j] - mean[j];
    for (let a = 0; a < dim; a++) for (let b = 0; b < dim; b++) cov[a * dim + b] += (row[a] * row[b]) / n;
  }
  const found: Float64Array[] = [];
  for (let c = 0; c < count; c++) {
    let v = Float64Array.from({ length: dim }, (_, j) => Math.sin(j + c + 1));
    for (let it = 0; it < 300; it++) {
      const w = new Float64Array(dim);
      for (let a = 0; a < dim; a++) for (let b = 0; b < dim; b++) w[a] += cov[a * dim + b] * v[b];
      for (const u of found) {
        let d = 0;
        for (let j = 0; j < dim; j++) d += w[j] * u[j];
        for (let j = 0; j < dim; j++) w[j] -= d * u[j];
      }
      const len = Math.hypot(...w);
      v = w.map((t) => t / len);
    }
    found.push(v);
  }
  return found;
}
const TOP = 10;
const top = principalDirections(dbXl, db.labels.length, TOP);
/** Mean share of the rows' squared length that lies in the top principal directions. */
const shareInTop = (rows: Float32Array) => {
  let s = 0;
  for (let i = 0; i < nq; i++) {
    const e = rows.subarray(i * dim, (i + 1) * dim);
    let all = 0;
    let inTop = 0;
    for (let j = 0; j < dim; j++) all += e[j] ** 2;
    for (const u of top) {
      let d = 0;
      for (let j = 0; j < dim; j++) d += e[j] * u[j];
      inTop += d * d;
    }
    s += all > 0 ? inTop / all : 0;
  }
  return s / nq;
};

console.log(`model ${enc.modelId}; ${nq} queries against ${db.labels.length} XL vectors`);
console.log(`share of a vector in the database's top ${TOP} principal directions (of ${dim}): XL queries ${shareInTop(qXl).toFixed(3)}, isotropic noise ${(TOP / dim).toFixed(3)}`);
for (const spec of ['S', 'M', 'L']) {
  const q = normalizeRows(await encodeImages(enc, spec, queries.pixels, size, every(nq)));
  const error = q.map((v, i) => v - qXl[i]);
  console.log(`${spec}: cosine to XL's query ${meanCosToXl(q).toFixed(4)}, recall@10 ${recallAtK(await search.search(q, nq), truth, 10).toFixed(4)}, share of its error in the top ${TOP} directions ${shareInTop(error).toFixed(3)}`);
}

const rand = mulberry32(1);
const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
for (const c of [0.99, 0.994, 0.996, 0.998]) {
  // Each query plus a random direction orthogonal to it, mixed so that the result sits at cosine c from the query.
  const q = new Float32Array(nq * dim);
  for (let i = 0; i < nq; i++) {
    const x = qXl.subarray(i * dim, (i + 1) * dim);
    const noise = Float32Array.from({ length: dim }, gauss);
    let along = 0;
    for (let j = 0; j < dim; j++) along += noise[j] * x[j];
    let len = 0;
    for (let j = 0; j < dim; j++) len += (noise[j] -= along * x[j]) ** 2;
    len = Math.sqrt(len);
    for (let j = 0; j < dim; j++) q[i * dim + j] = c * x[j] + Math.sqrt(1 - c * c) * (noise[j] / len);
  }
  console.log(`XL + random noise at cosine ${c}: recall@10 ${recallAtK(await search.search(q, nq), truth, 10).toFixed(4)}`);
}

const gaps = Array.from({ length: nq }, (_, i) => truth.scores[i * 11 + 9] - truth.scores[i * 11 + 10]).sort((a, b) => a - b);
console.log(`XL's 10th minus 11th similarity: median ${gaps[nq >> 1].toFixed(4)}, quartiles ${gaps[nq >> 2].toFixed(4)} / ${gaps[(3 * nq) >> 2].toFixed(4)}`);
await search.release();
await enc.close();
