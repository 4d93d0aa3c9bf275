// The image store: the only code that touches SQL. SQLite is the source of truth (images, embeddings per model,
// a generation counter per model, thumbnails, kept originals); the HNSW file is a cache of it that can always be
// rebuilt from here.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { logger } from '../log.ts';
import { type ImageFilter, metaTexts, sourceRanges } from './filter.ts';

export const SCHEMA_VERSION = 5;

export class StoreError extends Error {
  override name = 'StoreError';
}
export class StoreLockedError extends StoreError {
  override name = 'StoreLockedError';
}

export interface NewImage {
  source: string; // where it came from (file path, archive member, upload name)
  contentHash: string; // sha256 hex of the file's bytes: identical content is stored once
  width: number;
  height: number;
  format: string;
  label?: string | null;
  metadata?: Record<string, unknown>;
  original?: Uint8Array; // the bytes to keep, for images with no file of their own (uploads, archive members)
  thumbnail?: Uint8Array; // WebP bytes; also added to an existing image (same content) that has none
}

export interface ImageRow extends Required<Omit<NewImage, 'label' | 'original' | 'thumbnail'>> {
  id: number;
  label: string | null;
  addedAt: string; // ISO 8601, UTC
}

export interface InsertResult {
  id: number;
  created: boolean; // false: the same content was already stored (under this id)
  embeddingAdded: boolean; // false: the image already had an embedding for this model (left unchanged)
  regionsAdded?: true; // this call stored the image's region vectors (StoreBackend.add)
}

export interface StoreStats {
  dir: string;
  schemaVersion: number;
  images: number;
  labelled: number;
  models: { modelId: string; embeddings: number; regionVectors: number; dim: number | null; generation: number }[];
  dbBytes: number;
  originals: number; // kept copies (uploads, archive members)
  originalBytes: number;
  thumbnails: number;
  thumbnailBytes: number;
}

/** sha256 hex of a file's bytes, the store's content key. */
export const contentHash = (bytes: Uint8Array) => crypto.createHash('sha256').update(bytes).digest('hex');

// Since version 4: the columns search filters name (filter.ts), so that a filter's allowed ids are one indexed query.
// Metadata keys are free-form and stay unindexed (a filter on them alone scans the table). IF NOT EXISTS: tests
// make older stores from a new one by dropping tables, which leaves these.
const FILTER_INDEXES = `
  CREATE INDEX IF NOT EXISTS images_by_label ON images(label);
  CREATE INDEX IF NOT EXISTS images_by_source ON images(source);
  CREATE INDEX IF NOT EXISTS images_by_added_at ON images(added_at);
`;

// Since version 5: region vectors (src/data/regions.ts), the model's embeddings of an image's parts, which find the
// original of a crop. Their HNSW file is derived like the whole-image one (labels: image id x R + region). IF NOT
// EXISTS, as FILTER_INDEXES.
const REGION_TABLE = `
  CREATE TABLE IF NOT EXISTS region_embeddings (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    region INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, image_id, region)
  ) WITHOUT ROWID;
`;

const SCHEMA = `
  CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: ids are also HNSW labels, and a deleted label must stay dead
    source TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    label TEXT,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    added_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
  );
  CREATE TABLE embeddings (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    vector BLOB NOT NULL, -- float32, little-endian, as produced by the encoder (not normalised)
    PRIMARY KEY (image_id, model_id)
  ) WITHOUT ROWID;
  CREATE INDEX embeddings_by_model ON embeddings(model_id, image_id);
  CREATE TABLE index_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE originals ( -- since version 2
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    bytes BLOB NOT NULL -- the file as received, for images that have no file of their own
  );
  CREATE TABLE thumbnails ( -- since version 3 (before, files under <store>/thumbs)
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    webp BLOB NOT NULL
  );
  ${FILTER_INDEXES}
  ${REGION_TABLE}
`;

/** Where stores before version 3 kept thumbnails: <store>/thumbs/<id / 1000>/<id>.webp. */
const OLD_THUMBS_DIR = 'thumbs';

