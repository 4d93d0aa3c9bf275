// Indexing: files, folders and archives (indexSources) or uploaded buffers (indexBuffers) -> decoded pixels -> XL
// embeddings -> the store and its HNSW index, with a thumbnail per image and the bytes of images that have no file
// of their own (uploads, archive members) kept in the store.
//
// indexSources is a pipeline. Items are read, hashed and decoded (sharp, on libuv's thread pool; JPEGs already at
// the model's size by libjpeg in WebAssembly on this thread, plain-jpeg.ts) up to WINDOW_BATCHES batches ahead of
// the encoder, which runs on worker threads (the encoder pool, src/encoder/pool.ts), so decoding, encoding and storing overlap. An item
// that needs a thumbnail (one that is not its own: thumbnails.ts) has it made beside its decode.
// Batches are encoded and committed in source order, each in one transaction of the store (images, embeddings,
// thumbnails, kept bytes; src/store/types.ts), with its vectors in the store's HNSW index. A batch is all or nothing, so a job killed at any
// point leaves every committed image intact, with its thumbnail, and searchable, and a rerun skips them by content
// hash (same bytes, same model) and indexes the rest. An image stored without the thumbnail it needs (its thumbnail
// failed, or it came from a store before schema version 3 that lacked one) gets one when it is met again.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type DecodedImage, DEFAULT_MAX_PIXELS, ImageDecodeError, decodePixels } from '../data/images.ts';
import { regionViews } from '../data/regions.ts';
import { SourceReadError, describeFsError, isArchiveName, iterateImageSource, listImageSource, readImageFile } from '../data/sources.ts';
import { EncoderPool } from '../encoder/pool.ts';
import { Encoder, type ImageEncoder } from '../encoder/runtime.ts';
import { logger } from '../log.ts';
import { UPLOAD_PREFIX, needsCopy } from './originals.ts';
import { type ImageDecoder, sharedDecoder } from './decoder.ts';
export { getOriginal, getThumbnail } from './originals.ts'; // the API's image routes use them beside indexBuffers
import type { StoreBackend, StoreItem } from '../store/types.ts';
import { type ImageRow, StoreError, contentHash } from './store.ts';
import { makeThumbnail, needsMadeThumbnail } from './thumbnails.ts';

export interface IndexProgress {
  done: number; // items finished: indexed + duplicates + failed
  total?: number; // items found in the sources, once counted (counting runs alongside indexing)
  indexed: number;
  duplicates: number;
  failed: number;
}

export interface IndexOptions {
  batchSize?: number; // images per encoder run (default 64)
  onProgress?: (p: IndexProgress) => void;
  /** Stops reading new items; what is already in flight is finished and committed, and the report returned. */
  signal?: AbortSignal;
  maxPixels?: number; // larger images fail as too-large (default: decodeImage's limit)
  /**
   * Also store region vectors, a grid x grid of them per image (src/data/regions.ts), and give them to stored images
   * that have none. Without it, a store that holds region vectors for the model gets them for every image added.
   */
  regionGrid?: number;
}

export interface IndexReport {
  indexed: number; // images given an embedding by this call (new images, or known images new to this model)
  duplicates: number; // items whose content was already indexed for this model (before, or earlier in this call)
  failed: { path: string; reason: string }[]; // reason starts with its kind: empty, not-image, corrupt, too-large, unreadable
  /** Folders and archives that could not be read (whole, or past some point): the images in them were not indexed. */
  unread: { path: string; reason: string }[];
  ids: number[]; // ids of the indexed images, in source order (duplicates not included)
  seconds: number;
  encodeSeconds?: number; // time the encoder spent running the model (diagnostics: seconds minus this is waiting)
}

export type BufferResult = { id: number; created: boolean } | { name: string; error: ImageDecodeError };

export const DEFAULT_BATCH_SIZE = 64;
const WINDOW_BATCHES = 4; // batches read and decoding ahead of the encoder
const MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024;
const UPLOAD_CONCURRENCY = 8; // decodes in flight for indexBuffers

