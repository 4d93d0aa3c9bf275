// The indexing and search services on a tiny random-weight model: a folder of good and bad files of every kind,
// duplicates, archives, uploads, thumbnails, originals, reruns and search results.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';
import sharp from 'sharp';
import tar from 'tar-stream';
import { acceptedFormat } from '../src/data/formats.ts';
import { regionViews } from '../src/data/regions.ts';
import { MAX_IMAGE_BYTES, decodeImage } from '../src/data/images.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG } from '../src/encoder/config.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { NotFoundError, UsageError } from '../src/errors.ts';
import { defaultEncoderThreads, getOriginal, getThumbnail, indexBuffers, indexSources } from '../src/index/indexer.ts';
import { MAX_EF, MAX_K } from '../src/index/limits.ts';
import { searchById, searchByPixels } from '../src/index/search.ts';
import { type IndexHandle, deleteImages, openIndex } from '../src/index/service.ts';
import { EmbeddedStore } from '../src/store/embedded.ts';
import Database from 'better-sqlite3';
import { ImageStore, SCHEMA_VERSION, contentHash } from '../src/index/store.ts';
import { PlainJpegDecoder, plainJpegSize } from '../src/index/plain-jpeg.ts';
import { EncoderPool } from '../src/encoder/pool.ts';
import { logger } from '../src/log.ts';
import { maxAbsDiff, randomModel } from './helpers/model.ts';

let tmp: string;
let encoder: Encoder;

/** Removes a thumbnail behind the store's back (another connection), as if it had never been made. */
function deleteThumbnail(storeDir: string, id: number): void {
  const db = new Database(path.join(storeDir, 'store.sqlite'));
  try {
    assert.equal(db.prepare('DELETE FROM thumbnails WHERE image_id = ?').run(id).changes, 1);
  } finally {
    db.close();
  }
}

/** Width and height of an image's thumbnail as served (stored, or made from the kept original), checking it is WebP. */
async function thumbSize(h: IndexHandle, id: number): Promise<[number, number]> {
  const thumb = await getThumbnail(embedded(h), id);
  assert.equal(thumb.contentType, 'image/webp');
  const meta = await sharp(thumb.bytes).metadata();
  assert.equal(meta.format, 'webp');
  return [meta.width!, meta.height!];
}
let stores = 0;
const newStore = () => path.join(tmp, `store-${stores++}`);
const open = (dir: string) => openIndex(dir, encoder.modelId, encoder.dim, { writer: true, config: encoder.config });
/** The store seam over a handle the test keeps (and closes) itself. */
const embedded = (h: IndexHandle) => new EmbeddedStore(h);

/** Deterministic noise (an LCG), so every generated image has its own content. */
function noise(n: number, seed: number): Buffer {
  let s = seed >>> 0;
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}
const raw = (w: number, h: number, seed: number) => sharp(noise(w * h * 3, seed), { raw: { width: w, height: h, channels: 3 } });

function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(body));
  return Buffer.concat([len, body, crc]);
}
/** A small, valid PNG whose header claims 100000 x 100000 pixels (a decompression bomb). */
function hugePng(): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(100_000, 0);
  ihdr.writeUInt32BE(100_000, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', ihdr), pngChunk('IDAT', zlib.deflateSync(Buffer.alloc(1000))), pngChunk('IEND', Buffer.alloc(0))]);
}

async function tarGz(file: string, members: Record<string, Buffer>): Promise<void> {
  const pack = tar.pack();
  for (const [name, bytes] of Object.entries(members)) pack.entry({ name }, bytes);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  fs.writeFileSync(file, zlib.gzipSync(Buffer.concat(chunks)));
}

interface Fixture {
  dir: string;
  good: Map<string, Buffer>; // path -> bytes, every decodable image (duplicates included)
  bad: Map<string, string>; // path -> expected reason kind
  duplicates: number;
}

