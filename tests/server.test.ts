// API tests: the real app on a temporary store, with a small random-weight model (DEFAULT_CONFIG shapes) and a few
// dozen CIFAR-10 test images from the bundled demo gallery, indexed through the server's own first-start path.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import Database from 'better-sqlite3';
import sharp from 'sharp';
import { IMAGE_FORMATS } from '../src/data/formats.ts';
import { isImageName, iterateImageSource } from '../src/data/sources.ts';
import { saveAdapters } from '../src/encoder/adapters.ts';
import { loadModel, saveModel } from '../src/encoder/checkpoint.ts';
import { DEFAULT_CONFIG, countFlops, countParams, parseSubmodel } from '../src/encoder/config.ts';
import * as indexerModule from '../src/index/indexer.ts';
import { ImageStore, contentHash } from '../src/index/store.ts';
import { buildApp } from '../src/server/app.ts';
import { toHttpError } from '../src/server/errors.ts';
import { AddImagesResponse, EncodersResponse, SearchResponse, StatsResponse } from '../src/server/schemas.ts';
import { type OpenedServer, DEMO_GALLERY, openServer } from '../src/server/server.ts';
import type { EmbeddedStore } from '../src/store/embedded.ts';
import { randomModel } from './helpers/model.ts';
import { pngChunk } from './helpers/png.ts';

/** The embedded store's SQLite, for what the store seam does not offer (rows of another model). */
const sqlite = (o: OpenedServer) => (o.store as EmbeddedStore).handle.store;

const PER_CLASS = 4; // 40 gallery images
const MAX_UPLOAD = 256 * 1024; // small upload limit, so that "too large" bodies stay cheap to send

let tmp: string;
let modelFile: string;
let opened: OpenedServer;
let server: Server;
let base: string;
const gallery: { file: string; label: string; bytes: Buffer }[] = [];

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-server-'));
  const { tensors } = await randomModel(DEFAULT_CONFIG, 3);
  modelFile = path.join(tmp, 'model.safetensors');
  saveModel(modelFile, DEFAULT_CONFIG, tensors, { 'train.step': '7' });

  // A small gallery folder: the first PER_CLASS images of each class of the bundled archive.
  const counts = new Map<string, number>();
  for await (const item of iterateImageSource(DEMO_GALLERY)) {
    const label = item.label!;
    if ((counts.get(label) ?? 0) >= PER_CLASS) continue;
    counts.set(label, (counts.get(label) ?? 0) + 1);
    const file = path.join(tmp, 'gallery', label, path.basename(item.path));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, item.bytes);
    gallery.push({ file, label, bytes: item.bytes });
    if (gallery.length === 10 * PER_CLASS) break;
  }

  // A calibration next to the model, as `npm run eval` writes it: S, one Mix'n'Match list and XL on the frontier.
  fs.writeFileSync(
    path.join(tmp, 'calibration.json'),
    JSON.stringify({ version: 1, source: 'measured', modelId: 'another-model@1', createdAt: null, metric: '1-NN accuracy', xlFlops: flopsOf('XL'), frontier: [entry('S', 0.5), entry(MIX, 0.6), entry('XL', 0.7)] }),
  );

  // An identity query adapter for M (`matvit adapt` writes real ones): M's embeddings stay as they are, and the
  // encoder list says which encoders have one.
  const D = DEFAULT_CONFIG.width;
  saveAdapters(modelFile, loadModel(modelFile).sha256, { M: { weight: Float32Array.from({ length: D * D }, (_, i) => (i % (D + 1) === 0 ? 1 : 0)), bias: new Float32Array(D) } }, D);

  opened = await openServer({ store: path.join(tmp, 'store'), model: modelFile, gallery: path.join(tmp, 'gallery'), progress: false, limits: { maxUploadBytes: MAX_UPLOAD, maxFiles: 4 } });
  server = buildApp(opened.service).listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((r) => server?.close(r));
  await opened?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// ---- helpers --------------------------------------------------------------------------------------------------

const MIX = 'S,S,M,M,L,XL';
const flopsOf = (spec: string) => countFlops(DEFAULT_CONFIG, parseSubmodel(spec, DEFAULT_CONFIG));
const relOf = (spec: string) => flopsOf(spec) / flopsOf('XL');
function entry(spec: string, accuracy: number) {
  const sub = parseSubmodel(spec, DEFAULT_CONFIG);
  return { spec, family: spec.includes(',') ? 'mixnmatch' : 'uniform', flops: flopsOf(spec), flopsRel: relOf(spec), params: countParams(DEFAULT_CONFIG, sub), encodeMs: null, accuracy, recall10: null };
}

function form(files: Record<string, { bytes: Buffer; name: string } | { bytes: Buffer; name: string }[]>, fields: Record<string, string> = {}): FormData {
  const f = new FormData();
  for (const [k, v] of Object.entries(fields)) f.append(k, v);
  for (const [field, list] of Object.entries(files)) for (const { bytes, name } of [list].flat()) f.append(field, new Blob([new Uint8Array(bytes)]), name);
  return f;
}

async function call(method: string, url: string, body?: FormData | object | string, headers: Record<string, string> = {}) {
  const init: RequestInit = { method, headers };
  if (body instanceof FormData || typeof body === 'string') init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'content-type': 'application/json', ...headers };
  }
  const res = await fetch(base + url, init);
  const type = res.headers.get('content-type') ?? '';
  const json = type.includes('json') ? await res.json() : null;
  const bytes = json === null ? Buffer.from(await res.arrayBuffer()) : null;
  return { status: res.status, type, json, bytes };
}

async function expectError(p: ReturnType<typeof call>, status: number, code: string, message?: RegExp) {
  const r = await p;
  assert.equal(r.status, status, `expected ${status} ${code}, got ${r.status} ${JSON.stringify(r.json)}`);
  assert.equal(r.json?.error?.code, code);
  assert.equal(typeof r.json.error.message, 'string');
  if (message) assert.match(r.json.error.message, message);
  return r.json;
}

const search = (files: Parameters<typeof form>[0], fields: Record<string, string> = {}) => call('POST', '/api/search', form(files, fields));
const imageCount = async () => (await call('GET', '/api/stats')).json.images as number;

