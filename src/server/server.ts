// The composition root of `matvit serve`: loads the model once, opens the store (a folder or PostgreSQL,
// src/store/open.ts) as a writer, indexes the demo
// gallery when the store holds nothing for this model, measures the query encoders, and returns a service ready
// for buildApp. Tests call it with a temporary store and a small random model.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EncodeBatcher } from '../encoder/batcher.ts';
import { loadCalibration } from '../encoder/budget.ts';
import { AUTO, autoLadder } from '../encoder/policy.ts';
import { DEFAULT_MODEL_PATH, loadModel } from '../encoder/checkpoint.ts';
import { GRANULARITIES } from '../encoder/config.ts';
import { EncoderPool } from '../encoder/pool.ts';
import { Encoder, type ImageEncoder } from '../encoder/runtime.ts';
import * as indexerModule from '../index/indexer.ts';
import * as searchModule from '../index/search.ts';
import { logger } from '../log.ts';
import { Progress } from '../progress.ts';
import { openStore } from '../store/open.ts';
import type { StoreBackend } from '../store/types.ts';
import { DEFAULT_SLO_MS, LoadController } from './load-controller.ts';
import { type IndexerApi, type SearchApi, type ServerLimits, SearchService } from './service.ts';

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The bundled demo gallery (datasets/README.md). */
export const DEMO_GALLERY = path.join(projectRoot, 'datasets/cifar10-test.tar.gz');

export interface OpenServerOptions {
  store: string; // a folder or a postgres:// URL
  model?: string; // checkpoint (default: the shipped model)
  gallery?: string | null; // indexed when the store has nothing for this model (continued if that was cut short); null: never
  limits?: Partial<ServerLimits>;
  defaultFfn?: string;
  maxBatch?: number; // largest batch the query batcher sends to onnxruntime
  sloMs?: number; // p99 latency target of auto queries: the load controller steps them down to keep it (default 50)
  encodeWorkers?: number; // encoder pool workers (default: one per core); 0: encode on the main thread
  progress?: boolean; // progress bar while indexing the gallery (default true)
  warmUp?: boolean; // open and time every query encoder before returning (default true)
  signal?: AbortSignal; // stops gallery indexing (SIGTERM during the first start)
  // Replaceable for tests; by default src/index/indexer.ts and src/index/search.ts.
  indexer?: IndexerApi & { indexSources: IndexSources };
  search?: SearchApi;
}

type IndexSources = typeof indexerModule.indexSources;

export interface OpenedServer {
  service: SearchService;
  encoder: Encoder;
  store: StoreBackend;
  gallery: { indexed: number; duplicates: number; failed: number; seconds: number } | null;
  close(): Promise<void>;
}

