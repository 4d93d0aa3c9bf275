// Approximate nearest-neighbour search: an hnswlib-node adapter over L2-normalised vectors (inner product = cosine).
// HNSW labels are the store's image ids (a region index's: image id x regions per image + region, VectorSource).
// The index file is a cache of the store's embeddings, checked against the store through a JSON sidecar (which also
// carries the file's checksum) and rebuilt from SQLite whenever it does not match.
import fs from 'node:fs';
import hnswlib from 'hnswlib-node';
import { logger } from '../log.ts';
import { durableRename, fsyncFile, writeFileAtomic } from '../durable-file.ts';
import { scanIndexFile } from './hnsw-file.ts';
import type { ImageStore } from './store.ts';

const { HierarchicalNSW } = hnswlib;
type Native = InstanceType<typeof HierarchicalNSW>;

export interface HnswOptions {
  M?: number; // graph degree: memory and build time against recall
  efConstruction?: number; // build-time beam width
  ef?: number; // default search beam width (raised to k when k is larger)
  initialCapacity?: number; // slots allocated up front; the index doubles when full
}

// Measured by scripts/bench-index.ts on real XL embeddings: 59,000 CIFAR-10 images stored, 1,000 held-out images as
// queries, encoded with XL and with S (S queries are the harder case: their vectors sit off the XL manifold).
// recall@10 against exact search (XL / S queries) and median ms per search:
//   efConstruction 200: ef 48 0.980 / 0.966, ef 128 0.997 / 0.993 (0.13 ms); 0.137 ms per insert
//   efConstruction 128: ef 64 0.986 / 0.971, ef 160 0.996 / 0.992 (0.11-0.12 ms); 0.100 ms per insert
//   efConstruction 100: ef 128 0.994 / 0.986, ef 192 0.997 / 0.991 (0.13-0.15 ms)
// Inserts run on the indexing thread, beside the encoder, for every image indexed; a search costs a tenth of a query's
// encoding. So the build is made cheaper (128) and the search beam wider (160) to keep both above 0.99.
export const HNSW_DEFAULTS = { M: 16, efConstruction: 128, ef: 160, initialCapacity: 1024 } as const;
const RANDOM_SEED = 100; // fixed, so that the same vectors inserted in the same order give the same graph

export interface Sidecar {
  modelId: string;
  count: number; // live vectors
  generation: number; // the store's generation for this model when the file was written
  dim: number;
  M: number;
  efConstruction: number;
  // The index file this sidecar describes: a reader racing a writer's save must not pair an old sidecar with a
  // new index file (or the reverse).
  // crc32: of the whole file, checked on every open (a corrupted file would crash the first search).
  indexFile: { bytes: number; mtimeMs: number; crc32: number };
}

/** A save that did not complete: the previous index file and sidecar are untouched. */
export class IndexSaveError extends Error {
  override name = 'IndexSaveError';
}

export interface SearchHit {
  id: number;
  score: number; // cosine similarity, in [-1, 1]
  region?: true; // the score is the image's best region's, less the penalty (src/index/region-merge.ts)
}

export const sidecarPath = (indexFile: string) => `${indexFile}.json`;

/** What an index file caches: a set of the store's vectors under one name, and how to read them in one snapshot. */
export interface VectorSource {
  name: string; // the sidecar's modelId
  generation(): number;
  count(): number;
  vectors(): Iterable<{ label: number; vector: Float32Array }>;
  snapshot<T>(fn: () => T): T;
}

/** The whole-image embeddings of a model: labels are image ids. */
export function imageVectors(store: ImageStore, modelId: string): VectorSource {
  return {
    name: modelId,
    generation: () => store.generation(modelId),
    count: () => store.count(modelId),
    vectors: function* () {
      for (const { id, vector } of store.iterateEmbeddings(modelId)) yield { label: id, vector };
    },
    snapshot: (fn) => store.readSnapshot(fn),
  };
}

/** What a model's region index is called (its sidecar's modelId, and its file name). */
export const regionIndexName = (modelId: string) => `${modelId}#regions`;

/** The region vectors of a model (`perImage` per image): labels are image id x perImage + region. */
export function regionVectors(store: ImageStore, modelId: string, perImage: number): VectorSource {
  return {
    name: regionIndexName(modelId),
    generation: () => store.generation(modelId), // bumped by every write of the model's embeddings or regions
    count: () => store.regionCount(modelId),
    vectors: function* () {
      for (const { id, region, vector } of store.iterateRegionEmbeddings(modelId)) yield { label: id * perImage + region, vector };
    },
    snapshot: (fn) => store.readSnapshot(fn),
  };
}