/** A folder of good images in every format (in class folders, some 32x32, one EXIF-rotated, one heavy) and bad files. */
async function makeFolder(dir: string): Promise<Fixture> {
  const good = new Map<string, Buffer>();
  const bad = new Map<string, string>();
  const put = (rel: string, bytes: Buffer) => {
    const p = path.join(dir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, bytes);
    return p;
  };
  let seed = 1;
  for (const cls of ['cat', 'dog']) {
    for (let i = 0; i < 6; i++) good.set(put(`${cls}/${i}.jpg`, await raw(32, 32, seed++).jpeg().toBuffer()), Buffer.alloc(0));
  }
  good.set(put('formats/a.png', await raw(48, 40, seed++).png().toBuffer()), Buffer.alloc(0));
  good.set(put('formats/b.webp', await raw(64, 64, seed++).webp().toBuffer()), Buffer.alloc(0));
  good.set(put('formats/c.gif', await raw(20, 30, seed++).gif().toBuffer()), Buffer.alloc(0));
  good.set(put('formats/d.tiff', await raw(33, 31, seed++).tiff().toBuffer()), Buffer.alloc(0));
  good.set(put('formats/e.avif', await raw(64, 48, seed++).avif().toBuffer()), Buffer.alloc(0));
  good.set(put('formats/big.jpg', await raw(400, 300, seed++).jpeg().toBuffer()), Buffer.alloc(0));
  good.set(put('formats/rotated.jpg', await raw(40, 20, seed++).jpeg().withMetadata({ orientation: 6 }).toBuffer()), Buffer.alloc(0));
  good.set(put('formats/heavy.png', await raw(120, 100, seed++).png().toBuffer()), Buffer.alloc(0)); // fits, but 36 KB of noise
  for (const p of good.keys()) good.set(p, fs.readFileSync(p));
  // The same content twice: stored once.
  good.set(put('dup/copy-of-cat-0.jpg', good.get(path.join(dir, 'cat/0.jpg'))!), good.get(path.join(dir, 'cat/0.jpg'))!);

  const bigJpeg = await raw(256, 256, seed++).jpeg({ quality: 90 }).toBuffer();
  bad.set(put('bad/empty.png', Buffer.alloc(0)), 'empty');
  bad.set(put('bad/text.jpg', Buffer.from('this is not an image\n')), 'not-image');
  bad.set(put('bad/truncated.jpg', bigJpeg.subarray(0, bigJpeg.length >> 1)), 'corrupt');
  bad.set(put('bad/corrupt.jpg', Buffer.concat([bigJpeg.subarray(0, 20), noise(2000, 99)])), 'corrupt');
  bad.set(put('bad/huge.png', hugePng()), 'too-large');
  const dangling = path.join(dir, 'bad/dangling.jpg');
  fs.symlinkSync(path.join(dir, 'bad/no-such-target.jpg'), dangling);
  bad.set(dangling, 'unreadable');
  // Not regular files: reading them used to wait for a writer (FIFO) or read for ever (/dev/zero) with the store locked.
  const fifo = path.join(dir, 'bad/pipe.jpg');
  execFileSync('mkfifo', [fifo]);
  bad.set(fifo, 'unreadable');
  const zero = path.join(dir, 'bad/zero.jpg');
  fs.symlinkSync('/dev/zero', zero);
  bad.set(zero, 'unreadable');
  const oversized = put('bad/oversized.png', Buffer.alloc(0));
  fs.truncateSync(oversized, MAX_IMAGE_BYTES + 1); // sparse: over the limit without taking the disk space
  bad.set(oversized, 'too-large');
  put('notes.txt', Buffer.from('not an image extension: ignored in folders'));
  return { dir, good, bad, duplicates: 1 };
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-indexer-'));
  const { tensors } = await randomModel(TINY_CONFIG, 3);
  const modelFile = path.join(tmp, 'tiny.safetensors');
  saveModel(modelFile, TINY_CONFIG, tensors);
  encoder = Encoder.load(modelFile, { threads: 1 });
});
after(async () => {
  await encoder?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('indexSources', () => {
  let fx: Fixture;
  let handle: IndexHandle;
  before(async () => {
    fx = await makeFolder(path.join(tmp, 'photos'));
    handle = open(newStore());
  });
  after(() => handle.close());

  test('indexes every good image, names every bad file with its reason, stores identical content once', { timeout: 60_000 }, async () => {
    const progress: number[] = [];
    const r = await indexSources(embedded(handle), encoder, [fx.dir], { batchSize: 4, onProgress: (p) => progress.push(p.done) });
    const unique = new Set([...fx.good.values()].map(contentHash)).size;
    assert.equal(r.indexed, unique);
    assert.equal(r.duplicates, fx.duplicates);
    assert.equal(r.ids.length, unique);
    assert.deepEqual(new Set(r.ids).size, unique);
    const failed = new Map(r.failed.map((f) => [f.path, f.reason]));
    assert.deepEqual([...failed.keys()].sort(), [...fx.bad.keys()].sort());
    for (const [p, kind] of fx.bad) assert.match(failed.get(p)!, new RegExp(`^${kind}: `), p);
    assert.match(failed.get(path.join(fx.dir, 'bad/pipe.jpg'))!, /not a regular file: a FIFO/);
    assert.match(failed.get(path.join(fx.dir, 'bad/zero.jpg'))!, /not a regular file: a character device/);
    assert.match(failed.get(path.join(fx.dir, 'bad/oversized.png'))!, new RegExp(`${MAX_IMAGE_BYTES + 1} bytes, over the limit of ${MAX_IMAGE_BYTES}`));
    assert.deepEqual(r.unread, []);
    assert.equal(progress.at(-1), unique + fx.duplicates + fx.bad.size);

    assert.equal(handle.store.count(encoder.modelId), unique);
    assert.equal(handle.hnsw.size, unique);
    for (const [p, bytes] of fx.good) {
      const row = handle.store.findByHash(contentHash(bytes))!;
      assert.ok(row, `${p} is stored`);
      if (!p.includes('/dup/')) assert.equal(row.source, p);
    }
    const cat = handle.store.findByHash(contentHash(fx.good.get(path.join(fx.dir, 'cat/1.jpg'))!))!;
    assert.deepEqual([cat.label, cat.width, cat.height, cat.format], ['cat', 32, 32, 'jpeg']);
    const rotated = handle.store.findByHash(contentHash(fx.good.get(path.join(fx.dir, 'formats/rotated.jpg'))!))!;
    assert.deepEqual([rotated.width, rotated.height], [20, 40], 'EXIF orientation applied');
    const avif = handle.store.findByHash(contentHash(fx.good.get(path.join(fx.dir, 'formats/e.avif'))!))!;
    assert.equal(avif.format, 'avif');
  });

  test('thumbnails: a small image is its own (its bytes, its type); a TIFF, a heavy file and a large image get a stored WebP', async () => {
    const made: Record<string, [number, number]> = { 'd.tiff': [33, 31], 'heavy.png': [120, 100], 'big.jpg': [256, 192] };
    let own = 0;
    for (const p of new Set([...fx.good.keys()].filter((p) => !p.includes('/dup/')))) {
      const row = handle.store.findByHash(contentHash(fx.good.get(p)!))!;
      const thumb = await getThumbnail(embedded(handle), row.id);
      const size = made[path.basename(p)];
      if (size) {
        assert.deepEqual(thumb, { bytes: handle.store.getThumbnail(row.id), contentType: 'image/webp' }, p);
        const meta = await sharp(thumb.bytes).metadata();
        assert.deepEqual([meta.format, meta.width, meta.height], ['webp', ...size], p);
      } else {
        assert.equal(handle.store.getThumbnail(row.id), undefined, `${p}: nothing stored`);
        assert.deepEqual(thumb, { bytes: fs.readFileSync(p), contentType: acceptedFormat(row.format)!.contentType }, p);
        own++;
      }
    }
    assert.equal(own, 12 + 5, 'the 32x32 JPEGs, the PNG, WebP, GIF, AVIF and the EXIF-rotated JPEG');
    assert.equal(handle.store.stats().thumbnails, 3, 'in the database');
    assert.ok(!fs.existsSync(path.join(handle.store.dir, 'thumbs')), 'and no files');
  });

  test('a rerun skips everything already indexed and gives a thumbnail to an image that has none', async () => {
    const someId = handle.store.findByHash(contentHash(fx.good.get(path.join(fx.dir, 'formats/big.jpg'))!))!.id;
    const before = handle.store.getThumbnail(someId)!;
    deleteThumbnail(handle.store.dir, someId); // e.g. its thumbnail failed, or a migrated store had no file for it
    assert.equal(handle.store.getThumbnail(someId), undefined);
    const r = await indexSources(embedded(handle), encoder, [fx.dir]);
    assert.equal(r.indexed, 0);
    assert.equal(r.duplicates, fx.good.size);
    assert.equal(r.failed.length, fx.bad.size);
    const after = handle.store.getThumbnail(someId);
    assert.ok(after, 'thumbnail added');
    assert.deepEqual(await sharp(after).raw().toBuffer(), await sharp(before).raw().toBuffer(), 'the same pixels as the one made at indexing');
  });

  test('single files, archives (originals kept), missing sources; getOriginal', async () => {
    const one = path.join(fx.dir, 'cat/3.jpg'); // already indexed
    const fresh = path.join(tmp, 'fresh.png');
    fs.writeFileSync(fresh, await raw(32, 32, 500).png().toBuffer());
    const members = { 'set/bird/1.jpg': await raw(32, 32, 501).jpeg().toBuffer(), 'set/bird/2.webp': await raw(32, 32, 502).webp().toBuffer(), 'set/readme.md': Buffer.from('skip') };
    const archive = path.join(tmp, 'set.tar.gz');
    await tarGz(archive, members);
    const r = await indexSources(embedded(handle), encoder, [one, fresh, archive, path.join(tmp, 'missing')]);
    assert.deepEqual([r.indexed, r.duplicates], [3, 1]);
    assert.deepEqual(r.failed, [{ path: path.join(tmp, 'missing'), reason: 'unreadable: the file could not be read (no such file or directory)' }]);

    const member = handle.store.getImage(r.ids[1])!;
    assert.equal(member.source, `${archive}:set/bird/1.jpg`);
    assert.equal(member.label, 'bird');
    assert.deepEqual(handle.store.getOriginal(member.id), members['set/bird/1.jpg'], 'archive members keep a copy');
    assert.deepEqual(await getOriginal(embedded(handle), member.id), { bytes: members['set/bird/1.jpg'], contentType: 'image/jpeg' });
    const webpMember = await getOriginal(embedded(handle), r.ids[2]);
    assert.equal(webpMember.contentType, 'image/webp');

    const file = handle.store.getImage(r.ids[0])!;
    assert.equal(handle.store.getOriginal(file.id), undefined, 'files on disk are not copied');
    assert.deepEqual(await getOriginal(embedded(handle), file.id), { bytes: fs.readFileSync(fresh), contentType: 'image/png' });
    fs.appendFileSync(fresh, Buffer.from('changed'));
    await assert.rejects(getOriginal(embedded(handle), file.id), (err) => err instanceof NotFoundError && /changed since it was indexed/.test(err.message));
    await assert.rejects(getOriginal(embedded(handle), 999_999), NotFoundError);

    // Small images are their own thumbnails: an archive member's from its kept copy, a file's from the file, as long
    // as it holds the content indexed.
    assert.equal(handle.store.getThumbnail(member.id), undefined);
    assert.deepEqual(await getThumbnail(embedded(handle), member.id), { bytes: members['set/bird/1.jpg'], contentType: 'image/jpeg' });
    assert.equal(handle.store.getThumbnail(file.id), undefined);
    await assert.rejects(getThumbnail(embedded(handle), file.id), (err) => err instanceof NotFoundError && /thumbnail .*of image \d+ is gone: the file has changed since it was indexed/.test(err.message));
    deleteImages(handle, [member.id]);
    assert.equal(handle.store.getOriginal(member.id), undefined, 'rm removes the copy');
    await assert.rejects(getThumbnail(embedded(handle), member.id), NotFoundError);
  });

  test('an abort signal stops reading; what was read is committed and a rerun finishes', async () => {
    const dir = path.join(tmp, 'many');
    for (let i = 0; i < 40; i++) {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, `${String(i).padStart(3, '0')}.jpg`), await raw(32, 32, 1000 + i).jpeg().toBuffer());
    }
    const h = open(newStore());
    try {
      const stop = new AbortController();
      const r1 = await indexSources(embedded(h), encoder, [dir], { batchSize: 4, signal: stop.signal, onProgress: (p) => p.done >= 8 && stop.abort() });
      assert.ok(r1.indexed >= 8 && r1.indexed < 40, `stopped early (${r1.indexed})`);
      assert.equal(h.store.count(encoder.modelId), r1.indexed);
      const r2 = await indexSources(embedded(h), encoder, [dir], { batchSize: 4 });
      assert.deepEqual([r2.indexed, r2.duplicates], [40 - r1.indexed, r1.indexed]);
    } finally {
      h.close();
    }
  });
});