/** A stored (uncompressed) zip archive holding one text file: a real zip, as a user's renamed file would be. */
function zipFile(name: string, content: string): Buffer {
  const data = Buffer.from(content);
  const fname = Buffer.from(name);
  const crc = zlib.crc32(data);
  const local = Buffer.alloc(30);
  local.writeUInt32LE(0x04034b50, 0);
  local.writeUInt16LE(20, 4);
  local.writeUInt32LE(crc, 14);
  local.writeUInt32LE(data.length, 18);
  local.writeUInt32LE(data.length, 22);
  local.writeUInt16LE(fname.length, 26);
  const central = Buffer.alloc(46);
  central.writeUInt32LE(0x02014b50, 0);
  central.writeUInt16LE(20, 4);
  central.writeUInt16LE(20, 6);
  central.writeUInt32LE(crc, 16);
  central.writeUInt32LE(data.length, 20);
  central.writeUInt32LE(data.length, 24);
  central.writeUInt16LE(fname.length, 28);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(1, 8);
  end.writeUInt16LE(1, 10);
  end.writeUInt32LE(central.length + fname.length, 12);
  end.writeUInt32LE(local.length + fname.length + data.length, 16);
  return Buffer.concat([local, fname, data, central, fname, end]);
}

/** A genuine 10000 x 5000 (50-megapixel) grayscale PNG, built directly (it compresses to about 50 KB). */
function png50Megapixels(): Buffer {
  const W = 10_000;
  const H = 5_000;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(W, 0);
  ihdr.writeUInt32BE(H, 4);
  ihdr[8] = 8; // bit depth; colour type 0 (gray)
  const idat = zlib.deflateSync(Buffer.alloc((W + 1) * H), { level: 9 }); // filter byte + row, all zero
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', ihdr), pngChunk('IDAT', idat), pngChunk('IEND', Buffer.alloc(0))]);
}

// ---- the happy paths --------------------------------------------------------------------------------------------

