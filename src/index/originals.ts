// Original image bytes, for GET /api/images/:id, and thumbnails, for GET /api/images/:id/thumb. Images indexed from
// files on disk are read back from their path (and checked against the stored content hash, so a file changed since
// indexing is never served as the original); uploads and archive members have no file of their own, so the store
// keeps their bytes (written in the same transaction as the image). A small image is its own thumbnail
// (thumbnails.ts), read the same way.
import fs from 'node:fs';
import path from 'node:path';
import { NotFoundError } from '../errors.ts';
import { acceptedFormat } from '../data/formats.ts';
import { DEFAULT_MAX_PIXELS } from '../data/images.ts';
import type { StoreBackend } from '../store/types.ts';
import { type ImageRow, contentHash } from './store.ts';
import { fitsAsOwnThumbnail, makeThumbnail } from './thumbnails.ts';

/** Prefix of the `source` recorded for uploaded images (`upload:<name as given>`): they have no path of their own. */
export const UPLOAD_PREFIX = 'upload:';

/** Bytes to send and their content type. */
export interface ServedImage {
  bytes: Buffer;
  contentType: string;
}

/** Where an image came from, as a path a user can open: null for uploads. Archive members read `archive:member`. */
export const sourcePath = (source: string): string | null => (source.startsWith(UPLOAD_PREFIX) ? null : source);

/** Whether the store must keep the image's bytes: true unless it is a plain file on disk. */
export function needsCopy(source: string): boolean {
  return source.startsWith(UPLOAD_PREFIX) || !isPlainFile(source);
}

// Archive members are recorded as `/abs/archive.tar.gz:member/path`; plain files as absolute paths.
const isPlainFile = (source: string) => path.isAbsolute(source) && !/\.(tar\.gz|tgz|tar):/i.test(source);

/** The original bytes of image `id` and their content type. NotFoundError when the image or its bytes are gone. */
export async function getOriginal(store: StoreBackend, id: number): Promise<ServedImage> {
  const [row] = await store.rows([id]);
  if (!row) throw new NotFoundError(`no image with id ${id}`);
  return originalOf(store, row, 'the original');
}

/**
 * The thumbnail of image `id` and its content type: its stored WebP; else the image itself, when it fits as its own
 * thumbnail (thumbnails.ts); else a WebP made from its kept original (an SVG or a small TIFF kept by an older store,
 * which stored no thumbnail for them). NotFoundError when there is none.
 */
export async function getThumbnail(store: StoreBackend, id: number): Promise<ServedImage> {
  const stored = await store.thumbnail(id);
  if (stored) return { bytes: stored, contentType: 'image/webp' };
  const [row] = await store.rows([id]);
  if (!row) throw new NotFoundError(`no image with id ${id}`);
  if (fitsAsOwnThumbnail(row.width, row.height, row.format)) return originalOf(store, row, 'the thumbnail (the image itself)');
  const kept = await store.original(id);
  if (kept) return { bytes: await makeThumbnail(kept, DEFAULT_MAX_PIXELS), contentType: 'image/webp' };
  throw new NotFoundError(`image ${id} has no thumbnail`);
}

/** An image's bytes: kept by the store, or read back from its file if that still has the content indexed. */
async function originalOf(store: StoreBackend, row: ImageRow, what: string): Promise<ServedImage> {
  // A format no longer accepted (an SVG stored before it was refused) is served as bytes to download, never rendered.
  const contentType = acceptedFormat(row.format)?.contentType ?? 'application/octet-stream';
  const kept = await store.original(row.id);
  if (kept) return { bytes: kept, contentType };
  if (!needsCopy(row.source)) {
    const bytes = await readIfExists(row.source);
    if (bytes && contentHash(bytes) === row.contentHash) return { bytes, contentType };
    throw new NotFoundError(`${what} of image ${row.id} is gone: ${bytes ? 'the file has changed since it was indexed' : 'no such file'} (${row.source})`);
  }
  throw new NotFoundError(`${what} of image ${row.id} was not kept (${row.source})`);
}

async function readIfExists(file: string): Promise<Buffer | null> {
  try {
    return await fs.promises.readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return null;
    throw err;
  }
}