describe('indexBuffers', () => {
  test('uploads: ids in order, failures with their error, duplicates not created twice, originals kept', async () => {
    const h = open(newStore());
    try {
      const a = await raw(32, 32, 700).jpeg().toBuffer();
      const b = await raw(50, 40, 701).png().toBuffer();
      const res = await indexBuffers(embedded(h), encoder, [
        { name: 'a.jpg', bytes: a, label: 'cat', metadata: { by: 'test' } },
        { name: 'bad.jpg', bytes: Buffer.from('nope') },
        { name: 'b.png', bytes: b },
        { name: 'again-a.jpg', bytes: a },
        { name: 'empty', bytes: Buffer.alloc(0) },
      ]);
      assert.deepEqual(res[0], { id: 1, created: true });
      assert.equal((res[1] as { name: string; error: Error }).name, 'bad.jpg');
      assert.equal((res[1] as { error: { reason: string } }).error.reason, 'not-image');
      assert.deepEqual(res[2], { id: 2, created: true });
      assert.deepEqual(res[3], { id: 1, created: false });
      assert.equal((res[4] as { error: { reason: string } }).error.reason, 'empty');
      assert.equal(h.store.count(encoder.modelId), 2, 'nothing stored for failures');
      const row = h.store.getImage(1)!;
      assert.deepEqual([row.source, row.label, row.metadata], ['upload:a.jpg', 'cat', { by: 'test' }]);
      assert.deepEqual(await getOriginal(embedded(h), 1), { bytes: a, contentType: 'image/jpeg' });
      assert.deepEqual(await getOriginal(embedded(h), 2), { bytes: b, contentType: 'image/png' });
      // Small uploads are their own thumbnails (from the kept original); a large one and a TIFF get a stored WebP.
      assert.deepEqual([h.store.getThumbnail(1), h.store.getThumbnail(2)], [undefined, undefined]);
      assert.deepEqual(await getThumbnail(embedded(h), 1), { bytes: a, contentType: 'image/jpeg' });
      assert.deepEqual(await getThumbnail(embedded(h), 2), { bytes: b, contentType: 'image/png' });
      const again = await indexBuffers(embedded(h), encoder, [{ name: 'b-again.png', bytes: b }, { name: 'c.jpg', bytes: await raw(300, 200, 702).jpeg().toBuffer() }, { name: 'd.tif', bytes: await raw(20, 10, 703).tiff().toBuffer() }]);
      assert.deepEqual(again, [{ id: 2, created: false }, { id: 3, created: true }, { id: 4, created: true }]);
      assert.deepEqual(await thumbSize(h, 3), [256, 171]);
      assert.deepEqual(await thumbSize(h, 4), [20, 10], 'never enlarged');
      // A small TIFF kept without a thumbnail (by an older version): made from its original when asked for.
      deleteThumbnail(h.store.dir, 4);
      assert.deepEqual(await thumbSize(h, 4), [20, 10]);
    } finally {
      h.close();
    }
  });
});