describe('serving', () => {
  test('first start indexed the gallery; health, stats and the OpenAPI document', async () => {
    assert.equal(opened.gallery?.indexed, gallery.length);
    const health = await call('GET', '/healthz');
    assert.equal(health.status, 200);
    assert.deepEqual(health.json, { status: 'ok', modelId: opened.encoder.modelId, images: gallery.length });
    const stats = StatsResponse.parse((await call('GET', '/api/stats')).json);
    assert.equal(stats.images, gallery.length);
    assert.equal(stats.labelled, gallery.length);
    assert.deepEqual(stats.regions, { vectors: 0, penalty: 0.1 }, 'no region vectors; the default penalty (the test model has no calibration)');
    assert.equal(stats.limits.maxUploadBytes, MAX_UPLOAD);
    const doc = (await call('GET', '/api/openapi.json')).json;
    assert.equal(doc.openapi, '3.1.0');
    for (const p of ['/api/search', '/api/images', '/api/images/{id}', '/api/images/{id}/thumb', '/api/stats', '/api/encoders', '/healthz']) assert.ok(doc.paths[p], `OpenAPI documents ${p}`);
    assert.ok(doc.paths['/api/search'].post.requestBody.content['multipart/form-data'].schema.properties.image);
    assert.equal(doc.components.schemas.SearchParams.properties.k.default, 10);
    assert.ok(doc.components.schemas.Error.properties.error);
  });

  test('the page and its assets are served', async () => {
    const page = await fetch(base + '/');
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<title>matvit search<\/title>/);
    for (const asset of ['/app.js', '/style.css']) assert.equal((await fetch(base + asset)).status, 200);
  });

  test('GET /api/encoders lists S, M, L, XL and the calibrated frontier by FLOPs, with measured encode times', async () => {
    const r = EncodersResponse.parse((await call('GET', '/api/encoders')).json);
    assert.deepEqual(r.encoders.map((e) => e.spec), ['S', 'M', MIX, 'L', 'XL']);
    assert.deepEqual(r.encoders.map((e) => e.accuracy), [0.5, null, 0.6, null, 0.7]);
    assert.deepEqual(r.encoders.map((e) => e.adapter), [false, true, false, false, false]);
    assert.equal(r.encoders[2].family, 'mixnmatch');
    assert.equal(r.encoders[4].flopsRel, 1);
    assert.ok(r.encoders.every((e, i) => i === 0 || e.flops > r.encoders[i - 1].flops));
    assert.ok(r.encoders.filter((e) => e.family === 'uniform').every((e) => typeof e.encodeMs === 'number' && e.encodeMs > 0));
    assert.deepEqual(r.calibration, { source: 'measured', stale: true, metric: '1-NN accuracy' });
    assert.equal(r.default, 'XL');
  });

  test('search by upload: XL finds the image itself first; S costs fewer FLOPs', async () => {
    const q = gallery[5];
    const xl = SearchResponse.parse((await search({ image: { bytes: q.bytes, name: 'q.jpg' } }, { ffn: 'xl', k: '5' })).json);
    assert.equal(xl.results.length, 5);
    assert.equal(xl.results[0].label, q.label);
    assert.ok(xl.results[0].score > 0.999, `self-match score ${xl.results[0].score}`);
    assert.ok(xl.results.every((r: { region: boolean }) => r.region === false), 'a store without region vectors matches whole images');
    assert.match(xl.results[0].name, new RegExp(`${path.basename(q.file)}$`));
    assert.equal(xl.results[0].thumbUrl, `/api/images/${xl.results[0].id}/thumb?v=${contentHash(q.bytes).slice(0, 16)}`, 'the URL names the content');
    assert.equal(xl.cost.ffn, 'XL');
    assert.equal(xl.cost.flopsRel, 1);
    assert.ok(xl.cost.encodeMs > 0 && xl.cost.searchMs >= 0);
    const s = SearchResponse.parse((await search({ image: { bytes: q.bytes, name: 'q.jpg' } }, { ffn: 'S', k: '3', ef: '50' })).json);
    assert.equal(s.cost.ffn, 'S');
    assert.ok(s.cost.flops < xl.cost.flops);
    assert.equal(s.results.length, 3);
    assert.deepEqual(s.query, { k: 3, ef: 50 });
    const mix = (await search({ image: { bytes: q.bytes, name: 'q.jpg' } }, { ffn: 'S,S,M,M,L,XL' })).json;
    assert.equal(mix.cost.ffn, 'S,S,M,M,L,XL');
    assert.equal(mix.results.length, 10, 'k defaults to 10');
  });

  test('a budget picks the most accurate calibrated encoder within it; parameters may come in the query string', async () => {
    const q = { image: { bytes: gallery[0].bytes, name: 'q.jpg' } };
    const within = (relOf(MIX) + relOf('L')) / 2; // affords MIX, not XL
    const r = (await call('POST', `/api/search?budget=${within}&k=2`, form(q))).json;
    assert.deepEqual([r.encoder.chosenBy, r.encoder.spec, r.encoder.fits, r.cost.ffn], ['budget', MIX, true, MIX]);
    assert.match(r.encoder.reason, /1-NN accuracy 0\.6000/);
    assert.equal(r.results.length, 2);
    const cheap = (await search(q, { budget: String(relOf('S') / 2) })).json;
    assert.deepEqual([cheap.encoder.spec, cheap.encoder.fits], ['S', false], 'nothing fits: the cheapest encoder, said so');
    assert.equal((await search(q, { budget: '1' })).json.encoder.spec, 'XL');
  });

  test('search by a stored id (JSON body)', async () => {
    const first = (await search({ image: { bytes: gallery[1].bytes, name: 'q.jpg' } }, { k: '1' })).json.results[0];
    const r = SearchResponse.parse((await call('POST', '/api/search', { id: first.id, k: 4 })).json);
    assert.equal(r.results.length, 4);
    assert.ok(!r.results.some((x) => x.id === first.id), 'the query image itself is left out');
    assert.equal(r.query.id, first.id);
    assert.deepEqual([r.cost.flops, r.cost.encodeMs], [0, 0], 'no encoding: the stored XL embedding is the query');
  });

  test('a filter (where) narrows the results: form fields (repeated), the query string, a JSON body; in the OpenAPI document', async () => {
    const q = gallery[0];
    const withWhere = (...where: string[]) => {
      const f = form({ image: { bytes: q.bytes, name: 'q.jpg' } }, { k: '10' });
      for (const w of where) f.append('where', w);
      return call('POST', '/api/search', f);
    };
    const cats = SearchResponse.parse((await withWhere('label=cat')).json);
    assert.equal(cats.results.length, PER_CLASS, 'every cat, and nothing else');
    assert.ok(cats.results.every((r) => r.label === 'cat'));
    const dogDir = path.dirname(gallery.find((g) => g.label === 'dog')!.file);
    const both = SearchResponse.parse((await withWhere('label=cat,dog', `source=${dogDir}`)).json);
    assert.deepEqual(both.results.map((r) => r.label), Array(PER_CLASS).fill('dog'), 'clauses combine with AND');
    const byQuery = (await call('POST', `/api/search?where=${encodeURIComponent('label=bird')}&k=3`, form({ image: { bytes: q.bytes, name: 'q.jpg' } }))).json;
    assert.deepEqual(byQuery.results.map((r: { label: string }) => r.label), ['bird', 'bird', 'bird']);
    const byId = SearchResponse.parse((await call('POST', '/api/search', { id: cats.results[0].id, where: ['label=cat', 'after=2000-01-01'] })).json);
    assert.equal(byId.results.length, PER_CLASS - 1, 'the other cats: the query image is left out');
    assert.ok(byId.results.every((r) => r.label === 'cat' && r.id !== cats.results[0].id));
    assert.deepEqual((await call('POST', '/api/search', { id: cats.results[0].id, where: 'before=2000-01-01' })).json.results, []);
    const doc = (await call('GET', '/api/openapi.json')).json;
    assert.match(doc.components.schemas.SearchParams.properties.where.description, /label=A,B/);
  });

  test('original and thumbnail of a stored image: a small file is its own thumbnail, cached for good under its versioned URL', async () => {
    const hit = (await search({ image: { bytes: gallery[2].bytes, name: 'q.jpg' } }, { k: '1' })).json.results[0];
    const original = await call('GET', hit.imageUrl);
    assert.equal(original.status, 200);
    assert.equal(original.type, 'image/jpeg');
    assert.ok(original.bytes!.equals(gallery[2].bytes));
    const thumb = await call('GET', hit.thumbUrl);
    assert.deepEqual([thumb.status, thumb.type], [200, 'image/jpeg']);
    assert.ok(thumb.bytes!.equals(gallery[2].bytes), 'the 32x32 JPEG itself, read from its file: the page scales it');
    assert.equal(await opened.store.thumbnail(hit.id), undefined, 'nothing stored for it');
    // The versioned URL never changes its answer: cached for good, and revalidated by its ETag if asked.
    const res = await fetch(base + hit.thumbUrl);
    assert.equal(res.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    const etag = res.headers.get('etag');
    assert.ok(etag);
    // (fetch would add "cache-control: no-cache" to a conditional request, which forbids the 304; a browser sends max-age=0)
    assert.equal((await fetch(base + hit.thumbUrl, { headers: { 'if-none-match': etag, 'cache-control': 'max-age=0' } })).status, 304);
    // Without the version, the same bytes, checked again each time (a new store starts its ids at 1 again).
    const bare = await fetch(`${base}/api/images/${hit.id}/thumb`);
    assert.equal(bare.headers.get('cache-control'), 'public, no-cache');
    assert.ok(Buffer.from(await bare.arrayBuffer()).equals(gallery[2].bytes));
    await expectError(call('GET', `/api/images/${hit.id}/thumb?v=${'0'.repeat(16)}`), 404, 'not_found', /does not have the content v=0{16}/);
    await expectError(call('GET', `/api/images/${hit.id}/thumb?v=abc`), 400, 'bad_request', /\bv\b.*16 lowercase hex digits/);
  });

  test('thumbnails of a large upload (a stored WebP) and of an archive member (its kept bytes)', async () => {
    const big = await sharp({ create: { width: 300, height: 200, channels: 3, background: { r: 10, g: 120, b: 60 } } }).jpeg().toBuffer();
    const added = AddImagesResponse.parse((await call('POST', '/api/images', form({ images: { bytes: big, name: 'big.jpg' } }))).json).images[0];
    assert.equal(added.thumbUrl, `/api/images/${added.id}/thumb?v=${contentHash(big).slice(0, 16)}`);
    const thumb = await call('GET', added.thumbUrl);
    const meta = await sharp(thumb.bytes!).metadata();
    assert.deepEqual([thumb.status, thumb.type, meta.format, meta.width, meta.height], [200, 'image/webp', 'webp', 256, 171]);
    assert.ok(thumb.bytes!.equals((await opened.store.thumbnail(added.id))!), 'the bytes stored with the image');

    const member = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 90, g: 10, b: 200 } } }).png().toBuffer();
    const { id } = sqlite(opened).insertImageWithEmbedding(
      { source: `${tmp}/set.tar.gz:set/violet.png`, contentHash: contentHash(member), width: 32, height: 32, format: 'png', original: member },
      'an-older-model@1', // not the served model: the HNSW index is not involved
      new Float32Array(8).fill(1),
    );
    const own = await call('GET', `/api/images/${id}/thumb`);
    assert.deepEqual([own.status, own.type], [200, 'image/png']);
    assert.ok(own.bytes!.equals(member));
    sqlite(opened).deleteImages([id]);
    await call('DELETE', `/api/images/${added.id}`);
  });

  test('upload, find, delete an image', async () => {
    const png = await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 200, g: 30, b: 90 } } }).png().toBuffer();
    const before = await imageCount();
    const added = AddImagesResponse.parse((await call('POST', '/api/images', form({ images: { bytes: png, name: 'pink.png' } }, { label: 'pink', metadata: '{"by":"test"}' }))).json);
    assert.equal(added.images.length, 1);
    const { id, created } = added.images[0];
    assert.equal(created, true);
    assert.equal(await imageCount(), before + 1);
    const again = (await call('POST', '/api/images', form({ images: { bytes: png, name: 'same.png' } }))).json;
    assert.deepEqual([again.images[0].id, again.images[0].created], [id, false], 'identical content is stored once');

    const hit = (await search({ image: { bytes: png, name: 'q.png' } }, { k: '1' })).json.results[0];
    assert.deepEqual([hit.id, hit.label, hit.metadata.by, hit.name], [id, 'pink', 'test', 'pink.png']);
    const original = await call('GET', `/api/images/${id}`);
    assert.equal(original.type, 'image/png');
    assert.ok(original.bytes!.equals(png));
    const thumb = await call('GET', added.images[0].thumbUrl);
    assert.deepEqual([thumb.status, thumb.type], [200, 'image/png']);
    assert.ok(thumb.bytes!.equals(png), 'a small upload is its own thumbnail, from its kept bytes');
    assert.equal(await opened.store.thumbnail(id), undefined, 'and stores none');

    assert.deepEqual((await call('DELETE', `/api/images/${id}`)).json, { deleted: id });
    assert.equal(await imageCount(), before);
    await expectError(call('GET', `/api/images/${id}/thumb`), 404, 'not_found');
    const after = (await search({ image: { bytes: png, name: 'q.png' } }, { k: '40' })).json.results;
    assert.ok(!after.some((r: { id: number }) => r.id === id), 'deleted image no longer found');
  });

  test('concurrent queries for one submodel are batched into shared runs', async () => {
    const before = StatsResponse.parse((await call('GET', '/api/stats')).json).server;
    // Straight into the service, all in one tick: over HTTP the client in this process may send them one by one,
    // and a 32x32 JPEG now decodes in microseconds, so each could reach an idle encoder alone.
    const rs = await Promise.all(gallery.slice(0, 24).map((g) => opened.service.search({ ffn: 'M', k: 3 }, { name: 'q.jpg', bytes: g.bytes })));
    assert.ok(rs.every((r) => r.results.length === 3 && r.cost.ffn === 'M'));
    const after = StatsResponse.parse((await call('GET', '/api/stats')).json).server;
    const runs = after.batches.count - before.batches.count;
    assert.ok(runs < 24, `24 concurrent queries ran as ${runs} onnxruntime runs`);
    assert.ok(after.batches.maxSize > 1);
  });
});

