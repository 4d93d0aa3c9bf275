// `matvit stats` and `matvit reindex`: what a store holds (rows, embeddings per model, the state of each HNSW
// file, disk use) and rebuilding a model's HNSW index from SQLite with chosen graph parameters. A PostgreSQL store
// keeps its HNSW index in the database (pgvector): databaseStats reports it, PostgresStore.rebuildIndex rebuilds it.
import fs from 'node:fs';
import { HNSW_DEFAULTS, HnswIndex, readSidecar, regionVectors } from './hnsw.ts';
import { indexFilePath, regionIndexFilePath } from './service.ts';
import { ImageStore, type StoreStats } from './store.ts';
import type { StoreBackend } from '../store/types.ts';

export interface HnswFileState {
  file: string | null; // null: none written yet
  bytes: number;
  inSync: boolean; // the file matches the store (else the next open rebuilds it)
  staleReason: string | null;
  M: number | null;
  efConstruction: number | null;
}

export interface StoreStatsReport extends Omit<StoreStats, 'models'> {
  kind: 'embedded' | 'postgres';
  models: (StoreStats['models'][number] & { current: boolean; hnsw: HnswFileState })[];
  defaultEf: number;
}

/** Statistics of the store in `dir` (opened for reading). `currentModelId` marks the model the CLI would use. */
export function storeStats(dir: string, currentModelId: string | null): StoreStatsReport {
  const store = ImageStore.open(dir);
  try {
    const base = store.readSnapshot(() => store.stats());
    const models = base.models.map((m) => ({ ...m, current: m.modelId === currentModelId, hnsw: hnswState(store, m.modelId, m.dim, m.generation, m.embeddings) }));
    return { kind: 'embedded', ...base, models, defaultEf: HNSW_DEFAULTS.ef };
  } finally {
    store.close();
  }
}

/** Statistics of a PostgreSQL store opened for the current model; each model's index lives in the database. */
export async function databaseStats(store: StoreBackend): Promise<StoreStatsReport> {
  const [base, index] = await Promise.all([store.stats(), store.indexInfo()]);
  const models = base.models.map((m) => {
    const current = m.modelId === store.modelId;
    const hnsw: HnswFileState = { file: null, bytes: 0, inSync: true, staleReason: null, M: current ? index.M : null, efConstruction: current ? index.efConstruction : null };
    return { ...m, current, hnsw };
  });
  return { kind: 'postgres', ...base, models, defaultEf: index.ef };
}

function hnswState(store: ImageStore, modelId: string, dim: number | null, generation: number, count: number): HnswFileState {
  const file = indexFilePath(store.dir, modelId);
  const stat = fs.statSync(file, { throwIfNoEntry: false });
  if (!stat) return { file: null, bytes: 0, inSync: false, staleReason: 'the index file is missing', M: null, efConstruction: null };
  const side = readSidecar(file);
  const reason = HnswIndex.mismatch(file, { modelId, dim: dim ?? -1, generation, count });
  return { file, bytes: stat.size, inSync: reason === null, staleReason: reason, M: side?.M ?? null, efConstruction: side?.efConstruction ?? null };
}

export interface ReindexResult {
  modelId: string;
  file: string;
  vectors: number;
  regionVectors?: number; // in the region index, rebuilt beside it (with the same parameters) when the model has one
  M: number;
  efConstruction: number;
  seconds: number;
}

/** Rebuilds the model's HNSW files (and its region vectors') from SQLite (takes the writer lock while it runs). */
export function reindex(dir: string, modelId: string, dim: number, opts: { M?: number; efConstruction?: number } = {}): ReindexResult {
  const store = ImageStore.open(dir, { writer: true });
  try {
    const t0 = performance.now();
    const params = { M: opts.M, efConstruction: opts.efConstruction };
    const index = HnswIndex.rebuild(store, modelId, dim, params);
    const file = indexFilePath(store.dir, modelId);
    index.save(file);
    const perImage = store.regionsPerImage(modelId);
    let regionVectorsIndexed: number | undefined;
    if (perImage !== null) {
      const regions = HnswIndex.rebuildSource(regionVectors(store, modelId, perImage), dim, params);
      regions.save(regionIndexFilePath(store.dir, modelId));
      regionVectorsIndexed = regions.size;
    }
    return { modelId, file, vectors: index.size, regionVectors: regionVectorsIndexed, M: index.M, efConstruction: index.efConstruction, seconds: (performance.now() - t0) / 1000 };
  } finally {
    store.close();
  }
}