/** What brings a store from version N to N + 1 (inside the migration's transaction). */
const MIGRATIONS: Record<number, (db: Database.Database, dir: string) => void> = {
  1: (db) => db.exec('CREATE TABLE originals (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, bytes BLOB NOT NULL);'),
  2: (db, dir) => {
    db.exec('CREATE TABLE thumbnails (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, webp BLOB NOT NULL);');
    importThumbnailFiles(db, path.join(dir, OLD_THUMBS_DIR));
  },
  3: (db) => db.exec(FILTER_INDEXES),
  4: (db) => db.exec(REGION_TABLE),
};

const genKey = (modelId: string) => `generation:${modelId}`;
const dimKey = (modelId: string) => `dim:${modelId}`;
const configKey = (modelId: string) => `config:${modelId}`;
const regionsKey = (modelId: string) => `regions:${modelId}`;
const HASH_RE = /^[0-9a-f]{64}$/;

interface RawImageRow {
  id: number;
  source: string;
  content_hash: string;
  width: number;
  height: number;
  format: string;
  label: string | null;
  metadata: string;
  added_at: string;
}

export class ImageStore {
  readonly dir: string;
  readonly writer: boolean;
  private readonly db: Database.Database;
  private readonly lock: WriterLock | null;
  private readonly stmts: ReturnType<ImageStore['prepare']>;

  /**
   * Opens (creating if needed) the store in `dir`. Writers take the store's exclusive lock; readers (search) take
   * none and see committed data only (WAL).
   */
  static open(dir: string, opts: { writer?: boolean } = {}): ImageStore {
    return new ImageStore(dir, opts.writer ?? false);
  }