describe('serve --ffn auto', () => {
  test('starts, and a search naming no encoder runs auto', async () => {
    const auto = await openServer({ store: path.join(tmp, 'store-auto'), model: modelFile, gallery: null, encodeWorkers: 0, warmUp: false, progress: false, defaultFfn: 'auto' });
    try {
      await auto.service.addImages([{ name: 'a.jpg', bytes: gallery[0].bytes }], { metadata: undefined });
      const r = await auto.service.search({ k: 1 }, { name: 'q.jpg', bytes: gallery[0].bytes });
      assert.equal(r.encoder.chosenBy, 'default');
      assert.match(r.encoder.reason ?? '', /^auto: /, 'the default is auto (this calibration has no cascade: its most accurate encoder)');
    } finally {
      await auto.close();
    }
  });
});

describe('a store from schema version 2', () => {
  test('its thumbnail files are moved into the database on open and served as they are; a small image is its own', async () => {
    // What version 2 left: images and embeddings in SQLite, thumbnails as <store>/thumbs/<id / 1000>/<id>.webp.
    const dir = path.join(tmp, 'store-v2');
    const old = ImageStore.open(dir, { writer: true });
    const ids = gallery.slice(0, 2).map((g) => old.insertImageWithEmbedding({ source: g.file, contentHash: contentHash(g.bytes), width: 32, height: 32, format: 'jpeg', label: g.label }, 'old-model@1', new Float32Array(8).fill(1)).id);
    const gone = crypto.randomBytes(32).toString('hex');
    ids.push(old.insertImageWithEmbedding({ source: path.join(tmp, 'gone.jpg'), contentHash: gone, width: 32, height: 32, format: 'jpeg' }, 'old-model@1', new Float32Array(8).fill(1)).id);
    old.close();
    const db = new Database(path.join(dir, 'store.sqlite'));
    db.exec('DROP TABLE thumbnails');
    db.pragma('user_version = 2');
    db.close();
    const webp = await sharp(gallery[0].bytes).resize(96, 96, { kernel: 'nearest' }).webp().toBuffer();
    fs.mkdirSync(path.join(dir, 'thumbs', '0'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'thumbs', '0', `${ids[0]}.webp`), webp); // the second image's was never written, and the third has no file

    const v2 = await openServer({ store: dir, model: modelFile, gallery: null, encodeWorkers: 0, warmUp: false, progress: false });
    const srv = buildApp(v2.service).listen(0, '127.0.0.1');
    try {
      await new Promise((r) => srv.once('listening', r));
      const at = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
      assert.ok(!fs.existsSync(path.join(dir, 'thumbs')), 'the folder is gone');
      const res = await fetch(`${at}/api/images/${ids[0]}/thumb`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'image/webp');
      assert.ok(Buffer.from(await res.arrayBuffer()).equals(webp), 'the enlarged WebP an older version made');
      const own = await fetch(`${at}/api/images/${ids[1]}/thumb`);
      assert.equal(own.headers.get('content-type'), 'image/jpeg');
      assert.ok(Buffer.from(await own.arrayBuffer()).equals(gallery[1].bytes), 'the image itself, from its file');
      const missing = await fetch(`${at}/api/images/${ids[2]}/thumb`);
      assert.equal(missing.status, 404);
      assert.match(missing.headers.get('content-type') ?? '', /^application\/json/);
      assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'not_found');
    } finally {
      await new Promise((r) => srv.close(r));
      await v2.close();
    }
  });
});

