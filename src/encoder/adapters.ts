// Query adapters: for a narrower submodel, an affine map of its embedding toward XL's, fitted in closed form after
// training. The database is always XL's, so a query encoder's only job is to land where XL's query would; a
// narrow width's error is partly systematic (measured on v4's L: a linear map fitted on the 50,000 training images
// takes the test queries' recall@10 of XL's neighbours from 0.851 to 0.875), and one D x D matrix per width removes
// that part for about 0.02% of XL's FLOPs. XL itself never has one, so stored vectors never change.
//
// They live in a sidecar file beside the model (model.safetensors -> model.adapters.safetensors) that records the
// SHA-256 of the model file it was fitted to: a model retrained in place cannot silently use stale adapters.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { CheckpointError, type TensorMap, loadSafetensors, saveSafetensors } from './safetensors.ts';

export const ADAPTERS_FORMAT = 'matvit-adapters/1';

/** y = normalize(x W + b) for an L2-normalised embedding x; W is [D, D] row-major (input rows), b is [D]. */
export interface QueryAdapter {
  weight: Float32Array;
  bias: Float32Array;
}

export type QueryAdapters = Record<string, QueryAdapter>; // canonical submodel spec -> its adapter

/** The adapter `spec` (canonical) runs with: none for XL, which encodes the database. */
export function adapterFor(adapters: QueryAdapters | undefined, spec: string): QueryAdapter | undefined {
  return spec === 'XL' ? undefined : adapters?.[spec];
}

/** The sidecar of a model file: model.safetensors -> model.adapters.safetensors. */
export function adaptersPath(modelFile: string): string {
  return modelFile.replace(/(\.safetensors)?$/, '.adapters.safetensors');
}

/** The hex SHA-256 of a model file's bytes: what its adapters are keyed to. */
export const sha256 = (bytes: Uint8Array) => crypto.createHash('sha256').update(bytes).digest('hex');

/**
 * Writes adapters for `modelFile` (atomically, through saveSafetensors), keyed to `modelSha256`: the hash of the
 * bytes the adapters were fitted on (a loaded checkpoint's `sha256`), not of the file as it is now, which a trainer
 * may have rewritten meanwhile.
 */
export function saveAdapters(modelFile: string, modelSha256: string, adapters: QueryAdapters, dim: number, extra: Record<string, string> = {}): string {
  const tensors: TensorMap = {};
  for (const [spec, a] of Object.entries(adapters)) {
    if (a.weight.length !== dim * dim || a.bias.length !== dim) throw new RangeError(`adapter ${spec} is not ${dim} x ${dim}`);
    tensors[`adapter.${spec}.weight`] = { shape: [dim, dim], data: a.weight };
    tensors[`adapter.${spec}.bias`] = { shape: [dim], data: a.bias };
  }
  const file = adaptersPath(modelFile);
  saveSafetensors(file, tensors, { ...extra, format: ADAPTERS_FORMAT, 'model.sha256': modelSha256 });
  return file;
}

/**
 * The adapters of `modelFile`, or none if it has no sidecar. `modelSha256` is the hash of the model bytes the caller
 * decoded (not of the file read again: the trainer may rewrite it meanwhile). Throws CheckpointError for adapters
 * fitted to other bytes.
 */
export function loadAdapters(modelFile: string, modelSha256: string, dim: number): QueryAdapters {
  const file = adaptersPath(modelFile);
  if (!fs.existsSync(file)) return {};
  const { tensors, metadata } = loadSafetensors(file);
  if (metadata.format !== ADAPTERS_FORMAT) throw new CheckpointError(`${file} is not a query-adapter file (format "${metadata.format ?? 'missing'}", expected "${ADAPTERS_FORMAT}")`);
  if (metadata['model.sha256'] !== modelSha256) {
    throw new CheckpointError(`${file} was fitted to another version of ${modelFile}; run \`matvit adapt\` again or delete it`);
  }
  const adapters: QueryAdapters = {};
  for (const [name, t] of Object.entries(tensors)) {
    const m = /^adapter\.(.+)\.weight$/.exec(name);
    if (!m) continue;
    const bias = tensors[`adapter.${m[1]}.bias`];
    if (t.shape.join('x') !== `${dim}x${dim}` || bias?.shape.join('x') !== String(dim)) throw new CheckpointError(`${file}: adapter ${m[1]} is not ${dim} x ${dim} with a bias of ${dim}`);
    adapters[m[1]] = { weight: t.data, bias: bias.data };
  }
  return adapters;
}

