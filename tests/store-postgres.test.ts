// What only the PostgreSQL store has: versioned migrations, per-query ef, and its failures at open (a wrong URL, an
// unreachable server, a database without pgvector, a newer schema): each a StoreError naming the problem, with
// nothing written. The contract it shares with the embedded store is in store-contract.test.ts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { parseWhere } from '../src/index/filter.ts';
import { EXACT_MAX } from '../src/index/filtered-search.ts';
import { StoreError, contentHash } from '../src/index/store.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { parseStoreLocation, redact } from '../src/store/location.ts';
import { openStore } from '../src/store/open.ts';
import { SCHEMA_VERSION } from '../src/store/pg-schema.ts';
import { PostgresStore } from '../src/store/postgres.ts';
import { type TestPostgres, startPostgres } from './helpers/pglite.ts';

const MODEL = { modelId: 'matvit-test:XL', dim: 4 };

describe('store locations', () => {
  test('a folder is the embedded store; postgres:// and postgresql:// the PostgreSQL store', () => {
    assert.equal(parseStoreLocation('./data').kind, 'embedded');
    assert.equal(parseStoreLocation('C:\\stores\\x').kind, 'embedded');
    assert.deepEqual(parseStoreLocation('postgresql://me:secret@db.example:5433/images'), { kind: 'postgres', url: 'postgresql://me:secret@db.example:5433/images', display: 'postgresql://me:***@db.example:5433/images' });
    assert.equal(redact('postgres://me@h/db'), 'postgres://me@h/db');
  });

  test('other URLs and incomplete PostgreSQL URLs are refused with the expected form, never taken for a folder', () => {
    const cases: [string, RegExp][] = [
      ['mysql://me@h/db', /unsupported store URL "mysql:\/\/me@h\/db": give a folder or postgres:\/\/USER@HOST:PORT\/DATABASE/],
      ['redis://127.0.0.1:6379', /unsupported store URL/],
      ['postgres://me@h:99999/db', /invalid PostgreSQL URL "postgres:\/\/me@h:99999\/db"/],
      ['postgres://me:pw@h:5432', /names no database/],
      ['postgres:///db', /names no host/],
    ];
    for (const [url, re] of cases) assert.throws(() => parseStoreLocation(url), (e: Error) => e instanceof StoreError && re.test(e.message) && !e.message.includes(':pw@'), url);
  });
});

describe('store URLs on the command line', () => {
  test('a bad URL, or a PostgreSQL server that is not there: one line, exit 2, no folder named after the URL', () => {
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
    const cases: [string[], RegExp][] = [
      [['stats', '--store', 'mysql://me@h/db'], /^matvit: unsupported store URL "mysql:\/\/me@h\/db"/],
      [['rm', '5', '--store', 'postgres://me:pw@h:99999/db'], /^matvit: invalid PostgreSQL URL "postgres:\/\/me:\*\*\*@h:99999\/db"/],
      [['index', 'datasets', '--store', 'postgres://me@127.0.0.1:1/db'], /^matvit: cannot reach PostgreSQL at postgres:\/\/me@127\.0\.0\.1:1\/db: connect ECONNREFUSED/],
    ];
    for (const [args, re] of cases) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, NODE_ENV: 'test' } });
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    }
    for (const folder of ['mysql:', 'postgres:']) assert.equal(fs.existsSync(path.join(root, folder)), false);
  });
});

