// The store and its HNSW index used together: SQLite is written first (it is the truth), then the in-memory HNSW;
// the HNSW file and its sidecar are saved every `saveEvery` additions and at close. Only writers save, because a
// reader saving concurrently with a writer could pair one's index file with the other's sidecar.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { MatViTConfig } from '../encoder/config.ts';
import { logger } from '../log.ts';
import { AllowedCache } from './filtered-search.ts';
import { type HnswOptions, HnswIndex, IndexSaveError, sidecarPath } from './hnsw.ts';
import { type InsertResult, type NewImage, ImageStore, StoreError } from './store.ts';

export interface OpenIndexOptions {
  writer?: boolean; // take the store's writer lock (indexing); searching needs none
  hnsw?: HnswOptions;
  saveEvery?: number; // additions between saves of the HNSW file (writers only)
  config?: MatViTConfig; // the encoder's config (encoder.config): lets searches report FLOPs; writers record it
}

export interface IndexHandle {
  store: ImageStore;
  hnsw: HnswIndex;
  modelId: string;
  dim: number;
  /** The model's config: from openIndex's options, else as recorded in the store by an earlier writer, else null. */
  config: MatViTConfig | null;
  file: string; // the HNSW file; its sidecar is file + '.json'
  saveEvery: number;
  unsaved: number; // changes since the last save
  broken: boolean; // the HNSW index missed a change: never save it, the next open rebuilds
  allowed: AllowedCache; // the ids recent search filters allow (filtered-search.ts)
  close(): void; // closeIndex(this)
}

/** The HNSW file of a model inside the store folder (model ids may contain any character). */
export function indexFilePath(storeDir: string, modelId: string): string {
  const safe = modelId.replace(/[^\w.-]+/g, '_').slice(0, 60);
  const hash = crypto.createHash('sha256').update(modelId).digest('hex').slice(0, 8);
  return path.join(path.resolve(storeDir), `hnsw-${safe}-${hash}.bin`);
}

/** Opens the store and the model's HNSW index (loaded, or rebuilt from the store), ready to search. */
export function openIndex(storeDir: string, modelId: string, dim: number, opts: OpenIndexOptions = {}): IndexHandle {
  const store = ImageStore.open(storeDir, { writer: opts.writer });
  try {
    const known = store.dim(modelId);
    if (known !== null && known !== dim) {
      throw new StoreError(`model "${modelId}" has ${known}-dimensional embeddings in "${store.dir}", not ${dim}`);
    }
    if (opts.config && store.writer) store.recordModelConfig(modelId, JSON.stringify(opts.config));
    const recorded = store.modelConfig(modelId);
    const file = indexFilePath(storeDir, modelId);
    const { index, rebuilt } = HnswIndex.open(store, modelId, dim, file, opts.hnsw);
    const handle: IndexHandle = {
      store,
      hnsw: index,
      modelId,
      dim,
      config: opts.config ?? (recorded ? (JSON.parse(recorded) as MatViTConfig) : null),
      file,
      saveEvery: opts.saveEvery ?? 10_000,
      unsaved: 0,
      broken: false,
      allowed: new AllowedCache(),
      close: () => closeIndex(handle),
    };
    if (rebuilt && store.writer) saveIndex(handle);
    return handle;
  } catch (err) {
    store.close();
    throw err;
  }
}

/** Stores images with their embeddings (one transaction), then adds the new embeddings to the HNSW index. */
export function addEmbeddings(ix: IndexHandle, items: { image: NewImage; vector: Float32Array }[]): InsertResult[] {
  const results = ix.store.addBatch(items, ix.modelId);
  try {
    results.forEach((r, i) => {
      if (r.embeddingAdded) {
        ix.hnsw.add(r.id, items[i].vector);
        ix.unsaved++;
      }
    });
  } catch (err) {
    markBroken(ix, err);
    throw err;
  }
  ix.hnsw.generation = ix.store.generation(ix.modelId);
  if (ix.unsaved >= ix.saveEvery) saveIndex(ix);
  return results;
}

/** Deletes images from the store, then from the HNSW index. Returns the ids that existed. */
export function deleteImages(ix: IndexHandle, ids: number[]): number[] {
  const gone = ix.store.deleteImages(ids);
  try {
    for (const id of gone) if (ix.hnsw.remove(id)) ix.unsaved++;
  } catch (err) {
    markBroken(ix, err);
    throw err;
  }
  ix.hnsw.generation = ix.store.generation(ix.modelId);
  if (ix.unsaved >= ix.saveEvery) saveIndex(ix);
  return gone;
}

/**
 * Writes the HNSW file and its sidecar (writers only). A save that fails (a full disk) keeps the previous file, is
 * logged, and returns the error: the store holds every change, so the index is simply rebuilt at the next open.
 */
export function saveIndex(ix: IndexHandle): IndexSaveError | null {
  if (!ix.store.writer || ix.broken) return null;
  try {
    ix.hnsw.save(ix.file);
  } catch (err) {
    if (!(err instanceof IndexSaveError)) throw err;
    logger.error({ file: ix.file, err: err.message }, 'the HNSW index was not saved; the previous file is kept and the next open rebuilds it from the store');
    return err;
  }
  ix.unsaved = 0;
  return null;
}

/** Saves pending changes (writers) and closes the store, releasing the writer lock; then throws a failed save. */
export function closeIndex(ix: IndexHandle): void {
  let failed: IndexSaveError | null = null;
  try {
    if (ix.unsaved > 0) failed = saveIndex(ix);
  } finally {
    ix.store.close();
  }
  if (failed) throw failed;
}

function markBroken(ix: IndexHandle, err: unknown): void {
  // SQLite has the change, the HNSW index does not: make sure no saved file claims to be up to date.
  ix.broken = true;
  fs.rmSync(sidecarPath(ix.file), { force: true });
  logger.error({ file: ix.file, err: (err as Error).message }, 'HNSW update failed after the store was written; the index will be rebuilt at the next open');
}
