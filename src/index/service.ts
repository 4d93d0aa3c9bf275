// The store and its HNSW index used together: SQLite is written first (it is the truth), then the in-memory HNSW;
// the HNSW file and its sidecar are saved every `saveEvery` additions and at close. Only writers save, because a
// reader saving concurrently with a writer could pair one's index file with the other's sidecar.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { MatViTConfig } from '../encoder/config.ts';
import { logger } from '../log.ts';
import { AllowedCache } from './filtered-search.ts';
import { type HnswOptions, HnswIndex, IndexSaveError, regionIndexName, regionVectors, sidecarPath } from './hnsw.ts';
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
  regions: RegionIndex | null; // the model's region vectors, once it has any
  hnswOptions?: HnswOptions;
  close(): void; // closeIndex(this)
}

/** The HNSW index of a model's region vectors: `perImage` labels per image, image id x perImage + region. */
export interface RegionIndex {
  hnsw: HnswIndex;
  file: string;
  perImage: number;
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
      regions: null,
      hnswOptions: opts.hnsw,
      close: () => closeIndex(handle),
    };
    const regionsRebuilt = openRegions(handle);
    if ((rebuilt || regionsRebuilt) && store.writer) saveIndex(handle);
    return handle;
  } catch (err) {
    store.close();
    throw err;
  }
}

/** The HNSW file of a model's region vectors inside the store folder. */
export const regionIndexFilePath = (storeDir: string, modelId: string) => indexFilePath(storeDir, regionIndexName(modelId));

/**
 * Opens the region index when the store has region vectors for the model (loaded, or rebuilt from the store: then it
 * returns true).
 */
function openRegions(ix: IndexHandle): boolean {
  const perImage = ix.store.regionsPerImage(ix.modelId);
  if (perImage === null) return false;
  const file = regionIndexFilePath(ix.store.dir, ix.modelId);
  const { index, rebuilt } = HnswIndex.openSource(regionVectors(ix.store, ix.modelId, perImage), ix.dim, file, ix.hnswOptions);
  ix.regions = { hnsw: index, file, perImage };
  return rebuilt;
}

/**
 * Stores images with their embeddings and region vectors (one transaction), then adds the new vectors to the HNSW
 * indexes. The first region vectors of a model start its region index.
 */
export function addEmbeddings(ix: IndexHandle, items: { image: NewImage; vector: Float32Array; regions?: Float32Array }[]): InsertResult[] {
  const results = ix.store.addBatch(items, ix.modelId);
  try {
    results.forEach((r, i) => {
      if (r.embeddingAdded) {
        ix.hnsw.add(r.id, items[i].vector);
        ix.unsaved++;
      }
    });
    const perImage = results.some((r) => r.regionsAdded) ? ix.store.regionsPerImage(ix.modelId) : null;
    if (!ix.regions && perImage !== null) {
      ix.regions = { hnsw: HnswIndex.create(regionIndexName(ix.modelId), ix.dim, ix.hnswOptions), file: regionIndexFilePath(ix.store.dir, ix.modelId), perImage };
    }
    const regions = ix.regions;
    if (regions) {
      results.forEach((r, i) => {
        if (!r.regionsAdded) return;
        const flat = items[i].regions!;
        for (let j = 0; j < regions.perImage; j++) regions.hnsw.add(r.id * regions.perImage + j, flat.subarray(j * ix.dim, (j + 1) * ix.dim));
        ix.unsaved++;
      });
    }
  } catch (err) {
    markBroken(ix, err);
    throw err;
  }
  setGeneration(ix);
  if (ix.unsaved >= ix.saveEvery) saveIndex(ix);
  return results;
}

/** Both indexes reflect the store's current generation of the model (one counter covers embeddings and regions). */
function setGeneration(ix: IndexHandle): void {
  ix.hnsw.generation = ix.store.generation(ix.modelId);
  if (ix.regions) ix.regions.hnsw.generation = ix.hnsw.generation;
}

/** Deletes images from the store, then from the HNSW index. Returns the ids that existed. */
export function deleteImages(ix: IndexHandle, ids: number[]): number[] {
  const gone = ix.store.deleteImages(ids);
  try {
    for (const id of gone) {
      if (ix.hnsw.remove(id)) ix.unsaved++;
      const r = ix.regions;
      for (let j = 0; r && j < r.perImage; j++) if (r.hnsw.remove(id * r.perImage + j)) ix.unsaved++;
    }
  } catch (err) {
    markBroken(ix, err);
    throw err;
  }
  setGeneration(ix);
  if (ix.unsaved >= ix.saveEvery) saveIndex(ix);
  return gone;
}

/**
 * Writes the HNSW file and its sidecar (writers only). A save that fails (a full disk) keeps the previous file, is
 * logged, and returns the error: the store holds every change, so the index is simply rebuilt at the next open.
 */
export function saveIndex(ix: IndexHandle): IndexSaveError | null {
  if (!ix.store.writer || ix.broken) return null;
  const indexes: [HnswIndex, string][] = [[ix.hnsw, ix.file]];
  if (ix.regions) indexes.push([ix.regions.hnsw, ix.regions.file]);
  for (const [index, file] of indexes) {
    try {
      index.save(file);
    } catch (err) {
      if (!(err instanceof IndexSaveError)) throw err;
      logger.error({ file, err: err.message }, 'the HNSW index was not saved; the previous file is kept and the next open rebuilds it from the store');
      return err;
    }
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
  if (ix.regions) fs.rmSync(sidecarPath(ix.regions.file), { force: true });
  logger.error({ file: ix.file, err: (err as Error).message }, 'HNSW update failed after the store was written; the index will be rebuilt at the next open');
}