/** A decoded item waiting for its embedding. */
interface Ready {
  path: string; // what the store records as source
  label: string | null;
  metadata: Record<string, unknown>;
  bytes: Buffer;
  hash: string;
  decoded: DecodedImage;
  regionPixels?: Uint8Array[]; // its regions' pixels, when the job stores region vectors
  thumb: Promise<Buffer | null> | null; // null: it needs none (its own thumbnail, or stored for another model with one)
}

type Prepared = { kind: 'ready'; item: Ready } | { kind: 'duplicate' } | { kind: 'failed'; path: string; reason: string; hash?: string; held?: number };

/** An item to index: a file (read when its turn comes) or an archive member (with its bytes). */
export interface IndexItem {
  path: string; // what the store records as source: a file's absolute path, or `/abs/archive.tar.gz:member`
  label?: string;
  bytes?: Buffer; // archive members come with their bytes; files are read when their turn comes
}

/**
 * Encoder threads for an indexing job (each a worker with a one-thread session, the encoder pool): every core when the
 * machine is idle, else one. On a shared 2-core machine (a training job running) one thread encoded 1.6x faster
 * than two (223-336 against 146-192 images/s, interleaved runs): the kernel shares the cores between processes.
 * Idle is measured over the next `sampleMs` (every CPU but half of one idle), not taken from the load average,
 * which still counts this process's own work, or a job just paused, for a minute.
 */
export async function defaultEncoderThreads(sampleMs = 250): Promise<number> {
  const cores = Math.max(1, os.availableParallelism());
  if (cores === 1) return 1;
  const cpus = os.cpus().length;
  const idleMs = () => os.cpus().reduce((sum, c) => sum + c.times.idle, 0);
  const before = idleMs();
  await new Promise((resolve) => setTimeout(resolve, sampleMs));
  // As a share of every CPU the system lists (a container may list more than it may use): all but half of one idle.
  const idleShare = (idleMs() - before) / (sampleMs * cpus);
  return idleShare >= 1 - 0.5 / cpus ? cores : 1;
}

/** What indexSources and indexBuffers share: checks, decoding with thumbnails, encoding and commits. */
class Indexing {
  readonly maxPixels: number;
  private decoder: ImageDecoder;
  private pool: Promise<EncoderPool | null> = Promise.resolve(null); // the workers batches go to (startPool)
  private ownsPool = false; // started for this job, so closed at its end
  private busyBefore = 0;
  private grid: Promise<number | null>; // region vectors per side, or null: none

  constructor(readonly store: StoreBackend, readonly encoder: ImageEncoder, maxPixels?: number, regionGrid?: number) {
    if (!store.writer) throw new StoreError(`store "${store.location}" was opened for reading; open it with { writer: true } to index`);
    if (store.modelId !== encoder.modelId || store.dim !== encoder.dim) {
      throw new Error(`the store was opened for model "${store.modelId}" (${store.dim}-d) but the encoder is "${encoder.modelId}" (${encoder.dim}-d)`);
    }
    this.maxPixels = maxPixels ?? DEFAULT_MAX_PIXELS;
    this.decoder = sharedDecoder(encoder.config.imageSize);
    this.grid = regionGridOf(store, regionGrid);
    this.grid.catch(() => {}); // rejected: the first lookup throws it
  }

  /**
   * The stored image with this content, if any, and whether it already has what this job stores for the model: its
   * embedding, and its region vectors when the job stores them.
   */
  async lookup(hash: string): Promise<{ row: ImageRow | undefined; indexed: boolean }> {
    const grid = await this.grid;
    const found = await this.store.findByHash(hash);
    return { row: found?.row, indexed: (found?.indexed ?? false) && (grid === null || found!.regions) };
  }