export async function openServer(opts: OpenServerOptions): Promise<OpenedServer> {
  const modelPath = path.resolve(opts.model ?? DEFAULT_MODEL_PATH);
  const indexer = opts.indexer ?? indexerModule;
  const search = opts.search ?? searchModule;

  // Read the checkpoint once: the training job may rewrite the file at any time, and every encoder below must
  // be the same model (the same modelId, so the same embedding space).
  const ckpt = loadModel(modelPath);
  const encoder = new Encoder(ckpt, modelPath, { threads: 1 }); // queries: one thread per run, batches share it
  if (opts.defaultFfn !== undefined && opts.defaultFfn.toLowerCase() !== AUTO) encoder.submodel(opts.defaultFfn); // a bad --ffn fails before any indexing
  let store: StoreBackend;
  try {
    store = await openStore(opts.store, { modelId: encoder.modelId, dim: encoder.dim, config: encoder.config }, { writer: true });
  } catch (err) {
    await encoder.close();
    throw err;
  }
  let gallery: OpenedServer['gallery'] = null;
  let pool: EncoderPool | null = null;
  try {
    const calibration = loadCalibration(modelPath, { modelId: encoder.modelId, config: encoder.config });
    // One pool runs every encoding: the gallery's indexing on a first start, then queries and uploads. Its workers
    // open the sessions auto may use before the first query (opening one costs far more than a query).
    const ladder = autoLadder(calibration);
    const autoSpecs = [...ladder.slice(1), ...(calibration.cascade ? [calibration.cascade.first, calibration.cascade.then] : [])];
    const specs = [...new Set([...GRANULARITIES, ...autoSpecs.filter(usable(encoder))])];
    pool = opts.encodeWorkers === 0 ? null : await EncoderPool.start(encoder, { threads: opts.encodeWorkers, specs });
    const work = pool ?? encoder;
    // The gallery is marked done only once it was indexed to the end: a first start stopped part way (a stop signal,
    // a full disk) continues at the next start, where the images already stored are skipped as duplicates.
    const galleryKey = `gallery:${encoder.modelId}`;
    const galleryState = await store.state(galleryKey);
    if (opts.gallery !== null && (galleryState === 'indexing' || (galleryState === null && (await store.count()) === 0))) {
      await store.setState(galleryKey, 'indexing');
      gallery = await indexGallery(store, work, opts.gallery ?? DEMO_GALLERY, indexer.indexSources, opts);
      if (!opts.signal?.aborted) await store.setState(galleryKey, 'done');
    }
    // A batch per worker at once, of at most 16 images: the pool runs it as two runs of 8, the fastest per image, and a
    // smaller batch answers its first requests sooner (open loop at 1.5x XL's capacity: p99 34-36 ms once stepped down to S).
    const batcher = new EncodeBatcher(work, opts.maxBatch ?? 16, pool ? pool.threads : 1);
    const load = new LoadController({ sloMs: opts.sloMs ?? DEFAULT_SLO_MS, steps: ladder.length - 1 });
    batcher.onBatch = (images, ms) => load.recordBatch(images, ms);
    const service = new SearchService({ store, encoder, work, batcher, calibration, search, indexer, limits: opts.limits, defaultFfn: opts.defaultFfn, load });
    if (opts.warmUp !== false) {
      const t0 = Date.now();
      const uniform = service.encoderSpecs().filter((s) => !s.includes(','));
      await service.warmUp(uniform);
      const timed = (specs: string[]) => service.encoders().encoders.filter((e) => specs.includes(e.spec)).map((e) => `${e.spec} ${e.encodeMs} ms`);
      logger.info({ ms: Date.now() - t0, encoders: timed(uniform) }, 'query encoders ready');
      // Calibrated Mix'n'Match entries: timed in the background (logged when done), the page shows them as they arrive.
      const rest = service.encoderSpecs().filter((s) => s.includes(','));
      if (rest.length) {
        void service.warmUp(rest).then(
          () => logger.info({ encoders: timed(rest) }, "Mix'n'Match query encoders timed"),
          (err) => logger.warn({ err: (err as Error).message }, 'timing the calibrated encoders failed'),
        );
      }
    }
    return {
      service,
      encoder,
      store,
      gallery,
      close: async () => {
        await service.drain(); // requests still running (their clients may be gone) finish first
        await closeAll(store, pool, encoder);
      },
    };
  } catch (err) {
    await closeAll(store, pool, encoder).catch((closeErr) => logger.error({ err: (closeErr as Error).message }, 'closing after a failed start failed too'));
    throw err;
  }
}

/** Closes the store (the embedded one saves its HNSW file, which may throw: a full disk) and stops the encoder threads whatever that did. */
async function closeAll(store: StoreBackend, pool: EncoderPool | null, encoder: Encoder): Promise<void> {
  try {
    await store.close();
  } finally {
    await pool?.close();
    await encoder.close();
  }
}

/** Whether the model can run a calibrated spec (a calibration measured for another model may name other depths). */
const usable = (encoder: Encoder) => (spec: string) => {
  try {
    encoder.submodel(spec);
    return true;
  } catch {
    return false;
  }
};

/** Indexes the demo gallery with XL, with a progress bar (nothing else runs yet). */
async function indexGallery(
  store: StoreBackend,
  encoder: ImageEncoder,
  source: string,
  indexSources: IndexSources,
  opts: OpenServerOptions,
): Promise<OpenedServer['gallery']> {
  const stored = await store.count();
  const others = (await store.stats()).models.filter((m) => m.modelId !== store.modelId && m.embeddings > 0);
  if (others.length && stored === 0) {
    logger.warn({ store: store.location, model: store.modelId, others: others.map((m) => m.modelId) }, 'the store has no embeddings for this model (it changed since the store was built): indexing the demo gallery again; images added by upload need `matvit reindex`');
  }
  const total = await indexerModule.countItems([source]);
  logger.info({ source, images: total, alreadyStored: stored, store: store.location }, stored ? 'continuing to index the demo gallery (an earlier first start stopped part way)' : 'first start: indexing the demo gallery');
  const bar = opts.progress === false || total === undefined ? null : new Progress(total, 0, 1, 'img', 5_000);
  try {
    const r = await indexSources(store, encoder, [source], {
      batchSize: 64, // 135 img/s against 99 with 256 (measured on one encoder thread)
      signal: opts.signal,
      onProgress: (p) => bar?.update(p.done, { indexed: String(p.indexed), failed: String(p.failed) }),
    });
    bar?.stop();
    logger.info({ indexed: r.indexed, duplicates: r.duplicates, failed: r.failed.length, seconds: r.seconds }, 'demo gallery indexed');
    for (const f of r.failed.slice(0, 5)) logger.warn({ path: f.path, reason: f.reason }, 'gallery image skipped');
    for (const u of r.unread) logger.warn({ path: u.path, reason: u.reason }, 'gallery folder or archive could not be read (further)');
    return { indexed: r.indexed, duplicates: r.duplicates, failed: r.failed.length, seconds: r.seconds };
  } finally {
    bar?.stop();
  }
}
