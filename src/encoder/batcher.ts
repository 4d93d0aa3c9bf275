// Micro-batching for serving: concurrent encode requests for the same submodel are queued and run as one
// onnxruntime call (one batch costs far less than the same images one by one). A batch starts as soon as the
// runtime is free for that submodel, so a lone request waits for nothing.
import type { ImageEncoder } from './runtime.ts';

interface Pending {
  image: Uint8Array;
  resolve: (e: Float32Array) => void;
  reject: (err: unknown) => void;
}

export class EncodeBatcher {
  private queues = new Map<string, Pending[]>();
  private busy = new Set<string>();
  /** Sizes of the batches run so far (for tests and stats). */
  readonly batchSizes: number[] = [];
  /** Called after each batch with its size and wall time (the server's load controller). */
  onBatch: ((images: number, ms: number) => void) | null = null;

  constructor(private encoder: ImageEncoder, private maxBatch = 64) {}

  /** Images waiting for a batch (not counting the batches running). */
  get pending(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }

  /** One decoded image (size x size x 3 uint8) -> its embedding with submodel `spec`. */
  async encode(image: Uint8Array, spec: string): Promise<Float32Array> {
    const key = this.encoder.submodel(spec).spec; // canonical; a bad spec rejects before anything is queued
    return new Promise((resolve, reject) => {
      const q = this.queues.get(key) ?? [];
      q.push({ image, resolve, reject });
      this.queues.set(key, q);
      if (!this.busy.has(key)) void this.drain(key);
    });
  }

  private async drain(key: string): Promise<void> {
    this.busy.add(key);
    // Yield once so that requests arriving in the same tick join the first batch.
    await new Promise((r) => setImmediate(r));
    try {
      for (let q = this.queues.get(key)!; q.length > 0; q = this.queues.get(key)!) {
        const batch = q.splice(0, this.maxBatch);
        this.batchSizes.push(batch.length);
        try {
          const t0 = performance.now();
          const out = await this.encoder.encode(batch.map((p) => p.image), key);
          this.onBatch?.(batch.length, performance.now() - t0);
          batch.forEach((p, i) => p.resolve(out[i]));
        } catch (err) {
          batch.forEach((p) => p.reject(err));
        }
      }
    } finally {
      this.busy.delete(key);
    }
  }
}
