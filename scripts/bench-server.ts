// Load test of POST /api/search with real image uploads (CIFAR-10 test JPEGs), once with the S query encoder and
// once with XL in the same run: requests/s, latency p50/p99, errors, and the S/XL throughput ratio.
//
//   npx tsx scripts/bench-server.ts                      # starts `matvit serve` on ./data, 16 connections, 10 s each
//   npx tsx scripts/bench-server.ts --quick              # 3 s each
//   npx tsx scripts/bench-server.ts --url http://127.0.0.1:3000   # against a server already running
//   options: --store DIR  --connections N  --duration S  --specs S,XL (or 'S;S,S,M,M,L,XL;XL')  --k N  --json FILE
//
// The server runs in its own process (autocannon's client would otherwise share its event loop); on a 2-core
// machine the two compete for the CPU, so the figures are a floor. Conditions (cores, load) are printed with them.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { iterateImageSource } from '../src/data/sources.ts';
import { DEMO_GALLERY } from '../src/server/server.ts';

// autocannon ships no types (and @types/autocannon is not installed): the part used here.
interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number };
  errors: number;
  non2xx: number;
  timeouts: number;
}
type Autocannon = (opts: {
  url: string;
  connections: number;
  duration: number;
  requests: { method: string; setupRequest: (req: Record<string, unknown>) => Record<string, unknown> }[];
}) => Promise<AutocannonResult>;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    store: { type: 'string', default: process.env.MATVIT_STORE || './data' },
    connections: { type: 'string', default: '16' },
    duration: { type: 'string' },
    quick: { type: 'boolean', default: false },
    specs: { type: 'string', default: 'S,XL' },
    k: { type: 'string', default: '10' },
    images: { type: 'string', default: '64' },
    json: { type: 'string' },
  },
});
const connections = Number(args.connections);
const duration = Number(args.duration ?? (args.quick ? 3 : 10));
// "S,XL" -> [S, XL]; Mix'n'Match lists are separated by ';': "S;S,S,M,M,L,XL;XL".
const specs = args.specs!.split(args.specs!.includes(';') ? ';' : ',').map((s) => s.trim()).filter(Boolean);
const projectRoot = path.resolve(import.meta.dirname, '..');

interface RunResult {
  ffn: string;
  requestsPerSec: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  timeouts: number;
  requests: number;
  batches: { count: number; meanSize: number };
  serverEventLoopUtilization: number;
}

/** Real uploads: the first image of each class in turn, as multipart bodies with the encoder and k fields. */
async function queryBodies(n: number, ffn: string): Promise<{ contentType: string; bodies: Buffer[] }> {
  const byClass = new Map<string, Buffer[]>();
  for await (const item of iterateImageSource(DEMO_GALLERY)) {
    const list = byClass.get(item.label!) ?? [];
    if (list.length < Math.ceil(n / 10)) list.push(item.bytes);
    byClass.set(item.label!, list);
  }
  const images = [...byClass.values()].flat().slice(0, n);
  const boundary = '----matvitbench7d1a';
  const field = (name: string, value: string) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
  const bodies = images.map((bytes, i) =>
    Buffer.concat([
      Buffer.from(field('ffn', ffn) + field('k', args.k!) + `--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="q${i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`),
      bytes,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]),
  );
  return { contentType: `multipart/form-data; boundary=${boundary}`, bodies };
}

async function startServer(): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(projectRoot, 'src/cli.ts'), 'serve', '--store', args.store!, '--port', '0', '--host', '127.0.0.1'], {
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

const getStats = async (url: string) => (await (await fetch(`${url}/api/stats`)).json()) as { images: number; modelId: string; server: { batches: { count: number; meanSize: number }; searches: number; eventLoopUtilization: number } };

async function run(url: string, ffn: string, seconds: number): Promise<RunResult> {
  const { contentType, bodies } = await queryBodies(Number(args.images), ffn);
  // Check one request by hand: a bench of error responses would be meaningless.
  const probe = await fetch(`${url}/api/search`, { method: 'POST', headers: { 'content-type': contentType }, body: new Uint8Array(bodies[0]) });
  const probeBody = (await probe.json()) as { cost?: { ffn: string }; error?: { message: string } };
  if (probe.status !== 200 || probeBody.cost?.ffn !== ffn) throw new Error(`probe search with ${ffn} failed: ${probe.status} ${JSON.stringify(probeBody)}`);

  const before = await getStats(url);
  let next = 0;
  const result = await autocannon({
    url: `${url}/api/search`,
    connections,
    duration: seconds,
    requests: [{ method: 'POST', setupRequest: (req: Record<string, unknown>) => ({ ...req, headers: { 'content-type': contentType }, body: bodies[next++ % bodies.length] }) }],
  });
  const after = await getStats(url); // its utilisation covers the time since `before`: the run
  const batches = after.server.batches.count - before.server.batches.count;
  const searches = after.server.searches - before.server.searches;
  return {
    ffn,
    requestsPerSec: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors,
    non2xx: result.non2xx,
    timeouts: result.timeouts,
    requests: result.requests.total,
    batches: { count: batches, meanSize: batches ? searches / batches : 0 },
    serverEventLoopUtilization: after.server.eventLoopUtilization,
  };
}

async function main(): Promise<void> {
  const load = os.loadavg();
  let server: { url: string; child: ChildProcess } | null = null;
  if (!args.url) server = await startServer();
  const url = args.url ?? server!.url;
  try {
    const stats = await getStats(url);
    process.stderr.write(`bench-server: ${url}, ${stats.images} images, model ${stats.modelId}; ${connections} connections, ${duration} s per encoder\n`);
    await run(url, specs[0], 1); // warm-up (JIT, allocator, connections)
    const results: RunResult[] = [];
    for (const ffn of specs) results.push(await run(url, ffn, duration));

    const ratio = results.length >= 2 ? results[0].requestsPerSec / results[results.length - 1].requestsPerSec : null;
    const conditions = { cores: os.availableParallelism(), cpu: os.cpus()[0]?.model, loadAverage1mAtStart: +load[0].toFixed(2), node: process.version, connections, durationSec: duration, images: stats.images };
    console.log(`\n| ffn | requests/s | p50 ms | p99 ms | errors | non-2xx | timeouts | mean batch | server event-loop busy |`);
    console.log(`| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`);
    for (const r of results) {
      console.log(`| ${r.ffn} | ${r.requestsPerSec.toFixed(0)} | ${r.p50} | ${r.p99} | ${r.errors} | ${r.non2xx} | ${r.timeouts} | ${r.batches.meanSize.toFixed(1)} | ${(100 * r.serverEventLoopUtilization).toFixed(0)}% |`);
    }
    if (ratio !== null) console.log(`\nthroughput ratio ${results[0].ffn}/${results[results.length - 1].ffn}: ${ratio.toFixed(2)}`);
    console.log(`conditions: ${JSON.stringify(conditions)}`);
    const summary = { conditions, results, ratio };
    if (args.json) fs.writeFileSync(args.json, JSON.stringify(summary, null, 2) + '\n');
    const failed = results.some((r) => r.errors + r.non2xx + r.timeouts > 0);
    if (failed) process.exitCode = 1;
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
