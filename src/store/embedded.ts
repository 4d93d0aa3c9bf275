// The embedded backend: a folder holding SQLite (the truth) and a derived hnswlib file, as src/index keeps them.
// This adapter only carries the StoreBackend calls to the existing functions; it adds no behaviour.
import { nearestFiltered } from '../index/filtered-search.ts';
import { type IndexHandle, addEmbeddings, deleteImages, openIndex } from '../index/service.ts';
import type { ImageFilter, ImageRow, InsertResult, ModelSpec, OpenStoreOptions, SearchHit, StoreBackend, StoreItem, StoreStats, VectorIndexInfo } from './types.ts';

export class EmbeddedStore implements StoreBackend {
  readonly kind = 'embedded';

  constructor(readonly handle: IndexHandle) {}

  static open(dir: string, model: ModelSpec, opts: OpenStoreOptions = {}): EmbeddedStore {
    return new EmbeddedStore(openIndex(dir, model.modelId, model.dim, { writer: opts.writer, config: model.config }));
  }

  get location(): string {
    return this.handle.store.dir;
  }
  get modelId(): string {
    return this.handle.modelId;
  }
  get dim(): number {
    return this.handle.dim;
  }
  get writer(): boolean {
    return this.handle.store.writer;
  }
  get config() {
    return this.handle.config;
  }

  async add(items: StoreItem[]): Promise<InsertResult[]> {
    return addEmbeddings(this.handle, items);
  }

  async delete(ids: number[]): Promise<number[]> {
    return deleteImages(this.handle, ids);
  }

  async rows(ids: number[]): Promise<ImageRow[]> {
    return this.handle.store.getImages(ids);
  }

  async findByHash(hash: string): Promise<{ row: ImageRow; indexed: boolean; regions: boolean } | undefined> {
    const row = this.handle.store.findByHash(hash);
    return row && { row, indexed: this.handle.store.hasEmbedding(row.id, this.modelId), regions: this.handle.store.hasRegions(row.id, this.modelId) };
  }

  async embedding(id: number): Promise<Float32Array | undefined> {
    return this.handle.store.getEmbedding(id, this.modelId);
  }

  async nearest(query: Float32Array, k: number, ef?: number, filter?: ImageFilter | null, regionPenalty?: number): Promise<SearchHit[]> {
    return nearestFiltered(this.handle, query, k, { ef, filter, regionPenalty });
  }

  async regionsPerImage(): Promise<number | null> {
    return this.handle.store.regionsPerImage(this.modelId);
  }

  async count(): Promise<number> {
    return this.handle.store.count(this.modelId);
  }

  async stats(): Promise<StoreStats> {
    const { store } = this.handle;
    return store.readSnapshot(() => store.stats());
  }

  async original(id: number): Promise<Buffer | undefined> {
    return this.handle.store.getOriginal(id);
  }

  async thumbnail(id: number): Promise<Buffer | undefined> {
    return this.handle.store.getThumbnail(id);
  }

  async hasThumbnail(id: number): Promise<boolean> {
    return this.handle.store.hasThumbnail(id);
  }

  async addThumbnail(id: number, webp: Uint8Array): Promise<boolean> {
    return this.handle.store.addThumbnail(id, webp);
  }

  async indexInfo(): Promise<VectorIndexInfo> {
    const { hnsw } = this.handle;
    return { vectors: hnsw.size, M: hnsw.M, efConstruction: hnsw.efConstruction, ef: hnsw.getEf(), capacity: hnsw.capacity };
  }

  async state(key: string): Promise<string | null> {
    return this.handle.store.state(key);
  }

  async setState(key: string, value: string): Promise<void> {
    this.handle.store.setState(key, value);
  }

  async close(): Promise<void> {
    this.handle.close();
  }
}
