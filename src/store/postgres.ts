// The PostgreSQL + pgvector backend, through the standard `pg` client: the same contract as the embedded store
// (types.ts), for stores that many processes share. Every add and delete is one transaction; searches run pgvector's
// HNSW index inside the database with hnsw.ef_search set for that query only.
import pg from 'pg';
import type { MatViTConfig } from '../encoder/config.ts';
import { type ImageFilter, metaTexts, sourceRanges } from '../index/filter.ts';
import { EXACT_MAX, regionHitsWanted } from '../index/filtered-search.ts';
import { HNSW_DEFAULTS, normalize } from '../index/hnsw.ts';
import { mergeRegionHits } from '../index/region-merge.ts';
import type { ReindexResult } from '../index/stats.ts';
import { StoreError, validateImage, validateRegions } from '../index/store.ts';
import { logger } from '../log.ts';
import { ITERATIVE_SCANS, type ModelRow, SCHEMA_VERSION, atLeast, embeddingsTable, ensureModel, inTransaction, migrate, regionsTable } from './pg-schema.ts';
import { parseStoreLocation } from './location.ts';
import type { ImageRow, InsertResult, ModelSpec, NewImage, OpenStoreOptions, SearchHit, StoreBackend, StoreItem, StoreStats, VectorIndexInfo } from './types.ts';

/** pgvector refuses hnsw.ef_search above this. */
const PG_MAX_EF = 1000;
const CONNECT_TIMEOUT_MS = 5000;
const POOL_SIZE = 4;

interface RawImageRow {
  id: string;
  source: string;
  content_hash: string;
  width: number;
  height: number;
  format: string;
  label: string | null;
  metadata: Record<string, unknown>;
  added_at: Date;
}

export class PostgresStore implements StoreBackend {
  readonly kind = 'postgres';

  private constructor(
    private readonly pool: pg.Pool,
    readonly location: string,
    readonly modelId: string,
    readonly dim: number,
    readonly writer: boolean,
    readonly config: MatViTConfig | null,
    private model: ModelRow | null, // null: a reader opened a model never written (nothing to find yet)
    private readonly iterativeScans: boolean, // pgvector >= 0.8: filtered searches keep scanning the HNSW index
  ) {}

  private regionsSeen = false; // the model has region vectors (hasRegions)