/** The sidecar of an index file, or null when it is missing or unreadable. */
export function readSidecar(indexFile: string): Partial<Sidecar> | null {
  try {
    const side = JSON.parse(fs.readFileSync(sidecarPath(indexFile), 'utf8'));
    return side && typeof side === 'object' ? side : null;
  } catch {
    return null;
  }
}

const definedOnly = <T extends object>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/** Unit-length copy of v as a plain array (hnswlib-node takes arrays, not typed arrays). */
export function normalize(v: ArrayLike<number>): number[] {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  const n = Math.sqrt(s);
  if (!(n > 0) || !Number.isFinite(n)) throw new RangeError('cannot index or search a zero or non-finite vector');
  return Array.from(v, (x) => x / n);
}

export class HnswIndex {
  readonly modelId: string;
  readonly dim: number;
  readonly M: number;
  readonly efConstruction: number;
  /** The store generation this index reflects (set by open/rebuild, advanced by the service after each write). */
  generation = 0;
  private ef: number;
  private native: Native;
  private deleted = 0; // slots marked deleted and not yet reused
  // Labels the native index holds (live, or marked deleted and not yet reused; may also keep labels whose slot was
  // reused): a label outside it is certainly absent, which spares labelState its native exceptions on every add.
  private present = new Set<number>();

  private constructor(modelId: string, dim: number, opts: HnswOptions, native?: Native) {
    if (!Number.isInteger(dim) || dim <= 0) throw new RangeError(`dimension must be a positive integer, got ${dim}`);
    this.modelId = modelId;
    this.dim = dim;
    this.M = opts.M ?? HNSW_DEFAULTS.M;
    this.efConstruction = opts.efConstruction ?? HNSW_DEFAULTS.efConstruction;
    this.ef = opts.ef ?? HNSW_DEFAULTS.ef;
    if (native) {
      this.native = native;
    } else {
      this.native = new HierarchicalNSW('ip', dim);
      this.native.initIndex(opts.initialCapacity ?? HNSW_DEFAULTS.initialCapacity, this.M, this.efConstruction, RANDOM_SEED, true);
    }
    this.native.setEf(this.ef); // not stored in the file: without this, recall silently drops to ef = 10
  }

  /** An empty index. */
  static create(modelId: string, dim: number, opts: HnswOptions = {}): HnswIndex {
    return new HnswIndex(modelId, dim, opts);
  }

  /**
   * Loads `file` if its sidecar matches the store (model, dimension, count, generation), otherwise rebuilds from the
   * store's embeddings (logging why). The caller decides whether to save a rebuilt index.
   */
  static open(store: ImageStore, modelId: string, dim: number, file: string, opts: HnswOptions = {}): { index: HnswIndex; rebuilt: boolean; reason?: string } {
    return HnswIndex.openSource(imageVectors(store, modelId), dim, file, opts);
  }

  /** open, for any set of the store's vectors (e.g. regionVectors). */
  static openSource(source: VectorSource, dim: number, file: string, opts: HnswOptions = {}): { index: HnswIndex; rebuilt: boolean; reason?: string } {
    const modelId = source.name;
    const { generation, count } = source.snapshot(() => ({ generation: source.generation(), count: source.count() }));
    const reason = HnswIndex.mismatch(file, { modelId, dim, generation, count });
    if (count === 0 && !fs.existsSync(file)) {
      // A new store or model: nothing to rebuild, nothing to warn about.
      const index = new HnswIndex(modelId, dim, opts);
      index.generation = generation;
      return { index, rebuilt: true, reason: 'new index' };
    }
    if (!reason) {
      try {
        const before = fs.statSync(file);
        const native = new HierarchicalNSW('ip', dim);
        native.readIndexSync(file, true);
        const after = fs.statSync(file);
        if (after.ino !== before.ino || after.mtimeMs !== before.mtimeMs) {
          return HnswIndex.rebuildLogged(source, dim, file, opts, 'the index file was replaced while it was being read');
        }
        // The graph was built with the file's M and efConstruction (e.g. by `matvit reindex --m 8`), whatever the
        // options say: the sidecar written at the next save must keep saying so.
        const side = readSidecar(file);
        const index = new HnswIndex(modelId, dim, { ...opts, M: side?.M ?? opts.M, efConstruction: side?.efConstruction ?? opts.efConstruction }, native);
        index.deleted = native.getCurrentCount() - count;
        index.present = new Set(native.getIdsList());
        if (native.getNumDimensions() !== dim || index.deleted < 0) throw new Error(`file holds ${native.getCurrentCount()} vectors of dimension ${native.getNumDimensions()}`);
        index.generation = generation;
        return { index, rebuilt: false };
      } catch (err) {
        return HnswIndex.rebuildLogged(source, dim, file, opts, `the index file is unreadable: ${(err as Error).message}`);
      }
    }
    return HnswIndex.rebuildLogged(source, dim, file, opts, reason);
  }

