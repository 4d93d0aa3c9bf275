// Search filters (src/index/filter.ts) and filtered search over the embedded store (src/index/filtered-search.ts):
// the clause syntax and its errors, and both search paths (the filtered HNSW walk, exact search over the allowed
// vectors) against exact filtered search. The same filters through both stores: tests/store-contract.test.ts;
// through the API and the CLI: tests/server.test.ts, tests/index-cli.test.ts; the page: tests/browser.test.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { FilterError, parseWhere } from '../src/index/filter.ts';
import { EXACT_MAX, exactAmong, hnswAmong, nearestFiltered } from '../src/index/filtered-search.ts';
import { type IndexHandle, addEmbeddings, deleteImages, openIndex } from '../src/index/service.ts';
import { ImageStore, contentHash } from '../src/index/store.ts';
import { mulberry32 } from '../src/train/rng.ts';

describe('parseWhere', () => {
  test('each kind of clause, values, escapes, and no clause at all', () => {
    assert.equal(parseWhere([]), null);
    assert.deepEqual(parseWhere(['label=cat, dog,cat', 'meta.exif.camera=x\\,1', 'source=/photos/2024/', 'after=2026-01-01', 'before=2026-01-02T03:04:05+02:00']), {
      labels: ['cat', 'dog'],
      meta: [{ key: ['exif', 'camera'], values: ['x,1'] }],
      source: '/photos/2024/',
      after: '2026-01-01T00:00:00.000Z',
      before: '2026-01-02T01:04:05.000Z',
    });
    assert.equal(parseWhere(['source=photos'], (p) => path.resolve('/base', p))!.source, '/base/photos');
    assert.equal(parseWhere(['source=upload:'])!.source, 'upload:');
  });

  test('a malformed clause is a FilterError naming it', () => {
    const cases: [string[], RegExp][] = [
      [['label'], /filter "label" is not key=value/],
      [['label= '], /filter label= has no value/],
      [['label=a,'], /has an empty value/],
      [['colour=red'], /unknown filter "colour"/],
      [['meta.=x'], /a metadata key is/],
      [['meta.a..b=x'], /a metadata key is/],
      [['label=a', 'label=b'], /filter label is given twice/],
      [['source=photos'], /give the path as the store records it/],
      [['after=2026-13-01'], /not a date/],
      [['after=2026-02-30'], /not a date of the calendar/],
      [['before=2026-01-01 10:00'], /not a date/],
      [['after=2026-01-02', 'before=2026-01-01'], /is not before before=/],
      [[`label=${Array.from({ length: 101 }, (_, i) => i).join(',')}`], /101 values, at most 100/],
    ];
    for (const [clauses, message] of cases) assert.throws(() => parseWhere(clauses), (err: Error) => err instanceof FilterError && message.test(err.message), clauses.join(' '));
  });
});