/** Removes a model file's adapters (a new model file makes them stale). */
export function removeAdapters(modelFile: string): void {
  fs.rmSync(adaptersPath(modelFile), { force: true });
}

/**
 * Ridge regression of targets on [inputs, 1], both n x dim row-major: the W, b minimising
 * sum ||x W + b - y||^2 + lambda ||W||^2 (the bias is not penalised). Normal equations in float64, solved by Cholesky.
 */
export function fitAdapter(inputs: Float32Array, targets: Float32Array, dim: number, lambda: number): QueryAdapter {
  const n = inputs.length / dim;
  if (!Number.isInteger(n) || targets.length !== inputs.length) throw new RangeError('inputs and targets must both be n x dim');
  if (n <= dim) throw new RangeError(`fitting a ${dim}-dimensional adapter needs more than ${dim} images, got ${n}`);
  const d1 = dim + 1;
  const gram = new Float64Array(d1 * d1); // [x,1]^T [x,1]
  const cross = new Float64Array(d1 * dim); // [x,1]^T y
  const row = new Float64Array(d1);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < dim; j++) row[j] = inputs[i * dim + j];
    row[dim] = 1;
    for (let a = 0; a < d1; a++) {
      const ra = row[a];
      for (let b = a; b < d1; b++) gram[a * d1 + b] += ra * row[b];
      for (let b = 0; b < dim; b++) cross[a * dim + b] += ra * targets[i * dim + b];
    }
  }
  for (let a = 0; a < d1; a++) for (let b = 0; b < a; b++) gram[a * d1 + b] = gram[b * d1 + a];
  for (let a = 0; a < dim; a++) gram[a * d1 + a] += lambda;
  const solution = choleskySolve(gram, cross, d1, dim);
  return { weight: Float32Array.from(solution.subarray(0, dim * dim)), bias: Float32Array.from(solution.subarray(dim * dim)) };
}

/** Solves A X = B for symmetric positive definite A (n x n) and B (n x m), both row-major. */
function choleskySolve(A: Float64Array, B: Float64Array, n: number, m: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      if (i === j) {
        if (!(s > 0)) throw new RangeError('the inputs are degenerate (their Gram matrix is not positive definite); raise lambda');
        L[i * n + i] = Math.sqrt(s);
      } else L[i * n + j] = s / L[j * n + j];
    }
  }
  const X = Float64Array.from(B);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < i; k++) for (let c = 0; c < m; c++) X[i * m + c] -= L[i * n + k] * X[k * m + c];
    for (let c = 0; c < m; c++) X[i * m + c] /= L[i * n + i];
  }
  for (let i = n - 1; i >= 0; i--) {
    for (let k = i + 1; k < n; k++) for (let c = 0; c < m; c++) X[i * m + c] -= L[k * n + i] * X[k * m + c];
    for (let c = 0; c < m; c++) X[i * m + c] /= L[i * n + i];
  }
  return X;
}

/** The adapter applied to n embeddings (n x dim, L2-normalised), in float64 then normalised: the reference. */
export function applyAdapter(a: QueryAdapter, embeddings: Float32Array, dim: number): Float32Array {
  const n = embeddings.length / dim;
  const out = new Float32Array(n * dim);
  const y = new Float64Array(dim);
  for (let i = 0; i < n; i++) {
    y.set(a.bias);
    for (let k = 0; k < dim; k++) {
      const xk = embeddings[i * dim + k];
      for (let j = 0; j < dim; j++) y[j] += xk * a.weight[k * dim + j];
    }
    const len = Math.max(Math.hypot(...y), 1e-12);
    for (let j = 0; j < dim; j++) out[i * dim + j] = y[j] / len;
  }
  return out;
}