  private static rebuildLogged(source: VectorSource, dim: number, file: string, opts: HnswOptions, reason: string) {
    const modelId = source.name;
    logger.warn({ file, modelId, reason }, 'rebuilding the HNSW index from the store');
    const t0 = Date.now();
    // Keep the graph parameters of the file being replaced (set by `matvit reindex --m ...`) unless told otherwise.
    const prev = readSidecar(file);
    const index = HnswIndex.rebuildSource(source, dim, { M: prev?.M, efConstruction: prev?.efConstruction, ...definedOnly(opts) });
    logger.info({ modelId, vectors: index.size, seconds: (Date.now() - t0) / 1000 }, 'HNSW index rebuilt');
    return { index, rebuilt: true, reason };
  }

  /** Why `file` cannot be used for the store's current state, or null when it can. */
  static mismatch(file: string, want: Pick<Sidecar, 'modelId' | 'dim' | 'generation' | 'count'>): string | null {
    const stat = fs.statSync(file, { throwIfNoEntry: false });
    if (!stat) return 'the index file is missing';
    let side: Partial<Sidecar>;
    try {
      side = JSON.parse(fs.readFileSync(sidecarPath(file), 'utf8'));
    } catch (err) {
      return `its sidecar ${sidecarPath(file)} is missing or not JSON (${(err as Error).message.split('\n')[0]})`;
    }
    for (const key of ['modelId', 'dim', 'generation', 'count'] as const) {
      if (side[key] !== want[key]) return `the sidecar says ${key} ${JSON.stringify(side[key])} but the store has ${JSON.stringify(want[key])}`;
    }
    if (side.indexFile?.bytes !== stat.size || side.indexFile?.mtimeMs !== stat.mtimeMs) {
      return 'the index file is not the one its sidecar describes (size or modification time differ)';
    }
    if (typeof side.indexFile.crc32 !== 'number') return 'its sidecar has no checksum (written by an older version)';
    let scan: ReturnType<typeof scanIndexFile>;
    try {
      scan = scanIndexFile(file, { dim: want.dim, M: side.M ?? HNSW_DEFAULTS.M });
    } catch (err) {
      return `the index file cannot be read (${(err as Error).message})`; // EACCES, EIO: rebuild rather than fail
    }
    if (scan.problem) return `the index file is damaged: ${scan.problem}`;
    if (scan.crc32 !== side.indexFile.crc32) return `the index file is damaged: its checksum is ${scan.crc32.toString(16)}, its sidecar says ${side.indexFile.crc32.toString(16)}`;
    return null;
  }

  /** A fresh index of every embedding the store holds for the model, inserted in id order. */
  static rebuild(store: ImageStore, modelId: string, dim: number, opts: HnswOptions = {}): HnswIndex {
    return HnswIndex.rebuildSource(imageVectors(store, modelId), dim, opts);
  }

  /** rebuild, for any set of the store's vectors. */
  static rebuildSource(source: VectorSource, dim: number, opts: HnswOptions = {}): HnswIndex {
    return source.snapshot(() => {
      const count = source.count();
      const capacity = Math.max(opts.initialCapacity ?? HNSW_DEFAULTS.initialCapacity, Math.ceil(count * 1.1));
      const index = new HnswIndex(source.name, dim, { ...opts, initialCapacity: capacity });
      for (const { label, vector } of source.vectors()) index.add(label, vector);
      index.generation = source.generation();
      return index;
    });
  }

  /** Live vectors (deleted ones excluded). */
  get size(): number {
    return this.native.getCurrentCount() - this.deleted;
  }

  get capacity(): number {
    return this.native.getMaxElements();
  }

  getEf(): number {
    return this.ef;
  }

  setEf(ef: number): void {
    if (!Number.isInteger(ef) || ef <= 0) throw new RangeError(`ef must be a positive integer, got ${ef}`);
    this.ef = ef;
    this.native.setEf(ef);
  }