  /**
   * Decodes an item and starts its thumbnail, unless it needs none: it is its own thumbnail, or `known` (the same
   * content stored for another model) has one. Bad images come back as ImageDecodeError; anything else throws.
   * `given`: the caller decoded the bytes already (the server checks uploads first).
   */
  async decode(path: string, label: string | null, metadata: Record<string, unknown>, bytes: Buffer, hash: string, known?: ImageRow, given?: DecodedImage): Promise<Ready | ImageDecodeError> {
    let decoded: DecodedImage;
    let regionPixels: Uint8Array[] | undefined;
    try {
      decoded = given ?? (await this.decoder.decode(bytes, this.maxPixels));
      const grid = await this.grid;
      if (grid !== null) regionPixels = await decodeRegions(bytes, this.encoder.config.imageSize, grid, this.maxPixels);
    } catch (err) {
      if (err instanceof ImageDecodeError) return err;
      throw err;
    }
    const needed = known ? await this.lacksThumbnail(known, bytes) : needsMadeThumbnail(decoded.width, decoded.height, decoded.format, bytes.length);
    const thumb = needed ? orNull(makeThumbnail(bytes, this.maxPixels), path) : null;
    return { path, label, metadata, bytes, hash, decoded, thumb, regionPixels };
  }

  /** Whether a stored image (with these bytes) lacks the thumbnail it should have stored. */
  private async lacksThumbnail(row: ImageRow, bytes: Buffer): Promise<boolean> {
    return needsMadeThumbnail(row.width, row.height, row.format, bytes.length) && !(await this.store.hasThumbnail(row.id));
  }

  /**
   * Given an Encoder (which runs on the calling thread), starts an encoder pool with one worker per encoder thread
   * for this job, in the background: reading and decoding go on meanwhile. A pool given by the caller is used as is.
   */
  startPool(): void {
    const e = this.encoder;
    if (e instanceof EncoderPool) {
      this.pool = Promise.resolve(e);
      this.busyBefore = e.busyMs;
    } else if (e instanceof Encoder) {
      this.pool = EncoderPool.tryStart(e, { threads: e.threads });
      this.ownsPool = true;
    }
  }

  async stopPool(): Promise<void> {
    if (this.ownsPool) await (await this.pool)?.close();
  }

  /** Seconds each encoder worker spent running the model, on average (undefined when encoding ran on this thread). */
  async encodeSeconds(): Promise<number | undefined> {
    const pool = await this.pool;
    return pool ? (pool.busyMs - this.busyBefore) / pool.threads / 1000 : undefined;
  }

  /**
   * Encodes decoded items, and their regions if they have them, with the full model: in the pool when there is one,
   * else on this thread.
   */
  async encode(items: Ready[]): Promise<Encoded> {
    const pixels = items.flatMap((r) => [r.decoded.pixels, ...(r.regionPixels ?? [])]);
    const out = await ((await this.pool) ?? this.encoder).encode(pixels, 'XL');
    let at = 0;
    return items.map((r) => {
      const vector = out[at++];
      if (!r.regionPixels) return { vector };
      const regions = new Float32Array(r.regionPixels.length * vector.length);
      for (let j = 0; j < r.regionPixels.length; j++) regions.set(out[at++], j * vector.length);
      return { vector, regions };
    });
  }

  /**
   * Stores a batch once its thumbnails are ready: one transaction (images, embeddings, thumbnails, and the bytes of
   * images with no file of their own), then HNSW.
   */
  async commit(items: Ready[], encoded: Encoded) {
    const thumbs = await Promise.all(items.map((r) => r.thumb)); // started at decode: usually done by now
    const rows = items.map((r, i): StoreItem => ({
      image: {
        source: r.path,
        contentHash: r.hash,
        width: r.decoded.width,
        height: r.decoded.height,
        format: r.decoded.format,
        label: r.label,
        metadata: r.metadata,
        original: needsCopy(r.path) ? r.bytes : undefined,
        thumbnail: thumbs[i] ?? undefined,
      },
      ...encoded[i],
    }));
    return this.store.add(rows);
  }

  /**
   * Gives an image already indexed for this model a thumbnail if it has none (its thumbnail failed before, or the
   * store was migrated from thumbnail files and one was missing). Resolves once it is stored.
   */
  async addMissingThumbnail(row: ImageRow, bytes: Buffer): Promise<void> {
    if (!(await this.lacksThumbnail(row, bytes))) return;
    const thumb = await orNull(makeThumbnail(bytes, this.maxPixels), row.source);
    if (thumb) await this.store.addThumbnail(row.id, thumb);
  }
}

