import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import sharp, { type CreateRaw } from 'sharp';
import tar from 'tar-stream';
import { ImageDecodeError, decodeImage, decodePixels, decodeRawGray } from '../src/data/images.ts';
import { loadLabelledPixels } from '../src/data/labelled.ts';
import { execFileSync } from 'node:child_process';
import { type SourceItem, SourceReadError, iterateImageSource, readIdx, readImageFile } from '../src/data/sources.ts';
import { ImageDecoder } from '../src/index/decoder.ts';

const CIFAR_TEST = path.resolve(import.meta.dirname, '../datasets/cifar10-test.tar.gz'); // bundled
let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-data-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const solid = (width: number, height: number, rgb: [number, number, number]) =>
  sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });
const pixelAt = (px: Uint8Array, size: number, x: number, y: number) => Array.from(px.subarray((y * size + x) * 3, (y * size + x) * 3 + 3));
const near = (a: number[], b: number[], tol = 12) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

async function rejectsWith(p: Promise<unknown>, reason: ImageDecodeError['reason']) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ImageDecodeError, `expected ImageDecodeError, got ${err}`);
    assert.equal(err.reason, reason);
    assert.match(err.message, new RegExp(reason));
    return true;
  });
}

describe('decodeImage', () => {
  test('flattens alpha onto white and returns size*size*3 RGB', async () => {
    const png = await sharp({ create: { width: 40, height: 20, channels: 4, background: { r: 255, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
    const r = await decodeImage(png, 8);
    assert.deepEqual([r.width, r.height, r.format, r.pixels.length], [40, 20, 'png', 8 * 8 * 3]);
    assert.ok(r.pixels.every((v) => v === 255), 'transparent pixels become white');
  });

  test('applies EXIF rotation before the centre crop', async () => {
    // Left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to display".
    const raw = Buffer.alloc(40 * 20 * 3);
    for (let y = 0; y < 20; y++) for (let x = 0; x < 40; x++) raw.set(x < 20 ? [255, 0, 0] : [0, 0, 255], (y * 40 + x) * 3);
    const jpg = await sharp(raw, { raw: { width: 40, height: 20, channels: 3 } }).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
    const r = await decodeImage(jpg, 8);
    assert.deepEqual([r.width, r.height, r.format], [20, 40, 'jpeg']);
    assert.ok(near(pixelAt(r.pixels, 8, 4, 0), [255, 0, 0], 40), `top should be red, got ${pixelAt(r.pixels, 8, 4, 0)}`);
    assert.ok(near(pixelAt(r.pixels, 8, 4, 7), [0, 0, 255], 40), `bottom should be blue, got ${pixelAt(r.pixels, 8, 4, 7)}`);
  });

  test('resizes a large image and keeps its original dimensions', async () => {
    const jpg = await solid(3000, 2000, [51, 102, 153]).jpeg().toBuffer();
    const r = await decodeImage(jpg, 32);
    assert.deepEqual([r.width, r.height, r.pixels.length], [3000, 2000, 32 * 32 * 3]);
    assert.ok(near(pixelAt(r.pixels, 32, 16, 16), [51, 102, 153]));
  });

  test('grayscale and first frame of an animated GIF', async () => {
    const gray = await solid(10, 10, [100, 100, 100]).greyscale().png().toBuffer();
    assert.ok((await decodeImage(gray, 4)).pixels.every((v) => v === 100));
    const frames = Buffer.concat([Buffer.alloc(16 * 16 * 4, 255), Buffer.alloc(16 * 16 * 4, 0)]); // white, then transparent black
    const gif = await sharp(frames, { raw: { width: 16, height: 32, channels: 4, pageHeight: 16 } as CreateRaw }).gif().toBuffer();
    const r = await decodeImage(gif, 16);
    assert.deepEqual([r.width, r.height, r.format], [16, 16, 'gif']);
    assert.ok(r.pixels.every((v) => v === 255));
  });

  test('rejects bad input with a reason', async () => {
    await rejectsWith(decodeImage(Buffer.alloc(0), 8), 'empty');
    await rejectsWith(decodeImage(crypto.randomBytes(1000), 8), 'not-image');
    const noisy = await sharp(crypto.randomBytes(100 * 100 * 3), { raw: { width: 100, height: 100, channels: 3 } }).jpeg().toBuffer();
    await rejectsWith(decodeImage(noisy.subarray(0, noisy.length >> 1), 8), 'corrupt');
    const png = await solid(100, 100, [0, 0, 0]).png().toBuffer();
    await rejectsWith(decodeImage(png, 8, { maxPixels: 5000 }), 'too-large');
    assert.equal((await decodeImage(png, 8, { maxPixels: 10000 })).width, 100);
  });
});

describe('the lean decoders give decodeImage\'s pixels exactly', () => {
  // A textured image (not flat: a resize or a colour conversion would show), in every format and orientation.
  const texture = (w: number, h: number, channels: 3 | 4 = 3) =>
    sharp(Buffer.from(Uint8Array.from({ length: w * h * channels }, (_, i) => (i * 37 + (i >> 7) * 11) & 255)), { raw: { width: w, height: h, channels } });
  const inputs: [string, () => Promise<Buffer>, boolean][] = [
    // name, bytes, whether the WebAssembly path takes it
    ['32x32 JPEG', () => texture(32, 32).jpeg().toBuffer(), true],
    ['32x32 progressive JPEG', () => texture(32, 32).jpeg({ progressive: true }).toBuffer(), true],
    ['32x32 PNG with alpha', () => texture(32, 32, 4).png().toBuffer(), false],
    ['32x32 WebP', () => texture(32, 32).webp().toBuffer(), false],
    ['32x32 JPEG, EXIF orientation 6', () => texture(32, 32).jpeg().withMetadata({ orientation: 6 }).toBuffer(), false],
    ['40x24 JPEG, EXIF orientation 8', () => texture(40, 24).jpeg().withMetadata({ orientation: 8 }).toBuffer(), false],
    ['1280x800 JPEG (shrink-on-load)', () => texture(1280, 800).jpeg({ quality: 90 }).toBuffer(), false],
    ['1280x800 WebP', () => texture(1280, 800).webp().toBuffer(), false],
    ['300x200 PNG', () => texture(300, 200).png().toBuffer(), false],
    ['50x40 GIF', () => texture(50, 40).gif().toBuffer(), false],
  ];
  for (const [name, make, fast] of inputs) {
    test(name, async () => {
      const bytes = await make();
      const ref = await decodeImage(bytes, 32);
      const decoder = new ImageDecoder(32);
      assert.deepEqual(await decodePixels(bytes, 32), ref.pixels, 'decodePixels');
      assert.deepEqual(await decoder.pixels(bytes), ref.pixels, 'ImageDecoder.pixels');
      const full = await decoder.decode(bytes);
      assert.deepEqual(full.pixels, ref.pixels, 'ImageDecoder.decode');
      assert.deepEqual([full.width, full.height, full.format], [ref.width, ref.height, ref.format]);
      assert.equal(decoder.fastDecodes, fast ? 2 : 0, fast ? 'took the WebAssembly path' : 'went to sharp');
    });
  }

  test('bad input gets decodeImage\'s reasons', async () => {
    await rejectsWith(decodePixels(Buffer.alloc(0), 8), 'empty');
    await rejectsWith(decodePixels(crypto.randomBytes(1000), 8), 'not-image');
    const noisy = await sharp(crypto.randomBytes(100 * 100 * 3), { raw: { width: 100, height: 100, channels: 3 } }).jpeg().toBuffer();
    await rejectsWith(decodePixels(noisy.subarray(0, noisy.length >> 1), 8), 'corrupt');
    const png = await solid(100, 100, [0, 0, 0]).png().toBuffer();
    await rejectsWith(decodePixels(png, 8, { maxPixels: 5000 }), 'too-large');
    const cut = await texture(32, 32).jpeg().toBuffer();
    await rejectsWith(new ImageDecoder(32).pixels(cut.subarray(0, cut.length >> 1)), 'corrupt'); // the WebAssembly path hands it to sharp    // a query takes the same format allow-list as an added image: an SVG (which sharp could rasterise) is refused
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8" fill="red"/></svg>');
    await assert.rejects(decodePixels(svg, 8), (e: Error) => e instanceof ImageDecodeError && /SVG is not accepted/.test(e.message));
  });
});

test('decodeRawGray expands a grayscale record to RGB size x size', async () => {
  const px = new Uint8Array(28 * 28).fill(7);
  const out = await decodeRawGray(px, 28, 28, 32);
  assert.equal(out.length, 32 * 32 * 3);
  assert.ok(out.every((v) => v === 7));
  assert.deepEqual(Array.from(await decodeRawGray(new Uint8Array([1, 2, 3, 4]), 2, 2, 2)), [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
});

async function collect(source: string): Promise<SourceItem[]> {
  const out: SourceItem[] = [];
  for await (const item of iterateImageSource(source)) out.push(item);
  return out;
}

describe('iterateImageSource', () => {
  test('folder: recursive, sorted, labelled by parent folder, non-images skipped', async () => {
    const root = path.join(tmp, 'folder');
    for (const d of ['cat', 'dog/sub']) fs.mkdirSync(path.join(root, d), { recursive: true });
    const files = ['top.PNG', 'cat/b.jpg', 'cat/a.JPEG', 'cat/notes.txt', 'cat/.hidden.jpg', 'dog/sub/c.webp', 'dog/z.gif'];
    for (const f of files) fs.writeFileSync(path.join(root, f), f);
    const items = await collect(root);
    assert.deepEqual(
      items.map((i) => [path.relative(root, i.path), i.label, i.bytes.toString()]),
      [
        ['cat/a.JPEG', 'cat', 'cat/a.JPEG'],
        ['cat/b.jpg', 'cat', 'cat/b.jpg'],
        ['dog/sub/c.webp', 'sub', 'dog/sub/c.webp'],
        ['dog/z.gif', 'dog', 'dog/z.gif'],
        ['top.PNG', undefined, 'top.PNG'],
      ],
    );
    // A single file given explicitly is yielded whatever its extension.
    assert.deepEqual((await collect(path.join(root, 'cat/notes.txt'))).map((i) => i.bytes.toString()), ['cat/notes.txt']);
    await assert.rejects(collect(path.join(tmp, 'missing')), /missing.*no such file/);
  });

  test('tar.gz archive: members in order, labelled by parent folder', async () => {
    const pack = tar.pack();
    const members: [string, string][] = [['data/ship/1.jpg', 'one'], ['data/ship/readme.txt', 'x'], ['data/frog/2.png', 'two'], ['root.jpg', 'three']];
    for (const [name, body] of members) pack.entry({ name }, body);
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack.pipe(zlib.createGzip())) chunks.push(c as Buffer);
    const file = path.join(tmp, 'a.tar.gz');
    fs.writeFileSync(file, Buffer.concat(chunks));
    const items = await collect(file);
    assert.deepEqual(
      items.map((i) => [i.path, i.label, i.bytes.toString()]),
      [
        [`${file}:data/ship/1.jpg`, 'ship', 'one'],
        [`${file}:data/frog/2.png`, 'frog', 'two'],
        [`${file}:root.jpg`, undefined, 'three'],
      ],
    );
    const broken = path.join(tmp, 'broken.tgz');
    fs.writeFileSync(broken, 'not gzip at all');
    await assert.rejects(collect(broken), /broken\.tgz.*gzip/);
  });

  test('an unreadable sub-folder is reported and the walk goes on with its siblings; without a handler it ends the walk', async () => {
    // src/{a,b,c}; b is replaced by a file after the walk listed src (a real ENOTDIR: tests run as root, for whom
    // chmod 000 denies nothing; tests/index-cli.test.ts covers permission denied with capabilities dropped).
    const root = path.join(tmp, 'walk');
    const make = () => {
      fs.rmSync(root, { recursive: true, force: true });
      for (const d of ['a', 'b', 'c']) {
        fs.mkdirSync(path.join(root, d), { recursive: true });
        fs.writeFileSync(path.join(root, d, '1.jpg'), d);
      }
    };
    const breakB = () => {
      fs.rmSync(path.join(root, 'b'), { recursive: true });
      fs.writeFileSync(path.join(root, 'b'), 'no longer a folder');
    };
    make();
    const unread: [string, string][] = [];
    const seen: string[] = [];
    for await (const item of iterateImageSource(root, { onUnreadableFolder: (dir, reason) => unread.push([dir, reason]) })) {
      if (seen.length === 0) breakB();
      seen.push(item.bytes.toString());
    }
    assert.deepEqual(seen, ['a', 'c']);
    assert.deepEqual(unread, [[path.join(root, 'b'), 'not a folder']]);

    make();
    await assert.rejects(
      (async () => {
        for await (const _ of iterateImageSource(root)) if (fs.statSync(path.join(root, 'b')).isDirectory()) breakB();
      })(),
      (err) => err instanceof SourceReadError && err.path === path.join(root, 'b') && err.reason === 'not a folder',
    );
  });
});

describe('readImageFile', () => {
  test('refuses a FIFO and a link to /dev/zero at once, reads a regular file whole, caps the bytes read', { timeout: 20_000 }, async () => {
    const dir = path.join(tmp, 'special');
    fs.mkdirSync(dir);
    const fifo = path.join(dir, 'pipe.jpg');
    execFileSync('mkfifo', [fifo]); // opening it for reading would wait for a writer for ever
    const zero = path.join(dir, 'zero.jpg');
    fs.symlinkSync('/dev/zero', zero); // reading it would never end
    const isReason = (reason: string, detail: RegExp) => (err: unknown) => err instanceof ImageDecodeError && err.reason === reason && detail.test(err.message);
    await assert.rejects(readImageFile(fifo), isReason('unreadable', /not a regular file: a FIFO/));
    await assert.rejects(readImageFile(zero), isReason('unreadable', /not a regular file: a character device/));
    await assert.rejects(readImageFile(dir), isReason('unreadable', /not a regular file: a folder/));
    await assert.rejects(readImageFile(path.join(dir, 'missing.jpg')), isReason('unreadable', /no such file/));

    const file = path.join(dir, 'ok.jpg');
    const body = crypto.randomBytes(100_000);
    fs.writeFileSync(file, body);
    assert.ok((await readImageFile(file)).equals(body));
    assert.ok((await readImageFile(file, 100_000)).equals(body), 'exactly the limit is allowed');
    await assert.rejects(readImageFile(file, 99_999), isReason('too-large', /100000 bytes, over the limit of 99999/));
    // Through iterateImageSource (training sets): the error names the file, and nothing waits.
    await assert.rejects(collect(fifo), /cannot read ".*pipe\.jpg": unreadable: .*not a regular file: a FIFO/);
    await assert.rejects(collect(dir), /cannot read ".*pipe\.jpg": unreadable: .*not a regular file: a FIFO/);
  });
});

describe('readIdx', () => {
  const header = (...ints: number[]) => Buffer.concat(ints.map((n) => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255])));
  test('reads images and labels, rejects bad magic and truncation', () => {
    const imgs = path.join(tmp, 'x-images-idx3-ubyte.gz');
    const labs = path.join(tmp, 'x-labels-idx1-ubyte.gz');
    const pixels = Buffer.from(Array.from({ length: 3 * 2 * 2 }, (_, i) => i));
    fs.writeFileSync(imgs, zlib.gzipSync(Buffer.concat([header(0x803, 3, 2, 2), pixels])));
    fs.writeFileSync(labs, zlib.gzipSync(Buffer.concat([header(0x801, 3), Buffer.from([9, 0, 4])])));
    const d = readIdx(imgs, labs);
    assert.deepEqual([d.count, d.rows, d.cols], [3, 2, 2]);
    assert.deepEqual(Array.from(d.pixels), Array.from(pixels));
    assert.deepEqual(Array.from(d.labels!), [9, 0, 4]);
    assert.throws(() => readIdx(labs), /bad magic 0x00000801, expected 0x00000803/);
    fs.writeFileSync(imgs, zlib.gzipSync(Buffer.concat([header(0x803, 3, 2, 2), pixels.subarray(0, 5)])));
    assert.throws(() => readIdx(imgs), /truncated IDX file/);
    fs.writeFileSync(imgs, zlib.gzipSync(Buffer.concat([header(0x803, 3, 2, 2), pixels])).subarray(0, 20));
    assert.throws(() => readIdx(imgs), /truncated gzip/);
  });
});

test('loadLabelledPixels: CIFAR-10 test archive, limit 200, cached', async () => {
  const cacheDir = path.join(tmp, 'cache');
  let progress = 0;
  const a = await loadLabelledPixels(CIFAR_TEST, 32, { cacheDir, limit: 200, onProgress: (n) => (progress = n) });
  assert.deepEqual(a.classes, ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']);
  assert.equal(a.labels.length, 200);
  assert.equal(a.names.length, 200);
  assert.equal(a.pixels.length, 200 * 32 * 32 * 3);
  assert.equal(progress, 200);
  assert.ok(a.labels.every((l) => l >= 0 && l <= 9));
  assert.match(a.names[0], /test\.tar\.gz:test\/airplane\/\d+\.jpg$/);
  assert.ok(a.pixels.some((v) => v !== a.pixels[0]), 'pixels are not constant');

  assert.equal(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.bin')).length, 1);
  const reports: number[] = [];
  const b = await loadLabelledPixels(CIFAR_TEST, 32, { cacheDir, limit: 200, onProgress: (n) => reports.push(n) });
  assert.deepEqual(reports, [200], 'the second load comes from the cache (decoding reports every image)');
  assert.deepEqual(b.classes, a.classes);
  assert.deepEqual(b.names, a.names);
  assert.deepEqual(Array.from(b.labels), Array.from(a.labels));
  assert.ok(Buffer.from(b.pixels).equals(Buffer.from(a.pixels)));
});