describe('search', () => {
  test('searchByPixels and searchById: shape, the image itself first, cost, validation', async () => {
    const dir = path.join(tmp, 'search');
    fs.mkdirSync(path.join(dir, 'x'), { recursive: true });
    for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(dir, 'x', `${i}.png`), await raw(32, 32, 2000 + i).png().toBuffer());
    const h = open(newStore());
    try {
      await indexSources(embedded(h), encoder, [dir]);
      const query = path.join(dir, 'x', '7.png');
      const pixels = (await decodeImage(fs.readFileSync(query), 32)).pixels;
      const encode = (p: Uint8Array, s: string) => encoder.encode([p], s).then((e) => e[0]);
      const res = await searchByPixels(embedded(h), encode, pixels, { k: 5 });
      assert.equal(res.results.length, 5);
      assert.deepEqual(Object.keys(res.results[0]).sort(), ['contentHash', 'id', 'label', 'metadata', 'path', 'region', 'score', 'source']);
      assert.equal(res.results[0].path, query);
      assert.equal(res.results[0].label, 'x');
      assert.ok(res.results[0].score > 0.999);
      assert.ok(res.results.every((r, i) => i === 0 || r.score <= res.results[i - 1].score));
      assert.equal(res.cost.ffn, 'XL');
      assert.equal(res.cost.flops, (await encoder.info('XL')).flops);
      assert.ok(res.cost.encodeMs > 0 && res.cost.searchMs >= 0);

      const small = await searchByPixels(embedded(h), encode, pixels, { k: 3, ffn: 's', ef: 20 });
      assert.equal(small.cost.ffn, 'S');
      assert.ok(small.cost.flops < res.cost.flops);
      await assert.rejects(searchByPixels(embedded(h), encode, pixels, { ffn: 'Q' }), { name: 'ConfigError' });
      await assert.rejects(searchByPixels(embedded(h), encode, pixels, { k: 0 }), UsageError);
      await assert.rejects(searchByPixels(embedded(h), encode, pixels, { ef: 1.5 }), UsageError);
      // One set of limits for the library, the CLI and the API (limits.ts): k up to 100, ef up to 2000.
      assert.equal((await searchByPixels(embedded(h), encode, pixels, { k: MAX_K, ef: MAX_EF })).results.length, Math.min(MAX_K, h.hnsw.size));
      await assert.rejects(searchByPixels(embedded(h), encode, pixels, { k: MAX_K + 1 }), /k must be an integer from 1 to 100, got 101/);
      await assert.rejects(searchById(embedded(h), 1, { ef: MAX_EF + 1 }), /ef must be an integer from 1 to 2000, got 2001/);

      const byId = await searchById(embedded(h), res.results[0].id, { k: 4 });
      assert.equal(byId.results.length, 4);
      assert.ok(!byId.results.some((r) => r.id === res.results[0].id), 'the query image is left out');
      assert.deepEqual(byId.results.map((r) => r.id), res.results.slice(1, 5).map((r) => r.id));
      assert.deepEqual(byId.cost, { ffn: 'XL', flops: 0, encodeMs: 0, searchMs: byId.cost.searchMs });
      await assert.rejects(searchById(embedded(h), 12345, {}), NotFoundError);
    } finally {
      h.close();
    }
  });
});