/** Each item's embedding, and its region vectors (grid² of them, one after another) when it has regions. */
type Encoded = { vector: Float32Array; regions?: Float32Array }[];

/** The grid a job stores region vectors with: the one asked for, else the store's, else null (none). */
async function regionGridOf(store: StoreBackend, asked: number | undefined): Promise<number | null> {
  const perImage = await store.regionsPerImage();
  const stored = perImage === null ? null : Math.round(Math.sqrt(perImage));
  if (stored !== null && stored * stored !== perImage) throw new StoreError(`the store holds ${perImage} region vectors per image, not a square grid: this program cannot add images to it`);
  if (asked !== undefined && (!Number.isInteger(asked) || asked < 1)) throw new RangeError(`region grid must be a positive integer, got ${asked}`);
  if (asked !== undefined && stored !== null && asked !== stored) throw new StoreError(`the store holds region vectors of a ${stored}x${stored} grid, not ${asked}x${asked}`);
  return asked ?? stored;
}

/** The regions of an image (src/data/regions.ts), cut from it decoded at twice the model's size. */
async function decodeRegions(bytes: Buffer, size: number, grid: number, maxPixels: number): Promise<Uint8Array[]> {
  const all = regionViews(await decodePixels(bytes, 2 * size, { maxPixels }), size, grid);
  const each = size * size * 3;
  return Array.from({ length: grid * grid }, (_, j) => all.subarray(j * each, (j + 1) * each));
}

/** A thumbnail, or null (logged) if it failed: the image is indexed without one. */
function orNull(thumb: Promise<Buffer>, path: string): Promise<Buffer | null> {
  return thumb.catch((err) => {
    logger.warn({ path, err: (err as Error).message }, 'no thumbnail: the image decoded but its thumbnail failed');
    return null;
  });
}

/**
 * Indexes every image of the sources (folders, recursively; single files; .tar/.tar.gz archives) with the encoder's
 * XL model. Bad files are reported in `failed` and never stop the job; identical content is stored once. Throws
 * only for what stops everything (the store, the encoder); what was committed before stays committed.
 */
export async function indexSources(store: StoreBackend, encoder: ImageEncoder, sources: string[], opts: IndexOptions = {}): Promise<IndexReport> {
  const report = emptyReport();
  return indexAll(store, encoder, sourceItems(sources, report), report, countItems(sources), opts);
}

/**
 * Indexes the items given (files by path, archive members with their bytes), as indexSources does the items of its
 * sources: one job of the distributed indexing (src/queue/worker.ts).
 */
export async function indexItems(store: StoreBackend, encoder: ImageEncoder, items: IndexItem[], opts: IndexOptions = {}): Promise<IndexReport> {
  return indexAll(store, encoder, items, emptyReport(), Promise.resolve(items.length), opts);
}

const emptyReport = (): IndexReport => ({ indexed: 0, duplicates: 0, failed: [], unread: [], ids: [], seconds: 0 });

