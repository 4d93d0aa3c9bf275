// `matvit adapt`: fits the query adapters (adapters.ts) of a model's narrower submodels on a set of images, usually
// the training set, which is also what the database holds. A seeded tenth of the images is held out: the fit never
// sees it, and the printed figures (cosine to XL's embedding, recall@10 of XL's neighbours among the other images)
// are measured on it before and after.
import { type LabelledPixels, loadLabelledPixels } from '../data/labelled.ts';
import { encodeImages } from '../eval/encoding.ts';
import { ExactSearch, recallAtK } from '../index/exact-search.ts';
import { logger } from '../log.ts';
import { mulberry32, permutation } from '../train/rng.ts';
import { type QueryAdapters, applyAdapter, fitAdapter, saveAdapters } from './adapters.ts';
import { DEFAULT_MODEL_PATH, loadModel } from './checkpoint.ts';
import { ConfigError } from './config.ts';
import { Encoder } from './runtime.ts';

export interface AdaptOptions {
  model?: string;
  data: string; // a labelled source (labels unused): folder or archive of class folders, or IDX images
  specs?: string[]; // submodels to fit (default M and L: S's adapter cost it 0.22 points of 1-NN accuracy, README)
  lambda?: number; // ridge penalty on the weights (default 1e-3)
  heldOut?: number; // share of the images held out for the figures (default 0.1)
  limit?: number; // use only the first N images
  threads?: number;
  seed?: number;
}

export interface AdapterFit {
  spec: string;
  fitImages: number;
  heldOutImages: number;
  cosineBefore: number; // mean cosine to XL's embedding of the same held-out image
  cosineAfter: number;
  recall10Before: number; // recall@10 of XL's neighbours among the fit images, held-out queries
  recall10After: number;
}

export async function adaptModel(opts: AdaptOptions): Promise<{ file: string; fits: AdapterFit[] }> {
  const modelFile = opts.model ?? DEFAULT_MODEL_PATH;
  const lambda = opts.lambda ?? 1e-3;
  const heldOutShare = opts.heldOut ?? 0.1;
  if (!(lambda >= 0)) throw new ConfigError(`lambda must be >= 0, got ${lambda}`);
  if (!(heldOutShare > 0 && heldOutShare < 1)) throw new ConfigError(`the held-out share must be between 0 and 1, got ${heldOutShare}`);
  // Encode without any adapters the file already has: the fit starts from the bare submodels.
  const ckpt = { ...loadModel(modelFile), adapters: {} };
  const encoder = new Encoder(ckpt, modelFile, { threads: opts.threads ?? 2 });
  const specs = [...new Set((opts.specs ?? ['M', 'L']).map((s) => encoder.submodel(s).spec))];
  if (specs.includes('XL')) throw new ConfigError('XL encodes the database and has no adapter; fit the narrower submodels');
  const dim = encoder.dim;
  const size = encoder.config.imageSize;
  const data: LabelledPixels = await loadLabelledPixels(opts.data, size, { limit: opts.limit });
  const n = data.labels.length;
  const order = permutation(n, mulberry32(opts.seed ?? 0));
  const nHeld = Math.max(1, Math.round(n * heldOutShare));
  const held = order.slice(0, nHeld);
  const fit = order.slice(nHeld);
  if (fit.length <= 2 * dim) throw new ConfigError(`${n} images are too few to fit a ${dim}-dimensional adapter (need more than ${Math.ceil((2 * dim) / (1 - heldOutShare))})`);

  const encode = (spec: string, idx: Int32Array) => encodeImages(encoder, spec, data.pixels, size, idx);
  try {
    const fitXl = await encode('XL', fit);
    const heldXl = await encode('XL', held);
    const search = await ExactSearch.create(fitXl, fit.length, dim, { k: 10, threads: opts.threads ?? 2 });
    try {
      const truth = await search.search(heldXl, nHeld);
      const adapters: QueryAdapters = {};
      const fits: AdapterFit[] = [];
      for (const spec of specs) {
        const t0 = Date.now();
        const adapter = fitAdapter(await encode(spec, fit), fitXl, dim, lambda);
        const before = await encode(spec, held);
        const after = applyAdapter(adapter, before, dim);
        adapters[spec] = adapter;
        const r = {
          spec,
          fitImages: fit.length,
          heldOutImages: nHeld,
          cosineBefore: meanRowDot(before, heldXl, dim),
          cosineAfter: meanRowDot(after, heldXl, dim),
          recall10Before: recallAtK(await search.search(before, nHeld), truth, 10),
          recall10After: recallAtK(await search.search(after, nHeld), truth, 10),
        };
        fits.push(r);
        logger.info({ ...r, seconds: (Date.now() - t0) / 1000 }, 'fitted query adapter');
      }
      const file = saveAdapters(modelFile, ckpt.sha256, adapters, dim, {
        data: opts.data,
        lambda: String(lambda),
        seed: String(opts.seed ?? 0),
        fits: JSON.stringify(fits),
        created: new Date().toISOString(),
      });
      return { file, fits };
    } finally {
      await search.release();
    }
  } finally {
    await encoder.close();
  }
}

function meanRowDot(a: Float32Array, b: Float32Array, dim: number): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s / (a.length / dim);
}
