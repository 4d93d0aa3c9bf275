// npx tsx scripts/bench-hnsw-file.ts [--sizes 10000,60000] [--dim 128] [--runs 5]
// What checking the HNSW file costs: for an index of N random unit vectors (the default M and efConstruction), the
// median time to scan the file on open (CRC-32 and shape, src/index/hnsw-file.ts), to read it into hnswlib, and to
// save it (write, fsync, check, rename, sidecar), against the file's size.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { HNSW_DEFAULTS, HnswIndex } from '../src/index/hnsw.ts';
import { scanIndexFile } from '../src/index/hnsw-file.ts';
import hnswlib from 'hnswlib-node';

const { values: args } = parseArgs({ options: { sizes: { type: 'string', default: '10000,60000' }, dim: { type: 'string', default: '128' }, runs: { type: 'string', default: '5' } } });
const dim = Number(args.dim);
const runs = Number(args.runs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const timed = (f: () => void) => median(Array.from({ length: runs }, () => {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-hnsw-file-'));
try {
  for (const n of args.sizes.split(',').map(Number)) {
    const index = HnswIndex.create('bench', dim, { initialCapacity: n });
    let seed = 1;
    const rand = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) - 0.5;
    for (let i = 1; i <= n; i++) index.add(i, Float32Array.from({ length: dim }, rand));
    const file = path.join(dir, `hnsw-${n}.bin`);
    const saveMs = timed(() => index.save(file));
    const bytes = fs.statSync(file).size;
    const scanMs = timed(() => {
      if (scanIndexFile(file, { dim, M: HNSW_DEFAULTS.M }).problem) throw new Error('scan failed');
    });
    const readMs = timed(() => new hnswlib.HierarchicalNSW('ip', dim).readIndexSync(file, true));
    console.log(`${n} vectors (${(bytes / 1e6).toFixed(1)} MB): check on open ${scanMs.toFixed(1)} ms, hnswlib read ${readMs.toFixed(1)} ms, save with checks ${saveMs.toFixed(1)} ms`);
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
