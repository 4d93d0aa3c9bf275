// The one encoder pool: piscina worker threads, each with its own single-thread onnxruntime sessions of the same
// weights, used by serving (query batches of every width) and by indexing (XL batches). Two reasons it exists:
// onnxruntime-node runs a session synchronously on the calling thread, so encoding on the main thread blocks every
// other request (a 1 ms timer fired once during a 1.8 s XL batch); and several single-thread sessions side by side
// beat one session with several threads, whose threads wait for each other at every operator (indexing 10,000
// CIFAR-10 images: 592 images/s with one 2-thread session, 758-854 with two 1-thread workers; README).
//
// A batch of several images is split between the workers, so one batch keeps every core busy; batches of other
// widths queue in the same pool and take whichever worker frees first.
import os from 'node:os';
import { Piscina } from 'piscina';
import { logger } from '../log.ts';
import type { Submodel } from './config.ts';
import { type Encoder, type ImageEncoder, toNchw } from './runtime.ts';
import type { EncodeTask, EncodeReply } from './pool-worker.ts';

/** Fewest images a worker is given when a batch is split: below this the hand-off costs more than it saves. */
const MIN_CHUNK = 4;
/**
 * Images per worker run when a batch is large: onnxruntime's time per 32x32 image is lowest at batches of 4-16 and
 * grows beyond (one thread, S / XL ms per image: batch 8 0.62 / 1.11, 16 0.65 / 1.20, 32 0.73 / 1.26, 64 0.76 / 1.31).
 */
const BEST_CHUNK = 8;

const failedToStart = new WeakSet<Encoder>(); // encoders whose pool could not start (EncoderPool.tryStart)

export interface PoolOptions {
  threads?: number; // workers (default: every core)
  specs?: string[]; // submodels whose sessions every worker opens before the first task (default: XL)
}

/** The pool's size and sessions; throws on bad options (before any worker starts). */
function checkedOptions(encoder: Encoder, opts: PoolOptions): { threads: number; specs: string[] } {
  const threads = opts.threads ?? Math.max(1, os.availableParallelism());
  if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`encoder pool threads must be a positive integer, got ${threads}`);
  const specs = (opts.specs ?? ['XL']).map((s) => encoder.submodel(s).spec); // a bad spec fails here, not in a worker
  return { threads, specs };
}

export class EncoderPool implements ImageEncoder {
  /** Milliseconds the workers spent running the model, summed over workers. */
  busyMs = 0;
  /** Linux thread ids of the workers seen so far (scripts/bench-server reads their CPU time from /proc). */
  readonly threadIds = new Set<number>();

  private constructor(
    private readonly encoder: Encoder,
    private readonly pool: Piscina<EncodeTask, EncodeReply>,
    readonly threads: number, // workers started (kept after close: run time per worker is read after the pool stops)
  ) {}

  /** Starts the workers, each with sessions for `specs` ready, sharing `encoder`'s weights. */
  static async start(encoder: Encoder, opts: PoolOptions = {}): Promise<EncoderPool> {
    const { threads, specs } = checkedOptions(encoder, opts);
    const pool = new Piscina<EncodeTask, EncodeReply>({
      filename: new URL('./pool-worker.mjs', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: Infinity,
      concurrentTasksPerWorker: 1,
      workerData: { ckpt: encoder.checkpoint, modelPath: encoder.modelPath, specs },
    });
    const pooled = new EncoderPool(encoder, pool, threads);
    try {
      // One task per worker brings every worker up (module loaded, sessions created) before the first real one.
      const size = encoder.config.imageSize;
      await Promise.all(Array.from({ length: threads }, () => pool.run({ spec: specs[0], pixels: new Float32Array(3 * size * size), n: 1 })));
    } catch (err) {
      await pool.destroy();
      throw err;
    }
    return pooled;
  }

  /**
   * An EncoderPool, or null (logged) when its workers cannot start: the caller then encodes on its own thread. It
   * is not tried again for the same encoder (a queue worker would otherwise retry, and warn, at every job).
   */
  static async tryStart(encoder: Encoder, opts: PoolOptions = {}): Promise<EncoderPool | null> {
    checkedOptions(encoder, opts); // bad options are the caller's error: thrown, not remembered as a failed start
    if (failedToStart.has(encoder)) return null;
    try {
      return await EncoderPool.start(encoder, opts);
    } catch (err) {
      failedToStart.add(encoder);
      logger.warn({ err: (err as Error).message }, 'the encoder pool did not start: encoding on the calling thread');
      return null;
    }
  }

  get config() {
    return this.encoder.config;
  }
  get modelId(): string {
    return this.encoder.modelId;
  }
  get dim(): number {
    return this.encoder.dim;
  }
  /** Worker runs waiting for a free worker (the load controller watches it). */
  get queued(): number {
    return this.pool.queueSize;
  }

  submodel(spec: string): Submodel {
    return this.encoder.submodel(spec);
  }

  /** Decoded images (size x size x 3 uint8) -> one embedding each, computed in the workers. */
  async encode(images: Uint8Array[], spec = 'XL'): Promise<Float32Array[]> {
    if (images.length === 0) return [];
    const canonical = this.encoder.submodel(spec).spec; // a bad spec fails here, not in a worker
    // One run for a small batch; otherwise one per worker at least, and runs of about BEST_CHUNK images.
    const parts = images.length < 2 * MIN_CHUNK ? 1 : Math.max(Math.min(this.threads, Math.floor(images.length / MIN_CHUNK)), Math.round(images.length / BEST_CHUNK));
    const per = Math.ceil(images.length / parts);
    const chunks = Array.from({ length: parts }, (_, k) => images.slice(k * per, (k + 1) * per)).filter((c) => c.length > 0);
    const flats = await Promise.all(chunks.map((chunk) => this.run(chunk, canonical)));
    const D = this.dim;
    return chunks.flatMap((chunk, k) => chunk.map((_, i) => flats[k].slice(i * D, (i + 1) * D)));
  }

  private async run(images: Uint8Array[], spec: string): Promise<Float32Array> {
    const pixels = toNchw(images, this.encoder.config.imageSize);
    const reply = await this.pool.run({ spec, pixels, n: images.length }, { transferList: [pixels.buffer as ArrayBuffer] });
    this.busyMs += reply.ms;
    if (reply.tid !== null) this.threadIds.add(reply.tid);
    return reply.embeddings;
  }

  /** Lets queued and running encodings finish, then stops the workers (terminating one mid-run aborts the process). */
  async close(): Promise<void> {
    await this.pool.close();
  }
}
