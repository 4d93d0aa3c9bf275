// CIFAR-10's 60,000 images (train + test) encoded with XL, for the HNSW benchmarks (bench-index, bench-filter):
// encoded once per model (a few minutes on two cores) and cached in .cache/bench-index/, then split into stored
// vectors and held-out queries (encoded with XL and with S). Every (n / queries)-th image is a query and is not
// stored: queries that are not near-copies of a stored image are the hard case for HNSW.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLabelledPixels } from '../src/data/labelled.ts';
import type { Encoder } from '../src/encoder/runtime.ts';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export interface CifarEmbeddingOptions {
  test: string; // the test archive (10,000 images)
  train: string | null; // the training archive (50,000 images); null: the test images only
  limit: number; // images used, train first
  queries: number; // held out as queries
  batchSize?: number;
}

export interface CifarEmbeddings {
  db: Float32Array[]; // XL embeddings of the stored images
  labels: string[]; // their class names
  queries: { XL: Float32Array[]; S: Float32Array[] };
  queryLabels: string[];
}

export function images(pixels: Uint8Array, size: number, n: number): Uint8Array[] {
  const per = size * size * 3;
  return Array.from({ length: n }, (_, i) => pixels.subarray(i * per, (i + 1) * per));
}

export async function encodeAll(encoder: Encoder, imgs: Uint8Array[], spec: string, batch: number): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let i = 0; i < imgs.length; i += batch) out.push(...(await encoder.encode(imgs.slice(i, i + batch), spec)));
  return out;
}

export async function cifarEmbeddings(encoder: Encoder, opts: CifarEmbeddingOptions): Promise<CifarEmbeddings> {
  const size = encoder.config.imageSize;
  const test = await loadLabelledPixels(opts.test, size);
  const train = opts.train === null ? null : await loadLabelledPixels(opts.train, size);
  const parts = [train, test].filter((p) => p !== null);
  const all = parts.flatMap((p) => images(p.pixels, size, p.labels.length)).slice(0, opts.limit);
  const allLabels = parts.flatMap((p) => Array.from(p.labels, (l) => p.classes[l])).slice(0, opts.limit);
  const key = crypto.createHash('sha256').update(`${encoder.modelId}|${opts.test}|${opts.train}|${all.length}`).digest('hex').slice(0, 16);
  const cache = path.join(root, '.cache/bench-index', `db-${key}.f32`);
  const dim = encoder.dim;
  let vectors: Float32Array[];
  if (fs.existsSync(cache)) {
    const flat = new Float32Array(new Uint8Array(fs.readFileSync(cache)).buffer);
    vectors = Array.from({ length: flat.length / dim }, (_, i) => flat.subarray(i * dim, (i + 1) * dim));
    console.log(`${vectors.length} XL embeddings from ${path.relative(root, cache)}`);
  } else {
    const t0 = performance.now();
    vectors = await encodeAll(encoder, all, 'XL', 128);
    console.log(`encoded ${vectors.length} images with XL in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    fs.mkdirSync(path.dirname(cache), { recursive: true });
    const flat = new Float32Array(vectors.length * dim);
    vectors.forEach((v, i) => flat.set(v, i * dim));
    fs.writeFileSync(cache, new Uint8Array(flat.buffer));
  }
  const step = Math.floor(all.length / opts.queries);
  const isQuery = (i: number) => i % step === step - 1 && i < opts.queries * step;
  const queryIdx = all.map((_, i) => i).filter(isQuery);
  return {
    db: vectors.filter((_, i) => !isQuery(i)),
    labels: allLabels.filter((_, i) => !isQuery(i)),
    queries: { XL: queryIdx.map((i) => vectors[i]), S: await encodeAll(encoder, queryIdx.map((i) => all[i]), 'S', opts.batchSize ?? 64) },
    queryLabels: queryIdx.map((i) => allLabels[i]),
  };
}
