// The PostgreSQL store's schema: versioned migrations, applied in order inside one transaction under an advisory
// lock (two processes opening a new database at once must not both create it), and per model one embeddings table
// and one region embeddings table (src/data/regions.ts), each with a vector(D) column and an HNSW index over inner
// product (vectors are stored L2-normalised, so inner product is cosine similarity, as in the embedded store's
// hnswlib index).
import type pg from 'pg';
import { HNSW_DEFAULTS } from '../index/hnsw.ts';
import { StoreError } from '../index/store.ts';

// The columns search filters name (src/index/filter.ts); text_pattern_ops serves the source prefix's LIKE. IF NOT
// EXISTS: version 3 creates them too (below).
const FILTER_INDEXES = `CREATE INDEX IF NOT EXISTS images_by_label ON images (label);
   CREATE INDEX IF NOT EXISTS images_by_source ON images (source text_pattern_ops);
   CREATE INDEX IF NOT EXISTS images_by_added_at ON images (added_at);`;

/** Each entry brings the schema from version i to i + 1. Never edit a shipped entry: add one. */
export const MIGRATIONS: (string | ((client: pg.PoolClient) => Promise<void>))[] = [
  `CREATE TABLE images (
     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- never reused, as in the embedded store
     source text NOT NULL,
     content_hash text NOT NULL UNIQUE CHECK (content_hash ~ '^[0-9a-f]{64}$'),
     width integer NOT NULL,
     height integer NOT NULL,
     format text NOT NULL,
     label text,
     metadata json NOT NULL DEFAULT '{}', -- json, not jsonb: returned exactly as given (key order included)
     added_at timestamptz NOT NULL DEFAULT now()
   );
   CREATE TABLE originals (image_id bigint PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, bytes bytea NOT NULL);
   CREATE TABLE thumbnails (image_id bigint PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, webp bytea NOT NULL);
   CREATE TABLE models (
     id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- names the model's embeddings table
     model_id text NOT NULL UNIQUE,
     dim integer NOT NULL CHECK (dim > 0),
     config json,
     generation bigint NOT NULL DEFAULT 0 -- bumped by every change to the model's embeddings
   );`,
  FILTER_INDEXES,
  // Values recorded by the program (how far the demo gallery's indexing got), as the embedded store's index_state.
  // The scale-out branch shipped this as version 2 before the filter indexes took that number: a database it made
  // is at version 2 with this table and without the indexes, so this step creates whichever of them is missing.
  `CREATE TABLE IF NOT EXISTS store_state (key text PRIMARY KEY, value text NOT NULL);
   ${FILTER_INDEXES}`,
  // Region vectors: R per image, recorded by a model's first write of them (null: none yet); models made before get
  // their table here, later ones in ensureModel. IF NOT EXISTS, as version 3: a database whose schema_migrations
  // was rewound (tests/store-postgres.test.ts rewinds to version 2) runs this again over what it made.
  async (client) => {
    await client.query('ALTER TABLE models ADD COLUMN IF NOT EXISTS regions integer CHECK (regions > 0)');
    for (const m of (await client.query<{ id: number; dim: number }>('SELECT id, dim FROM models')).rows) await createRegionTable(client, m.id, m.dim);
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;
/** The pgvector this program asks for: the README's supported minimum (HNSW over inner product came in 0.5, the
 * iterative index scans filtered search uses when present in 0.8); the tests run PGlite's 0.8. */
const MIN_PGVECTOR = [0, 7, 0];
const LOCK_KEY = 0x6d617476; // 'matv': the advisory lock migrations and model creation hold

export const embeddingsTable = (modelRowId: number) => `embeddings_${modelRowId}`;
export const regionsTable = (modelRowId: number) => `region_embeddings_${modelRowId}`;

/** pgvector's iterative index scans (a filtered search that keeps scanning the HNSW index until k rows pass). */
export const ITERATIVE_SCANS = [0, 8, 0];

/**
 * Creates pgvector if needed, checks its version, and brings the schema to SCHEMA_VERSION. Returns the pgvector
 * version as numbers.
 */
export async function migrate(client: pg.PoolClient, where: string): Promise<number[]> {
  return inTransaction(client, async () => {
    await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
    const have = await createVectorExtension(client, where);
    await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
    const { rows } = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_migrations');
    const version = rows[0].v ?? 0;
    if (version > SCHEMA_VERSION) {
      throw new StoreError(`the store in ${where} has schema version ${version}, newer than this program's ${SCHEMA_VERSION}: upgrade the program`);
    }
    for (let v = version; v < SCHEMA_VERSION; v++) {
      const step = MIGRATIONS[v];
      await (typeof step === 'string' ? client.query(step) : step(client));
      await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [v + 1]);
    }
    return have;
  });
}

/** Whether version `have` is at least `want` (both as [major, minor, patch]). */
export function atLeast(have: number[], want: number[]): boolean {
  const first = want.findIndex((m, i) => (have[i] ?? 0) !== m); // the first part that differs
  return first === -1 || (have[first] ?? 0) > want[first];
}

async function createVectorExtension(client: pg.PoolClient, where: string): Promise<number[]> {
  try {
    await client.query('SAVEPOINT ext');
    await client.query('CREATE EXTENSION IF NOT EXISTS vector');
    await client.query('RELEASE SAVEPOINT ext');
  } catch (err) {
    await client.query('ROLLBACK TO SAVEPOINT ext');
    const { rows } = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'vector'");
    if (rows.length === 0) throw new StoreError(`the database ${where} has no pgvector extension (${(err as Error).message}): install pgvector >= ${MIN_PGVECTOR.join('.')} there`);
  }
  const { rows } = await client.query<{ v: string }>("SELECT extversion AS v FROM pg_extension WHERE extname = 'vector'");
  const have = rows[0].v.split('.').map((x) => Number.parseInt(x, 10) || 0);
  if (!atLeast(have, MIN_PGVECTOR)) {
    throw new StoreError(`the database ${where} has pgvector ${rows[0].v}, older than the ${MIN_PGVECTOR.join('.')} this program needs: ALTER EXTENSION vector UPDATE`);
  }
  return have;
}

export interface ModelRow {
  id: number;
  dim: number;
  config: unknown;
}

/**
 * The model's row; a writer creates it with its embeddings table and HNSW index when it is new. A reader opening a
 * model the store has never seen gets null and writes nothing.
 */
export async function ensureModel(client: pg.PoolClient, modelId: string, dim: number, config: unknown, writer: boolean, where: string): Promise<ModelRow | null> {
  const find = async () => (await client.query<ModelRow>('SELECT id, dim, config FROM models WHERE model_id = $1', [modelId])).rows[0];
  let row = await find();
  if (!row && writer) {
    row = await inTransaction(client, async () => {
      await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
      const again = await find(); // created by another process while we waited for the lock
      if (again) return again;
      const created = (await client.query<ModelRow>('INSERT INTO models (model_id, dim, config) VALUES ($1, $2, $3) RETURNING id, dim, config', [modelId, dim, config === undefined ? null : JSON.stringify(config)])).rows[0];
      const table = embeddingsTable(created.id);
      await client.query(`CREATE TABLE ${table} (image_id bigint PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, e vector(${dim}) NOT NULL)`);
      await client.query(`CREATE INDEX ${table}_hnsw ON ${table} USING hnsw (e vector_ip_ops) WITH (m = ${HNSW_DEFAULTS.M}, ef_construction = ${HNSW_DEFAULTS.efConstruction})`);
      await createRegionTable(client, created.id, dim);
      return created;
    });
  }
  if (row && row.dim !== dim) throw new StoreError(`the store in ${where} holds ${row.dim}-dimensional embeddings of model "${modelId}", not ${dim}: it was built for another model`);
  if (row && writer && config !== undefined && JSON.stringify(row.config) !== JSON.stringify(config)) {
    await client.query('UPDATE models SET config = $2 WHERE id = $1', [row.id, JSON.stringify(config)]);
    row = { ...row, config };
  }
  return row ?? null;
}

/** A model's region vectors, searched as its embeddings are (IF NOT EXISTS: see version 4). */
async function createRegionTable(client: pg.PoolClient, modelRowId: number, dim: number): Promise<void> {
  const table = regionsTable(modelRowId);
  await client.query(`CREATE TABLE IF NOT EXISTS ${table} (
     image_id bigint NOT NULL REFERENCES images(id) ON DELETE CASCADE,
     region smallint NOT NULL CHECK (region >= 0),
     e vector(${dim}) NOT NULL,
     PRIMARY KEY (image_id, region)
   )`);
  await client.query(`CREATE INDEX IF NOT EXISTS ${table}_hnsw ON ${table} USING hnsw (e vector_ip_ops) WITH (m = ${HNSW_DEFAULTS.M}, ef_construction = ${HNSW_DEFAULTS.efConstruction})`);
}

/** Runs fn between BEGIN and COMMIT; ROLLBACK if it throws. */
export async function inTransaction<T>(client: pg.PoolClient, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const out = await fn();
    await client.query('COMMIT');
    return out;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {}); // the connection may be gone: the server rolls back then
    throw err;
  }
}
