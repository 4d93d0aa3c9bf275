// Load test of POST /api/search with real image uploads, in one run: closed loop (16 connections) with S, XL and
// auto for 32x32 CIFAR-10 JPEGs and for a 1 MP photo (requests/s, latency p50/p99, errors, mean batch, and CPU ms
// per request: the server's main thread, its encoder workers, its other threads, from /proc, and the share outside
// the encoder workers); then open loop (a
// fixed arrival rate) at 1.5x and 2x XL's measured capacity, for fixed XL and for auto, with p99, errors and the
// encoder mix over time drawn as reports/bench-server-open-loop.svg.
//
//   npx tsx scripts/bench-server.ts                      # starts `matvit serve` on ./data, 16 connections, 10 s each
//   npx tsx scripts/bench-server.ts --quick              # 3 s each
//   npx tsx scripts/bench-server.ts --url http://127.0.0.1:3000   # against a server already running (no CPU figures)
//   options: --store DIR  --model CKPT  --connections N  --duration S  --specs S,XL,auto (or 'S;S,S,M,M,L,XL;XL')  --k N
//            --skip-photo  --skip-open-loop  --json FILE  --profile DIR (the server runs with --cpu-prof into DIR)
//            --warmup S (seconds of load over every spec before measuring; default 6)  --repeat N (closed-loop rounds)
//
// The server and the load client (scripts/http-load.ts) run in processes of their own; on a 2-core machine they
// compete for the CPU, so the figures are a floor, and the client's own CPU per request is reported beside the
// server's. Conditions (cores, load) are printed with them.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { iterateImageSource } from '../src/data/sources.ts';
import type { LoadJob, LoadResult } from './http-load.ts';
import { median } from '../src/eval/metrics.ts';
import { renderSvg } from '../src/eval/plot.ts';
import { DEMO_GALLERY } from '../src/server/server.ts';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    store: { type: 'string', default: process.env.MATVIT_STORE || './data' },
    model: { type: 'string' }, // the server's model (default: the shipped one); a store indexed with another model is refused
    connections: { type: 'string', default: '16' },
    duration: { type: 'string' },
    quick: { type: 'boolean', default: false },
    specs: { type: 'string', default: 'S,XL,auto' },
    'skip-photo': { type: 'boolean', default: false },
    'skip-open-loop': { type: 'boolean', default: false },
    k: { type: 'string', default: '10' },
    images: { type: 'string', default: '64' },
    json: { type: 'string' },
    profile: { type: 'string' },
    'encode-workers': { type: 'string' },
    warmup: { type: 'string', default: '6' },
    repeat: { type: 'string', default: '1' },
  },
});
const connections = Number(args.connections);
const duration = Number(args.duration ?? (args.quick ? 3 : 10));
// "S,XL" -> [S, XL]; Mix'n'Match lists are separated by ';': "S;S,S,M,M,L,XL;XL".
const specs = args.specs!.split(args.specs!.includes(';') ? ';' : ',').map((s) => s.trim()).filter(Boolean);
const projectRoot = path.resolve(import.meta.dirname, '..');

interface RunResult {
  ffn: string;
  image: string; // what was uploaded
  requestsPerSec: number;
  p50: number;
  p99: number;
  p99BySecond: number[]; // of the requests sent (open loop: arrived) in each second
  errors: number;
  non2xx: number;
  timeouts: number;
  requests: number;
  batches: { count: number; meanSize: number };
  serverEventLoopUtilization: number;
  cpuMsPerRequest: { main: number; encoder: number; other: number; outsideEncoder: number } | null; // null: no /proc
  clientCpuMsPerRequest: number;
  unsent: number; // open loop: arrivals the server never took before the end (counted as errors)
  mix: Record<string, number>; // searches by the encoder that answered
}

type Stats = { images: number; modelId: string; server: { batches: { count: number; meanSize: number }; searches: number; eventLoopUtilization: number; encoderThreadIds: number[]; encoderMix: Record<string, number> } };
const getStats = async (url: string) => (await (await fetch(`${url}/api/stats`)).json()) as Stats;

/** The query images: CIFAR-10 test JPEGs (the first of each class in turn), or one 1 MP photo. */
async function queryImages(kind: 'cifar' | 'photo', n: number): Promise<Buffer[]> {
  const byClass = new Map<string, Buffer[]>();
  for await (const item of iterateImageSource(DEMO_GALLERY)) {
    const list = byClass.get(item.label!) ?? [];
    if (list.length < Math.ceil(n / 10)) list.push(item.bytes);
    byClass.set(item.label!, list);
  }
  const images = [...byClass.values()].flat().slice(0, n);
  if (kind === 'cifar') return images;
  // A 1280x800 photo-like JPEG: a CIFAR image enlarged with noise on top (so it does not compress to nothing).
  const noise = Buffer.from(Uint8Array.from({ length: 1280 * 800 * 3 }, (_, i) => ((i * 2654435761) >>> 24) & 31));
  const base = await sharp(images[0]).resize(1280, 800, { fit: 'fill' }).raw().toBuffer();
  for (let i = 0; i < base.length; i++) base[i] = Math.min(255, base[i] + noise[i]);
  return [await sharp(base, { raw: { width: 1280, height: 800, channels: 3 } }).jpeg({ quality: 88 }).toBuffer()];
}

