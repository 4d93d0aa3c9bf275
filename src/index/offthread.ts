// Encoding on a worker thread for long indexing jobs. onnxruntime-node runs sessions synchronously on the calling
// thread, so with the Encoder every batch (100 ms or more) stops the indexing thread, and the SQLite commits, HNSW
// inserts and thumbnail encoding are serialised with encoding instead of overlapping it. A/B in one run on the
// 2-core machine (3,000 CIFAR-10 JPEGs, 2 threads, training job running): end-to-end indexing went from 0.62 to
// 0.91 of the encoder-only throughput.
//
// The worker runs the same ONNX export of the same weights with the same session options as Encoder, and start()
// checks that both give the same embeddings before it is used; if anything differs or fails, indexing falls back
// to the Encoder on this thread.
import { Worker } from 'node:worker_threads';
import { type Encoder, toNchw } from '../encoder/runtime.ts';
import { logger } from '../log.ts';

type Reply = { id: number; embedding?: Float32Array; error?: string; ms?: number };

export class OffThreadEncoder {
  private seq = 0;
  private spec = 'XL';
  private waiting = new Map<number, { resolve: (e: Float32Array) => void; reject: (err: Error) => void }>();
  private failure: Error | null = null;
  /** Milliseconds the worker spent running the model (the rest of the time it waited for batches). */
  busyMs = 0;

  private constructor(private worker: Worker, private encoder: Encoder) {
    worker.on('message', (m: Reply) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      this.busyMs += m.ms ?? 0;
      if (m.embedding) w.resolve(m.embedding);
      else w.reject(new Error(`encoder worker: ${m.error}`));
    });
    const fail = (err: Error) => {
      this.failure = err;
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`encoder worker exited (code ${code})`)));
  }

  /**
   * A worker running `spec` of the encoder's model, or null (logged) when one cannot be started or does not agree
   * with the encoder, in which case the caller keeps using the encoder itself.
   */
  static async start(encoder: Encoder, spec = 'XL'): Promise<OffThreadEncoder | null> {
    let worker: Worker | undefined;
    try {
      const { submodel, onnx, sessionOptions } = encoder.sessionRecipe(spec);
      worker = new Worker(new URL('./encode-worker.mjs', import.meta.url), {
        workerData: { onnx, sessionOptions, imageSize: encoder.config.imageSize, channels: encoder.config.channels },
        execArgv: [], // plain JavaScript: no loader needed
      });
      await new Promise<void>((resolve, reject) => {
        worker!.once('message', () => resolve());
        worker!.once('error', reject);
        worker!.once('exit', (code) => reject(new Error(`exited with code ${code}`)));
      });
      const off = new OffThreadEncoder(worker, encoder);
      off.spec = submodel.spec;
      await off.checkParity();
      return off;
    } catch (err) {
      await worker?.terminate();
      logger.warn({ err: (err as Error).message }, 'encoding on the indexing thread: the encoder worker is not available');
      return null;
    }
  }

  /** Same contract as Encoder.encode: decoded size x size x 3 images -> L2-normalised embeddings. */
  async encode(images: Uint8Array[]): Promise<Float32Array[]> {
    if (images.length === 0) return [];
    if (this.failure) throw this.failure;
    const pixels = toNchw(images, this.encoder.config.imageSize);
    const id = this.seq++;
    const flat = await new Promise<Float32Array>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, pixels, n: images.length }, [pixels.buffer as ArrayBuffer]);
    });
    const D = this.encoder.dim;
    return images.map((_, i) => flat.slice(i * D, (i + 1) * D));
  }

  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }

  /** Refuses a worker whose embeddings differ from the encoder's (e.g. if Encoder's session options change). */
  private async checkParity(): Promise<void> {
    const s = this.encoder.config.imageSize;
    const probe = [0, 1].map((k) => Uint8Array.from({ length: s * s * 3 }, (_, i) => (i * (7 + k * 6) + k * 101) & 255));
    const [mine, theirs] = [await this.encode(probe), await this.encoder.encode(probe, this.spec)];
    let diff = 0;
    mine.forEach((v, i) => v.forEach((x, j) => (diff = Math.max(diff, Math.abs(x - theirs[i][j])))));
    if (!(diff <= 1e-6)) throw new Error(`its embeddings differ from the encoder's by up to ${diff}`);
  }
}