  private constructor(dir: string, writer: boolean) {
    this.dir = path.resolve(dir);
    this.writer = writer;
    try {
      fs.mkdirSync(this.dir, { recursive: true });
    } catch (err) {
      throw new StoreError(`cannot create store folder "${this.dir}": ${(err as Error).message}`);
    }
    this.lock = writer ? WriterLock.acquire(path.join(this.dir, 'store.lock')) : null;
    try {
      this.db = new Database(path.join(this.dir, 'store.sqlite'));
      // New stores only (WAL fixes the page size): with 16 KiB pages a 4.5 KB thumbnail needs no overflow page, and
      // addBatch of 10,000 rows with CIFAR-sized blobs took 42 against 56 us of CPU per row with the default 4 KiB
      // (means of 4 alternated runs).
      this.db.pragma('page_size = 16384');
      this.db.pragma('journal_mode = WAL'); // readers never block the writer, and the writer never blocks them
      this.db.pragma('busy_timeout = 5000');
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('synchronous = NORMAL'); // safe with WAL: a power loss can lose the last commits, not corrupt
      const from = this.migrate();
      this.retireThumbnailFiles(from > 0 && from < 3);
    } catch (err) {
      this.lock?.release();
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot open the store database in "${this.dir}": ${(err as Error).message}`);
    }
    this.stmts = this.prepare();
  }

  /** Brings the schema to SCHEMA_VERSION; returns the version the store had (0: new). */
  private migrate(): number {
    // IMMEDIATE: two processes opening a new store at once must not both create the schema.
    return this.db.transaction(() => {
      const version = this.db.pragma('user_version', { simple: true }) as number;
      if (version === SCHEMA_VERSION) return version;
      if (version > SCHEMA_VERSION) {
        throw new StoreError(`store "${this.dir}" has schema version ${version}, newer than this program's ${SCHEMA_VERSION}: upgrade the program`);
      }
      if (version === 0) {
        const tables = this.db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'").get() as { n: number };
        if (tables.n > 0) throw new StoreError(`"${this.dir}/store.sqlite" is not an image store (it has tables but no schema version)`);
        this.db.exec(SCHEMA);
      } else {
        for (let v = version; v < SCHEMA_VERSION; v++) MIGRATIONS[v](this.db, this.dir);
      }
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
      return version;
    }).immediate();
  }

  /**
   * Removes the thumbnail folder of stores before version 3 once its files are in the table: `imported` when the
   * migration just committed them. A folder found otherwise (the migrating process stopped before removing it, or a
   * process of an older version wrote to it meanwhile) is imported first, keeping the thumbnails already stored.
   */
  private retireThumbnailFiles(imported: boolean): void {
    const dir = path.join(this.dir, OLD_THUMBS_DIR);
    if (!fs.existsSync(dir)) return;
    if (!imported) this.db.transaction(() => importThumbnailFiles(this.db, dir)).immediate();
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch (err) {
      logger.warn({ dir, err: (err as Error).message }, 'could not remove the old thumbnail folder (its thumbnails are in the database now): remove it by hand');
    }
  }

  private prepare() {
    const db = this.db;
    return {
      findByHash: db.prepare<[string], RawImageRow>('SELECT * FROM images WHERE content_hash = ?'),
      getImage: db.prepare<[number], RawImageRow>('SELECT * FROM images WHERE id = ?'),
      // One statement for a search's k rows (a JSON array of ids): one get per hit cost 0.14 ms of CPU a query.
      getImages: db.prepare<[string], RawImageRow>('SELECT images.* FROM json_each(?) AS ids JOIN images ON images.id = ids.value'),
      insertImage: db.prepare(
        'INSERT INTO images (source, content_hash, width, height, format, label, metadata) VALUES (@source, @contentHash, @width, @height, @format, @label, @metadata)',
      ),
      insertEmbedding: db.prepare('INSERT OR IGNORE INTO embeddings (image_id, model_id, vector) VALUES (?, ?, ?)'),
      getEmbedding: db.prepare<[number, string], { vector: Buffer }>('SELECT vector FROM embeddings WHERE image_id = ? AND model_id = ?'),
      hasEmbedding: db.prepare<[number, string], { one: number }>('SELECT 1 AS one FROM embeddings WHERE image_id = ? AND model_id = ?'),
      insertOriginal: db.prepare('INSERT OR IGNORE INTO originals (image_id, bytes) VALUES (?, ?)'),
      getOriginal: db.prepare<[number], { bytes: Buffer }>('SELECT bytes FROM originals WHERE image_id = ?'),
      insertThumbnail: db.prepare('INSERT OR IGNORE INTO thumbnails (image_id, webp) VALUES (?, ?)'),
      getThumbnail: db.prepare<[number], { webp: Buffer }>('SELECT webp FROM thumbnails WHERE image_id = ?'),
      hasThumbnail: db.prepare<[number], { one: number }>('SELECT 1 AS one FROM thumbnails WHERE image_id = ?'),
      addThumbnail: db.prepare('INSERT OR IGNORE INTO thumbnails (image_id, webp) SELECT id, ? FROM images WHERE id = ?'),
      modelsOfImage: db.prepare<[number], { model_id: string }>('SELECT model_id FROM embeddings WHERE image_id = ?'),
      deleteImage: db.prepare('DELETE FROM images WHERE id = ?'),
      count: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM embeddings WHERE model_id = ?'),
      iterate: db.prepare<[string], { image_id: number; vector: Buffer }>('SELECT image_id, vector FROM embeddings WHERE model_id = ? ORDER BY image_id'),
      insertRegion: db.prepare('INSERT OR IGNORE INTO region_embeddings (image_id, model_id, region, vector) VALUES (?, ?, ?, ?)'),
      hasRegions: db.prepare<[string, number], { one: number }>('SELECT 1 AS one FROM region_embeddings WHERE model_id = ? AND image_id = ? LIMIT 1'),
      countRegions: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM region_embeddings WHERE model_id = ?'),
      iterateRegions: db.prepare<[string], { image_id: number; region: number; vector: Buffer }>('SELECT image_id, region, vector FROM region_embeddings WHERE model_id = ? ORDER BY image_id, region'),
      getState: db.prepare<[string], { value: string }>('SELECT value FROM index_state WHERE key = ?'),
      setState: db.prepare('INSERT INTO index_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      bumpState: db.prepare("INSERT INTO index_state (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"),
    };
  }

  // ---- reads (no lock needed) --------------------------------------------------------------------------------

  findByHash(hash: string): ImageRow | undefined {
    const row = this.stmts.findByHash.get(hash);
    return row && toImageRow(row);
  }

  getImage(id: number): ImageRow | undefined {
    const row = this.stmts.getImage.get(id);
    return row && toImageRow(row);
  }

  /** The rows of `ids` that exist, in the order given (search results). */
  getImages(ids: number[]): ImageRow[] {
    if (ids.length === 0) return [];
    const byId = new Map(this.stmts.getImages.all(JSON.stringify(ids)).map((r) => [r.id, r]));
    return ids.flatMap((id) => {
      const row = byId.get(id);
      return row ? [toImageRow(row)] : [];
    });
  }

  /** The ids of the images that pass `filter`, ascending: one query on the indexed columns (metadata excepted). */
  filteredIds(filter: ImageFilter): number[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    const list = (xs: string[]) => {
      params.push(...xs);
      return xs.map(() => '?').join(', ');
    };
    if (filter.labels) where.push(`label IN (${list(filter.labels)})`);
    for (const m of filter.meta ?? []) {
      params.push(`$${m.key.map((k) => `."${k}"`).join('')}`);
      where.push(`metadata -> ? IN (${list(metaTexts(m.values))})`);
    }
    if (filter.source !== undefined) {
      const { exact, ranges } = sourceRanges(filter.source);
      const parts = ranges.map(([from, to]) => {
        params.push(from, to);
        return '(source >= ? AND source < ?)';
      });
      if (exact !== null) {
        params.push(exact);
        parts.push('source = ?');
      }
      where.push(`(${parts.join(' OR ')})`);
    }
    if (filter.after !== undefined) where.push(`added_at >= ${list([filter.after])}`);
    if (filter.before !== undefined) where.push(`added_at < ${list([filter.before])}`);
    const sql = `SELECT id FROM images${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY id`;
    return this.db.prepare<(string | number)[], number>(sql).pluck().all(...params);
  }

  getEmbedding(id: number, modelId: string): Float32Array | undefined {
    const row = this.stmts.getEmbedding.get(id, modelId);
    return row && blobToVector(row.vector);
  }

  /** Whether image `id` has an embedding for the model (without reading the vector). */
  hasEmbedding(id: number, modelId: string): boolean {
    return this.stmts.hasEmbedding.get(id, modelId) !== undefined;
  }

  /** Number of embeddings stored for a model. */
  count(modelId: string): number {
    return this.stmts.count.get(modelId)!.n;
  }

  /** Bumped in the same transaction as every change to the model's embeddings; 0 for a model never written. */
  generation(modelId: string): number {
    return Number(this.stmts.getState.get(genKey(modelId))?.value ?? 0);
  }

  /** Vector length recorded for a model at its first embedding, or null. */
  dim(modelId: string): number | null {
    const v = this.stmts.getState.get(dimKey(modelId))?.value;
    return v === undefined ? null : Number(v);
  }

  /**
   * Every embedding of a model in id order, streamed (for rebuilding the HNSW index). It is one SQL statement, so
   * it sees one snapshot; no other statement may run on this store until the iteration ends.
   */
  *iterateEmbeddings(modelId: string): Generator<{ id: number; vector: Float32Array }> {
    for (const row of this.stmts.iterate.iterate(modelId)) yield { id: row.image_id, vector: blobToVector(row.vector) };
  }

  /** Region vectors per image recorded for a model at its first region vectors, or null. */
  regionsPerImage(modelId: string): number | null {
    const v = this.stmts.getState.get(regionsKey(modelId))?.value;
    return v === undefined ? null : Number(v);
  }

  /** Number of region vectors stored for a model. */
  regionCount(modelId: string): number {
    return this.stmts.countRegions.get(modelId)!.n;
  }

  /** Every region vector of a model in (image id, region) order, streamed as iterateEmbeddings is. */
  *iterateRegionEmbeddings(modelId: string): Generator<{ id: number; region: number; vector: Float32Array }> {
    for (const row of this.stmts.iterateRegions.iterate(modelId)) yield { id: row.image_id, region: row.region, vector: blobToVector(row.vector) };
  }

  /** Whether image `id` has region vectors for the model. */
  hasRegions(id: number, modelId: string): boolean {
    return this.stmts.hasRegions.get(modelId, id) !== undefined;
  }

  /** Runs `fn` in one read transaction: generation, count and embeddings read inside it agree with each other. */
  readSnapshot<T>(fn: () => T): T {
    return this.db.transaction(fn).deferred();
  }

  /** The kept bytes of an image that has no file of its own (see NewImage.original), or undefined. */
  getOriginal(id: number): Buffer | undefined {
    return this.stmts.getOriginal.get(id)?.bytes;
  }

  /** The WebP thumbnail of image `id`, or undefined (no such image, or none was made). */
  getThumbnail(id: number): Buffer | undefined {
    return this.stmts.getThumbnail.get(id)?.webp;
  }

  /** Whether image `id` has a thumbnail (without reading it). */
  hasThumbnail(id: number): boolean {
    return this.stmts.hasThumbnail.get(id) !== undefined;
  }

  /** The model config recorded for a model's embeddings (JSON text, as given to recordModelConfig), or null. */
  modelConfig(modelId: string): string | null {
    return this.stmts.getState.get(configKey(modelId))?.value ?? null;
  }

  /** A value recorded with setState (e.g. how far a job got), or null. */
  state(key: string): string | null {
    return this.stmts.getState.get(`state:${key}`)?.value ?? null;
  }

  stats(): StoreStats {
    const images = this.db.prepare('SELECT count(*) AS n, count(label) AS labelled FROM images').get() as { n: number; labelled: number };
    const models = (this.db.prepare('SELECT model_id, count(*) AS n FROM embeddings GROUP BY model_id ORDER BY model_id').all() as { model_id: string; n: number }[]).map(
      (m) => ({ modelId: m.model_id, embeddings: m.n, regionVectors: this.regionCount(m.model_id), dim: this.dim(m.model_id), generation: this.generation(m.model_id) }),
    );
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const pageSize = this.db.pragma('page_size', { simple: true }) as number;
    const originals = this.db.prepare('SELECT count(*) AS n, coalesce(sum(length(bytes)), 0) AS bytes FROM originals').get() as { n: number; bytes: number };
    const thumbnails = this.db.prepare('SELECT count(*) AS n, coalesce(sum(length(webp)), 0) AS bytes FROM thumbnails').get() as { n: number; bytes: number };
    return {
      dir: this.dir,
      schemaVersion: SCHEMA_VERSION,
      images: images.n,
      labelled: images.labelled,
      models,
      dbBytes: pages * pageSize,
      originals: originals.n,
      originalBytes: originals.bytes,
      thumbnails: thumbnails.n,
      thumbnailBytes: thumbnails.bytes,
    };
  }

  // ---- writes (writer lock required) -------------------------------------------------------------------------

  /** Records a value under `key` (kept apart from the store's own bookkeeping keys). */
  setState(key: string, value: string): void {
    this.assertWriter();
    this.stmts.setState.run(`state:${key}`, value);
  }

  /** Records the config (JSON text) of the model whose embeddings are stored under `modelId`, e.g. to cost queries. */
  recordModelConfig(modelId: string, configJson: string): void {
    this.assertWriter();
    if (this.modelConfig(modelId) !== configJson) this.stmts.setState.run(configKey(modelId), configJson);
  }

  /** Stores an image and its embedding in one transaction. Identical content is stored once (its id is returned). */
  insertImageWithEmbedding(image: NewImage, modelId: string, vector: Float32Array): InsertResult {
    return this.addBatch([{ image, vector }], modelId)[0];
  }

  /**
   * Stores many images with their embeddings, region vectors, kept originals and thumbnails in one transaction (all
   * or nothing). An image already stored keeps its row and original; it gets the thumbnail and region vectors given
   * only if it has none.
   */
  addBatch(items: { image: NewImage; vector: Float32Array; regions?: Float32Array }[], modelId: string): InsertResult[] {
    this.assertWriter();
    for (const { image, vector } of items) validateImage(image, vector);
    return this.db
      .transaction(() => {
        let dim = this.dim(modelId);
        let added = 0;
        const results = items.map(({ image, vector, regions }): InsertResult => {
          if (dim === null) {
            dim = vector.length;
            this.stmts.setState.run(dimKey(modelId), String(dim));
          } else if (vector.length !== dim) {
            throw new StoreError(`embedding for "${image.source}" has ${vector.length} dimensions but model "${modelId}" has ${dim}`);
          }
          const existing = this.stmts.findByHash.get(image.contentHash);
          const { original, thumbnail, ...row } = image;
          const id = existing
            ? existing.id
            : Number(this.stmts.insertImage.run({ ...row, label: row.label ?? null, metadata: JSON.stringify(row.metadata ?? {}) }).lastInsertRowid);
          if (original && !existing) this.stmts.insertOriginal.run(id, original);
          if (thumbnail) this.stmts.insertThumbnail.run(id, thumbnail);
          const embeddingAdded = this.stmts.insertEmbedding.run(id, modelId, vectorToBlob(vector)).changes > 0;
          if (embeddingAdded) added++;
          if (!regions || !this.insertRegions(id, modelId, dim, regions, image.source)) return { id, created: !existing, embeddingAdded };
          added++;
          return { id, created: !existing, embeddingAdded, regionsAdded: true };
        });
        if (added > 0) this.stmts.bumpState.run(genKey(modelId));
        return results;
      })
      .immediate();
  }

  /** Stores an image's region vectors unless it has them; every image of a model has the same number. */
  private insertRegions(id: number, modelId: string, dim: number, regions: Float32Array, source: string): boolean {
    const n = validateRegions(source, regions, dim);
    const known = this.regionsPerImage(modelId);
    if (known === null) this.stmts.setState.run(regionsKey(modelId), String(n));
    else if (known !== n) throw new StoreError(`model "${modelId}" stores ${known} region vectors per image; "${source}" has ${n}`);
    let added = 0;
    for (let r = 0; r < n; r++) added += this.stmts.insertRegion.run(id, modelId, r, vectorToBlob(regions.subarray(r * dim, (r + 1) * dim))).changes;
    return added > 0;
  }

  /**
   * Gives a stored image that has no thumbnail this one (e.g. an image indexed before its thumbnail could be made).
   * False when the image already has one, or no longer exists.
   */
  addThumbnail(id: number, webp: Uint8Array): boolean {
    this.assertWriter();
    return this.stmts.addThumbnail.run(webp, id).changes > 0;
  }

  /** Deletes images (and, by cascade, their embeddings, thumbnails and kept originals). Returns the ids that existed. */
  deleteImages(ids: number[]): number[] {
    this.assertWriter();
    return this.db
      .transaction(() => {
        const models = new Set<string>();
        const gone: number[] = [];
        for (const id of ids) {
          for (const m of this.stmts.modelsOfImage.all(id)) models.add(m.model_id);
          if (this.stmts.deleteImage.run(id).changes > 0) gone.push(id);
        }
        for (const m of models) this.stmts.bumpState.run(genKey(m));
        return gone;
      })
      .immediate();
  }

  close(): void {
    if (this.db.open) this.db.close();
    this.lock?.release();
  }

  private assertWriter(): void {
    if (!this.writer) throw new StoreError(`store "${this.dir}" was opened for reading; open it with { writer: true } to change it`);
  }
}

