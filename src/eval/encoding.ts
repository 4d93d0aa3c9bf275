// Bulk encoding of labelled pixel sets with one query encoder, and its median batch-1 latency.
import { type Encoder } from '../encoder/runtime.ts';
import { makeBatch } from '../train/augment.ts';
import { median } from './metrics.ts';

const noRand = () => 0;

/** Embeddings (n x dim, row-major) of the images `indices` of `pixels` (uint8 HWC, size x size x 3 each). */
export async function encodeImages(
  encoder: Encoder,
  spec: string,
  pixels: Uint8Array,
  size: number,
  indices: ArrayLike<number>,
  opts: { batch?: number; onBatch?: (done: number) => void } = {},
): Promise<Float32Array> {
  const n = indices.length;
  const dim = encoder.dim;
  const batch = opts.batch ?? 128;
  const out = new Float32Array(n * dim);
  for (let start = 0; start < n; start += batch) {
    const idx = Array.prototype.slice.call(indices, start, Math.min(n, start + batch)) as number[];
    const emb = await encoder.encodeBatch(makeBatch(pixels, size, idx, noRand), idx.length, spec);
    out.set(emb, start * dim);
    opts.onBatch?.(idx.length);
  }
  return out;
}

/** Median wall time (ms) of `runs` batch-1 encodes of one image (float32 NCHW), after a short warm-up. */
export async function measureLatency(encoder: Encoder, spec: string, image: Float32Array, runs: number, warmup = 3): Promise<number | null> {
  if (runs <= 0) return null;
  for (let i = 0; i < warmup; i++) await encoder.encodeBatch(image, 1, spec);
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await encoder.encodeBatch(image, 1, spec);
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

/** One image of a pixel set as a float32 NCHW batch of 1. */
export const singleImage = (pixels: Uint8Array, size: number, index: number) => makeBatch(pixels, size, [index], noRand);