describe('region vectors', () => {
  test('--regions: each image gets grid² region vectors; a region of an image finds it; a rerun gives them to images indexed without; uploads get them too', { timeout: 60_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'regions-src-'));
    const size = encoder.config.imageSize;
    for (let i = 0; i < 6; i++) await raw(48, 40, 900 + i).png().toFile(path.join(dir, `img${i}.png`));
    const h = open(newStore());
    const store = embedded(h);
    try {
      const first = await indexSources(store, encoder, [path.join(dir, 'img0.png'), path.join(dir, 'img1.png')]); // no regions
      assert.equal(first.indexed, 2);
      assert.equal(await store.regionsPerImage(), null);
      const r = await indexSources(store, encoder, [dir], { regionGrid: 2 });
      assert.deepEqual([r.indexed, r.duplicates], [6, 0], 'the two indexed before count: they gained their regions');
      assert.equal(await store.regionsPerImage(), 4);
      assert.equal((await store.stats()).models[0].regionVectors, 6 * 4);
      const again = await indexSources(store, encoder, [dir], { regionGrid: 2 });
      assert.deepEqual([again.indexed, again.duplicates], [0, 6]);
      await assert.rejects(indexSources(store, encoder, [dir], { regionGrid: 3 }), /2x2 grid, not 3x3/);

      // Image 3's bottom-right region, as a query: the pixels the indexer encoded for it, so its similarity is 1. (With
      // random weights every image is close to every other, so no penalty: this checks the pipeline, not the model.)
      const bytes = fs.readFileSync(path.join(dir, 'img3.png'));
      const double = await decodeImage(bytes, 2 * size);
      const region = regionViews(double.pixels, size, 2).subarray(3 * size * size * 3);
      const id3 = (await store.findByHash(contentHash(bytes)))!.row.id;
      const encode = (px: Uint8Array, spec: string) => encoder.encode([px], spec).then((e) => e[0]);
      const found = await searchByPixels(store, encode, region, { k: 3, regionPenalty: 0 });
      assert.deepEqual([found.results[0].id, found.results[0].region], [id3, true]);
      assert.ok(found.results[0].score > 0.9999, `score ${found.results[0].score}`);
      assert.ok((await searchByPixels(store, encode, region, { k: 3 })).results.every((hit) => hit.score < 0.9999), 'the whole-image vectors alone do not hold it');

      // An upload to a store that holds region vectors gets them, without being asked.
      const upload = await raw(40, 40, 950).png().toBuffer();
      const [added] = await indexBuffers(store, encoder, [{ name: 'up.png', bytes: upload }]);
      assert.ok('id' in added && added.created);
      assert.equal((await store.findByHash(contentHash(upload)))?.regions, true);
      assert.equal((await store.stats()).models[0].regionVectors, 7 * 4);
    } finally {
      h.close();
    }
  });
});