async function indexAll(
  store: StoreBackend,
  encoder: ImageEncoder,
  items: AsyncIterable<IndexItem> | Iterable<IndexItem>,
  report: IndexReport,
  counted: Promise<number | undefined>,
  opts: IndexOptions,
): Promise<IndexReport> {
  const t0 = performance.now();
  const ix = new Indexing(store, encoder, opts.maxPixels, opts.regionGrid);
  const batchSize = opts.batchSize ?? DEFAULT_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize <= 0) throw new RangeError(`batch size must be a positive integer, got ${batchSize}`);
  let total: number | undefined;
  const progress = () => opts.onProgress?.({ done: report.indexed + report.duplicates + report.failed.length, total, indexed: report.indexed, duplicates: report.duplicates, failed: report.failed.length });
  void counted.then((n) => {
    total = n;
    progress();
  });

  // Content being decoded or waiting for its batch: a second copy waits for the first instead of decoding again.
  const pending = new Map<string, Promise<Prepared>>();
  let bytesInFlight = 0;

  const prepare = async (c: IndexItem): Promise<Prepared> => {
    let bytes: Buffer;
    try {
      bytes = c.bytes ?? (await readImageFile(c.path));
    } catch (err) {
      return { kind: 'failed', path: c.path, reason: (err as Error).message };
    }
    const hash = contentHash(bytes);
    const first = pending.get(hash);
    if (first) {
      const p = await first;
      return p.kind === 'failed' ? { kind: 'failed', path: c.path, reason: p.reason } : { kind: 'duplicate' };
    }
    // Claimed before the lookup (which may wait on the database), so a second copy arriving meanwhile waits for it.
    let settle!: (p: Prepared) => void;
    pending.set(hash, new Promise((resolve) => (settle = resolve)));
    const { row, indexed } = await ix.lookup(hash);
    if (indexed) {
      await ix.addMissingThumbnail(row!, bytes);
      pending.delete(hash);
      settle({ kind: 'duplicate' });
      return { kind: 'duplicate' };
    }
    bytesInFlight += bytes.length;
    const p = ix.decode(c.path, c.label ?? null, {}, bytes, hash, row).then((r): Prepared => (r instanceof ImageDecodeError ? { kind: 'failed', path: c.path, reason: r.message, hash, held: bytes.length } : { kind: 'ready', item: r }));
    p.then(settle, () => settle({ kind: 'failed', path: c.path, reason: 'unreadable' }));
    return p;
  };

  // Batches in order: while one is committed, the next is already being encoded.
  let batch: Ready[] = [];
  let running: { items: Ready[]; out: Promise<Encoded> } | null = null;
  const commit = async ({ items, out }: { items: Ready[]; out: Promise<Encoded> }) => {
    const results = await ix.commit(items, await out);
    results.forEach((r, i) => {
      pending.delete(items[i].hash);
      bytesInFlight -= items[i].bytes.length;
      if (r.embeddingAdded || r.regionsAdded) {
        report.indexed++;
        report.ids.push(r.id);
      } else {
        report.duplicates++; // added meanwhile by another writer of the store
      }
    });
    progress();
  };
  const submit = async () => {
    const items = batch;
    batch = [];
    if (items.length === 0) return;
    const previous = running;
    running = { items, out: ix.encode(items) };
    if (previous) await commit(previous);
  };
  const finish = async () => {
    const last = running;
    running = null;
    if (last) await commit(last);
  };
  const consume = async (p: Prepared) => {
    if (p.kind === 'ready') {
      batch.push(p.item);
      if (batch.length >= batchSize) await submit();
      return;
    }
    if (p.kind === 'failed') {
      report.failed.push({ path: p.path, reason: p.reason });
      if (p.hash) pending.delete(p.hash);
      bytesInFlight -= p.held ?? 0;
    } else {
      report.duplicates++;
    }
    progress();
  };

  const window: Promise<Prepared>[] = [];
  const windowSize = WINDOW_BATCHES * batchSize;
  ix.startPool();
  try {
    for await (const c of items) {
      if (opts.signal?.aborted) break;
      const prepared = prepare(c);
      // Handled now, thrown when its turn comes: a rejection while the loop waits on the source (reading the next
      // file) would otherwise be unhandled and end the process (seen with a store's region-grid mismatch).
      prepared.catch(() => {});
      window.push(prepared);
      while (window.length >= windowSize || (window.length > 1 && bytesInFlight > MAX_BYTES_IN_FLIGHT)) await consume(await window.shift()!);
    }
    while (window.length > 0) await consume(await window.shift()!);
    await submit();
    await finish();
  } finally {
    // On an error, let what is in flight settle before the caller closes the store under it.
    const last = running as { out: Promise<Encoded> } | null; // (assigned in the closures above)
    await Promise.allSettled([...window, last?.out]);
    await ix.stopPool();
  }
  report.seconds = (performance.now() - t0) / 1000;
  report.encodeSeconds = await ix.encodeSeconds();
  return report;
}