/** The request bodies, one multipart form per image, written to files for the load client. */
function multipartFiles(images: Buffer[], ffn: string): { contentType: string; bodyFiles: string[] } {
  const boundary = '----matvitbench7d1a';
  const field = (name: string, value: string) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-server-'));
  const bodyFiles = images.map((bytes, i) => {
    const file = path.join(dir, `body-${i}`);
    fs.writeFileSync(file, Buffer.concat([
      Buffer.from(field('ffn', ffn) + field('k', args.k!) + `--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="q${i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`),
      bytes,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]));
    return file;
  });
  return { contentType: `multipart/form-data; boundary=${boundary}`, bodyFiles };
}

/** Runs scripts/http-load.ts in its own process (so that it has an event loop and a CPU account of its own). */
async function load(job: LoadJob): Promise<LoadResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(projectRoot, 'scripts/http-load.ts')], { cwd: projectRoot, stdio: ['pipe', 'pipe', 'inherit'] });
  child.stdin!.end(JSON.stringify(job));
  let out = '';
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`the load client exited with code ${code}`);
  return JSON.parse(out) as LoadResult;
}

async function startServer(): Promise<{ url: string; child: ChildProcess }> {
  const profile = args.profile ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(args.profile)] : [];
  const child = spawn(process.execPath, [...profile, '--import', 'tsx', path.join(projectRoot, 'src/cli.ts'), 'serve', '--store', args.store!, '--port', '0', '--host', '127.0.0.1', ...(args.model ? ['--model', args.model] : []), ...(args['encode-workers'] ? ['--encode-workers', args['encode-workers']] : [])], {
    cwd: projectRoot,
    env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      process.stderr.write(chunk);
      text += chunk.toString();
      const m = /serving \d+ images at http:\/\/[^:]+:(\d+)\//.exec(text);
      if (m) resolve(`http://127.0.0.1:${m[1]}`);
    });
    child.once('exit', (code) => reject(new Error(`the server exited with code ${code} before serving`)));
  });
  child.stderr!.resume();
  return { url, child };
}

/** CPU ms of each thread of a process so far (Linux /proc): the main thread's id is the process id. */
function threadCpuMs(pid: number): Map<number, number> | null {
  try {
    const tick = 1000 / 100; // USER_HZ is 100 on Linux
    const out = new Map<number, number>();
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from the 3rd on
      out.set(Number(tid), (Number(f[11]) + Number(f[12])) * tick); // utime, stime
    }
    return out;
  } catch {
    return null;
  }
}

function cpuPerRequest(pid: number | undefined, before: Map<number, number> | null, after: Map<number, number> | null, encoderTids: number[], requests: number): RunResult['cpuMsPerRequest'] {
  if (!pid || !before || !after || requests === 0) return null;
  let main = 0;
  let encoder = 0;
  let all = 0;
  for (const [tid, ms] of after) {
    const d = ms - (before.get(tid) ?? 0);
    all += d;
    if (tid === pid) main += d;
    else if (encoderTids.includes(tid)) encoder += d;
  }
  const per = (x: number) => Number((x / requests).toFixed(3));
  return { main: per(main), encoder: per(encoder), other: per(Math.max(0, all - main - encoder)), outsideEncoder: per(all - encoder) };
}

const mixDelta = (a: Record<string, number>, b: Record<string, number>): Record<string, number> =>
  Object.fromEntries(Object.entries(b).map(([k, v]): [string, number] => [k, v - (a[k] ?? 0)]).filter(([, v]) => v > 0));