  /** Adds (or replaces) the vector of image `id`. Deleted slots are reused before the index grows. */
  add(id: number, vector: ArrayLike<number>): void {
    if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`image id must be a non-negative integer, got ${id}`);
    if (vector.length !== this.dim) throw new RangeError(`vector for image ${id} has ${vector.length} dimensions, the index has ${this.dim}`);
    const v = normalize(vector);
    const state = this.labelState(id);
    if (state === 'live') {
      this.native.addPoint(v, id, false); // updates the point in place
      return;
    }
    if (state === 'deleted') {
      // Reviving a deleted label in place: replacing another slot would leave two slots with this label.
      this.native.unmarkDelete(id);
      this.deleted--;
      this.native.addPoint(v, id, false);
      return;
    }
    if (this.deleted > 0) {
      this.native.addPoint(v, id, true); // takes a deleted slot
      this.deleted--;
      this.present.add(id);
      return;
    }
    if (this.native.getCurrentCount() >= this.native.getMaxElements()) {
      // An index saved empty reads back with room for 0: doubling must start from something.
      this.native.resizeIndex(Math.max(this.native.getMaxElements() * 2, HNSW_DEFAULTS.initialCapacity));
    }
    this.native.addPoint(v, id, false);
    this.present.add(id);
  }

  /** Removes image `id`; returns false when it was not in the index. */
  remove(id: number): boolean {
    if (this.labelState(id) !== 'live') return false;
    this.native.markDelete(id);
    this.deleted++;
    return true;
  }

  has(id: number): boolean {
    return this.labelState(id) === 'live';
  }

  /** The unit-length vector the index holds for live image `id`, or undefined. */
  vector(id: number): number[] | undefined {
    if (!this.present.has(id)) return undefined;
    try {
      return this.native.getPoint(id);
    } catch {
      return undefined; // deleted, or its slot was reused
    }
  }

  /** The k nearest images by cosine similarity, best first. k over the index size returns fewer hits. */
  search(query: ArrayLike<number>, k: number, opts: { ef?: number; filter?: (id: number) => boolean } = {}): SearchHit[] {
    if (!Number.isInteger(k) || k <= 0) throw new RangeError(`k must be a positive integer, got ${k}`);
    if (query.length !== this.dim) throw new RangeError(`query has ${query.length} dimensions, the index has ${this.dim}`);
    const n = Math.min(k, this.size);
    if (n === 0) return [];
    const ef = Math.max(opts.ef ?? this.ef, n); // hnswlib needs ef >= k to return k results reliably
    if (ef !== this.native.getEf()) this.native.setEf(ef);
    try {
      const res = this.native.searchKnn(normalize(query), n, opts.filter);
      return res.neighbors.map((id, i) => ({ id, score: 1 - res.distances[i] })).sort((a, b) => b.score - a.score);
    } finally {
      if (ef !== this.ef) this.native.setEf(this.ef);
    }
  }

  /**
   * Replaces the index file and then its sidecar, each durably (temp file, fsync, rename, fsync of the folder). The
   * new index file is checked before it replaces the old one: hnswlib reports no write error, so a full disk would
   * otherwise leave a short file in its place. A failed save throws IndexSaveError and leaves the previous file
   * and sidecar as they were. Between the two renames a crash leaves the old sidecar, whose size, time and checksum
   * do not describe the new file, so the next open rebuilds rather than trusts it.
   */
  save(file: string): void {
    const tmp = `${file}.${process.pid}.tmp`;
    let scan;
    try {
      this.native.writeIndexSync(tmp);
      fsyncFile(tmp);
      scan = scanIndexFile(tmp, { dim: this.dim, M: this.M });
      if (scan.problem) throw new Error(`the file written is incomplete (is the disk full?): ${scan.problem}`);
      durableRename(tmp, file);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw new IndexSaveError(`could not save the HNSW index to ${file}: ${(err as Error).message}; the previous index file is kept`);
    }
    const stat = fs.statSync(file);
    const side: Sidecar = {
      modelId: this.modelId,
      count: this.size,
      generation: this.generation,
      dim: this.dim,
      M: this.M,
      efConstruction: this.efConstruction,
      indexFile: { bytes: stat.size, mtimeMs: stat.mtimeMs, crc32: scan.crc32 },
    };
    try {
      writeFileAtomic(sidecarPath(file), `${JSON.stringify(side, null, 2)}\n`);
    } catch (err) {
      throw new IndexSaveError(`saved the HNSW index to ${file} but not its sidecar (${(err as Error).message}): the next open rebuilds it from the store`);
    }
  }

  /** 'live', 'deleted' (marked, slot not yet reused) or 'absent'. hnswlib only tells us through its exceptions. */
  private labelState(id: number): 'live' | 'deleted' | 'absent' {
    if (!this.present.has(id)) return 'absent';
    try {
      this.native.getPoint(id);
      return 'live';
    } catch {
      // getPoint throws for both absent and deleted labels; markDelete tells them apart without changing anything
      // for an absent label, and throws "already deleted" for a deleted one.
    }
    if (this.deleted === 0) return 'absent';
    try {
      this.native.markDelete(id);
    } catch (err) {
      return /already deleted/.test((err as Error).message) ? 'deleted' : 'absent';
    }
    throw new Error(`HNSW index inconsistent: label ${id} was live but unreadable`);
  }
}
