// Labelled pixel datasets for training and evaluation: a folder or archive with one sub-folder per class, or a
// Fashion-MNIST style IDX pair. Decoding 50,000 JPEGs takes a while, so the result is cached as one binary file.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DatasetError } from '../errors.ts';
import { logger } from '../log.ts';
import { ImageDecodeError, decodeImage, decodeRawGray } from './images.ts';
import { iterateImageSource, listImageSource, readIdx } from './sources.ts';

export interface LabelledPixels {
  size: number;
  pixels: Uint8Array; // N*size*size*3, HWC RGB
  labels: Int32Array; // N class indices into `classes`
  classes: string[];
  names: string[]; // N item paths, for reports
}

export interface LoadOptions {
  cacheDir?: string;
  limit?: number; // keep only the first `limit` images in source order
  onProgress?: (done: number) => void;
}

export const FASHION_MNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const DEFAULT_CACHE_DIR = path.join(projectRoot, '.cache/datasets');

const IDX_IMAGES_SUFFIX = '-images-idx3-ubyte.gz';
const IDX_LABELS_SUFFIX = '-labels-idx1-ubyte.gz';
const CONCURRENCY = 8; // decodes in flight: enough to keep sharp's thread pool busy without buffering the archive
// Bump when decodeImage's preprocessing or the cache layout changes, so old caches are not reused.
const CACHE_VERSION = 1;
const CACHE_MAGIC = 'MATVIT-PIXELS\n';

/** Loads (decoding once, then from the cache) every image of a labelled source as size x size RGB. */
export async function loadLabelledPixels(source: string, size: number, opts: LoadOptions = {}): Promise<LabelledPixels> {
  if (!Number.isInteger(size) || size <= 0) throw new RangeError(`image size must be a positive integer, got ${size}`);
  if (opts.limit !== undefined && (!Number.isInteger(opts.limit) || opts.limit < 0)) {
    throw new RangeError(`limit must be a non-negative integer, got ${opts.limit}`);
  }
  const abs = path.resolve(source);
  const cacheDir = opts.cacheDir ?? DEFAULT_CACHE_DIR;
  const key = await cacheKey(abs, size, opts.limit);
  const cacheFile = path.join(cacheDir, `${path.basename(abs).replace(/[^\w.-]+/g, '_')}-${size}-${key.slice(0, 16)}.bin`);

  const cached = readCache(cacheFile, key);
  if (cached) {
    opts.onProgress?.(cached.labels.length);
    return cached;
  }
  const t0 = Date.now();
  const data = abs.endsWith(IDX_IMAGES_SUFFIX) ? await loadIdx(abs, size, opts) : await loadImages(abs, size, opts);
  logger.info({ source: abs, images: data.labels.length, seconds: (Date.now() - t0) / 1000 }, 'decoded labelled dataset');
  writeCache(cacheFile, key, data);
  return data;
}

async function loadIdx(imagesPath: string, size: number, opts: LoadOptions): Promise<LabelledPixels> {
  const idx = readIdx(imagesPath, imagesPath.slice(0, -IDX_IMAGES_SUFFIX.length) + IDX_LABELS_SUFFIX);
  const n = Math.min(idx.count, opts.limit ?? Infinity);
  const per = idx.rows * idx.cols;
  const pixels = new Uint8Array(n * size * size * 3);
  const labels = new Int32Array(n);
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    const l = idx.labels![i];
    if (l >= FASHION_MNIST_CLASSES.length) throw new DatasetError(`${imagesPath}: label ${l} of image ${i} is out of range 0..9`);
    labels[i] = l;
    names.push(`${imagesPath}:${i}`);
  }
  let done = 0;
  await mapBounded(n, CONCURRENCY, async (i) => {
    const rgb = await decodeRawGray(idx.pixels.subarray(i * per, (i + 1) * per), idx.cols, idx.rows, size);
    pixels.set(rgb, i * size * size * 3);
    opts.onProgress?.(++done);
  });
  return { size, pixels, labels, classes: [...FASHION_MNIST_CLASSES], names };
}

async function loadImages(source: string, size: number, opts: LoadOptions): Promise<LabelledPixels> {
  const limit = opts.limit ?? Infinity;
  // Results are kept by position so the dataset keeps the source's order whatever order decodes finish in.
  const results: ({ pixels: Uint8Array; label: string; name: string } | null)[] = [];
  const bad: string[] = [];
  const seenLabels = new Set<string>();
  let truncated = false;
  const inFlight = new Set<Promise<void>>();
  let fatal: unknown;
  let done = 0;
  for await (const item of iterateImageSource(source)) {
    if (results.length >= limit) {
      truncated = true;
      break;
    }
    if (item.label === undefined) {
      throw new DatasetError(`${item.path} is not in a class folder: a labelled dataset needs one sub-folder per class (e.g. train/cat/0001.jpg)`);
    }
    seenLabels.add(item.label);
    const slot = results.length;
    results.push(null);
    const label = item.label;
    const p = decodeImage(item.bytes, size)
      .then((img) => void (results[slot] = { pixels: img.pixels, label, name: item.path }))
      .catch((err) => {
        // A bad image is skipped and reported; anything else (out of memory, a sharp bug) stops the load.
        if (err instanceof ImageDecodeError) bad.push(`${item.path}: ${err.message}`);
        else fatal ??= err;
      })
      .finally(() => {
        inFlight.delete(p);
        opts.onProgress?.(++done);
      });
    inFlight.add(p);
    if (inFlight.size >= CONCURRENCY) await Promise.race(inFlight);
    if (fatal) break;
  }
  await Promise.all(inFlight);
  if (fatal) throw fatal;

  if (bad.length) logger.warn({ source, skipped: bad.length, examples: bad.slice(0, 5) }, 'skipped images that could not be decoded');
  const ok = results.filter((r) => r !== null);
  if (ok.length === 0) throw new DatasetError(`${source}: no decodable images found`);
  // Classes come from the whole source, not from the images kept, so that label indices do not depend on `limit`
  // (the first N images of a class-sorted archive may all be airplanes) or on which images failed to decode.
  if (truncated) for await (const item of listImageSource(source)) if (item.label !== undefined) seenLabels.add(item.label);
  const classes = [...seenLabels].sort();
  const classIndex = new Map(classes.map((c, i) => [c, i]));
  const per = size * size * 3;
  const pixels = new Uint8Array(ok.length * per);
  const labels = new Int32Array(ok.length);
  ok.forEach((r, i) => {
    pixels.set(r.pixels, i * per);
    labels[i] = classIndex.get(r.label)!;
  });
  return { size, pixels, labels, classes, names: ok.map((r) => r.name) };
}