  /**
   * Connects, brings the schema up to date (creating pgvector if the database has it available) and, for a writer,
   * creates the model's embeddings table. Every failure is a StoreError naming the problem; nothing is written
   * when one occurs (migrations and model creation are transactions).
   */
  static async open(url: string, spec: ModelSpec, opts: OpenStoreOptions = {}): Promise<PostgresStore> {
    const loc = parseStoreLocation(url);
    if (loc.kind !== 'postgres') throw new StoreError(`not a PostgreSQL URL: ${url}`);
    const pool = new pg.Pool({ connectionString: loc.url, max: POOL_SIZE, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    // An idle connection dropped by the server must not crash the process: the next query reconnects or fails.
    pool.on('error', (err) => logger.warn({ store: loc.display, err: err.message }, 'PostgreSQL connection lost'));
    const writer = opts.writer ?? false;
    try {
      const client = await connect(pool, loc.display);
      try {
        const pgvector = await migrate(client, loc.display);
        const model = await ensureModel(client, spec.modelId, spec.dim, spec.config, writer, loc.display);
        const config = spec.config ?? ((model?.config as MatViTConfig | null) ?? null);
        return new PostgresStore(pool, loc.display, spec.modelId, spec.dim, writer, config, model, atLeast(pgvector, ITERATIVE_SCANS));
      } finally {
        client.release();
      }
    } catch (err) {
      await pool.end().catch(() => {});
      if (err instanceof StoreError) throw err;
      throw new StoreError(`the PostgreSQL store ${loc.display} failed to open: ${(err as Error).message}`);
    }
  }

  private get table(): string | null {
    return this.model && embeddingsTable(this.model.id);
  }

  async add(items: StoreItem[]): Promise<InsertResult[]> {
    this.assertWriter();
    let R: number | null = null; // region vectors per image in this batch, as the first image with them has
    let firstSource = '';
    for (const { image, vector, regions } of items) {
      this.validate(image, vector);
      if (!regions) continue;
      const n = validateRegions(image.source, regions, this.dim);
      if (R !== null && n !== R) throw new StoreError(`"${image.source}" has ${n} region vectors, "${firstSource}" in the same batch ${R}: every image of model "${this.modelId}" has the same number`);
      if (R === null) [R, firstSource] = [n, image.source];
    }
    if (items.length === 0) return [];
    const table = this.table!;
    return this.transaction(async (c) => {
      if (R !== null) {
        // The model's row stays locked to the end: two writers' first region vectors cannot record two numbers.
        const known = (await c.query<{ regions: number | null }>('SELECT regions FROM models WHERE id = $1 FOR UPDATE', [this.model!.id])).rows[0].regions;
        if (known === null) await c.query('UPDATE models SET regions = $2 WHERE id = $1', [this.model!.id, R]);
        else if (known !== R) throw new StoreError(`model "${this.modelId}" stores ${known} region vectors per image; "${firstSource}" has ${R}`);
      }
      // Images new to the store, once each (a batch may hold the same content twice: the first copy counts).
      const first = new Map<string, number>();
      items.forEach(({ image }, i) => first.has(image.contentHash) || first.set(image.contentHash, i));
      const uniq = [...first.values()].map((i) => items[i].image);
      const inserted = await c.query<{ id: string; content_hash: string }>(
        `INSERT INTO images (source, content_hash, width, height, format, label, metadata)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::json[])
         ON CONFLICT (content_hash) DO NOTHING RETURNING id, content_hash`,
        [uniq.map((m) => m.source), uniq.map((m) => m.contentHash), uniq.map((m) => m.width), uniq.map((m) => m.height), uniq.map((m) => m.format), uniq.map((m) => m.label ?? null), uniq.map((m) => JSON.stringify(m.metadata ?? {}))],
      );
      const created = new Set(inserted.rows.map((r) => r.content_hash));
      const ids = new Map((await c.query<{ id: string; content_hash: string }>('SELECT id, content_hash FROM images WHERE content_hash = ANY($1)', [[...first.keys()]])).rows.map((r) => [r.content_hash, Number(r.id)]));
      const idOf = (m: NewImage) => ids.get(m.contentHash)!;

      const originals = uniq.filter((m) => m.original && created.has(m.contentHash));
      if (originals.length) {
        await c.query('INSERT INTO originals (image_id, bytes) SELECT * FROM unnest($1::bigint[], $2::bytea[]) ON CONFLICT DO NOTHING', [originals.map(idOf), originals.map((m) => Buffer.from(m.original!))]);
      }
      const thumbs = uniq.filter((m) => m.thumbnail);
      if (thumbs.length) {
        await c.query('INSERT INTO thumbnails (image_id, webp) SELECT * FROM unnest($1::bigint[], $2::bytea[]) ON CONFLICT DO NOTHING', [thumbs.map(idOf), thumbs.map((m) => Buffer.from(m.thumbnail!))]);
      }
      const firsts = [...first.values()];
      const added = await c.query<{ image_id: string }>(
        `INSERT INTO ${table} (image_id, e) SELECT * FROM unnest($1::bigint[], $2::text[]::vector[]) ON CONFLICT DO NOTHING RETURNING image_id`,
        [firsts.map((i) => idOf(items[i].image)), firsts.map((i) => vectorText(items[i].vector))],
      );
      // A known image that has its region vectors keeps them (they are all or none of an image's R).
      const withRegions = firsts.filter((i) => items[i].regions);
      const regionRows = withRegions.flatMap((i) => Array.from({ length: R! }, (_, r) => ({ id: idOf(items[i].image), r, e: vectorText(items[i].regions!.subarray(r * this.dim, (r + 1) * this.dim)) })));
      const regionIds = new Set<number>();
      if (regionRows.length > 0) {
        const { rows } = await c.query<{ image_id: string }>(
          `INSERT INTO ${regionsTable(this.model!.id)} (image_id, region, e) SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::text[]::vector[]) ON CONFLICT DO NOTHING RETURNING image_id`,
          [regionRows.map((x) => x.id), regionRows.map((x) => x.r), regionRows.map((x) => x.e)],
        );
        for (const r of rows) regionIds.add(Number(r.image_id));
      }
      if (added.rows.length > 0 || regionIds.size > 0) await c.query('UPDATE models SET generation = generation + 1 WHERE id = $1', [this.model!.id]);
      const addedIds = new Set(added.rows.map((r) => Number(r.image_id)));
      return items.map(({ image }, i): InsertResult => {
        const isFirst = first.get(image.contentHash) === i;
        const id = idOf(image);
        const result = { id, created: isFirst && created.has(image.contentHash), embeddingAdded: isFirst && addedIds.has(id) };
        return isFirst && regionIds.has(id) ? { ...result, regionsAdded: true } : result;
      });
    });
  }

  async delete(ids: number[]): Promise<number[]> {
    this.assertWriter();
    if (ids.length === 0) return [];
    return this.transaction(async (c) => {
      const { rows } = await c.query<{ id: string }>('DELETE FROM images WHERE id = ANY($1::bigint[]) RETURNING id', [ids]);
      const gone = new Set(rows.map((r) => Number(r.id)));
      // Embeddings of every model went with their images (ON DELETE CASCADE): any model's search may have changed.
      if (gone.size > 0) await c.query('UPDATE models SET generation = generation + 1');
      return ids.filter((id, i) => gone.has(id) && ids.indexOf(id) === i);
    });
  }

  async rows(ids: number[]): Promise<ImageRow[]> {
    if (ids.length === 0) return [];
    const { rows } = await this.pool.query<RawImageRow>('SELECT * FROM images WHERE id = ANY($1::bigint[])', [ids]);
    const byId = new Map(rows.map((r) => [Number(r.id), toImageRow(r)]));
    return ids.flatMap((id) => byId.get(id) ?? []);
  }

  async findByHash(hash: string): Promise<{ row: ImageRow; indexed: boolean; regions: boolean } | undefined> {
    const has = (table: string) => `EXISTS (SELECT 1 FROM ${table} e WHERE e.image_id = i.id)`;
    const sql = this.model
      ? `SELECT i.*, ${has(embeddingsTable(this.model.id))} AS indexed, ${has(regionsTable(this.model.id))} AS regions FROM images i WHERE content_hash = $1`
      : 'SELECT i.*, false AS indexed, false AS regions FROM images i WHERE content_hash = $1';
    const r = (await this.pool.query<RawImageRow & { indexed: boolean; regions: boolean }>(sql, [hash])).rows[0];
    return r && { row: toImageRow(r), indexed: r.indexed, regions: r.regions };
  }

  async embedding(id: number): Promise<Float32Array | undefined> {
    if (!this.table) return undefined;
    const r = (await this.pool.query<{ e: string }>(`SELECT e::text AS e FROM ${this.table} WHERE image_id = $1`, [id])).rows[0];
    return r && Float32Array.from(JSON.parse(r.e) as number[]);
  }

  /**
   * With a filter: few passing images (EXACT_MAX, as the embedded store) are searched exactly (the HNSW index is
   * turned off for the query); more go through pgvector's iterative index scan, which keeps scanning the index
   * until k rows pass, where the installed pgvector has it (0.8), and exactly otherwise. An iterative scan that
   * stops short of k (hnsw.max_scan_tuples) is answered exactly too. With a region penalty, the region vectors are
   * searched the same way, in the same transaction (one snapshot), for their best max(20, 2k), and merged.
   */
  async nearest(query: Float32Array, k: number, ef: number = HNSW_DEFAULTS.ef, filter?: ImageFilter | null, regionPenalty?: number): Promise<SearchHit[]> {
    if (!Number.isInteger(k) || k <= 0) throw new RangeError(`k must be a positive integer, got ${k}`);
    if (query.length !== this.dim) throw new RangeError(`query has ${query.length} dimensions, the store has ${this.dim}`);
    if (regionPenalty !== undefined && !(regionPenalty >= 0 && Number.isFinite(regionPenalty))) throw new RangeError(`region penalty must be a finite number >= 0, got ${regionPenalty}`);
    if (!this.table) return [];
    const filterParams: unknown[] = [];
    const where = filter ? filterWhere(filter, filterParams) : null;
    return this.transaction(async (c) => {
      const whole = await this.search(c, this.table!, query, k, ef, where, filterParams);
      if (regionPenalty === undefined || !(await this.hasRegions(c))) return whole;
      const regions = await this.search(c, regionsTable(this.model!.id), query, regionHitsWanted(k), ef, where, filterParams);
      return regions.length === 0 ? whole : mergeRegionHits(whole, regions, regionPenalty, k);
    });
  }

  /** The `limit` rows of `table` (an embeddings or region table) nearest to the query, inside transaction `c`. */
  private async search(c: pg.PoolClient, table: string, query: Float32Array, limit: number, ef: number, where: string | null, filterParams: unknown[]): Promise<SearchHit[]> {
    const params = [...filterParams, vectorText(query), limit];
    const [q, lim] = [`$${params.length - 1}::vector`, `$${params.length}`];
    const sql = `SELECT e.image_id, e.e <#> ${q} AS d FROM ${table} e${where ? ` JOIN images i ON i.id = e.image_id WHERE ${where}` : ''} ORDER BY e.e <#> ${q} LIMIT ${lim}`;
    const run = async () => (await c.query<{ image_id: string; d: number }>(sql, params)).rows.map((r) => ({ id: Number(r.image_id), score: -r.d })); // <#> is the negated inner product
    const set = (name: string, value: string) => c.query('SELECT set_config($1, $2, true)', [name, value]); // this transaction only
    await set('hnsw.ef_search', String(Math.min(PG_MAX_EF, Math.max(ef, limit)))); // pgvector returns at most ef_search rows
    if (!where) return run();
    const { rows } = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${table} e JOIN images i ON i.id = e.image_id WHERE ${where}`, filterParams);
    const n = Number(rows[0].n);
    if (n === 0) return [];
    const exact = n <= EXACT_MAX || !this.iterativeScans;
    await set('enable_indexscan', exact ? 'off' : 'on'); // explicit both ways: an earlier search of this transaction may have turned it off
    if (!exact) await set('hnsw.iterative_scan', 'strict_order');
    const hits = await run();
    if (exact || hits.length >= Math.min(limit, n)) return hits;
    await set('enable_indexscan', 'off');
    return run();
  }

  async regionsPerImage(): Promise<number | null> {
    return this.readRegionsPerImage(this.pool);
  }

  private async readRegionsPerImage(c: pg.Pool | pg.PoolClient): Promise<number | null> {
    if (!this.model) return null;
    return (await c.query<{ regions: number | null }>('SELECT regions FROM models WHERE id = $1', [this.model.id])).rows[0].regions;
  }

  /**
   * Whether the model has region vectors, so that a search of a store without them runs one key lookup rather than a
   * second search. Once recorded, the number of regions per image never goes back to null: that answer is kept.
   */
  private async hasRegions(c: pg.PoolClient): Promise<boolean> {
    this.regionsSeen ||= (await this.readRegionsPerImage(c)) !== null;
    return this.regionsSeen;
  }

  async count(): Promise<number> {
    if (!this.table) return 0;
    return Number((await this.pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${this.table}`)).rows[0].n);
  }

  async stats(): Promise<StoreStats> {
    // One snapshot (REPEATABLE READ): the counts agree with each other.
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      try {
        const one = async <T extends pg.QueryResultRow>(sql: string) => (await c.query<T>(sql)).rows[0];
        const images = await one<{ n: string; labelled: string }>('SELECT count(*) AS n, count(label) AS labelled FROM images');
        const originals = await one<{ n: string; bytes: string }>('SELECT count(*) AS n, coalesce(sum(octet_length(bytes)), 0) AS bytes FROM originals');
        const thumbnails = await one<{ n: string; bytes: string }>('SELECT count(*) AS n, coalesce(sum(octet_length(webp)), 0) AS bytes FROM thumbnails');
        const dbBytes = await one<{ b: string }>('SELECT pg_database_size(current_database()) AS b');
        const models = [];
        for (const m of (await c.query<{ id: number; model_id: string; dim: number; generation: string }>('SELECT id, model_id, dim, generation FROM models ORDER BY model_id')).rows) {
          const n = await one<{ n: string; regions: string }>(`SELECT (SELECT count(*) FROM ${embeddingsTable(m.id)}) AS n, (SELECT count(*) FROM ${regionsTable(m.id)}) AS regions`);
          if (Number(n.n) > 0) models.push({ modelId: m.model_id, embeddings: Number(n.n), regionVectors: Number(n.regions), dim: m.dim, generation: Number(m.generation) });
        }
        return {
          dir: this.location,
          schemaVersion: SCHEMA_VERSION,
          images: Number(images.n),
          labelled: Number(images.labelled),
          models,
          dbBytes: Number(dbBytes.b),
          originals: Number(originals.n),
          originalBytes: Number(originals.bytes),
          thumbnails: Number(thumbnails.n),
          thumbnailBytes: Number(thumbnails.bytes),
        };
      } finally {
        await c.query('COMMIT');
      }
    } finally {
      c.release();
    }
  }

  async original(id: number): Promise<Buffer | undefined> {
    return (await this.pool.query<{ bytes: Buffer }>('SELECT bytes FROM originals WHERE image_id = $1', [id])).rows[0]?.bytes;
  }

  async thumbnail(id: number): Promise<Buffer | undefined> {
    return (await this.pool.query<{ webp: Buffer }>('SELECT webp FROM thumbnails WHERE image_id = $1', [id])).rows[0]?.webp;
  }

  async hasThumbnail(id: number): Promise<boolean> {
    return (await this.pool.query('SELECT 1 FROM thumbnails WHERE image_id = $1', [id])).rows.length > 0;
  }

  async addThumbnail(id: number, webp: Uint8Array): Promise<boolean> {
    this.assertWriter();
    const r = await this.pool.query('INSERT INTO thumbnails (image_id, webp) SELECT id, $2 FROM images WHERE id = $1 ON CONFLICT DO NOTHING', [id, Buffer.from(webp)]);
    return (r.rowCount ?? 0) > 0;
  }

  async indexInfo(): Promise<VectorIndexInfo> {
    const vectors = await this.count();
    const built: { M: number; efConstruction: number } = { M: HNSW_DEFAULTS.M, efConstruction: HNSW_DEFAULTS.efConstruction };
    if (this.table) {
      // As built (reindex may have chosen others): pgvector keeps them as the index's storage options.
      const { rows } = await this.pool.query<{ o: string[] | null }>('SELECT reloptions AS o FROM pg_class WHERE relname = $1', [`${this.table}_hnsw`]);
      for (const opt of rows[0]?.o ?? []) {
        const [k, v] = opt.split('=');
        if (k === 'm') built.M = Number(v);
        if (k === 'ef_construction') built.efConstruction = Number(v);
      }
    }
    return { vectors, ...built, ef: HNSW_DEFAULTS.ef, capacity: vectors };
  }

  /** Rebuilds the model's HNSW index with these graph parameters, in one transaction (searches wait meanwhile). */
  async rebuildIndex(opts: { M?: number; efConstruction?: number } = {}): Promise<ReindexResult> {
    this.assertWriter();
    const M = opts.M ?? HNSW_DEFAULTS.M;
    const efConstruction = opts.efConstruction ?? HNSW_DEFAULTS.efConstruction;
    const table = this.table!;
    const t0 = performance.now();
    await this.transaction(async (c) => {
      await c.query(`DROP INDEX ${table}_hnsw`);
      await c.query(`CREATE INDEX ${table}_hnsw ON ${table} USING hnsw (e vector_ip_ops) WITH (m = ${M}, ef_construction = ${efConstruction})`);
    });
    return { modelId: this.modelId, file: `${table}_hnsw in ${this.location}`, vectors: await this.count(), M, efConstruction, seconds: (performance.now() - t0) / 1000 };
  }

  async state(key: string): Promise<string | null> {
    return (await this.pool.query<{ value: string }>('SELECT value FROM store_state WHERE key = $1', [key])).rows[0]?.value ?? null;
  }

  async setState(key: string, value: string): Promise<void> {
    this.assertWriter();
    await this.pool.query('INSERT INTO store_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private async transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await connect(this.pool, this.location);
    try {
      return await inTransaction(c, () => fn(c));
    } finally {
      c.release();
    }
  }

  private validate(image: NewImage, vector: Float32Array): void {
    validateImage(image, vector);
    if (vector.length !== this.dim) throw new StoreError(`embedding for "${image.source}" has ${vector.length} dimensions but model "${this.modelId}" has ${this.dim}`);
  }

  private assertWriter(): void {
    if (!this.writer) throw new StoreError(`store ${this.location} was opened for reading; open it with { writer: true } to change it`);
  }
}

