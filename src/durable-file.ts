// Writes that survive a crash or a full disk: the new content is written to a temp file and flushed before it
// replaces the old file by a rename, and the directory entry is flushed too, so a crash leaves one or the other.
import fs from 'node:fs';
import path from 'node:path';

/** Flushes a written file to the disk (a rename over the previous file must not outrun its data). */
export function fsyncFile(file: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Renames `from` over `to` and flushes the directory entry, so that a crash keeps one or the other. */
export function durableRename(from: string, to: string): void {
  fs.renameSync(from, to);
  const dir = fs.openSync(path.dirname(to), 'r');
  try {
    fs.fsyncSync(dir);
  } finally {
    fs.closeSync(dir);
  }
}

/** Writes `file` whole or not at all: temp file, fsync, rename, fsync of the directory; the temp file goes on failure. */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, data); // loops until every byte is written
    fsyncFile(tmp);
    durableRename(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}
