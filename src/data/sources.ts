// Where images come from: a folder tree, a single file, a tar(.gz) archive, or a gzipped IDX file. Readers only
// produce bytes and labels; decoding is images.ts's job, so the caller can report each bad file by name.
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { IMAGE_EXTENSIONS } from './formats.ts';

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

/** Yields every image of a folder (recursive, sorted), a single file (whatever its extension) or an archive. */
export function iterateImageSource(source: string): AsyncGenerator<SourceItem> {
  return iterate(source, true) as AsyncGenerator<SourceItem>;
}

/** The same items as iterateImageSource without reading their bytes: a cheap listing (e.g. of a dataset's classes). */
export function listImageSource(source: string): AsyncGenerator<Omit<SourceItem, 'bytes'>> {
  return iterate(source, false);
}

type Listed = Omit<SourceItem, 'bytes'> & { bytes?: Buffer };

async function* iterate(source: string, withBytes: boolean): AsyncGenerator<Listed> {
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(source);
  } catch (err) {
    throw new Error(`cannot read image source "${source}": ${describeFsError(err)}`);
  }
  if (stat.isDirectory()) {
    yield* iterateFolder(source, source, withBytes);
  } else if (isArchiveName(source)) {
    yield* iterateArchive(source, withBytes);
  } else {
    // Given explicitly: yield it even if it is not an image, so that the caller reports it as bad.
    yield { path: source, bytes: withBytes ? await readFile(source) : undefined };
  }
}

async function* iterateFolder(root: string, dir: string, withBytes: boolean): AsyncGenerator<Listed> {
  let entries: fs.Dirent[];
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (err) {
    throw new Error(`cannot read folder "${dir}": ${describeFsError(err)}`);
  }
  entries.sort((a, b) => byCodePoint(a.name, b.name));
  for (const e of entries) {
    if (isHidden(e.name)) continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) {
      yield* iterateFolder(root, full, withBytes);
    } else if ((e.isFile() || e.isSymbolicLink()) && isImageName(e.name)) {
      // Symlinked directories are not followed (no cycles); symlinked files are read through.
      const label = dir === root ? undefined : path.basename(dir);
      yield { path: full, label, bytes: withBytes ? await readFile(full) : undefined };
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
    const cause = failure ?? (err as Error);
    throw new Error(`cannot read archive "${file}": ${describeFsError(cause)}`);
  } finally {
    input.destroy();
    extract.destroy();
  }
  if (failure) throw new Error(`cannot read archive "${file}": ${describeFsError(failure)}`);
}

async function readFile(file: string): Promise<Buffer> {
  try {
    return await fs.promises.readFile(file);
  } catch (err) {
    throw new Error(`cannot read "${file}": ${describeFsError(err)}`);
  }
}

function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return 'no such file or directory';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'Z_DATA_ERROR':
    case 'Z_BUF_ERROR':
      return `not a valid gzip file (${e.message})`;
    default:
      return e?.message ?? String(err);
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
    throw new Error(`${imagesGzPath}: bad magic 0x${hex(magic)}, expected 0x${hex(IDX_IMAGES_MAGIC)} (IDX images)`);
  }
  if (img.length < 16) throw new Error(`${imagesGzPath}: truncated IDX file (${img.length} bytes, the header alone is 16)`);
  const count = img.readUInt32BE(4);
  const rows = img.readUInt32BE(8);
  const cols = img.readUInt32BE(12);
  const expected = 16 + count * rows * cols;
  if (img.length < expected) {
    throw new Error(`${imagesGzPath}: truncated IDX file: header says ${count} images of ${rows}x${cols} (${expected} bytes), file has ${img.length}`);
  }
  const pixels = new Uint8Array(img.buffer, img.byteOffset + 16, count * rows * cols);
  if (!labelsGzPath) return { count, rows, cols, pixels };

  const lab = gunzipFile(labelsGzPath);
  const lmagic = lab.length >= 4 ? lab.readUInt32BE(0) : -1;
  if (lmagic !== IDX_LABELS_MAGIC) {
    throw new Error(`${labelsGzPath}: bad magic 0x${hex(lmagic)}, expected 0x${hex(IDX_LABELS_MAGIC)} (IDX labels)`);
  }
  if (lab.length < 8) throw new Error(`${labelsGzPath}: truncated IDX file (${lab.length} bytes, the header alone is 8)`);
  const lcount = lab.readUInt32BE(4);
  if (lab.length < 8 + lcount) throw new Error(`${labelsGzPath}: truncated IDX file: header says ${lcount} labels, file has ${lab.length - 8}`);
  if (lcount !== count) throw new Error(`${labelsGzPath} has ${lcount} labels but ${imagesGzPath} has ${count} images`);
  return { count, rows, cols, pixels, labels: new Uint8Array(lab.buffer, lab.byteOffset + 8, lcount) };
}

const hex = (n: number) => (n < 0 ? 'none' : n.toString(16).padStart(8, '0'));

function gunzipFile(file: string): Buffer {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read "${file}": ${describeFsError(err)}`);
  }
  try {
    return zlib.gunzipSync(raw);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'Z_BUF_ERROR') throw new Error(`${file}: truncated gzip file (${e.message})`);
    throw new Error(`${file}: not a valid gzip file (${e.message})`);
  }
}
