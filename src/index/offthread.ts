// Encoding on worker threads for long indexing jobs. onnxruntime-node runs sessions synchronously on the calling
// thread, so with the Encoder every batch (100 ms or more) stops the indexing thread, and the SQLite commits, HNSW
// inserts and thumbnail encoding are serialised with encoding instead of overlapping it. A/B in one run on the
// 2-core machine (3,000 CIFAR-10 JPEGs, 2 threads, training job running): end-to-end indexing went from 0.62 to
// 0.91 of the encoder-only throughput.
//
// Each worker runs the same ONNX export of the same weights as Encoder (one onnxruntime thread per worker), and
// start() checks that they give the same embeddings before they are used; if anything differs or fails, indexing
// falls back to the Encoder on this thread.
import { Worker } from 'node:worker_threads';
import { type Encoder, toNchw } from '../encoder/runtime.ts';
import { logger } from '../log.ts';

type Reply = { id: number; embedding?: Float32Array; error?: string; ms?: number };

export class OffThreadEncoder {
  private seq = 0;
  private spec = 'XL';
  private waiting = new Map<number, { resolve: (e: Float32Array) => void; reject: (err: Error) => void }>();
  private failure: Error | null = null;
  /** Milliseconds the workers spent running the model, summed over workers (the rest of the time they waited). */
  busyMs = 0;

  private constructor(private workers: Worker[], private encoder: Encoder) {
    const fail = (err: Error) => {
      this.failure = err;
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    for (const worker of workers) {
      worker.on('message', (m: Reply) => {
        const w = this.waiting.get(m.id);
        if (!w) return;
        this.waiting.delete(m.id);
        this.busyMs += m.ms ?? 0;
        if (m.embedding) w.resolve(m.embedding);
        else w.reject(new Error(`encoder worker: ${m.error}`));
      });
      worker.on('error', fail);
      worker.on('exit', (code) => fail(new Error(`encoder worker exited (code ${code})`)));
    }
  }

  get workerCount(): number {
    return this.workers.length;
  }

  /**
   * `workers` workers running `spec` of the encoder's model, each with a one-thread session and each batch split
   * between them; or null (logged) when they cannot be started or do not agree with the encoder, in which case the
   * caller keeps using the encoder itself. Data-parallel sessions rather than one session with several threads:
   * indexing 10,000 CIFAR-10 images went from 592 to 758-854 images/s on 2 cores (scripts/bench-index, README),
   * because a multi-threaded session's threads wait for each other at every operator while the indexing thread
   * (decoding, SQLite, HNSW) takes turns on the same cores.
   */
  static async start(encoder: Encoder, spec = 'XL', workers = 1): Promise<OffThreadEncoder | null> {
    const started: Worker[] = [];
    try {
      const { submodel, onnx, sessionOptions } = encoder.sessionRecipe(spec);
      const options = { ...sessionOptions, intraOpNumThreads: 1 };
      for (let i = 0; i < workers; i++) {
        const worker = new Worker(new URL('./encode-worker.mjs', import.meta.url), {
          workerData: { onnx, sessionOptions: options, imageSize: encoder.config.imageSize, channels: encoder.config.channels },
          execArgv: [], // plain JavaScript: no loader needed
        });
        started.push(worker);
      }
      await Promise.all(
        started.map(
          (worker) =>
            new Promise<void>((resolve, reject) => {
              worker.once('message', () => resolve());
              worker.once('error', reject);
              worker.once('exit', (code) => reject(new Error(`exited with code ${code}`)));
            }),
        ),
      );
      const off = new OffThreadEncoder(started, encoder);
      off.spec = submodel.spec;
      await off.checkParity();
      return off;
    } catch (err) {
      await Promise.all(started.map((w) => w.terminate()));
      logger.warn({ err: (err as Error).message }, 'encoding on the indexing thread: the encoder worker is not available');
      return null;
    }
  }

  /** Same contract as Encoder.encode: decoded size x size x 3 images -> L2-normalised embeddings. */
  async encode(images: Uint8Array[]): Promise<Float32Array[]> {
    if (images.length === 0) return [];
    if (this.failure) throw this.failure;
    const per = Math.ceil(images.length / this.workers.length);
    const chunks = this.workers.map((_, k) => images.slice(k * per, (k + 1) * per));
    const parts = await Promise.all(chunks.map((chunk, k) => this.run(this.workers[k], chunk)));
    const D = this.encoder.dim;
    return parts.flatMap((flat, k) => chunks[k].map((_, i) => flat.slice(i * D, (i + 1) * D)));
  }

  private run(worker: Worker, images: Uint8Array[]): Promise<Float32Array> {
    if (images.length === 0) return Promise.resolve(new Float32Array(0));
    const pixels = toNchw(images, this.encoder.config.imageSize);
    const id = this.seq++;
    return new Promise<Float32Array>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.postMessage({ id, pixels, n: images.length }, [pixels.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    for (const w of this.workers) w.removeAllListeners('exit');
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  /** Refuses workers whose embeddings differ from the encoder's (e.g. if Encoder's session options change). */
  private async checkParity(): Promise<void> {
    const s = this.encoder.config.imageSize;
    const probe = Array.from({ length: 2 * this.workers.length }, (_, k) => Uint8Array.from({ length: s * s * 3 }, (_, i) => (i * (7 + k * 6) + k * 101) & 255));
    const [mine, theirs] = [await this.encode(probe), await this.encoder.encode(probe, this.spec)];
    let diff = 0;
    mine.forEach((v, i) => v.forEach((x, j) => (diff = Math.max(diff, Math.abs(x - theirs[i][j])))));
    if (!(diff <= 1e-6)) throw new Error(`its embeddings differ from the encoder's by up to ${diff}`);
  }
}