describe('a first start stopped part way', () => {
  test('continues at the next start until the whole gallery is indexed, then never again', async () => {
    const dir = path.join(tmp, 'gallery-600'); // more than the indexer reads ahead (4 batches of 64)
    let n = 0;
    for await (const item of iterateImageSource(DEMO_GALLERY)) {
      fs.mkdirSync(path.join(dir, item.label!), { recursive: true });
      fs.writeFileSync(path.join(dir, item.label!, path.basename(item.path)), item.bytes);
      if (++n === 600) break;
    }
    const store = path.join(tmp, 'store-resumed');
    const quick = { store, model: modelFile, gallery: dir, progress: false, encodeWorkers: 0, warmUp: false } as const;
    // A stop signal once the first batch is committed, as SIGTERM during `npm start`'s first indexing sends.
    const stop = new AbortController();
    const indexer = {
      ...indexerModule,
      indexSources: ((h, e, s, o) => indexerModule.indexSources(h, e, s, { ...o, onProgress: (p) => (o?.onProgress?.(p), p.indexed > 0 && stop.abort()) })) as typeof indexerModule.indexSources,
    };
    const first = await openServer({ ...quick, signal: stop.signal, indexer });
    const partial = await first.store.count();
    await first.close();
    assert.ok(partial > 0 && partial < 600, `the first start stored ${partial} of 600`);

    const second = await openServer(quick);
    try {
      assert.equal(await second.store.count(), 600, 'every image of the gallery');
      assert.equal((await second.store.indexInfo()).vectors, 600);
      assert.deepEqual([second.gallery?.indexed, second.gallery?.duplicates], [600 - partial, partial]);
      await second.service.deleteImage((await second.store.nearest(new Float32Array(second.encoder.dim).fill(1), 1))[0].id);
    } finally {
      await second.close();
    }
    const third = await openServer(quick);
    try {
      assert.equal(third.gallery, null, 'a finished gallery is not indexed again');
      assert.equal(await third.store.count(), 599, 'and an image deleted from it stays deleted');
    } finally {
      await third.close();
    }
  });
});

// ---- errors -----------------------------------------------------------------------------------------------------