describe('plain JPEG fast path', () => {
  test('only plain size x size JPEGs qualify: no EXIF, no ICC profile, 3 components, baseline or progressive', async () => {
    const base = () => raw(32, 32, 42);
    assert.deepEqual(plainJpegSize(await base().jpeg().toBuffer()), { width: 32, height: 32 });
    assert.deepEqual(plainJpegSize(await base().jpeg({ progressive: true }).toBuffer()), { width: 32, height: 32 });
    assert.deepEqual(plainJpegSize(await raw(40, 24, 1).jpeg().toBuffer()), { width: 40, height: 24 });
    assert.equal(plainJpegSize(await base().jpeg().withMetadata({ orientation: 6 }).toBuffer()), null, 'EXIF');
    assert.equal(plainJpegSize(await base().jpeg().withIccProfile('p3').toBuffer()), null, 'ICC profile');
    assert.equal(plainJpegSize(await base().toColourspace('b-w').jpeg().toBuffer()), null, 'one component');
    assert.equal(plainJpegSize(await base().png().toBuffer()), null, 'PNG');
    assert.equal(plainJpegSize(Buffer.from([0xff, 0xd8, 0xff])), null, 'cut short');
  });

  test('gives exactly what decodeImage gives; truncated and corrupt images get its errors, and the path goes on', async () => {
    const dec = new PlainJpegDecoder(32);
    const images = await Promise.all(
      Array.from({ length: 20 }, (_, i) => raw(32, 32, 300 + i).jpeg({ quality: 50 + 2 * i, progressive: i % 3 === 0, chromaSubsampling: i % 2 ? '4:4:4' : '4:2:0' }).toBuffer()),
    );
    const truncated = images[5].subarray(0, images[5].length - 100); // libjpeg warns and fills in grey
    const badTable = Buffer.from(images[6]); // libjpeg stops with a fatal error
    badTable.fill(0xff, badTable.indexOf(Buffer.from([0xff, 0xc4])) + 5, badTable.indexOf(Buffer.from([0xff, 0xc4])) + 21);
    assert.ok(dec.accepts(truncated) && dec.accepts(badTable), 'both look plain from their headers');
    const inputs = [...images.slice(0, 10), truncated, badTable, ...images.slice(10)];
    const out = await Promise.allSettled(inputs.map((b) => dec.decode(b)));
    for (let i = 0; i < inputs.length; i++) {
      if (i === 10 || i === 11) {
        assert.equal(out[i].status, 'rejected', `image ${i}`);
        assert.equal(((out[i] as PromiseRejectedResult).reason as { reason: string }).reason, 'corrupt');
        continue;
      }
      const got = (out[i] as PromiseFulfilledResult<{ pixels: Uint8Array }>).value;
      assert.deepEqual(got, { ...(await decodeImage(inputs[i], 32)), format: 'jpeg' }, `image ${i}`);
    }
    assert.equal(dec.fastDecodes, images.length, 'every good image took the fast path, also after the fatal error');
  });
});

