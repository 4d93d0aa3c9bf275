// Where images come from: a folder tree, a single file, a tar(.gz) archive, or a gzipped IDX file. Readers only
// produce bytes and labels; decoding is images.ts's job, so the caller can report each bad file by name.
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { DatasetError } from '../errors.ts';
import { IMAGE_EXTENSIONS } from './formats.ts';
import { ImageDecodeError, MAX_IMAGE_BYTES } from './images.ts';

export interface SourceItem {
  path: string; // file path, or `archive.tar.gz:member/path` for archive members
  label?: string; // name of the parent folder (class), when there is one
  bytes: Buffer;
}

export const isImageName = (name: string) => IMAGE_EXTENSIONS.has(path.extname(name).toLowerCase());
export const isArchiveName = (name: string) => /\.(tar\.gz|tgz|tar)$/i.test(name);
// Hidden files (.DS_Store, macOS "._x.jpg" resource forks) and __MACOSX folders are never images.
const isHidden = (name: string) => name.startsWith('.') || name === '__MACOSX';
const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** A folder or archive that cannot be read (further); `reason` says why without repeating the path. */
export class SourceReadError extends Error {
  override name = 'SourceReadError';
  constructor(readonly path: string, readonly reason: string, what: 'folder' | 'archive' | 'image source') {
    super(`cannot read ${what} "${path}": ${reason}`);
  }
}

export interface WalkOptions {
  /**
   * Called for a sub-folder that cannot be read (permission denied, removed meanwhile...): the walk goes on with
   * its siblings. Without it, such a folder ends the walk with an error (a training set must be whole).
   */
  onUnreadableFolder?: (dir: string, reason: string) => void;
}

/** Yields every image of a folder (recursive, sorted), a single file (whatever its extension) or an archive. */
export function iterateImageSource(source: string, opts: WalkOptions = {}): AsyncGenerator<SourceItem> {
  return iterate(source, true, opts) as AsyncGenerator<SourceItem>;
}

/** The same items as iterateImageSource without reading their bytes: a cheap listing (e.g. of a dataset's classes). */
export function listImageSource(source: string, opts: WalkOptions = {}): AsyncGenerator<Omit<SourceItem, 'bytes'>> {
  return iterate(source, false, opts);
}

type Listed = Omit<SourceItem, 'bytes'> & { bytes?: Buffer };

async function* iterate(source: string, withBytes: boolean, opts: WalkOptions): AsyncGenerator<Listed> {
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(source);
  } catch (err) {
    throw new SourceReadError(source, describeFsError(err), 'image source');
  }
  if (stat.isDirectory()) {
    yield* iterateFolder(source, source, withBytes, opts);
  } else if (isArchiveName(source)) {
    // Opening a FIFO would wait for a writer, and a device can stream for ever.
    if (!stat.isFile()) throw new SourceReadError(source, notRegular(stat), 'archive');
    yield* iterateArchive(source, withBytes);
  } else {
    // Given explicitly: yield it even if it is not an image, so that the caller reports it as bad.
    yield { path: source, bytes: withBytes ? await readItem(source) : undefined };
  }
}

async function* iterateFolder(root: string, dir: string, withBytes: boolean, opts: WalkOptions): AsyncGenerator<Listed> {
  let entries: fs.Dirent[];
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (dir === root || !opts.onUnreadableFolder) throw new SourceReadError(dir, describeFsError(err), 'folder');
    opts.onUnreadableFolder(dir, describeFsError(err));
    return;
  }
  entries.sort((a, b) => byCodePoint(a.name, b.name));
  for (const e of entries) {
    if (isHidden(e.name)) continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) {
      yield* iterateFolder(root, full, withBytes, opts);
    } else if (isImageName(e.name)) {
      // Symlinked directories are not followed (no cycles); symlinked files are read through. A FIFO or device
      // named like an image is yielded too, so that reading it fails by name (readImageFile) instead of silently.
      const label = dir === root ? undefined : path.basename(dir);
      yield { path: full, label, bytes: withBytes ? await readItem(full) : undefined };
    }
  }
}

async function* iterateArchive(file: string, withBytes: boolean): AsyncGenerator<Listed> {
  const extract = tar.extract();
  const input = fs.createReadStream(file);
  const stages: NodeJS.ReadableStream[] = /\.tar$/i.test(file) ? [input] : [input, zlib.createGunzip()];
  let failure: Error | undefined;
  // pipeline destroys every stage on error, which makes the extract iterator below reject.
  (pipeline as (...s: unknown[]) => void)(...stages, extract, (err: Error | null) => {
    if (err) failure = err;
  });
  try {
    for await (const entry of extract) {
      const name = entry.header.name.replace(/^(\.\/)+/, '');
      const type = entry.header.type ?? 'file';
      const base = path.posix.basename(name);
      const wanted = (type === 'file' || type === 'contiguous-file') && isImageName(base) && !name.split('/').some(isHidden);
      let bytes: Buffer | undefined;
      if (wanted && withBytes) {
        const chunks: Buffer[] = [];
        for await (const chunk of entry) chunks.push(chunk as Buffer);
        bytes = Buffer.concat(chunks);
      } else {
        entry.resume(); // skip its data
      }
      if (!wanted) continue;
      const parent = path.posix.dirname(name);
      yield { path: `${file}:${name}`, label: parent === '.' ? undefined : path.posix.basename(parent), bytes };
    }
  } catch (err) {
    throw new SourceReadError(file, describeFsError(failure ?? err), 'archive');
  } finally {
    input.destroy();
    extract.destroy();
  }
  if (failure) throw new SourceReadError(file, describeFsError(failure), 'archive');
}