/**
 * Indexes uploaded images. Each item gets its stored id (created: false when the same content was already stored;
 * its label and metadata are then left as they were) or its decode error, in the order given; nothing is stored
 * for an item that fails. Originals are kept, and thumbnails stored with the images that are not their own thumbnail
 * (see getOriginal, getThumbnail).
 * An item may carry its `decoded` pixels (the server decodes uploads to check them first): they are not decoded again.
 */
export async function indexBuffers(
  store: StoreBackend,
  encoder: ImageEncoder,
  items: { name: string; bytes: Buffer; label?: string; metadata?: Record<string, unknown>; decoded?: DecodedImage }[],
): Promise<({ id: number; created: boolean } | { name: string; error: ImageDecodeError })[]> {
  const ix = new Indexing(store, encoder);
  const results: BufferResult[] = new Array(items.length);
  const ready: { index: number; item: Ready }[] = [];
  await mapBounded(items.length, UPLOAD_CONCURRENCY, async (i) => {
    const { name, bytes, label, metadata, decoded } = items[i];
    if (!Buffer.isBuffer(bytes) || bytes.length === 0) {
      results[i] = { name, error: new ImageDecodeError('empty') };
      return;
    }
    const hash = contentHash(bytes);
    const { row, indexed } = await ix.lookup(hash);
    if (indexed) {
      await ix.addMissingThumbnail(row!, bytes);
      results[i] = { id: row!.id, created: false };
      return;
    }
    const r = await ix.decode(`${UPLOAD_PREFIX}${name}`, label ?? null, metadata ?? {}, bytes, hash, row, decoded);
    if (r instanceof ImageDecodeError) results[i] = { name, error: r };
    else ready.push({ index: i, item: r });
  });
  ready.sort((a, b) => a.index - b.index); // ids in the order given
  for (let s = 0; s < ready.length; s += DEFAULT_BATCH_SIZE) {
    const chunk = ready.slice(s, s + DEFAULT_BATCH_SIZE);
    const encoded = await ix.encode(chunk.map((c) => c.item));
    (await ix.commit(chunk.map((c) => c.item), encoded)).forEach((res, j) => (results[chunk[j].index] = { id: res.id, created: res.created }));
  }
  return results;
}

/**
 * Every candidate item of the sources, in order. A source that does not exist goes to `failed`; a folder or archive
 * that cannot be read (a sub-folder without permission, a truncated archive) to `unread`, and the walk goes on.
 */
export async function* sourceItems(sources: string[], report: Pick<IndexReport, 'failed' | 'unread'>): AsyncGenerator<IndexItem> {
  const onUnreadableFolder = (dir: string, reason: string) => report.unread.push({ path: dir, reason });
  for (const source of sources) {
    const abs = path.resolve(source);
    let stat: fs.Stats;
    try {
      stat = await fs.promises.stat(abs);
    } catch (err) {
      report.failed.push({ path: source, reason: new ImageDecodeError('unreadable', describeFsError(err)).message });
      continue;
    }
    try {
      if (stat.isDirectory()) {
        for await (const item of listImageSource(abs, { onUnreadableFolder })) yield { path: item.path, label: item.label };
      } else if (isArchiveName(abs)) {
        for await (const item of iterateImageSource(abs)) yield item;
      } else {
        yield { path: abs };
      }
    } catch (err) {
      // The root folder, or an archive past some member: what came before is indexed, the rest is reported.
      report.unread.push(err instanceof SourceReadError ? { path: err.path, reason: err.reason } : { path: abs, reason: describeFsError(err) });
    }
  }
}

/** How many candidate items the sources hold (undefined if some cannot be listed). */
export async function countItems(sources: string[]): Promise<number | undefined> {
  try {
    let n = 0;
    for (const source of sources) {
      const abs = path.resolve(source);
      const stat = await fs.promises.stat(abs);
      if (!stat.isDirectory() && !isArchiveName(abs)) n++;
      else for await (const _ of listImageSource(abs, { onUnreadableFolder: () => {} })) n++;
    }
    return n;
  } catch {
    return undefined;
  }
}

async function mapBounded(n: number, limit: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}