describe('errors', () => {
  const jpg = () => gallery[0].bytes;

  test('400 bad_request: bad parameters', async () => {
    const img = { image: { bytes: jpg(), name: 'q.jpg' } };
    await expectError(search(img, { k: '0' }), 400, 'bad_request', /k/);
    await expectError(search(img, { k: 'ten' }), 400, 'bad_request', /k: must be an integer/);
    await expectError(search(img, { k: '101' }), 400, 'bad_request', /k/);
    await expectError(search(img, { ef: '-3' }), 400, 'bad_request', /ef/);
    await expectError(search(img, { ffn: 'XXL' }), 400, 'bad_request', /unknown granularity "XXL"/);
    await expectError(search(img, { ffn: 'S,M' }), 400, 'bad_request', /has 2 entries but the model has 6 layers/);
    await expectError(search(img, { budget: '0' }), 400, 'bad_request', /budget/);
    await expectError(search(img, { budget: '0.5', ffn: 'S' }), 400, 'bad_request', /either ffn or budget/);
    await expectError(search(img, { K: '3' }), 400, 'bad_request', /Unrecognized key/);
    await expectError(search(img, { id: '1' }), 400, 'bad_request', /either an uploaded image or an id/);
    await expectError(search({}, { k: '3' }), 400, 'bad_request', /upload an image/);
    await expectError(call('POST', '/api/search', '{"id": 1,', { 'content-type': 'application/json' }), 400, 'bad_request', /JSON/);
    await expectError(call('POST', '/api/search', { id: 'one' }), 400, 'bad_request', /id/);
    await expectError(search({ photo: { bytes: jpg(), name: 'q.jpg' } }), 400, 'bad_request', /unexpected file field "photo"/);
    await expectError(call('POST', '/api/images', form({})), 400, 'bad_request', /no image uploaded/);
    await expectError(call('POST', '/api/images', form({ images: { bytes: jpg(), name: 'a.jpg' } }, { metadata: '[1,2]' })), 400, 'bad_request', /metadata: must be a JSON object/);
    await expectError(call('GET', '/api/images/abc'), 400, 'bad_request');
    await expectError(call('DELETE', '/api/images/0'), 400, 'bad_request');
  });

  test('400 bad_request: each malformed filter, named', async () => {
    const img = { image: { bytes: jpg(), name: 'q.jpg' } };
    const cases: [string, RegExp][] = [
      ['colour=red', /where: unknown filter "colour"/],
      ['label', /where: filter "label" is not key=value/],
      ['label=', /where: filter label= has no value/],
      ['label=cat,,dog', /where: filter label=cat,,dog has an empty value/],
      ['meta.a b=1', /where: filter meta\.a b: a metadata key is/],
      ['source=relative/dir', /where: filter source=relative\/dir: give the path as the store records it/],
      ['after=yesterday', /where: filter after=yesterday is not a date/],
      ['before=2026-02-30', /where: filter before=2026-02-30 is not a date of the calendar/],
      ['after=2026-01-01T10:00', /where: filter after=2026-01-01T10:00 is not a date .* with its zone/],
    ];
    for (const [where, message] of cases) await expectError(search(img, { where }), 400, 'bad_request', message);
    await expectError(call('POST', '/api/search', { id: 1, where: ['label=a', 'label=b'] }), 400, 'bad_request', /where: filter label is given twice/);
    await expectError(call('POST', '/api/search', { id: 1, where: ['after=2026-02-01', 'before=2026-01-01'] }), 400, 'bad_request', /where: filter after=.* is not before before=/);
    await expectError(call('POST', '/api/search', { id: 1, where: 5 }), 400, 'bad_request', /where/);
    await expectError(call('POST', '/api/search', { id: 1, where: Array(21).fill('label=a') }), 400, 'bad_request', /where/);
  });

  test('404 not_found: unknown ids and routes', async () => {
    await expectError(call('GET', '/api/images/999999'), 404, 'not_found', /999999/);
    await expectError(call('GET', '/api/images/999999/thumb'), 404, 'not_found');
    await expectError(call('DELETE', '/api/images/999999'), 404, 'not_found');
    await expectError(call('POST', '/api/search', { id: 999999 }), 404, 'not_found');
    await expectError(call('GET', '/api/nothing-here'), 404, 'not_found');
  });

  test('405 method_not_allowed: a method a route does not take, with an Allow header', async () => {
    const cases: [string, string, string][] = [
      ['PUT', '/api/images/1', 'GET, DELETE, HEAD, OPTIONS'],
      ['POST', '/api/images/1/thumb', 'GET, HEAD, OPTIONS'],
      ['GET', '/api/search', 'POST, OPTIONS'],
      ['DELETE', '/api/images', 'POST, OPTIONS'],
      ['PATCH', '/api/stats', 'GET, HEAD, OPTIONS'],
      ['POST', '/api/encoders', 'GET, HEAD, OPTIONS'],
      ['POST', '/healthz', 'GET, HEAD, OPTIONS'],
      ['DELETE', '/api/openapi.json', 'GET, HEAD, OPTIONS'],
    ];
    for (const [method, url, allow] of cases) {
      const res = await fetch(base + url, { method });
      assert.equal(res.status, 405, `${method} ${url}`);
      assert.equal(res.headers.get('allow'), allow, `${method} ${url}`);
      const body = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'method_not_allowed');
      assert.match(body.error.message, new RegExp(`^${method} is not allowed on ${url.replace(/\./g, '\\.')}; allowed: ${allow}$`));
    }
    const options = await fetch(base + '/api/images/1', { method: 'OPTIONS' });
    assert.deepEqual([options.status, options.headers.get('allow')], [204, 'GET, DELETE, HEAD, OPTIONS']);
    assert.equal((await fetch(base + '/api/images/999999', { method: 'HEAD' })).status, 404, 'HEAD is GET without a body');
    await expectError(call('GET', '/api/nothing-here'), 404, 'not_found');
  });

  test('413 payload_too_large: oversized bodies and a 50-megapixel image', async () => {
    // A file just over the limit: the upload limit stops it.
    const big = Buffer.alloc(MAX_UPLOAD + 1000, 0xff);
    await expectError(search({ image: { bytes: big, name: 'big.jpg' } }), 413, 'payload_too_large', /file "image" is larger than the upload limit of 256 KB/);
    // A declared body length far over the limit: rejected before the body is read.
    const huge = Buffer.alloc(4 * MAX_UPLOAD, 0xff);
    await expectError(search({ image: { bytes: huge, name: 'huge.jpg' } }), 413, 'payload_too_large', /the request body \(1 MB\) is over the upload limit of 256 KB/);
    // Streamed without a length (chunked): the upload limit stops it mid-body.
    const chunked = new Request(base + '/api/search', { method: 'POST', body: form({ image: { bytes: big, name: 'big.jpg' } }) });
    const stream = chunked.body!;
    const res = await fetch(base + '/api/search', { method: 'POST', body: stream, headers: { 'content-type': chunked.headers.get('content-type')! }, duplex: 'half' } as RequestInit);
    assert.equal(res.status, 413);
    assert.equal((await res.json()).error.code, 'payload_too_large');
    // A small file whose header says 10000 x 5000: rejected before decoding any pixels.
    const png = png50Megapixels();
    assert.ok(png.length < MAX_UPLOAD);
    const err = await expectError(search({ image: { bytes: png, name: 'huge.png' } }), 413, 'payload_too_large', /10000x5000 is over the limit/);
    assert.equal(err.error.details.reason, 'too-large');
    await expectError(call('POST', '/api/images', form({ images: { bytes: png, name: 'huge.png' } })), 413, 'payload_too_large');
    await expectError(call('POST', '/api/search', { id: 1, pad: 'x'.repeat(20_000) }), 413, 'payload_too_large');
  });

  test('415 unsupported_media_type: a zip renamed .jpg, text, a wrong body type', async () => {
    const zip = zipFile('notes.txt', 'not a picture\n'.repeat(20));
    assert.equal(zip.subarray(0, 2).toString(), 'PK');
    const err = await expectError(search({ image: { bytes: zip, name: 'holiday.jpg' } }), 415, 'unsupported_media_type', /holiday\.jpg: not-image/);
    assert.deepEqual(err.error.details, { file: 'holiday.jpg', reason: 'not-image' });
    await expectError(search({ image: { bytes: Buffer.from('hello world, this is text'), name: 'a.png' } }), 415, 'unsupported_media_type');
    await expectError(call('POST', '/api/search', 'id=1', { 'content-type': 'text/plain' }), 415, 'unsupported_media_type', /multipart\/form-data or application\/json/);
    await expectError(call('POST', '/api/images', { images: [] }), 415, 'unsupported_media_type');
  });

  test('422 undecodable_image: a truncated JPEG and an empty file', async () => {
    const cut = jpg().subarray(0, jpg().length >> 1);
    const err = await expectError(search({ image: { bytes: cut, name: 'cut.jpg' } }), 422, 'undecodable_image', /cut\.jpg: corrupt/);
    assert.equal(err.error.details.reason, 'corrupt');
    await expectError(search({ image: { bytes: Buffer.alloc(0), name: 'empty.jpg' } }), 422, 'undecodable_image', /empty/);
  });

  test('a failed upload stores nothing, even next to good files', async () => {
    const before = await imageCount();
    const good = await sharp({ create: { width: 20, height: 20, channels: 3, background: { r: 1, g: 222, b: 3 } } }).png().toBuffer();
    const cut = jpg().subarray(0, jpg().length >> 1);
    await expectError(call('POST', '/api/images', form({ images: [{ bytes: good, name: 'good.png' }, { bytes: cut, name: 'cut.jpg' }] })), 422, 'undecodable_image', /cut\.jpg/);
    await expectError(call('POST', '/api/images', form({ images: [{ bytes: good, name: 'good.png' }, { bytes: zipFile('a', 'b'), name: 'z.jpg' }] })), 415, 'unsupported_media_type');
    const tooMany = Array.from({ length: 5 }, (_, i) => ({ bytes: good, name: `g${i}.png` }));
    await expectError(call('POST', '/api/images', form({ images: tooMany })), 400, 'bad_request');
    assert.equal(await imageCount(), before);
    const hit = (await search({ image: { bytes: good, name: 'q.png' } }, { k: '1' })).json.results[0];
    assert.notEqual(hit.label, null, 'the good file of the failed upload was not indexed');
  });

  test('the server survives a burst of bad requests and still answers', async () => {
    const cut = jpg().subarray(0, 100);
    const bad = await Promise.all(Array.from({ length: 30 }, (_, i) => search({ image: { bytes: i % 2 ? cut : Buffer.from('junk'), name: 'x.jpg' } })));
    assert.ok(bad.every((r) => r.status === 415 || r.status === 422));
    const ok = await search({ image: { bytes: jpg(), name: 'q.jpg' } }, { ffn: 'S', k: '2' });
    assert.equal(ok.status, 200);
    assert.equal((await call('GET', '/healthz')).status, 200);
  });
});

// ---- uploaded bytes are data, never active content ---------------------------------------------------------------

/** An SVG whose script would run in the page's origin if it were served as image/svg+xml. */
const SCRIPTED_SVG = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><script>alert(document.domain)</script><rect width="32" height="32" fill="red"/></svg>');

