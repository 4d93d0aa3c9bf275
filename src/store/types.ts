// The store contract every backend keeps: one model's images, embeddings, thumbnails and kept originals, searched by
// vector. Two backends implement it: the embedded default (a folder: SQLite + hnswlib, src/index) and PostgreSQL
// with pgvector (postgres.ts). openStore (open.ts) picks one from the store location; tests/store-contract.test.ts
// runs the same tests over both.
import type { MatViTConfig } from '../encoder/config.ts';
import type { ImageFilter } from '../index/filter.ts';
import type { SearchHit } from '../index/hnsw.ts';
import type { ImageRow, InsertResult, NewImage, StoreStats } from '../index/store.ts';

export type { ImageFilter, ImageRow, InsertResult, NewImage, SearchHit, StoreStats };

/** An image to store, with its embedding and, optionally, its region vectors (see StoreBackend.add). */
export interface StoreItem {
  image: NewImage;
  vector: Float32Array;
  regions?: Float32Array;
}

/** The model whose embeddings a store is opened for. */
export interface ModelSpec {
  modelId: string;
  dim: number;
  config?: MatViTConfig; // recorded by writers (searches report FLOPs from it)
}

export interface VectorIndexInfo {
  vectors: number;
  M: number;
  efConstruction: number;
  ef: number; // search beam when a query names none
  capacity: number; // vectors it can hold before growing (the database grows as it needs: the count)
}

export interface OpenStoreOptions {
  writer?: boolean; // writes allowed (the embedded store also takes its folder's writer lock)
}

export interface StoreBackend {
  readonly kind: 'embedded' | 'postgres';
  /** The folder, or the database URL without its password: what messages and stats name. */
  readonly location: string;
  readonly modelId: string;
  readonly dim: number;
  readonly writer: boolean;
  /** The model's config: as opened with, else as recorded by an earlier writer, else null. */
  readonly config: MatViTConfig | null;

  /**
   * Stores images with their embeddings, thumbnails and kept originals in one transaction (all or nothing). Identical
   * content (same contentHash) is stored once: a known image keeps its row and original, gains the embedding if it
   * had none for this model, and the thumbnail if it had none. `regions`, when given, are the image's region vectors
   * (src/data/regions.ts: R vectors of `dim` floats, one after another); every image of a model has the same R, and a
   * known image gains them if it had none.
   */
  add(items: StoreItem[]): Promise<InsertResult[]>;
  /** Deletes images with everything stored for them, in one transaction. Returns the ids that existed, in order. */
  delete(ids: number[]): Promise<number[]>;
  /** The rows of `ids` that exist, in the order given. */
  rows(ids: number[]): Promise<ImageRow[]>;
  /** The stored image with this content, and whether it has an embedding and region vectors for the model. */
  findByHash(hash: string): Promise<{ row: ImageRow; indexed: boolean; regions: boolean } | undefined>;
  /** The model's embedding of image `id` (its direction: backends may keep it normalised). */
  embedding(id: number): Promise<Float32Array | undefined>;
  /**
   * The k images nearest to `query` by cosine similarity, best first; `ef` is the HNSW beam (raised to k). With a
   * filter (src/index/filter.ts), only images that pass, with the recall of an unfiltered search. With
   * `regionPenalty`, an image scores the better of its own similarity and its best region's less the penalty
   * (src/index/region-merge.ts); images stored without region vectors score by their own.
   */
  nearest(query: Float32Array, k: number, ef?: number, filter?: ImageFilter | null, regionPenalty?: number): Promise<SearchHit[]>;
  /** Region vectors per image stored for the model, or null when it has none. */
  regionsPerImage(): Promise<number | null>;
  /** Embeddings stored for the model. */
  count(): Promise<number>;
  stats(): Promise<StoreStats>;
  original(id: number): Promise<Buffer | undefined>;
  /** The stored WebP thumbnail; an image that is its own thumbnail (src/index/thumbnails.ts) has none. */
  thumbnail(id: number): Promise<Buffer | undefined>;
  hasThumbnail(id: number): Promise<boolean>;
  /** Gives image `id` this thumbnail if it has none; false when it has one or does not exist. */
  addThumbnail(id: number, webp: Uint8Array): Promise<boolean>;
  /** The model's vector index: vectors it holds, its graph degree and build beam, the default search beam. */
  indexInfo(): Promise<VectorIndexInfo>;
  /** A value recorded with setState (e.g. how far a job got), or null. */
  state(key: string): Promise<string | null>;
  setState(key: string, value: string): Promise<void>;
  close(): Promise<void>;
}