/**
 * Copies thumbnail files (<dir>/<shard>/<id>.webp, as stores before version 3 kept them) into the thumbnails table,
 * one file in memory at a time. Files of images that no longer exist, temporary files of interrupted writes and
 * anything that is not a WebP file are left out; a thumbnail already in the table is kept. Returns the count copied.
 */
function importThumbnailFiles(db: Database.Database, dir: string): number {
  const insert = db.prepare('INSERT OR IGNORE INTO thumbnails (image_id, webp) SELECT id, ? FROM images WHERE id = ?');
  const list = (d: string) => {
    try {
      return fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return [];
    }
  };
  let copied = 0;
  let skipped = 0;
  for (const shard of list(dir)) {
    if (!shard.isDirectory() || !/^\d+$/.test(shard.name)) continue;
    for (const file of list(path.join(dir, shard.name))) {
      const m = /^(\d+)\.webp$/.exec(file.name);
      if (!m || !file.isFile()) continue;
      let bytes: Buffer;
      try {
        bytes = fs.readFileSync(path.join(dir, shard.name, file.name));
      } catch {
        skipped++;
        continue;
      }
      if (!isWebp(bytes)) {
        skipped++;
        continue;
      }
      copied += insert.run(bytes, Number(m[1])).changes;
    }
  }
  if (copied || skipped) logger.info({ dir, copied, skipped }, 'thumbnail files moved into the store database');
  return copied;
}