describe('uploaded bytes are data', () => {
  test('an SVG upload is refused (415, naming the accepted formats) and stores nothing', async () => {
    const before = await imageCount();
    const up = await expectError(call('POST', '/api/images', form({ images: { bytes: SCRIPTED_SVG, name: 'x.svg' } })), 415, 'unsupported_media_type', /x\.svg: not-image.*SVG is not accepted; send JPEG, PNG, WebP, GIF, TIFF or AVIF/);
    assert.equal(up.error.details.reason, 'not-image');
    // Named .png and sent as image/png, it is still an SVG.
    await expectError(call('POST', '/api/images', form({ images: { bytes: SCRIPTED_SVG, name: 'x.png' } })), 415, 'unsupported_media_type', /SVG is not accepted/);
    await expectError(search({ image: { bytes: SCRIPTED_SVG, name: 'q.svg' } }), 415, 'unsupported_media_type', /SVG is not accepted/);
    assert.equal(await imageCount(), before);
  });

  test('the page, the API and the CLI take one list of formats', async () => {
    const stats = StatsResponse.parse((await call('GET', '/api/stats')).json);
    assert.deepEqual(stats.formats.map((f) => f.label), ['JPEG', 'PNG', 'WebP', 'GIF', 'TIFF', 'AVIF']);
    assert.deepEqual(stats.formats, IMAGE_FORMATS.map(({ name, label, extensions, contentType }) => ({ name, label, extensions, contentType })));
    for (const f of stats.formats) for (const ext of f.extensions) assert.ok(isImageName(`a${ext.toUpperCase()}`), `matvit index takes ${ext}`);
    for (const other of ['a.svg', 'a.heic', 'a.html', 'a.pdf']) assert.ok(!isImageName(other), `matvit index skips ${other}`);
    // Every accepted format decodes and is served back with its own image type; so is its thumbnail (a small image is
    // its own) when browsers show the format, else it is a WebP.
    const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 9, g: 99, b: 199 } } }).png().toBuffer();
    for (const f of IMAGE_FORMATS) {
      const bytes = await sharp(png).toFormat(f.name as 'png').toBuffer(); // sharp names each accepted format
      const added = await call('POST', '/api/images', form({ images: { bytes, name: `a${f.extensions[0]}` } }));
      assert.equal(added.status, 201, `${f.label}: ${JSON.stringify(added.json)}`);
      const id = added.json.images[0].id;
      const res = await fetch(`${base}/api/images/${id}`);
      assert.equal(res.headers.get('content-type'), f.contentType);
      await res.arrayBuffer();
      const thumb = await call('GET', added.json.images[0].thumbUrl);
      assert.equal(thumb.type, f.inBrowsers ? f.contentType : 'image/webp', `${f.label} thumbnail`);
      await call('DELETE', `/api/images/${id}`);
    }
  });

  test('originals and thumbnails go out with nosniff, a sandboxing CSP and an image type; JSON too', async () => {
    const hit = (await search({ image: { bytes: gallery[3].bytes, name: 'q.jpg' } }, { k: '1' })).json.results[0];
    for (const url of [hit.imageUrl, hit.thumbUrl, '/api/stats', '/api/images/999999']) {
      const res = await fetch(base + url);
      await res.arrayBuffer();
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', url);
      const csp = res.headers.get('content-security-policy') ?? '';
      assert.match(csp, /default-src 'none'/, url);
      assert.match(csp, /(^|; )sandbox(;|$)/, url);
    }
    assert.equal((await fetch(base + hit.imageUrl)).headers.get('content-type'), 'image/jpeg');
    assert.equal((await fetch(base + hit.thumbUrl)).headers.get('content-type'), 'image/jpeg');
  });

  test('an SVG stored before SVGs were refused is served as a download, not as a document', async () => {
    const { id } = sqlite(opened).insertImageWithEmbedding(
      { source: 'upload:old.svg', contentHash: contentHash(SCRIPTED_SVG), width: 32, height: 32, format: 'svg', original: SCRIPTED_SVG },
      'an-older-model@1', // not the served model: the HNSW index is not involved
      new Float32Array(8).fill(1),
    );
    const res = await fetch(`${base}/api/images/${id}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/octet-stream');
    assert.match(res.headers.get('content-disposition') ?? '', /^attachment/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    assert.match(res.headers.get('content-security-policy') ?? '', /sandbox/);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(SCRIPTED_SVG), 'the bytes, unchanged');
    // Its thumbnail is made by rasterising it: WebP pixels, no script.
    const thumb = await fetch(`${base}/api/images/${id}/thumb`);
    assert.equal(thumb.headers.get('content-type'), 'image/webp');
    assert.equal((await sharp(Buffer.from(await thumb.arrayBuffer())).metadata()).format, 'webp');
    sqlite(opened).deleteImages([id]);
  });

  test('the page runs only its own script: a CSP without inline script, and nosniff', async () => {
    for (const url of ['/', '/app.js', '/style.css']) {
      const res = await fetch(base + url);
      await res.arrayBuffer();
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', url);
      const csp = res.headers.get('content-security-policy') ?? '';
      assert.match(csp, /default-src 'none'/, url);
      assert.match(csp, /script-src 'self'(;|$)/, url);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, url);
      assert.match(csp, /frame-ancestors 'none'/, url);
    }
  });
});

// ---- upload memory ----------------------------------------------------------------------------------------------

describe('upload memory', () => {
  test('uploads beyond the memory budget get 503 with Retry-After before their body is read; every answer is definite', async () => {
    const BUDGET = 6 * 1024 * 1024;
    const small = await openServer({ store: path.join(tmp, 'store-budget'), model: modelFile, gallery: null, progress: false, encodeWorkers: 0, warmUp: false, limits: { maxUploadBytes: 1024 * 1024, maxFiles: 32, maxUploadMemoryBytes: BUDGET } });
    const srv = buildApp(small.service).listen(0, '127.0.0.1');
    try {
      await new Promise((r) => srv.once('listening', r));
      const at = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
      const uploads = async () => StatsResponse.parse(await small.service.stats()).server.uploads;
      // Noise PNGs of about 480 KB (incompressible), 8 to a request: about 4 MB a body, so one fits in the budget.
      const noisy = () => sharp(crypto.randomBytes(400 * 400 * 3), { raw: { width: 400, height: 400, channels: 3 } }).png().toBuffer();
      const files = await Promise.all(Array.from({ length: 8 }, () => noisy()));
      const body = (i: number) => form({ images: files.map((bytes, j) => ({ bytes, name: `r${i}-${j}.png` })) });

      // One upload streams (chunked, no length) most of its body and waits: its bytes are counted as they arrive.
      const wire = new Request(`${at}/api/images`, { method: 'POST', body: body(0) });
      const whole = Buffer.from(await wire.arrayBuffer());
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      const stream = new ReadableStream<Uint8Array>({
        async start(c) {
          c.enqueue(new Uint8Array(whole.subarray(0, whole.length - 1000)));
          await released;
          c.enqueue(new Uint8Array(whole.subarray(whole.length - 1000)));
          c.close();
        },
      });
      const slow = fetch(`${at}/api/images`, { method: 'POST', body: stream, headers: { 'content-type': wire.headers.get('content-type')! }, duplex: 'half' } as RequestInit);
      while ((await uploads()).inFlightBytes < whole.length - 1000) await new Promise((r) => setTimeout(r, 20));

      // Eight more at once, each with its length declared: no room, so 503 at once, each saying when to retry.
      const busy = await Promise.all(Array.from({ length: 8 }, (_, i) => fetch(`${at}/api/images`, { method: 'POST', body: body(i + 1) })));
      for (const res of busy) {
        const json = (await res.json()) as { error: { code: string; message: string } };
        assert.deepEqual([res.status, json.error.code], [503, 'service_unavailable']);
        assert.match(json.error.message, /busy with other uploads .* retry in 2 s/);
        assert.equal(res.headers.get('retry-after'), '2');
      }
      release();
      const done = await slow;
      assert.equal(done.status, 201, 'the upload that held the memory completes');
      assert.equal(((await done.json()) as { images: unknown[] }).images.length, 8);
      assert.equal((await uploads()).inFlightBytes, 0, 'its reservation ended with it');
      const again = await fetch(`${at}/api/images`, { method: 'POST', body: body(9) });
      assert.equal(again.status, 201, 'the next upload finds room');
      await again.arrayBuffer();

      // A chunked body larger than the whole budget is cut off while it streams: 413.
      const big = new Request(`${at}/api/images`, { method: 'POST', body: form({ images: [...files, ...files].map((bytes, j) => ({ bytes, name: `b${j}.png` })) }) });
      const over = await fetch(`${at}/api/images`, { method: 'POST', body: big.body, headers: { 'content-type': big.headers.get('content-type')! }, duplex: 'half' } as RequestInit);
      assert.equal(over.status, 413);
      assert.match(((await over.json()) as { error: { message: string } }).error.message, /over the server's upload memory of 6 MB/);
      const figures = await uploads();
      assert.ok(figures.peakBytes <= BUDGET, `at most ${figures.peakBytes} bytes were held`);
      assert.deepEqual([figures.inFlightBytes, figures.refused], [0, 9]);
    } finally {
      await new Promise((r) => srv.close(r));
      await small.close();
    }
  });
});

// ---- a full disk ------------------------------------------------------------------------------------------------

/** Mounts a tmpfs of `mb` MB at a new folder (root only), or returns null. */
function tinyDisk(mb: number): string | null {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-full-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${mb}m`, 'tmpfs', dir]).status === 0) return dir;
  fs.rmSync(dir, { recursive: true });
  return null;
}