test('a version 3 store gains the filter indexes on open; a label or source filter reads them, not the table', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-filter-v3-'));
  try {
    ImageStore.open(dir, { writer: true }).close();
    const db = new Database(path.join(dir, 'store.sqlite'));
    db.exec('DROP INDEX images_by_label; DROP INDEX images_by_source; DROP INDEX images_by_added_at');
    db.pragma('user_version = 3');
    db.close();
    ImageStore.open(dir).close();
    const again = new Database(path.join(dir, 'store.sqlite'), { readonly: true });
    try {
      const names = again.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'images_by_%' ORDER BY name").pluck().all();
      assert.deepEqual(names, ['images_by_added_at', 'images_by_label', 'images_by_source']);
      const plan = (sql: string) => again.prepare(`EXPLAIN QUERY PLAN ${sql}`).all().map((r) => (r as { detail: string }).detail).join(' ');
      assert.match(plan("SELECT id FROM images WHERE label IN ('a', 'b') ORDER BY id"), /USING (COVERING )?INDEX images_by_label/);
      assert.match(plan("SELECT id FROM images WHERE (source >= '/a/' AND source < '/a0') ORDER BY id"), /USING (COVERING )?INDEX images_by_source/);
    } finally {
      again.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

describe('filtered search over the embedded store', () => {
  const DIM = 16;
  const N = 3000;
  let dir: string;
  let handle: IndexHandle;
  let vectors: Float32Array[];
  let ids: number[];
  const pct: number[] = [];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-filter-'));
    const rand = mulberry32(21);
    const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
    vectors = Array.from({ length: N + 50 }, () => Float32Array.from({ length: DIM }, gauss));
    for (let i = 0; i < N; i++) pct.push(Math.floor(rand() * 100));
    handle = openIndex(dir, 'filter-test', DIM, { writer: true });
    ids = addEmbeddings(
      handle,
      vectors.slice(0, N).map((vector, i) => ({ image: { source: `/img/${i}.jpg`, contentHash: contentHash(Buffer.from(`f${i}`)), width: 1, height: 1, format: 'jpeg', label: `c${i % 10}`, metadata: { pct: pct[i] } }, vector })),
    ).map((r) => r.id);
  });
  after(() => {
    handle.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const cos = (a: Float32Array, b: Float32Array) => {
    let d = 0;
    let na = 0;
    let nb = 0;
    for (let i = 0; i < a.length; i++) [d, na, nb] = [d + a[i] * b[i], na + a[i] * a[i], nb + b[i] * b[i]];
    return d / Math.sqrt(na * nb);
  };
  /** Exact filtered top 10 among the live images i with pass(i). */
  const exactTop = (q: Float32Array, pass: (i: number) => boolean, live: Set<number>) =>
    ids.flatMap((id, i) => (live.has(id) && pass(i) ? [{ id, s: cos(q, vectors[i]) }] : [])).sort((a, b) => b.s - a.s).slice(0, 10).map((x) => x.id);

  test('the filtered HNSW walk keeps recall@10 >= 0.95 at a 1% filter over 3,000 vectors (and exact search is exact)', () => {
    const filter = parseWhere(['meta.pct=3'])!;
    const allowed = handle.allowed.get(handle, filter);
    assert.deepEqual(allowed.ids, ids.filter((_, i) => pct[i] === 3));
    const live = new Set(ids);
    let walkFound = 0;
    const queries = vectors.slice(N, N + 40);
    for (const q of queries) {
      const want = exactTop(q, (i) => pct[i] === 3, live);
      const walk = hnswAmong(handle, allowed, q, 10);
      assert.ok(walk.every((h) => allowed.bitmap[h.id] === 1), 'only passing images');
      walkFound += walk.filter((h) => want.includes(h.id)).length;
      assert.deepEqual(exactAmong(handle, allowed, q, 10).map((h) => h.id), want);
    }
    const recall = walkFound / (queries.length * 10);
    assert.ok(recall >= 0.95, `recall@10 of the walk ${recall}`);
  });

  test('few allowed images go to exact search, many to the walk; a deleted or added image is seen at once', () => {
    const q = vectors[N + 1];
    const few = parseWhere(['meta.pct=5'])!;
    nearestFiltered(handle, q, 10, { filter: few });
    assert.ok(handle.allowed.get(handle, few).vectors !== null, `${handle.allowed.get(handle, few).ids.length} <= ${EXACT_MAX}: exact`);
    const live = new Set(ids);
    const top = nearestFiltered(handle, q, 10, { filter: few });
    assert.deepEqual(top.map((h) => h.id), exactTop(q, (i) => pct[i] === 5, live));
    deleteImages(handle, [top[0].id, top[1].id]);
    live.delete(top[0].id);
    live.delete(top[1].id);
    assert.deepEqual(nearestFiltered(handle, q, 10, { filter: few }).map((h) => h.id), exactTop(q, (i) => pct[i] === 5, live));
    const [added] = addEmbeddings(handle, [{ image: { source: '/img/new.jpg', contentHash: contentHash(Buffer.from('new')), width: 1, height: 1, format: 'jpeg', metadata: { pct: 5 } }, vector: q }]);
    assert.equal(nearestFiltered(handle, q, 1, { filter: few })[0].id, added.id);
    assert.equal(nearestFiltered(handle, q, 10, { filter: parseWhere(['meta.pct=6'])! }).some((h) => h.id === added.id), false);
  });
});
