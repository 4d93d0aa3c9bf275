// Child process of tests/index.test.ts, run under `ulimit -f` so that writing the HNSW file fails for real (the
// kernel cuts the write short with EFBIG, as a full disk would with ENOSPC). It opens the store as the writer,
// changes the in-memory index (no SQLite write, which the limit would also stop) and closes it, which saves.
// Prints one JSON line: what closing threw, and whether the writer lock was released.
import fs from 'node:fs';
import path from 'node:path';
import { openIndex } from '../../src/index/service.ts';

const [dir, modelId, dim, id] = process.argv.slice(2);
const ix = openIndex(dir, modelId, Number(dim), { writer: true });
ix.hnsw.remove(Number(id));
ix.unsaved++;
let error: { name: string; message: string } | null = null;
try {
  ix.close();
} catch (err) {
  error = { name: (err as Error).name, message: (err as Error).message };
}
const lockReleased = !fs.existsSync(path.join(dir, 'store.lock'));
process.stdout.write(`${JSON.stringify({ error, lockReleased })}\n`);