describe('store schema', () => {
  test('a version 1 store (before kept originals) is migrated on open, its rows intact', async () => {
    const dir = newStore();
    const h = open(dir);
    const [id] = (await indexBuffers(embedded(h), encoder, [{ name: 'a.png', bytes: await raw(32, 32, 900).png().toBuffer() }])).map((r) => (r as { id: number }).id);
    h.close();
    const db = new Database(path.join(dir, 'store.sqlite'));
    db.exec('DROP TABLE originals; DROP TABLE thumbnails');
    db.pragma('user_version = 1');
    db.close();
    const store = ImageStore.open(dir, { writer: true });
    try {
      assert.equal(store.stats().schemaVersion, SCHEMA_VERSION);
      assert.equal(store.getImage(id)?.source, 'upload:a.png');
      assert.equal(store.getOriginal(id), undefined);
      assert.equal(store.stats().originals, 0);
      assert.equal(store.stats().thumbnails, 0, 'a version 1 store without thumbnail files');
    } finally {
      store.close();
    }
  });

  test('a version 2 store (thumbnails in files) is migrated on open; an image whose file was missing gets one when met again', async () => {
    const dir = newStore();
    const h = open(dir);
    const a = await raw(300, 260, 910).jpeg().toBuffer(); // large or heavy: they store a thumbnail
    const b = await raw(150, 120, 911).png().toBuffer();
    const c = await raw(300, 200, 912).png().toBuffer();
    const ids = (await indexBuffers(embedded(h), encoder, [{ name: 'a.jpg', bytes: a }, { name: 'b.png', bytes: b }, { name: 'c.png', bytes: c }])).map((r) => (r as { id: number }).id);
    const made = ids.map((id) => h.store.getThumbnail(id)!);
    h.close();
    // Back to version 2: thumbnails as <store>/thumbs/<id / 1000>/<id>.webp, written after their commit (here the
    // third image's was never written, as when a job was killed in between).
    const db = new Database(path.join(dir, 'store.sqlite'));
    db.exec('DROP TABLE thumbnails');
    db.pragma('user_version = 2');
    db.close();
    for (const i of [0, 1]) {
      const file = path.join(dir, 'thumbs', String(Math.floor(ids[i] / 1000)), `${ids[i]}.webp`);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, made[i]);
    }

    const h2 = open(dir);
    try {
      assert.equal(h2.store.stats().schemaVersion, SCHEMA_VERSION);
      assert.ok(!fs.existsSync(path.join(dir, 'thumbs')), 'the folder is gone');
      assert.deepEqual(h2.store.getThumbnail(ids[0]), made[0]);
      assert.deepEqual(h2.store.getThumbnail(ids[1]), made[1]);
      assert.deepEqual(await thumbSize(h2, ids[0]), [256, 222]);
      assert.deepEqual(await thumbSize(h2, ids[1]), [150, 120]);
      assert.equal(h2.store.getThumbnail(ids[2]), undefined);
      assert.equal(h2.hnsw.size, 3, 'the index is intact');
      const again = await indexBuffers(embedded(h2), encoder, [{ name: 'c-again.png', bytes: c }]);
      assert.deepEqual(again, [{ id: ids[2], created: false }]);
      assert.deepEqual(await thumbSize(h2, ids[2]), [256, 171]);
    } finally {
      h2.close();
    }
  });

  test('an image stored for another model without a thumbnail gets one in the commit that adds this model', async () => {
    const dir = newStore();
    const h = open(dir);
    const file = path.join(tmp, 'known.png');
    fs.writeFileSync(file, await raw(300, 200, 920).png().toBuffer());
    const [id] = (await indexSources(embedded(h), encoder, [file])).ids;
    h.close();
    deleteThumbnail(dir, id);
    const { tensors } = await randomModel(TINY_CONFIG, 4);
    const otherFile = path.join(tmp, 'other.safetensors');
    saveModel(otherFile, TINY_CONFIG, tensors);
    const other = Encoder.load(otherFile, { threads: 1 });
    const h2 = openIndex(dir, other.modelId, other.dim, { writer: true, config: other.config });
    try {
      assert.notEqual(other.modelId, encoder.modelId);
      const r = await indexSources(embedded(h2), other, [file]);
      assert.deepEqual([r.indexed, r.ids], [1, [id]]);
      assert.deepEqual(await thumbSize(h2, id), [256, 171]);
    } finally {
      h2.close();
      await other.close();
    }
  });
});