/**
 * Reads an image file: a regular file (a symlink is followed) of at most maxBytes. Anything else fails with an
 * ImageDecodeError naming the reason (unreadable: a FIFO, a device, a folder; too-large), without waiting or
 * reading more than maxBytes + 1 bytes: a *.jpg link to /dev/zero or a FIFO would otherwise read or wait for ever.
 */
export async function readImageFile(file: string, maxBytes = MAX_IMAGE_BYTES): Promise<Buffer> {
  let handle: fs.promises.FileHandle;
  try {
    // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer (no effect on a regular file).
    handle = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    throw new ImageDecodeError('unreadable', describeFsError(err));
  }
  try {
    const stat = await handle.stat(); // of what was opened: no race with a file swapped after a check by name
    if (!stat.isFile()) throw new ImageDecodeError('unreadable', notRegular(stat));
    const tooLarge = (size: string) => new ImageDecodeError('too-large', `the file has ${size} bytes, over the limit of ${maxBytes}`);
    if (stat.size > maxBytes) throw tooLarge(String(stat.size));
    // Read to the end, but never past maxBytes + 1: the file may have grown since fstat.
    const chunks: Buffer[] = [];
    let total = 0;
    let want = stat.size + 1; // the whole file and one byte to see its end in one read
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(want, maxBytes + 1 - total));
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > maxBytes) throw tooLarge(`more than ${maxBytes}`);
      want = 64 * 1024;
    }
    return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, total);
  } catch (err) {
    if (err instanceof ImageDecodeError) throw err;
    throw new ImageDecodeError('unreadable', describeFsError(err));
  } finally {
    await handle.close();
  }
}

/** readImageFile for a walk's item: its error names the file, since it ends the walk (a training set must be whole). */
async function readItem(file: string): Promise<Buffer> {
  try {
    return await readImageFile(file);
  } catch (err) {
    throw new DatasetError(`cannot read "${file}": ${(err as Error).message}`);
  }
}

function notRegular(stat: fs.Stats): string {
  const kind = stat.isDirectory()
    ? 'a folder'
    : stat.isFIFO()
      ? 'a FIFO'
      : stat.isCharacterDevice()
        ? 'a character device'
        : stat.isBlockDevice()
          ? 'a block device'
          : stat.isSocket()
            ? 'a socket'
            : 'not a file';
  return `not a regular file: ${kind}`;
}

export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return 'no such file or directory';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a folder';
    case 'ENOTDIR':
      return 'not a folder';
    case 'ELOOP':
      return 'too many levels of symbolic links';
    case 'Z_DATA_ERROR':
    case 'Z_BUF_ERROR':
      return `not a valid gzip file (${e.message})`;
    default:
      return (e?.message ?? String(err)).split('\n')[0];
  }
}

export interface IdxData {
  count: number;
  rows: number;
  cols: number;
  pixels: Uint8Array; // count*rows*cols, row-major, 0 = background
  labels?: Uint8Array;
}

const IDX_IMAGES_MAGIC = 0x803;
const IDX_LABELS_MAGIC = 0x801;

/** Reads gzipped IDX images (and optionally labels), as in MNIST and Fashion-MNIST. */
export function readIdx(imagesGzPath: string, labelsGzPath?: string): IdxData {
  const img = gunzipFile(imagesGzPath);
  const magic = img.length >= 4 ? img.readUInt32BE(0) : -1;
  if (magic !== IDX_IMAGES_MAGIC) {
    throw new DatasetError(`${imagesGzPath}: bad magic 0x${hex(magic)}, expected 0x${hex(IDX_IMAGES_MAGIC)} (IDX images)`);
  }
  if (img.length < 16) throw new DatasetError(`${imagesGzPath}: truncated IDX file (${img.length} bytes, the header alone is 16)`);
  const count = img.readUInt32BE(4);
  const rows = img.readUInt32BE(8);
  const cols = img.readUInt32BE(12);
  const expected = 16 + count * rows * cols;
  if (img.length < expected) {
    throw new DatasetError(`${imagesGzPath}: truncated IDX file: header says ${count} images of ${rows}x${cols} (${expected} bytes), file has ${img.length}`);
  }
  const pixels = new Uint8Array(img.buffer, img.byteOffset + 16, count * rows * cols);
  if (!labelsGzPath) return { count, rows, cols, pixels };

  const lab = gunzipFile(labelsGzPath);
  const lmagic = lab.length >= 4 ? lab.readUInt32BE(0) : -1;
  if (lmagic !== IDX_LABELS_MAGIC) {
    throw new DatasetError(`${labelsGzPath}: bad magic 0x${hex(lmagic)}, expected 0x${hex(IDX_LABELS_MAGIC)} (IDX labels)`);
  }
  if (lab.length < 8) throw new DatasetError(`${labelsGzPath}: truncated IDX file (${lab.length} bytes, the header alone is 8)`);
  const lcount = lab.readUInt32BE(4);
  if (lab.length < 8 + lcount) throw new DatasetError(`${labelsGzPath}: truncated IDX file: header says ${lcount} labels, file has ${lab.length - 8}`);
  if (lcount !== count) throw new DatasetError(`${labelsGzPath} has ${lcount} labels but ${imagesGzPath} has ${count} images`);
  return { count, rows, cols, pixels, labels: new Uint8Array(lab.buffer, lab.byteOffset + 8, lcount) };
}

const hex = (n: number) => (n < 0 ? 'none' : n.toString(16).padStart(8, '0'));

function gunzipFile(file: string): Buffer {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (err) {
    throw new DatasetError(`cannot read "${file}": ${describeFsError(err)}`);
  }
  try {
    return zlib.gunzipSync(raw);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'Z_BUF_ERROR') throw new DatasetError(`${file}: truncated gzip file (${e.message})`);
    throw new DatasetError(`${file}: not a valid gzip file (${e.message})`);
  }
}