const isWebp = (b: Buffer) => b.length >= 12 && b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP';

/** What every store checks before it writes an image and its embedding (both backends). */
export function validateImage(image: NewImage, vector: Float32Array): void {
  if (!HASH_RE.test(image.contentHash)) throw new StoreError(`content hash of "${image.source}" must be 64 lowercase hex digits (sha256), got "${image.contentHash}"`);
  if (!(vector instanceof Float32Array) || vector.length === 0) throw new StoreError(`embedding for "${image.source}" must be a non-empty Float32Array`);
  if (!vector.every(Number.isFinite)) throw new StoreError(`embedding for "${image.source}" contains NaN or infinite values`);
}

/** What every store checks of an image's region vectors (both backends); returns how many there are. */
export function validateRegions(source: string, regions: Float32Array, dim: number): number {
  const n = regions.length / dim;
  if (!(regions instanceof Float32Array) || !Number.isInteger(n) || n < 1) throw new StoreError(`region vectors for "${source}" must be a Float32Array of whole ${dim}-dimensional vectors, got ${regions.length} values`);
  for (let r = 0; r < n; r++) {
    let norm = 0;
    for (let j = r * dim; j < (r + 1) * dim; j++) norm += regions[j] * regions[j];
    if (!(norm > 0) || !Number.isFinite(norm)) throw new StoreError(`region vector ${r} of "${source}" is zero or not finite`);
  }
  return n;
}

