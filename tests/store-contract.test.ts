// The store contract (src/store/types.ts), the same tests over every backend: the embedded store (a folder: SQLite
// + hnswlib) and PostgreSQL + pgvector (PGlite with pgvector served over the wire protocol, started here).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { bruteForceTopK, recallAtK, topKFromHits } from '../src/index/exact-search.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { parseWhere } from '../src/index/filter.ts';
import { type NewImage, StoreError, contentHash } from '../src/index/store.ts';
import { assertHoldsModel, openStore } from '../src/store/open.ts';
import type { ModelSpec, StoreBackend } from '../src/store/types.ts';
import { type TestPostgres, startPostgres } from './helpers/pglite.ts';

const DIM = 16;
const MODEL: ModelSpec = { modelId: 'matvit-test:XL', dim: DIM };

/** Deterministic Gaussian vectors (mulberry32 + Box-Muller). */
/** Seeded unit vectors (the stores L2-normalise what they are given; exact search below takes them as they are). */
function randomVectors(n: number, dim: number, seed: number): Float32Array[] {
  const rand = mulberry32(seed);
  return Array.from({ length: n }, () => {
    const v = Float32Array.from({ length: dim }, () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()));
    const norm = Math.hypot(...v);
    return v.map((x) => x / norm);
  });
}

const image = (i: number, extra: Partial<NewImage> = {}): NewImage => ({
  source: `/photos/img${i}.jpg`,
  contentHash: contentHash(Buffer.from(`image ${i}`)),
  width: 32,
  height: 24,
  format: 'jpeg',
  label: i % 3 === 0 ? null : i % 2 ? 'cat' : 'dog',
  metadata: { i, zeta: 'last', alpha: [1, 2] },
  ...extra,
});

interface Backend {
  name: string;
  /** A location with an empty store. */
  fresh(): Promise<string>;
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
}

let tmp: string;
let pg: TestPostgres;
const backends: Backend[] = [
  {
    name: 'embedded (SQLite + hnswlib)',
    fresh: async () => fs.mkdtempSync(path.join(tmp, 'store-')),
  },
  {
    name: 'PostgreSQL + pgvector',
    setup: async () => {
      pg = await startPostgres();
    },
    fresh: async () => {
      await pg.reset();
      return pg.url;
    },
    teardown: async () => pg?.stop(),
  },
];

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-contract-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