/** Runs fn(0..n-1) with at most `limit` calls in flight; rejects on the first failure. */
async function mapBounded(n: number, limit: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}

// ---- cache ------------------------------------------------------------------------------------------------------

/** The cache key changes whenever the source's files, the size, the limit or the preprocessing change. */
async function cacheKey(abs: string, size: number, limit: number | undefined): Promise<string> {
  const parts: unknown[] = [CACHE_VERSION, abs, size, limit ?? null];
  const stat = await fs.promises.stat(abs).catch((err) => {
    throw new DatasetError(`cannot read dataset "${abs}": ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or directory' : (err as Error).message}`);
  });
  if (stat.isDirectory()) {
    // A directory's own mtime misses edits in sub-folders: fingerprint every file instead (stat only, cheap).
    parts.push(await folderFingerprint(abs));
  } else {
    parts.push(stat.size, stat.mtimeMs);
    if (abs.endsWith(IDX_IMAGES_SUFFIX)) {
      const labels = abs.slice(0, -IDX_IMAGES_SUFFIX.length) + IDX_LABELS_SUFFIX;
      const ls = fs.statSync(labels, { throwIfNoEntry: false });
      parts.push(ls?.size ?? null, ls?.mtimeMs ?? null);
    }
  }
  return crypto.createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

async function folderFingerprint(dir: string): Promise<string> {
  const h = crypto.createHash('sha256');
  const walk = async (d: string) => {
    const entries = await fs.promises.readdir(d, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) await walk(full);
      else {
        const s = await fs.promises.stat(full).catch(() => null);
        h.update(`${full}\0${s?.size}\0${s?.mtimeMs}\n`);
      }
    }
  };
  await walk(dir);
  return h.digest('hex');
}

// Layout: magic, uint32 header length, JSON header {key, size, count, classes, names}, int32 labels, pixels.
function writeCache(file: string, key: string, d: LabelledPixels): void {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const header = Buffer.from(JSON.stringify({ key, size: d.size, count: d.labels.length, classes: d.classes, names: d.names }));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(header.length);
    const tmp = `${file}.${process.pid}.tmp`;
    const fd = fs.openSync(tmp, 'w');
    try {
      for (const part of [Buffer.from(CACHE_MAGIC), len, header, new Uint8Array(d.labels.buffer, d.labels.byteOffset, d.labels.byteLength), d.pixels]) {
        fs.writeSync(fd, part);
      }
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file); // atomic: readers see the old file or the complete new one
  } catch (err) {
    // A cache that cannot be written only costs time next run.
    logger.warn({ file, err: (err as Error).message }, 'could not write the dataset cache');
  }
}

function readCache(file: string, key: string): LabelledPixels | null {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return null; // no cache yet
  }
  try {
    const magic = buf.subarray(0, CACHE_MAGIC.length).toString();
    if (magic !== CACHE_MAGIC) throw new Error('bad magic');
    const hlen = buf.readUInt32LE(CACHE_MAGIC.length);
    const start = CACHE_MAGIC.length + 4;
    const h = JSON.parse(buf.subarray(start, start + hlen).toString());
    if (h.key !== key) throw new Error('key mismatch');
    const n: number = h.count;
    const labelsAt = start + hlen;
    const pixelsAt = labelsAt + 4 * n;
    const pixelBytes = n * h.size * h.size * 3;
    if (buf.length !== pixelsAt + pixelBytes) throw new Error(`size ${buf.length}, expected ${pixelsAt + pixelBytes}`);
    // Copy the labels: Int32Array needs 4-byte alignment, which the file offset does not guarantee.
    const labels = new Int32Array(n);
    new Uint8Array(labels.buffer).set(buf.subarray(labelsAt, pixelsAt));
    const pixels = new Uint8Array(buf.buffer, buf.byteOffset + pixelsAt, pixelBytes);
    return { size: h.size, pixels, labels, classes: h.classes, names: h.names };
  } catch (err) {
    logger.warn({ file, reason: (err as Error).message }, 'ignoring an unusable dataset cache file; decoding again');
    return null;
  }
}
