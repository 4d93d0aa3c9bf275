// The serving runtime: one onnxruntime-node session per submodel, each built from a standalone sliced ONNX export
// of the checkpoint, and a batched `encode` from decoded images to L2-normalised embeddings.
import * as ort from 'onnxruntime-node';
import { type QueryAdapter, adapterFor } from './adapters.ts';
import { DEFAULT_MODEL_PATH, type ModelCheckpoint, loadModel } from './checkpoint.ts';
import { ConfigError, type MatViTConfig, type Submodel, parseSubmodel } from './config.ts';
import { exportSubmodel } from './export.ts';

export interface SubmodelInfo extends Submodel {
  flops: number; // per image
  params: number;
}

/**
 * What turns decoded images into embeddings, as the batcher, the indexer and the server use it: an Encoder on the
 * calling thread, or the EncoderPool (pool.ts) of worker threads.
 */
export interface ImageEncoder {
  readonly config: MatViTConfig;
  readonly modelId: string;
  readonly dim: number;
  /** Parses and checks a submodel spec (throws ConfigError for a bad one). */
  submodel(spec: string): Submodel;
  /** Decoded images (size x size x 3 uint8 RGB) -> one L2-normalised embedding each. */
  encode(images: Uint8Array[], spec?: string): Promise<Float32Array[]>;
}

export interface EncoderOptions {
  threads?: number; // onnxruntime intra-op threads (default 1: the server runs several encoders side by side)
}

export class Encoder implements ImageEncoder {
  readonly config: MatViTConfig;
  /** Identifies the embedding space: the checkpoint's file name and training step. */
  readonly modelId: string;
  private sessions = new Map<string, Promise<{ session: ort.InferenceSession; info: SubmodelInfo }>>();

  constructor(private ckpt: ModelCheckpoint, readonly modelPath: string, private opts: EncoderOptions = {}) {
    this.config = ckpt.config;
    this.modelId = `${modelPath.split('/').slice(-2).join('/')}@${ckpt.metadata['train.step'] ?? '0'}`;
  }

  static load(modelPath = DEFAULT_MODEL_PATH, opts: EncoderOptions = {}): Encoder {
    return new Encoder(loadModel(modelPath), modelPath, opts);
  }

  /** The weights (the encoder pool's workers build their sessions from them, not from the file). */
  get checkpoint(): ModelCheckpoint {
    return this.ckpt;
  }

  get dim(): number {
    return this.config.width;
  }

  /** The onnxruntime threads this encoder was given (indexing runs that many single-thread workers instead). */
  get threads(): number {
    return this.opts.threads ?? 1;
  }

  /** Parses and checks a submodel spec against what the checkpoint was trained for. */
  submodel(spec: string): Submodel {
    const sub = parseSubmodel(spec, this.config);
    const trained = this.ckpt.metadata.trained_granularities?.split(',');
    if (trained && trained.length < 4 && sub.granularities.some((g) => !trained.includes(g))) {
      throw new ConfigError(`this model was trained only at ${trained.join(',')}; FFN "${spec}" is not available`);
    }
    return sub;
  }

  /** The query adapter `spec` runs with, if the model has one for it (never for XL: the database's own encoder). */
  adapterOf(spec: string): QueryAdapter | undefined {
    return adapterFor(this.ckpt.adapters, this.submodel(spec).spec);
  }

  /**
   * What a session for `spec` runs: the sliced standalone ONNX export and the session options.
   */
  private sessionRecipe(spec: string): { submodel: SubmodelInfo; onnx: Uint8Array; sessionOptions: ort.InferenceSession.SessionOptions } {
    const sub = this.submodel(spec);
    const ex = exportSubmodel(this.config, this.ckpt.params, sub, { adapter: this.adapterOf(sub.spec) });
    const sessionOptions: ort.InferenceSession.SessionOptions = { intraOpNumThreads: this.opts.threads ?? 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' };
    return { submodel: { ...sub, flops: ex.flops, params: ex.params }, onnx: ex.onnx, sessionOptions };
  }

  private load(spec: string) {
    const sub = this.submodel(spec);
    let entry = this.sessions.get(sub.spec);
    if (!entry) {
      const { submodel, onnx, sessionOptions } = this.sessionRecipe(sub.spec);
      entry = ort.InferenceSession.create(onnx, sessionOptions).then((session) => ({ session, info: submodel }));
      this.sessions.set(sub.spec, entry);
    }
    return entry;
  }

  async info(spec: string): Promise<SubmodelInfo> {
    return (await this.load(spec)).info;
  }

  /** Encodes a batch already laid out as float32 NCHW in [0, 1]. */
  async encodeBatch(pixels: Float32Array, n: number, spec = 'XL'): Promise<Float32Array> {
    const { session } = await this.load(spec);
    const s = this.config.imageSize;
    const out = await session.run({ pixels: new ort.Tensor('float32', pixels, [n, 3, s, s]) });
    return out.embedding.data as Float32Array;
  }

  /** Encodes decoded images (size x size x 3 uint8 RGB, as decodeImage returns them); one embedding each. */
  async encode(images: Uint8Array[], spec = 'XL'): Promise<Float32Array[]> {
    if (images.length === 0) return [];
    const s = this.config.imageSize;
    const batch = toNchw(images, s);
    const flat = await this.encodeBatch(batch, images.length, spec);
    const D = this.dim;
    return images.map((_, i) => flat.slice(i * D, (i + 1) * D));
  }

  async close(): Promise<void> {
    for (const e of this.sessions.values()) await (await e).session.release();
    this.sessions.clear();
  }
}

const UNIT = Float32Array.from({ length: 256 }, (_, v) => v / 255); // the same float32 values as dividing, read faster

/** uint8 HWC RGB images -> one float32 NCHW batch in [0, 1]. */
export function toNchw(images: Uint8Array[], size: number): Float32Array {
  const plane = size * size;
  const out = new Float32Array(images.length * 3 * plane);
  images.forEach((img, b) => {
    if (img.length !== plane * 3) throw new Error(`image ${b} has ${img.length} bytes; expected ${size}x${size}x3`);
    const base = b * 3 * plane;
    for (let i = 0; i < plane; i++) {
      out[base + i] = UNIT[img[3 * i]];
      out[base + plane + i] = UNIT[img[3 * i + 1]];
      out[base + 2 * plane + i] = UNIT[img[3 * i + 2]];
    }
  });
  return out;
}