async function run(url: string, pid: number | undefined, ffn: string, images: Buffer[], image: string, seconds: number, overallRate?: number, onSample?: (t: number, stats: Stats) => void): Promise<RunResult> {
  const { contentType, bodyFiles } = multipartFiles(images, ffn);
  // Check one request by hand: a bench of error responses would be meaningless.
  const probe = await fetch(`${url}/api/search`, { method: 'POST', headers: { 'content-type': contentType }, body: new Uint8Array(fs.readFileSync(bodyFiles[0])) });
  const probeBody = (await probe.json()) as { cost?: { ffn: string }; encoder?: { chosenBy: string }; error?: { message: string } };
  if (probe.status !== 200 || (ffn !== 'auto' && probeBody.cost?.ffn !== ffn)) throw new Error(`probe search with ${ffn} failed: ${probe.status} ${JSON.stringify(probeBody)}`);

  const before = await getStats(url);
  const cpu0 = pid ? threadCpuMs(pid) : null;
  const t0 = Date.now();
  const sampler = onSample ? setInterval(() => void getStats(url).then((s) => onSample((Date.now() - t0) / 1000, s)), 500) : null;
  const result = await load({
    url,
    path: '/api/search',
    contentType,
    bodyFiles,
    connections: overallRate ? Math.max(connections, 64) : connections,
    seconds,
    ...(overallRate ? { rate: overallRate, timeoutMs: 10_000 } : {}),
  });
  fs.rmSync(path.dirname(bodyFiles[0]), { recursive: true, force: true });
  if (sampler) clearInterval(sampler);
  const cpu1 = pid ? threadCpuMs(pid) : null;
  const after = await getStats(url); // its utilisation covers the time since `before`: the run
  const batches = after.server.batches.count - before.server.batches.count;
  const searches = after.server.searches - before.server.searches;
  return {
    ffn,
    image,
    requestsPerSec: result.requestsPerSec,
    p50: result.p50,
    p99: result.p99,
    p99BySecond: result.p99BySecond,
    errors: result.errors + result.unsent,
    non2xx: result.non2xx,
    timeouts: result.timeouts,
    unsent: result.unsent,
    requests: result.requests,
    clientCpuMsPerRequest: result.requests ? Number((result.cpuMs / result.requests).toFixed(3)) : 0,
    batches: { count: batches, meanSize: batches ? searches / batches : 0 },
    serverEventLoopUtilization: after.server.eventLoopUtilization,
    cpuMsPerRequest: cpuPerRequest(pid, cpu0, cpu1, after.server.encoderThreadIds, searches),
    mix: mixDelta(before.server.encoderMix, after.server.encoderMix),
  };
}

/** The encoder mix over time of the open-loop runs: the share of each encoder among searches per half second. */
async function openLoopSvg(series: { run: string; t: number; encoder: string; share: number }[], file: string): Promise<void> {
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Open loop: which encoder answered, over time', subtitle: 'share of searches in each half second; auto steps down the calibrated ladder under load' },
    background: 'white',
    data: { values: series },
    facet: { row: { field: 'run', type: 'nominal', title: null, header: { labelAngle: 0, labelAlign: 'left', labelAnchor: 'start', labelOrient: 'top', labelFontSize: 11 } } },
    spec: {
      width: 560,
      height: 90,
      mark: { type: 'bar', width: 8 }, // one bar per stats sample
      encoding: {
        x: { field: 't', type: 'quantitative', title: 'seconds into the run' },
        y: { field: 'share', type: 'quantitative', stack: 'normalize', title: 'share of searches' },
        color: { field: 'encoder', type: 'nominal', title: 'encoder' },
      },
    },
  };
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, await renderSvg(spec as Parameters<typeof renderSvg>[0]));
}

const table = (rows: RunResult[]) => [
  '| upload | ffn | requests/s | p50 ms | p99 ms | errors | mean batch | event loop | CPU ms/req main | encoder | other threads | outside encoder | client | answered by |',
  '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ...rows.map((r) => {
    const c = r.cpuMsPerRequest;
    const mix = Object.entries(r.mix).map(([k, v]) => `${k} ${v}`).join(', ');
    return `| ${r.image} | ${r.ffn} | ${r.requestsPerSec.toFixed(0)} | ${r.p50} | ${r.p99} | ${r.errors + r.non2xx + r.timeouts} | ${r.batches.meanSize.toFixed(1)} | ${(100 * r.serverEventLoopUtilization).toFixed(0)}% | ${c?.main ?? '-'} | ${c?.encoder ?? '-'} | ${c?.other ?? '-'} | ${c?.outsideEncoder ?? '-'} | ${r.clientCpuMsPerRequest} | ${mix} |`;
  }),
];

