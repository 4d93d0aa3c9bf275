// Encoding off the event loop. onnxruntime-node 1.30 runs `session.run` synchronously on the calling thread (its
// promise only defers the call with setImmediate), so on the main thread every query encoding blocks all other
// requests. PooledEncoder runs the encodings in piscina worker threads instead, with the same interface the
// EncodeBatcher and the indexer use (submodel, encode, modelId, dim, config), so batching is unchanged: the batcher
// still groups concurrent queries for one submodel into one run, which now happens in a worker.
import { Piscina } from 'piscina';
import type { Submodel } from '../encoder/config.ts';
import { type Encoder, type SubmodelInfo, toNchw } from '../encoder/runtime.ts';
import type { EncodeTask } from './encode-worker.ts';

/** One encoding worker: with two cores, the main thread (HTTP, decoding glue, HNSW) needs the other one. */
export const DEFAULT_ENCODE_WORKERS = 1;

export class PooledEncoder {
  private constructor(private readonly encoder: Encoder, private readonly pool: Piscina<EncodeTask, Float32Array>) {}

  /** Starts `threads` workers, each with sessions for `specs` ready, sharing `encoder`'s weights. */
  static async start(encoder: Encoder, ckpt: { config: unknown; params: unknown; metadata: unknown }, threads: number, specs: string[]): Promise<PooledEncoder> {
    const pool = new Piscina<EncodeTask, Float32Array>({
      filename: new URL('./encode-worker.mjs', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: Infinity,
      concurrentTasksPerWorker: 1,
      workerData: { ckpt, modelPath: encoder.modelPath, specs },
    });
    const pooled = new PooledEncoder(encoder, pool);
    // One task per worker brings every worker up (module loaded, sessions created) before the first query.
    const size = encoder.config.imageSize;
    await Promise.all(Array.from({ length: threads }, () => pool.run({ spec: 'XL', pixels: new Float32Array(3 * size * size), n: 1 })));
    return pooled;
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
  get modelPath(): string {
    return this.encoder.modelPath;
  }
  get threads(): number {
    return this.pool.threads.length;
  }

  submodel(spec: string): Submodel {
    return this.encoder.submodel(spec);
  }

  info(spec: string): Promise<SubmodelInfo> {
    return this.encoder.info(spec);
  }

  /** Decoded images (size x size x 3 uint8) -> one embedding each, computed in a worker. */
  async encode(images: Uint8Array[], spec = 'XL'): Promise<Float32Array[]> {
    if (images.length === 0) return [];
    const canonical = this.encoder.submodel(spec).spec; // a bad spec fails here, not in a worker
    const pixels = toNchw(images, this.encoder.config.imageSize);
    const flat = await this.pool.run({ spec: canonical, pixels, n: images.length }, { transferList: [pixels.buffer as ArrayBuffer] });
    const D = this.dim;
    return images.map((_, i) => flat.slice(i * D, (i + 1) * D));
  }

  /** For code typed against Encoder (EncodeBatcher, the indexer): the members they use are all here. */
  asEncoder(): Encoder {
    return this as unknown as Encoder;
  }

  /** Lets queued and running encodings finish, then stops the workers (terminating one mid-run aborts the process). */
  async close(): Promise<void> {
    await this.pool.close();
  }
}