describe('PostgreSQL store', () => {
  let pgs: TestPostgres;
  before(async () => {
    pgs = await startPostgres();
  });
  after(async () => pgs?.stop());

  const query = async (sql: string) => {
    const c = new pg.Client({ connectionString: pgs.url });
    await c.connect();
    try {
      return (await c.query(sql)).rows;
    } finally {
      await c.end();
    }
  };

  test('migrations are versioned and run once, even by writers opening a new database at the same time', async () => {
    await pgs.reset();
    const stores = await Promise.all([0, 1, 2].map(() => openStore(pgs.url, MODEL, { writer: true })));
    await Promise.all(stores.map((s) => s.close()));
    assert.deepEqual((await query('SELECT version FROM schema_migrations ORDER BY version')).map((r) => r.version), Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    assert.equal((await query('SELECT count(*)::int AS n FROM models'))[0].n, 1);
    const idx = await query("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'embeddings_%_hnsw'");
    assert.equal(idx.length, 1);
    assert.match(idx[0].indexdef, /USING hnsw \(e vector_ip_ops\)/);
    const col = await query("SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute WHERE attrelid = 'embeddings_1'::regclass AND attname = 'e'");
    assert.equal(col[0].t, 'vector(4)');
  });

  test('a database at version 2, with its filter indexes or (made before they took that number) with store_state, migrates to both', async () => {
    const filterIndexes = async () => (await query("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'images_by_%' ORDER BY indexname")).map((r) => r.indexname);
    const at2 = async (undo: string) => {
      await pgs.reset();
      const s = await openStore(pgs.url, MODEL, { writer: true });
      await s.setState('gallery', 'done');
      await s.close();
      await query(`${undo}; DELETE FROM schema_migrations WHERE version > 2`);
    };
    await at2('DROP TABLE store_state'); // version 2 = the filter indexes
    let s = await openStore(pgs.url, MODEL, { writer: true });
    assert.equal(await s.state('gallery'), null);
    await s.setState('gallery', 'indexing');
    await s.close();
    assert.deepEqual(await filterIndexes(), ['images_by_added_at', 'images_by_label', 'images_by_source']);

    await at2('DROP INDEX images_by_label, images_by_source, images_by_added_at'); // version 2 = store_state
    s = await openStore(pgs.url, MODEL, { writer: true });
    assert.equal(await s.state('gallery'), 'done', 'its values kept');
    await s.close();
    assert.deepEqual(await filterIndexes(), ['images_by_added_at', 'images_by_label', 'images_by_source']);
    assert.deepEqual((await query('SELECT version FROM schema_migrations ORDER BY version')).map((r) => r.version), Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
  });

  test('a store with a newer schema is refused', async () => {
    await pgs.reset();
    await (await openStore(pgs.url, MODEL, { writer: true })).close();
    await query(`INSERT INTO schema_migrations (version) VALUES (${SCHEMA_VERSION + 1})`);
    await assert.rejects(openStore(pgs.url, MODEL), /has schema version \d+, newer than this program's \d+: upgrade the program/);
  });

  test('a reader of a new database writes nothing but the schema; a reader of an unknown model creates no table', async () => {
    await pgs.reset();
    const r = await openStore(pgs.url, MODEL);
    assert.equal(await r.count(), 0);
    assert.deepEqual(await r.nearest(Float32Array.of(1, 0, 0, 0), 3), []);
    await r.close();
    assert.equal((await query('SELECT count(*)::int AS n FROM models'))[0].n, 0);
  });

  test('ef is set for each query only, raised to k, and capped at pgvector limit', async () => {
    await pgs.reset();
    const store = (await openStore(pgs.url, MODEL, { writer: true })) as PostgresStore;
    try {
      await store.add(Array.from({ length: 30 }, (_, i) => ({ image: { source: `s${i}`, contentHash: contentHash(Buffer.from(String(i))), width: 1, height: 1, format: 'png' }, vector: Float32Array.of(1, i, i % 3, 1) })));
      assert.equal((await store.nearest(Float32Array.of(1, 1, 1, 1), 25, 1)).length, 25); // ef 1 would give at most 1
      assert.equal((await store.nearest(Float32Array.of(1, 1, 1, 1), 5, 50_000)).length, 5);
      assert.equal((await query('SHOW hnsw.ef_search'))[0]['hnsw.ef_search'], '40'); // the session default: untouched
    } finally {
      await store.close();
    }
  });

  test('a filter passing more than EXACT_MAX images runs as an iterative index scan: only passing images, recall@10 >= 0.95', async () => {
    await pgs.reset();
    const dim = 8;
    const store = (await openStore(pgs.url, { modelId: 'filter-test', dim }, { writer: true })) as PostgresStore;
    try {
      const rand = mulberry32(31);
      const n = EXACT_MAX + 1000;
      const vectors = Array.from({ length: n + 20 }, () => Float32Array.from({ length: dim }, () => rand() - 0.5));
      const ids: number[] = [];
      for (let b = 0; b < n; b += 2000) {
        const batch = vectors.slice(b, Math.min(n, b + 2000)).map((vector, j) => ({ image: { source: `/s/${b + j}`, contentHash: contentHash(Buffer.from(`pf${b + j}`)), width: 1, height: 1, format: 'png', label: (b + j) % 10 === 0 ? 'rare' : 'common' }, vector }));
        ids.push(...(await store.add(batch)).map((r) => r.id));
      }
      const passing = ids.filter((_, i) => i % 10 !== 0);
      assert.ok(passing.length > EXACT_MAX);
      const unit = (v: Float32Array) => {
        const norm = Math.hypot(...v);
        return Array.from(v, (x) => x / norm);
      };
      let found = 0;
      const queries = vectors.slice(n, n + 20);
      for (const q of queries) {
        const hits = await store.nearest(q, 10, undefined, parseWhere(['label=common']));
        assert.equal(hits.length, 10);
        assert.ok(hits.every((h) => (ids.indexOf(h.id) % 10) !== 0), 'only passing images');
        const uq = unit(q);
        const want = ids.flatMap((id, i) => (i % 10 !== 0 ? [{ id, s: unit(vectors[i]).reduce((a, x, d) => a + x * uq[d], 0) }] : [])).sort((a, b) => b.s - a.s).slice(0, 10).map((w) => w.id);
        found += hits.filter((h) => want.includes(h.id)).length;
      }
      assert.ok(found / (queries.length * 10) >= 0.95, `recall@10 ${found / (queries.length * 10)}`);
    } finally {
      await store.close();
    }
  });

  test('an unreachable server: one line naming it, quickly', async () => {
    const port = await closedPort();
    const t0 = Date.now();
    await assert.rejects(openStore(`postgres://me:secret@127.0.0.1:${port}/images`, MODEL, { writer: true }), (e: Error) => {
      assert.ok(e instanceof StoreError);
      assert.equal(e.message, `cannot reach PostgreSQL at postgres://me:***@127.0.0.1:${port}/images: connect ECONNREFUSED 127.0.0.1:${port}`);
      return true;
    });
    assert.ok(Date.now() - t0 < 10_000);
  });

  test('a database without pgvector is refused and left as it was', async () => {
    const bare = await startPostgres({ withVector: false });
    try {
      await assert.rejects(openStore(bare.url, MODEL, { writer: true }), (e: Error) => e instanceof StoreError && /has no pgvector extension \(extension "vector" is not available\): install pgvector >= 0\.7/.test(e.message));
      const tables = await bare.db.query<{ n: number }>("SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public'");
      assert.equal(tables.rows[0].n, 0);
    } finally {
      await bare.stop();
    }
  });
});

/** A local port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}