describe('a full disk', () => {
  test('ENOSPC and SQLITE_FULL, as Node and SQLite raise them, answer 507 insufficient_storage', () => {
    let enospc: unknown;
    try {
      fs.writeFileSync('/dev/full', 'x'); // the kernel's always-full device
    } catch (err) {
      enospc = err;
    }
    assert.equal((enospc as NodeJS.ErrnoException).code, 'ENOSPC');
    const db = new Database(':memory:');
    let sqliteFull: unknown;
    try {
      db.pragma('max_page_count = 2'); // SQLite's own "database or disk is full"
      db.exec('CREATE TABLE t (b BLOB)');
      db.prepare('INSERT INTO t VALUES (?)').run(Buffer.alloc(100_000));
    } catch (err) {
      sqliteFull = err;
    } finally {
      db.close();
    }
    assert.equal((sqliteFull as { code?: string }).code, 'SQLITE_FULL');
    for (const err of [enospc, sqliteFull, new Error('while storing', { cause: sqliteFull })]) {
      const http = toHttpError(err, { maxUploadBytes: MAX_UPLOAD });
      assert.deepEqual([http?.status, http?.code], [507, 'insufficient_storage']);
      assert.match(http!.message, /out of disk space: nothing was stored/);
    }
  });

  test('an upload to a store on a full disk answers 507, stores nothing, and works once space is freed', async (t) => {
    // Mounted here, not when the suite is declared: a test left out by a name filter must not leave a mount behind.
    const disk = process.getuid?.() === 0 ? tinyDisk(16) : null;
    if (!disk) return t.skip('mounting a tmpfs needs root');
    const store = path.join(disk, 'store');
    const full = await openServer({ store, model: modelFile, gallery: null, progress: false, encodeWorkers: 0, warmUp: false, limits: { maxUploadBytes: 2 * 1024 * 1024 } });
    const srv = buildApp(full.service).listen(0, '127.0.0.1');
    try {
      await new Promise((r) => srv.once('listening', r));
      const at = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
      const noise = await sharp(crypto.randomBytes(300 * 300 * 3), { raw: { width: 300, height: 300, channels: 3 } }).png().toBuffer(); // incompressible
      // Fill the disk: whatever is left goes into one file.
      const filler = path.join(disk, 'filler');
      const fd = fs.openSync(filler, 'w');
      try {
        for (const chunk = Buffer.alloc(1 << 20); ; ) fs.writeSync(fd, chunk);
      } catch (err) {
        assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
      } finally {
        fs.closeSync(fd);
      }
      const upload = () => fetch(`${at}/api/images`, { method: 'POST', body: form({ images: { bytes: noise, name: 'noise.png' } }) });
      const res = await upload();
      const body = (await res.json()) as { error: { code: string; message: string } };
      assert.deepEqual([res.status, body.error.code], [507, 'insufficient_storage']);
      assert.match(body.error.message, /out of disk space/);
      assert.equal((await full.store.stats()).images, 0, 'nothing stored');
      assert.equal((await fetch(`${at}/healthz`)).status, 200, 'the server still answers');
      fs.rmSync(filler);
      assert.equal((await upload()).status, 201, 'and stores once there is space');
    } finally {
      await new Promise((r) => srv.close(r));
      await full.close();
      spawnSync('umount', [disk]);
      fs.rmSync(disk, { recursive: true, force: true });
    }
  });
});

// ---- stopping (last: the service refuses work afterwards) ------------------------------------------------------

describe('stopping', () => {
  test('in-flight searches finish; new ones get 503 while the server drains', async () => {
    const running = gallery.slice(0, 8).map((g) => opened.service.search({ k: 3, ffn: 'L' }, { name: 'q.jpg', bytes: g.bytes }));
    let drained = false;
    const draining = opened.service.drain().then(() => (drained = true));
    await expectError(search({ image: { bytes: gallery[0].bytes, name: 'q.jpg' } }), 503, 'service_unavailable', /shutting down/);
    const results = await Promise.all(running);
    assert.ok(results.every((r) => r.results.length === 3 && r.cost.ffn === 'L'));
    await draining;
    assert.ok(drained);
  });
});