/** A pooled connection; failing to get one is a StoreError that says whether the server was unreachable. */
async function connect(pool: pg.Pool, where: string): Promise<pg.PoolClient> {
  try {
    return await pool.connect();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const unreachable = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ECONNRESET'].includes(e.code ?? '') || /timeout/i.test(e.message);
    throw new StoreError(unreachable ? `cannot reach PostgreSQL at ${where}: ${e.message}` : `PostgreSQL at ${where} refused the connection: ${e.message}`);
  }
}

/**
 * The SQL condition of a filter over images `i` (the same meaning as the embedded store's, store.ts), its values
 * appended to `params` as $n.
 */
function filterWhere(f: ImageFilter, params: unknown[]): string {
  const p = (v: unknown) => `$${params.push(v)}`;
  const where: string[] = [];
  if (f.labels) where.push(`i.label = ANY(${p(f.labels)}::text[])`);
  for (const m of f.meta ?? []) where.push(`(i.metadata #> ${p(m.key)}::text[])::text = ANY(${p(metaTexts(m.values))}::text[])`);
  if (f.source !== undefined) {
    const { exact, ranges } = sourceRanges(f.source);
    const parts = ranges.map(([from]) => `i.source LIKE ${p(from.replace(/[\\%_]/g, '\\$&') + '%')}`);
    if (exact !== null) parts.push(`i.source = ${p(exact)}`);
    where.push(`(${parts.join(' OR ')})`);
  }
  if (f.after !== undefined) where.push(`i.added_at >= ${p(f.after)}::timestamptz`);
  if (f.before !== undefined) where.push(`i.added_at < ${p(f.before)}::timestamptz`);
  return where.join(' AND ') || 'true';
}

/** pgvector's text form of the unit-length vector (float32 values print exactly and parse back exactly). */
const vectorText = (v: Float32Array) => `[${normalize(v).map((x) => Math.fround(x)).join(',')}]`;

function toImageRow(r: RawImageRow): ImageRow {
  return {
    id: Number(r.id),
    source: r.source,
    contentHash: r.content_hash,
    width: r.width,
    height: r.height,
    format: r.format,
    label: r.label,
    metadata: r.metadata,
    addedAt: r.added_at.toISOString(),
  };
}