for (const backend of backends) {
  describe(`store contract: ${backend.name}`, () => {
    before(async () => backend.setup?.());
    after(async () => backend.teardown?.());

    /** Opens a fresh store as a writer, runs fn, closes it. */
    async function withStore<T>(fn: (s: StoreBackend, location: string) => Promise<T>, model = MODEL): Promise<T> {
      const location = await backend.fresh();
      const store = await openStore(location, model, { writer: true });
      try {
        return await fn(store, location);
      } finally {
        await store.close();
      }
    }

    test('add stores new content once, keeps rows in the order asked, and round-trips labels and metadata', () =>
      withStore(async (store) => {
        const v = randomVectors(4, DIM, 1);
        const first = await store.add([0, 1, 2].map((i) => ({ image: image(i), vector: v[i] })));
        assert.deepEqual(first.map((r) => [r.created, r.embeddingAdded]), [[true, true], [true, true], [true, true]]);
        assert.equal(new Set(first.map((r) => r.id)).size, 3);
        // The same content again (another name), inside one batch twice, and beside a new image.
        const again = await store.add([
          { image: image(1, { source: '/elsewhere/copy.jpg' }), vector: v[3] },
          { image: image(3), vector: v[3] },
          { image: image(3, { source: '/dup/in-batch.jpg' }), vector: v[3] },
        ]);
        assert.deepEqual(again.map((r) => [r.id === first[1].id, r.created, r.embeddingAdded]), [[true, false, false], [false, true, true], [false, false, false]]);
        assert.equal(again[1].id, again[2].id);
        assert.equal(await store.count(), 4);

        const ids = [first[2].id, 999_999, first[0].id, again[1].id];
        const rows = await store.rows(ids);
        assert.deepEqual(rows.map((r) => r.id), [first[2].id, first[0].id, again[1].id]);
        assert.deepEqual(rows[0], { ...rowOf(image(2)), id: first[2].id, addedAt: rows[0].addedAt });
        assert.deepEqual(Object.keys(rows[0].metadata), ['i', 'zeta', 'alpha']); // as given
        assert.equal(rows[1].label, null);
        assert.equal(rows[2].source, '/photos/img3.jpg'); // the first copy's name stays
        assert.match(rows[0].addedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
        assert.ok(Math.abs(Date.parse(rows[0].addedAt) - Date.now()) < 60_000);
      }));

    test('findByHash says whether the image has an embedding for this model', async () => {
      const location = await backend.fresh();
      const [v] = randomVectors(1, DIM, 2);
      const store = await openStore(location, MODEL, { writer: true });
      const [r] = await store.add([{ image: image(7), vector: v }]);
      const found = await store.findByHash(image(7).contentHash);
      assert.equal(found?.row.id, r.id);
      assert.equal(found?.indexed, true);
      assert.equal(await store.findByHash(contentHash(Buffer.from('never stored'))), undefined);
      await store.close(); // the embedded store has one writer at a time
      const other = await openStore(location, { modelId: 'other-model', dim: 8 }, { writer: true });
      try {
        assert.equal((await other.findByHash(image(7).contentHash))?.indexed, false);
        const [w] = randomVectors(1, 8, 3);
        const [o] = await other.add([{ image: image(7), vector: w }]);
        assert.deepEqual(o, { id: r.id, created: false, embeddingAdded: true }); // the image is shared, the embedding is new
        assert.equal(await other.count(), 1);
      } finally {
        await other.close();
      }
    });

    test('nearest: each stored vector finds itself first; recall@10 against exact search; k above the count', () =>
      withStore(async (store) => {
        const n = 600;
        const vectors = randomVectors(n, DIM, 4);
        const ids: number[] = [];
        for (let b = 0; b < n; b += 200) {
          ids.push(...(await store.add(vectors.slice(b, b + 200).map((vector, j) => ({ image: image(b + j), vector })))).map((r) => r.id));
        }
        const queries = randomVectors(40, DIM, 5);
        const approx = [];
        for (const q of queries) {
          const hits = await store.nearest(q, 10, 100);
          assert.equal(hits.length, 10);
          for (let i = 1; i < hits.length; i++) assert.ok(hits[i - 1].score >= hits[i].score - 1e-6, 'best first');
          approx.push(hits);
        }
        const concat = (vs: Float32Array[]) => Float32Array.from(vs.flatMap((v) => [...v]));
        const truth = bruteForceTopK(concat(vectors), n, DIM, concat(queries), queries.length, 10);
        const rowOf = new Map(ids.map((id, row) => [id, row]));
        const recall = recallAtK(topKFromHits(approx, 10, (id) => rowOf.get(id)!), truth, 10);
        assert.ok(recall >= 0.95, `recall@10 ${recall}`);
        for (let i = 0; i < 600; i += 97) {
          const [top] = await store.nearest(vectors[i], 1);
          assert.equal(top.id, ids[i]);
          assert.ok(Math.abs(top.score - 1) < 1e-5, `self score ${top.score}`);
        }
        const exactScores = truth.scores.subarray(0, 10);
        const got = await store.nearest(queries[0], 10, 400);
        got.forEach((h, i) => assert.ok(Math.abs(h.score - exactScores[i]) < 1e-4, 'cosine similarity'));
        const embedding = await store.embedding(ids[5]);
        const cos = dot(embedding!, vectors[5]) / Math.sqrt(dot(embedding!, embedding!) * dot(vectors[5], vectors[5]));
        assert.ok(cos > 0.99999, 'the stored embedding has the vector direction');
        assert.equal(await store.embedding(999_999), undefined);
      }));

    test('nearest on an empty store, and k above the count', () =>
      withStore(async (store) => {
        const [q, a, b] = randomVectors(3, DIM, 6);
        assert.deepEqual(await store.nearest(q, 5), []);
        await store.add([{ image: image(1), vector: a }, { image: image(2), vector: b }]);
        assert.equal((await store.nearest(q, 50)).length, 2);
        await assert.rejects(store.nearest(new Float32Array(DIM + 1).fill(1), 5), RangeError);
      }));

    test('delete removes images with their embeddings, thumbnails and originals, all at once; ids are never reused', () =>
      withStore(async (store) => {
        const v = randomVectors(3, DIM, 7);
        const rs = await store.add(v.map((vector, i) => ({ image: image(i, { original: Buffer.from(`bytes ${i}`), thumbnail: webp(i) }), vector })));
        const ids = rs.map((r) => r.id);
        assert.deepEqual(await store.delete([ids[2], 424242, ids[0], ids[2]]), [ids[2], ids[0]]);
        assert.deepEqual((await store.rows(ids)).map((r) => r.id), [ids[1]]);
        assert.equal(await store.count(), 1);
        assert.equal(await store.original(ids[0]), undefined);
        assert.equal(await store.thumbnail(ids[0]), undefined);
        assert.equal(await store.findByHash(image(0).contentHash), undefined);
        const hits = await store.nearest(v[0], 3);
        assert.deepEqual(hits.map((h) => h.id), [ids[1]]);
        const [re] = await store.add([{ image: image(0), vector: v[0] }]);
        assert.ok(re.id > Math.max(...ids), `re-added image gets a new id (${re.id})`);
        assert.deepEqual(await store.delete([]), []);
      }));

    test('originals are kept for new images only; thumbnails are added to an image that has none', () =>
      withStore(async (store) => {
        const v = randomVectors(3, DIM, 8);
        const [a, b] = await store.add([
          { image: image(1, { original: Buffer.from('first bytes') }), vector: v[0] },
          { image: image(2), vector: v[1] },
        ]);
        assert.deepEqual(await store.original(a.id), Buffer.from('first bytes'));
        assert.equal(await store.original(b.id), undefined);
        assert.equal(await store.thumbnail(b.id), undefined);
        assert.equal(await store.hasThumbnail(b.id), false);
        // Known content with a thumbnail now, and another original: the thumbnail is taken, the original is not.
        await store.add([{ image: image(2, { thumbnail: webp(2), original: Buffer.from('late bytes') }), vector: v[1] }]);
        assert.deepEqual(await store.thumbnail(b.id), webp(2));
        assert.equal(await store.hasThumbnail(b.id), true);
        assert.equal(await store.original(b.id), undefined);
        assert.equal(await store.addThumbnail(b.id, webp(3)), false, 'it has one');
        assert.deepEqual(await store.thumbnail(b.id), webp(2));
        assert.equal(await store.addThumbnail(a.id, webp(4)), true);
        assert.deepEqual(await store.thumbnail(a.id), webp(4));
        assert.equal(await store.addThumbnail(777_777, webp(5)), false, 'no such image');
      }));

    test('indexInfo describes the vector index; state keeps what the program records', () =>
      withStore(async (store, location) => {
        const v = randomVectors(5, DIM, 9);
        await store.add(v.map((vector, i) => ({ image: image(i), vector })));
        await store.delete([2]);
        const info = await store.indexInfo();
        assert.deepEqual([info.vectors, info.M, info.efConstruction, info.ef], [4, 16, 128, 160]);
        assert.ok(info.capacity >= info.vectors);
        assert.equal(await store.state('gallery:x'), null);
        await store.setState('gallery:x', 'indexing');
        await store.setState('gallery:x', 'done');
        const reader = await openStore(location, MODEL);
        try {
          assert.equal(await reader.state('gallery:x'), 'done', 'seen by another handle');
          await assert.rejects(reader.setState('gallery:x', 'no'), StoreError);
        } finally {
          await reader.close();
        }
      }));

    test('a batch with a bad item stores nothing', () =>
      withStore(async (store) => {
        const v = randomVectors(2, DIM, 9);
        const bad = [
          [{ image: image(1), vector: v[0] }, { image: image(2), vector: Float32Array.from(v[1], (x, i) => (i === 3 ? Number.NaN : x)) }],
          [{ image: image(1), vector: v[0] }, { image: image(2), vector: new Float32Array(DIM - 1).fill(1) }],
          [{ image: image(1), vector: v[0] }, { image: image(2, { contentHash: 'not-a-hash' }), vector: v[1] }],
        ];
        for (const items of bad) await assert.rejects(store.add(items), StoreError);
        const s = await store.stats();
        assert.equal(s.images, 0);
        assert.equal(await store.count(), 0);
      }));

    test('stats count images, labels, embeddings per model, originals and thumbnails', () =>
      withStore(async (store) => {
        const v = randomVectors(4, DIM, 10);
        await store.add(v.map((vector, i) => ({ image: image(i, i < 2 ? { original: Buffer.alloc(100 + i), thumbnail: webp(i) } : {}), vector })));
        const s = await store.stats();
        assert.equal(s.images, 4);
        assert.equal(s.labelled, 2); // images 1 and 2 (0 and 3 have no label)
        assert.deepEqual(s.models.map(({ modelId, embeddings, dim }) => ({ modelId, embeddings, dim })), [{ modelId: MODEL.modelId, embeddings: 4, dim: DIM }]);
        assert.ok(s.models[0].generation >= 1);
        assert.equal(s.originals, 2);
        assert.equal(s.originalBytes, 201);
        assert.equal(s.thumbnails, 2);
        assert.equal(s.thumbnailBytes, webp(0).length + webp(1).length);
        assert.ok(s.dbBytes > 0);
      }));

    test('data outlives the process handle; a reader cannot write; a reader of another model is told so', async () => {
      const location = await backend.fresh();
      const v = randomVectors(2, DIM, 11);
      const w = await openStore(location, MODEL, { writer: true });
      const [r] = await w.add([{ image: image(1), vector: v[0] }]);
      await w.close();
      const reader = await openStore(location, MODEL);
      try {
        assert.equal(reader.writer, false);
        assert.equal((await reader.nearest(v[0], 1))[0].id, r.id);
        await assert.rejects(reader.add([{ image: image(2), vector: v[1] }]), StoreError);
        await assert.rejects(reader.delete([r.id]), StoreError);
        await assertHoldsModel(reader);
      } finally {
        await reader.close();
      }
      const stranger = await openStore(location, { modelId: 'another-model', dim: DIM });
      try {
        await assert.rejects(assertHoldsModel(stranger), /has no embeddings of model another-model \(it has matvit-test:XL\)/);
        assert.deepEqual(await stranger.nearest(v[0], 3), []);
      } finally {
        await stranger.close();
      }
    });

    test('filtered nearest: only images that pass, for every kind of clause, right after deletes and adds', () =>
      withStore(async (store) => {
        const n = 90;
        const vectors = randomVectors(n + 5, DIM, 13);
        const source = (i: number) => (i < 30 ? `/photos/2024/img${i}.jpg` : i < 60 ? `/photos/2024-old/img${i}.jpg` : `/photos/a.tar.gz:dir/img${i}.jpg`);
        const meta = (i: number) => ({ album: i % 4 === 0 ? 'trip' : 'home', year: i % 2 ? 2024 : '2024', exif: { camera: i % 5 === 0 ? 'x100' : 'other' } });
        const make = (i: number) => ({ image: image(i, { source: source(i), label: ['cat', 'dog', 'bird'][i % 3], metadata: meta(i) }), vector: vectors[i] });
        const ids = (await store.add(Array.from({ length: n }, (_, i) => make(i)))).map((r) => r.id);
        const indexOf = new Map(ids.map((id, i) => [id, i]));
        const cases: [string[], (i: number) => boolean][] = [
          [['label=cat'], (i) => i % 3 === 0],
          [['label=cat,bird'], (i) => i % 3 !== 1],
          [['meta.album=trip'], (i) => i % 4 === 0],
          [['meta.year=2024'], () => true], // the number 2024 and the string "2024" alike
          [['meta.exif.camera=x100'], (i) => i % 5 === 0],
          [['source=/photos/2024'], (i) => i < 30],
          [['source=/photos/a.tar.gz'], (i) => i >= 60],
          [['source=/photos/'], () => true],
          [['label=dog', 'meta.album=trip', 'source=/photos/2024-old'], (i) => i % 3 === 1 && i % 4 === 0 && i >= 30 && i < 60],
          [['after=2000-01-01', 'before=2999-01-01'], () => true],
          [['before=2000-01-01'], () => false],
          [['label=none-such'], () => false],
        ];
        const live = new Set(ids);
        const check = async (where: string[], pass: (i: number) => boolean, query: Float32Array) => {
          const filter = parseWhere(where)!;
          const hits = await store.nearest(query, 10, undefined, filter);
          const passing = [...live].filter((id) => pass(indexOf.get(id)!));
          const want = passing.map((id) => ({ id, s: dot(query, vectors[indexOf.get(id)!]) })).sort((a, b) => b.s - a.s).slice(0, 10);
          assert.deepEqual(hits.map((h) => h.id), want.map((w) => w.id), `where ${where.join(' ')}`);
        };
        for (const [where, pass] of cases) await check(where, pass, vectors[n]);
        // Right after deletes: the nearest passing images are gone, the next ones come.
        const cats = ids.filter((_, i) => i % 3 === 0);
        const gone = (await store.nearest(vectors[n], 3, undefined, parseWhere(['label=cat']))).map((h) => h.id);
        await store.delete(gone);
        for (const id of gone) live.delete(id);
        await check(['label=cat'], (i) => i % 3 === 0, vectors[n]);
        assert.ok(cats.length - gone.length > 10);
        // Right after adds: a new passing image equal to the query comes first; a new failing one never appears.
        const added = await store.add([
          { image: image(n + 1, { source: '/photos/2024/new.jpg', label: 'cat', metadata: { album: 'trip' } }), vector: vectors[n + 1] },
          { image: image(n + 2, { source: '/photos/2024/new2.jpg', label: 'dog', metadata: { album: 'trip' } }), vector: vectors[n + 2] },
        ]);
        const first = await store.nearest(vectors[n + 1], 5, undefined, parseWhere(['label=cat', 'meta.album=trip']));
        assert.equal(first[0].id, added[0].id);
        const dogs = await store.nearest(vectors[n + 2], 10, undefined, parseWhere(['label=cat']));
        assert.ok(!dogs.some((h) => h.id === added[1].id));
        assert.deepEqual(await store.nearest(vectors[n], 10, undefined, parseWhere([`after=${new Date(Date.now() + 3_600_000).toISOString()}`])), []);
      }));

    test('filtered nearest: recall@10 at a 1% filter over 3,000 vectors', () =>
      withStore(async (store) => {
        const n = 3000;
        const vectors = randomVectors(n, DIM, 14);
        const rand = mulberry32(15);
        const pct = vectors.map(() => Math.floor(rand() * 100));
        const ids: number[] = [];
        for (let b = 0; b < n; b += 1000) {
          ids.push(...(await store.add(vectors.slice(b, b + 1000).map((vector, j) => ({ image: image(b + j, { metadata: { pct: pct[b + j] } }), vector })))).map((r) => r.id));
        }
        const passing = ids.map((_, i) => i).filter((i) => pct[i] === 7);
        assert.ok(passing.length > 10 && passing.length < 60, `${passing.length} pass`);
        const filter = parseWhere(['meta.pct=7'])!;
        let found = 0;
        const queries = randomVectors(20, DIM, 16);
        for (const q of queries) {
          const hits = await store.nearest(q, 10, undefined, filter);
          const want = passing.map((i) => ({ id: ids[i], s: dot(q, vectors[i]) })).sort((a, b) => b.s - a.s).slice(0, 10).map((w) => w.id);
          assert.ok(hits.every((h) => passing.includes(ids.indexOf(h.id))));
          found += hits.filter((h) => want.includes(h.id)).length;
        }
        const recall = found / (queries.length * 10);
        assert.ok(recall >= 0.95, `recall@10 ${recall}`);
      }));

    test('region vectors: an image is found by its best region less the penalty, each image once; deletes take them too', () =>
      withStore(async (store) => {
        const R = 4;
        const whole = randomVectors(8, DIM, 40);
        const regions = randomVectors(8 * R, DIM, 41);
        const regionsOf = (i: number) => {
          const flat = new Float32Array(R * DIM);
          for (let r = 0; r < R; r++) flat.set(regions[i * R + r], r * DIM);
          return flat;
        };
        assert.equal(await store.regionsPerImage(), null);
        const ids = (await store.add([...Array(8).keys()].map((i) => ({ image: image(i), vector: whole[i], ...(i < 7 ? { regions: regionsOf(i) } : {}) })))).map((r) => r.id);
        assert.equal(await store.regionsPerImage(), R);
        assert.equal((await store.stats()).models[0].regionVectors, 7 * R);

        const query = regions[2 * R + 3]; // image 2's last region, as a crop of it would encode
        const plain = await store.nearest(query, 3);
        const exact = bruteForceTopK(Float32Array.from(whole.flatMap((v) => [...v])), 8, DIM, query, 1, 3);
        assert.deepEqual(plain.map((h) => h.id), [...exact.indices].map((i) => ids[i]), 'without a penalty, whole-image vectors only');
        const merged = await store.nearest(query, 3, undefined, null, 0.1);
        assert.equal(merged[0].id, ids[2]);
        assert.ok(Math.abs(merged[0].score - 0.9) < 1e-4, `the region's similarity less the penalty: ${merged[0].score}`);
        assert.equal(merged[0].region, true, 'and it says so');
        assert.ok(plain.every((h) => h.region === undefined));
        assert.equal(new Set(merged.map((h) => h.id)).size, 3, 'each image once');
        assert.ok(merged.every((h, j) => j === 0 || h.score <= merged[j - 1].score));
        assert.deepEqual((await store.nearest(query, 3, undefined, null, 5)).map((h) => h.id), plain.map((h) => h.id), 'a large penalty gives back the whole-image ranking');
        const cats = await store.nearest(query, 3, undefined, parseWhere(['label=cat']), 0.1); // image 2 is a dog
        assert.ok(cats.length > 0 && !cats.some((h) => h.id === ids[2]), 'a filter holds for region hits too');

        // An image stored without regions gains them; every image of the model has the same number.
        const known = await store.findByHash(image(7).contentHash);
        assert.deepEqual([known?.indexed, known?.regions], [true, false]);
        const again = await store.add([{ image: image(7), vector: whole[7], regions: regionsOf(7) }]);
        assert.deepEqual([again[0].id, again[0].embeddingAdded, again[0].regionsAdded], [ids[7], false, true]);
        assert.equal((await store.findByHash(image(7).contentHash))?.regions, true);
        assert.equal((await store.add([{ image: image(7), vector: whole[7], regions: regionsOf(7) }]))[0].regionsAdded, undefined, 'kept, not added twice');
        assert.equal((await store.nearest(regions[7 * R], 1, undefined, null, 0.1))[0].id, ids[7]);
        await assert.rejects(store.add([{ image: image(20), vector: whole[0], regions: regions[0] }]), (e: Error) => e instanceof StoreError && /4 region vectors per image/.test(e.message));
        await assert.rejects(store.add([{ image: image(21), vector: whole[0], regions: new Float32Array(R * DIM - 1) }]), StoreError);
        assert.equal((await store.rows([ids[0]])).length, 1);

        await store.delete([ids[2]]);
        assert.ok(!(await store.nearest(query, 3, undefined, null, 0.1)).some((h) => h.id === ids[2]), 'a deleted image\'s regions are gone');
        assert.equal((await store.stats()).models[0].regionVectors, 7 * R);
      }));

    test('a store built for a model of another dimension is refused', async () => {
      const location = await withStore(async (store, loc) => {
        await store.add([{ image: image(1), vector: randomVectors(1, DIM, 12)[0] }]);
        return loc;
      });
      await assert.rejects(openStore(location, { ...MODEL, dim: DIM * 2 }, { writer: true }), (err: Error) => err instanceof StoreError && /dimension/.test(err.message) && err.message.includes(MODEL.modelId));
    });
  });
}

const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i], 0);

/** Bytes that look like a WebP file, distinct per n. */
const webp = (n: number) => Buffer.concat([Buffer.from('RIFF\0\0\0\0WEBPVP8L', 'latin1'), Buffer.from(`thumbnail ${n}`)]);

function rowOf(m: NewImage) {
  return { source: m.source, contentHash: m.contentHash, width: m.width, height: m.height, format: m.format, label: m.label ?? null, metadata: m.metadata ?? {} };
}
