// npx tsx scripts/bench-upload-memory.ts [--parallel 8] [--files 32,12] [--mb 19] [--upload-memory-mb 256]
// Upload memory under load: for each --files count, a fresh `matvit serve` (shipped model, empty store, no gallery)
// gets --parallel simultaneous POST /api/images requests of that many real JPEGs of about --mb MB each; prints
// every answer's status and the server's peak resident memory (VmHWM of its process) against the 1 GB target.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';

const { values: args } = parseArgs({ options: { parallel: { type: 'string', default: '8' }, files: { type: 'string', default: '32,12' }, mb: { type: 'string', default: '19' }, 'upload-memory-mb': { type: 'string' } } });
const root = path.resolve(import.meta.dirname, '..');

/** A noise JPEG of about `mb` MB (noise does not compress, so its size follows its pixel count). */
async function bigJpeg(mb: number): Promise<Buffer> {
  let side = 2000;
  for (;;) {
    const jpg = await sharp(crypto.randomBytes(side * side * 3), { raw: { width: side, height: side, channels: 3 } }).jpeg({ quality: 100 }).toBuffer();
    if (Math.abs(jpg.length / 1e6 - mb) < 0.6 || side > 6000) return jpg;
    side = Math.round(side * Math.sqrt(mb / (jpg.length / 1e6)));
  }
}

async function serve(store: string): Promise<{ url: string; pid: number; stop: () => Promise<void> }> {
  const extra = args['upload-memory-mb'] ? ['--upload-memory-mb', args['upload-memory-mb']] : [];
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli.ts'), 'serve', '--store', store, '--no-gallery', '--port', '0', ...extra], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      const m = /serving \d+ images at (\S+)/.exec(err);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`the server exited (${code}): ${err}`)));
  });
  return { url, pid: child.pid!, stop: () => new Promise((r) => (child.once('exit', () => r()), child.kill('SIGTERM'))) };
}

const peakRss = (pid: number) => Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;

const jpg = await bigJpeg(Number(args.mb));
const blob = new Blob([new Uint8Array(jpg)]); // one copy on the client side, sent many times
console.log(`file: ${(jpg.length / 1e6).toFixed(1)} MB JPEG; ${args.parallel} parallel requests`);
for (const files of args.files.split(',').map(Number)) {
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-upload-'));
  const server = await serve(store);
  try {
    const before = peakRss(server.pid);
    const t0 = performance.now();
    const answers = await Promise.all(
      Array.from({ length: Number(args.parallel) }, async (_, i) => {
        const form = new FormData();
        for (let j = 0; j < files; j++) form.append('images', blob, `r${i}-${j}.jpg`);
        try {
          const res = await fetch(`${server.url}api/images`, { method: 'POST', body: form });
          await res.arrayBuffer();
          return String(res.status);
        } catch (err) {
          return `no answer (${(err as Error).cause ?? (err as Error).message})`;
        }
      }),
    );
    const counts = answers.reduce<Record<string, number>>((m, a) => ((m[a] = (m[a] ?? 0) + 1), m), {});
    console.log(`${files} files/request (${((files * jpg.length) / 1e6).toFixed(0)} MB): answers ${JSON.stringify(counts)}; server peak RSS ${(before / 1e9).toFixed(2)} GB at start -> ${(peakRss(server.pid) / 1e9).toFixed(2)} GB; ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await server.stop();
    fs.rmSync(store, { recursive: true, force: true });
  }
}