function toImageRow(r: RawImageRow): ImageRow {
  return {
    id: r.id,
    source: r.source,
    contentHash: r.content_hash,
    width: r.width,
    height: r.height,
    format: r.format,
    label: r.label,
    metadata: JSON.parse(r.metadata),
    addedAt: r.added_at,
  };
}

const vectorToBlob = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);

function blobToVector(b: Buffer): Float32Array {
  // Copy: a Float32Array view needs 4-byte alignment, which SQLite's buffers do not promise.
  const out = new Float32Array(b.length / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
}

/**
 * An exclusive lock file holding the writer's pid, so that two indexing jobs cannot both write one store (SQLite
 * would serialise their transactions, but the HNSW file would be saved by both). A lock left by a dead process is
 * taken over. Two processes taking over the same stale lock in the same millisecond could both succeed; that needs
 * a crash followed by two simultaneous starts, and SQLite still keeps the data consistent.
 */
class WriterLock {
  private released = false;
  private readonly onExit = () => this.release();

  private constructor(readonly file: string) {
    process.once('exit', this.onExit);
  }

  static acquire(file: string): WriterLock {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
        return new WriterLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new StoreError(`cannot create lock file "${file}": ${(err as Error).message}`);
      }
      const holder = readLockPid(file);
      if (holder === undefined) continue; // removed meanwhile: try again
      if (holder !== null && isAlive(holder)) {
        throw new StoreLockedError(`the store is being written by process ${holder} (lock file "${file}"); wait for it to finish, or stop it`);
      }
      if (holder === null && Date.now() - (fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0) < 5000) {
        // Empty and fresh: another writer created it and is writing its pid right now.
        throw new StoreLockedError(`the store is being opened for writing by another process (lock file "${file}")`);
      }
      // Stale: re-check just before removing, to narrow the race with another process doing the same.
      if (readLockPid(file) === holder) fs.rmSync(file, { force: true });
    }
    throw new StoreLockedError(`could not take the lock file "${file}"`);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    process.removeListener('exit', this.onExit);
    if (readLockPid(this.file) === process.pid) fs.rmSync(this.file, { force: true });
  }
}

/** The pid in a lock file; null if the file is empty or garbled; undefined if it does not exist. */
function readLockPid(file: string): number | null | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number.parseInt(text.trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0); // signal 0: existence check only
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}