describe('the encoder pool', () => {
  test('gives exactly the encoder\'s embeddings at every width, and indexSources encodes in a pool', async () => {
    const pool = await EncoderPool.start(encoder, { threads: 1, specs: ['S'] });
    try {
      const imgs = Array.from({ length: 5 }, (_, k) => new Uint8Array(noise(32 * 32 * 3, 60 + k)));
      for (const spec of ['S', 'XL', 'S,XL']) assert.deepEqual(await pool.encode(imgs, spec), await encoder.encode(imgs, spec), spec);
      assert.ok(pool.busyMs > 0);
      await assert.rejects(pool.encode(imgs, 'XXL'), /FFN|granularit|spec/i, 'a bad spec fails before reaching a worker');
    } finally {
      await pool.close();
    }
    const dir = path.join(tmp, 'worker');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'a.png'), await raw(32, 32, 77).png().toBuffer());
    const h = open(newStore());
    try {
      const r = await indexSources(embedded(h), encoder, [dir]);
      assert.equal(r.indexed, 1);
      assert.ok(r.encodeSeconds !== undefined && r.encodeSeconds > 0 && r.encodeSeconds <= r.seconds, `encoded in the pool: ${r.encodeSeconds} s of model time per worker in ${r.seconds} s`);
    } finally {
      h.close();
    }
  });

  test('tryStart: bad options are thrown, not remembered as a failed start; a start that fails is not tried again', async () => {
    const fresh = new Encoder(encoder.checkpoint, encoder.modelPath, { threads: 1 });
    await assert.rejects(EncoderPool.tryStart(fresh, { threads: 0 }), RangeError);
    await assert.rejects(EncoderPool.tryStart(fresh, { threads: 1, specs: ['XXL'] }), /FFN|granularit|spec/i);
    const pool = await EncoderPool.tryStart(fresh, { threads: 1 });
    assert.ok(pool, 'the same encoder still gets its pool');
    await pool.close();
    // Weights that cannot be sent to a worker: the start fails, tryStart answers null, and remembers it.
    const unsendable = new Encoder({ ...encoder.checkpoint, metadata: { ...encoder.checkpoint.metadata, bad: (() => 1) as never } }, encoder.modelPath, { threads: 1 });
    const warn = logger.warn;
    const warnings: unknown[] = [];
    logger.warn = ((...args: unknown[]) => void warnings.push(args)) as typeof logger.warn;
    try {
      assert.equal(await EncoderPool.tryStart(unsendable, { threads: 1 }), null);
      assert.equal(await EncoderPool.tryStart(unsendable, { threads: 1 }), null);
    } finally {
      logger.warn = warn;
    }
    assert.equal(warnings.length, 1, 'one failed start, warned once; the second call did not try again');
  });

  test('defaultEncoderThreads: one encoder thread while another thread keeps a core busy', async () => {
    // A thread spinning for the whole sample leaves at most cores - 1 of idle: not enough for a second worker.
    const spin = new Worker('const end = Date.now() + 3000; while (Date.now() < end);', { eval: true });
    try {
      await new Promise((resolve) => spin.once('online', resolve));
      assert.equal(await defaultEncoderThreads(300), 1);
    } finally {
      await spin.terminate();
    }
  });

  test('several workers split each batch and return the embeddings in order; batches of two widths in flight together each get their own width', async () => {
    const pool = await EncoderPool.start(encoder, { threads: 3 });
    try {
      assert.equal(pool.threads, 3);
      for (const n of [1, 2, 7, 13]) {
        const imgs = Array.from({ length: n }, (_, k) => new Uint8Array(noise(32 * 32 * 3, 90 + k)));
        const got = await pool.encode(imgs);
        const want = await encoder.encode(imgs, 'XL');
        assert.equal(got.length, n);
        got.forEach((v, i) => assert.ok(maxAbsDiff(v, want[i]) < 1e-6, `image ${i} of ${n}`));
      }
      const imgs = Array.from({ length: 4 }, (_, k) => new Uint8Array(noise(32 * 32 * 3, 120 + k)));
      const [s, xl] = await Promise.all([pool.encode(imgs, 'S'), pool.encode(imgs, 'XL')]);
      assert.deepEqual(s, await encoder.encode(imgs, 'S'));
      assert.deepEqual(xl, await encoder.encode(imgs, 'XL'));
    } finally {
      await pool.close();
    }
  });
});