async function main(): Promise<void> {
  const load = os.loadavg();
  let server: { url: string; child: ChildProcess } | null = null;
  if (!args.url) server = await startServer();
  const url = args.url ?? server!.url;
  const pid = server?.child.pid;
  try {
    const stats = await getStats(url);
    process.stderr.write(`bench-server: ${url}, ${stats.images} images, model ${stats.modelId}; ${connections} connections, ${duration} s per run\n`);
    const cifar = await queryImages('cifar', Number(args.images));
    // Warm-up, every spec in turn: a server's first seconds under load run slower (V8 still compiling the request
    // path, its heap growing), and the spec measured first paid for it (S 831-865 requests/s measured first, 901-1025
    // after XL, 2026-12-04).
    const warmup = Number(args.warmup);
    for (const ffn of specs) await run(url, pid, ffn, cifar, '32x32 JPEG', Math.max(1, warmup / specs.length));
    const closed: RunResult[] = [];
    for (let i = 0; i < Number(args.repeat); i++) for (const ffn of specs) closed.push(await run(url, pid, ffn, cifar, '32x32 JPEG', duration));
    if (!args['skip-photo']) {
      const photo = await queryImages('photo', 1);
      for (const ffn of specs) closed.push(await run(url, pid, ffn, photo, `1280x800 JPEG (${(photo[0].length / 1024).toFixed(0)} KiB)`, duration));
    }
    const conditions = { cores: os.availableParallelism(), cpu: os.cpus()[0]?.model, loadAverage1mAtStart: +load[0].toFixed(2), node: process.version, connections, durationSec: duration, images: stats.images };
    console.log('\nClosed loop:\n');
    console.log(table(closed).join('\n'));
    const rate = (ffn: string) => median(closed.filter((r) => r.ffn === ffn && r.image === '32x32 JPEG').map((r) => r.requestsPerSec));
    const [s, xl] = [rate('S'), rate('XL')];
    if (s && xl) console.log(`\nthroughput ratio S/XL (32x32${Number(args.repeat) > 1 ? ', medians of the repeats' : ''}): ${(s / xl).toFixed(2)}`);

    const open: (RunResult & { rate: number })[] = [];
    if (!args['skip-open-loop'] && xl) {
      const series: { run: string; t: number; encoder: string; share: number }[] = [];
      for (const factor of [1.5, 2]) {
        for (const ffn of ['XL', 'auto']) {
          const name = `${ffn} at ${factor}x XL's capacity (${Math.round(factor * xl)}/s)`;
          let last: Record<string, number> | null = null;
          const samples: { t: number; mix: Record<string, number> }[] = [];
          const r = await run(url, pid, ffn, cifar, '32x32 JPEG', duration, Math.round(factor * xl), (t, st) => {
            if (last) samples.push({ t, mix: mixDelta(last, st.server.encoderMix) });
            last = st.server.encoderMix;
          });
          // Every encoder of the run in every sample (0 when it answered none), so the bars stack to 100%.
          const seen = [...new Set(samples.flatMap((x) => Object.keys(x.mix)))];
          for (const { t, mix } of samples) {
            const total = Object.values(mix).reduce((a, b) => a + b, 0);
            if (total > 0) for (const encoder of seen) series.push({ run: name, t, encoder, share: (mix[encoder] ?? 0) / total });
          }
          open.push({ ...r, rate: Math.round(factor * xl) });
        }
      }
      console.log('\nOpen loop (a fixed arrival rate, up to 64 connections; latency counts from its arrival, waiting for a free connection included):\n');
      console.log(['| arrival rate /s | ffn | answered /s | p99 ms | errors | answered by |', '| ---: | --- | ---: | ---: | ---: | --- |',
        ...open.map((r) => `| ${r.rate} | ${r.ffn} | ${r.requestsPerSec.toFixed(0)} | ${r.p99} | ${r.errors + r.non2xx + r.timeouts} | ${Object.entries(r.mix).map(([k, v]) => `${k} ${v}`).join(', ')} |`)].join('\n'));
      const svg = path.join(projectRoot, 'reports/bench-server-open-loop.svg');
      await openLoopSvg(series, svg);
      for (const r of open) console.log(`p99 ms by second of arrival, ${r.ffn} at ${r.rate}/s: ${r.p99BySecond.join(' ')}`);
      console.log(`\nencoder mix over time: ${path.relative(projectRoot, svg)}`);
    }
    console.log(`conditions: ${JSON.stringify(conditions)}`);
    if (args.json) fs.writeFileSync(args.json, JSON.stringify({ conditions, closed, open }, null, 2) + '\n');
    if (closed.some((r) => r.errors + r.non2xx + r.timeouts > 0)) process.exitCode = 1;
  } finally {
    if (server) {
      const child = server.child;
      const exited = new Promise<[number | null, string | null]>((r) => child.once('exit', (code, signal) => r([code, signal])));
      child.kill('SIGTERM'); // graceful stop: the server saves its index and exits 0
      const [code, signal] = await exited;
      if (code !== 0) {
        process.stderr.write(`bench-server: the server exited with code ${code}${signal ? ` (signal ${signal})` : ''} after SIGTERM\n`);
        process.exitCode = 1;
      }
    }
  }
}

await main();
