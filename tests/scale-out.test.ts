// Scaling out (issue 15), with real engines started here: PostgreSQL + pgvector (PGlite over the wire protocol) and
// Redis (Debian's redis-server). Every command on a postgres:// store answers as on a folder; bad stores and queues
// are one line and exit 2; worker processes index the 10,000 bundled CIFAR-10 test images through the queue while
// one is SIGKILLed; two servers on one store see each other's uploads and deletes.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import sharp from 'sharp';
import { iterateImageSource } from '../src/data/sources.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG } from '../src/encoder/config.ts';
import { contentHash } from '../src/index/store.ts';
import { DEMO_GALLERY } from '../src/server/server.ts';
import { randomModel } from './helpers/model.ts';
import { type TestPostgres, startPostgres } from './helpers/pglite.ts';
import { type TestRedis, freePort, startRedis } from './helpers/redis.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FOLDER_IMAGES = 40; // gallery images copied into a folder for the command-by-command comparison

let tmp: string;
let model: string;
let otherModel: string; // same shape, another model id
let folder: string; // FOLDER_IMAGES gallery images in class folders
let pgs: TestPostgres;
let redis: TestRedis;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

// Every process a test spawned and that still runs: a failed test leaves its workers and servers behind, whose open
// pipes would keep this file from ever ending, so `after` kills them.
const running = new Set<ChildProcess>();

/** Spawns `matvit ARGS`; resolves when it exits. */
function matvit(args: string[], env: Record<string, string> = {}): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, env: { ...process.env, NODE_ENV: 'test', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  child.on('exit', () => running.delete(child));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<Run>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { child, done };
}
const run = (args: string[], env?: Record<string, string>) => matvit(args, env).done;

/** A long-running matvit process, once its stderr says it is ready (`pattern`). */
async function started(args: string[], pattern: RegExp): Promise<{ child: ChildProcess; done: Promise<Run>; match: RegExpMatchArray }> {
  const p = matvit(args);
  let text = '';
  const match = await new Promise<RegExpMatchArray>((resolve, reject) => {
    const onData = (d: Buffer) => {
      text += d;
      const m = pattern.exec(text);
      if (m) {
        p.child.stderr!.off('data', onData);
        resolve(m);
      }
    };
    p.child.stderr!.on('data', onData);
    void p.done.then((r) => reject(new Error(`matvit ${args[0]} exited with ${r.code} before it was ready: ${r.stderr}`)));
  });
  return { ...p, match };
}

async function sql<T extends pg.QueryResultRow>(text: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: pgs.url });
  await c.connect();
  try {
    return (await c.query<T>(text)).rows;
  } finally {
    await c.end();
  }
}

/** An image of the folder. */
function firstImage(): string {
  const label = fs.readdirSync(folder)[0];
  return path.join(folder, label, fs.readdirSync(path.join(folder, label))[0]);
}

/** One line on stderr, exit code 2. */
function assertUsageError(r: Run, re: RegExp, what: string): void {
  assert.equal(r.code, 2, `${what}: exit ${r.code}: ${r.stderr}`);
  assert.match(r.stderr, re, what);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `${what}: ${r.stderr}`);
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-scale-'));
  model = path.join(tmp, 'model', 'model.safetensors');
  otherModel = path.join(tmp, 'other', 'model.safetensors');
  const { tensors } = await randomModel(TINY_CONFIG, 5);
  for (const m of [model, otherModel]) {
    fs.mkdirSync(path.dirname(m), { recursive: true });
    saveModel(m, TINY_CONFIG, tensors, { 'train.step': '1' });
  }
  folder = path.join(tmp, 'images');
  let n = 0;
  for await (const item of iterateImageSource(DEMO_GALLERY)) {
    fs.mkdirSync(path.join(folder, item.label!), { recursive: true });
    fs.writeFileSync(path.join(folder, item.label!, `${n}.jpg`), item.bytes);
    if (++n === FOLDER_IMAGES) break;
  }
  [pgs, redis] = await Promise.all([startPostgres(), startRedis()]);
});

after(async () => {
  for (const child of running) child.kill('SIGKILL');
  await Promise.all([pgs?.stop(), redis?.stop()]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('the commands on a PostgreSQL store', () => {
  test('index, search, stats, rm and reindex answer as on a folder', async () => {
    await pgs.reset();
    const dir = path.join(tmp, 'embedded-store');
    const both = async (args: string[]) => {
      const [a, b] = [await run([...args, '--store', dir, '--model', model]), await run([...args, '--store', pgs.url, '--model', model])];
      assert.equal(a.code, b.code, `${args.join(' ')}: ${a.stderr} / ${b.stderr}`);
      return [a, b];
    };
    const json = (r: Run) => JSON.parse(r.stdout);

    const [ia, ib] = await both(['index', folder, '--threads', '1', '--json']);
    assert.equal(ia.code, 0, ia.stderr);
    const [ra, rb] = [json(ia), json(ib)];
    assert.deepEqual([rb.indexed, rb.duplicates, rb.failed, rb.ids], [ra.indexed, ra.duplicates, ra.failed, ra.ids]);
    assert.equal(ra.indexed + ra.duplicates, FOLDER_IMAGES);

    const query = firstImage();
    for (const args of [['search', query, '--k', '5', '--json'], ['search', '--id', '3', '--k', '5', '--json']]) {
      const [sa, sb] = await both(args);
      assert.equal(sa.code, 0, sa.stderr);
      const strip = (r: Run) => json(r).results.map((h: { id: number; label: string; path: string; score: number }) => [h.id, h.label, h.path, h.score.toFixed(4)]);
      assert.deepEqual(strip(sb), strip(sa), args.join(' '));
    }
    const [ta, tb] = await both(['search', query, '--k', '3']);
    const table = (r: Run) => r.stdout.split('\n').slice(0, 3).join('\n');
    assert.equal(table(tb), table(ta), 'the same printed results');

    // Filters (issue 17) reach both stores: the folder's filtered search and PostgreSQL's WHERE clause agree.
    const label = path.basename(path.dirname(query));
    const ofLabel = fs.readdirSync(path.dirname(query)).length;
    for (const where of [[`label=${label}`], [`source=${path.dirname(query)}`, 'after=2000-01-01']]) {
      const [fa, fb] = await both(['search', query, '--k', String(FOLDER_IMAGES), '--json', ...where.flatMap((w) => ['--where', w])]);
      assert.equal(fb.code, 0, fb.stderr);
      const hits = (r: Run) => json(r).results.map((h: { id: number; label: string; path: string }) => [h.id, h.label, h.path]);
      assert.deepEqual(hits(fb), hits(fa), where.join(' '));
      assert.equal(hits(fb).length, ofLabel, `${where.join(' ')}: every image of the class, and only those`);
      assert.ok(hits(fb).every(([, l]: [number, string]) => l === label), where.join(' '));
    }
    const [na, nb] = await both(['search', query, '--where', 'before=2000-01-01']);
    assert.match(nb.stdout, /no results: the store is empty, or no image passes the filter/);
    assert.equal(nb.stdout.split('\n')[0], na.stdout.split('\n')[0]);
    assertUsageError(await run(['search', query, '--where', 'colour=red', '--store', pgs.url, '--model', model]), /^matvit: .*unknown filter "colour"/m, 'a malformed filter on PostgreSQL');

    // Region vectors: the images indexed before get theirs; both stores then search with them and agree.
    const [ga0, gb0] = await both(['index', folder, '--regions', '2', '--threads', '1', '--json']);
    assert.deepEqual([json(ga0).indexed, json(gb0).indexed], [ra.indexed, ra.indexed]);
    const [qa, qb] = await both(['search', query, '--k', '5', '--json']);
    const ids = (r: Run) => json(r).results.map((h: { id: number; score: number }) => [h.id, h.score.toFixed(4)]);
    assert.deepEqual(ids(qb), ids(qa), 'search with region vectors');

    const [sa, sb] = await both(['stats', '--json']);
    const pick = (r: Run) => {
      const s = json(r);
      return [s.images, s.labelled, s.thumbnails, s.originals, s.models.map((m: { modelId: string; embeddings: number; regionVectors: number; current: boolean }) => [m.modelId, m.embeddings, m.regionVectors, m.current])];
    };
    assert.deepEqual(pick(sb), pick(sa));
    assert.equal(json(sa).models[0].regionVectors, 4 * ra.indexed);
    assert.match((await run(['stats', '--store', pgs.url, '--model', model])).stdout, /pgvector HNSW index in the database, M 16, ef-construction 128/);

    const [da, db] = await both(['rm', '3', '7', '--json']);
    assert.deepEqual([da.stdout, da.code], [db.stdout, 0]);
    const [ga, gb] = await both(['rm', '3']);
    assertUsageError(ga, /^matvit: no image with id 3$/m, 'rm a removed id (folder)');
    assertUsageError(gb, /^matvit: no image with id 3$/m, 'rm a removed id (PostgreSQL)');
    const [xa, xb] = await both(['search', '--id', '3']);
    assert.equal(xb.stderr, xa.stderr, 'the same error for a removed id');

    const [ka, kb] = await both(['reindex', '--m', '8', '--ef-construction', '64', '--json']);
    assert.deepEqual([json(kb).vectors, json(kb).M, json(kb).efConstruction], [json(ka).vectors, 8, 64]);
    assert.match((await run(['stats', '--store', pgs.url, '--model', model])).stdout, /M 8, ef-construction 64/);
    const [ya, yb] = await both(['search', '--id', '5', '--k', '3', '--json']);
    assert.deepEqual(json(yb).results.map((h: { id: number }) => h.id), json(ya).results.map((h: { id: number }) => h.id), 'search after the rebuild');
  });

  test('a bad store or queue: one line naming it, exit 2, nothing written', async () => {
    await pgs.reset();
    const closed = await freePort();
    const unreachable = `postgres://me:secret@127.0.0.1:${closed}/images`;
    const bare = await startPostgres({ withVector: false });
    try {
      const cases: [string[], RegExp][] = [
        [['search', '--id', '1', '--store', unreachable], new RegExp(`^matvit: cannot reach PostgreSQL at postgres://me:\\*\\*\\*@127\\.0\\.0\\.1:${closed}/images: connect ECONNREFUSED`)],
        [['index', folder, '--store', unreachable], /^matvit: cannot reach PostgreSQL at postgres:\/\/me:\*\*\*@/],
        [['serve', '--no-gallery', '--port', '0', '--store', unreachable], /^matvit: cannot reach PostgreSQL at/],
        [['stats', '--store', 'postgres://me@127.0.0.1:5432/'], /^matvit: invalid PostgreSQL URL "postgres:\/\/me@127\.0\.0\.1:5432\/": it names no database/],
        [['rm', '1', '--store', 'postgresql://me:pw@:5432/db'], /^matvit: invalid PostgreSQL URL "postgresql:\/\/me:\*\*\*@:5432\/db"/],
        [['index', folder, '--store', bare.url], /^matvit: the database postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres has no pgvector extension .*install pgvector >= 0\.7/],
        [['worker', '--queue', redis.url, '--store', bare.url], /has no pgvector extension/],
        [['index', folder, '--queue', `redis://127.0.0.1:${closed}`, '--store', pgs.url], new RegExp(`^matvit: cannot reach Redis at redis://127\\.0\\.0\\.1:${closed}: `)],
        [['worker', '--queue', `redis://:secret@127.0.0.1:${closed}/0`, '--store', pgs.url], /^matvit: cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/0/],
        [['index', folder, '--queue', 'http://127.0.0.1:6379', '--store', pgs.url], /^matvit: unsupported queue URL "http:\/\/127\.0\.0\.1:6379": give redis:\/\/HOST:PORT/],
        [['index', folder, '--queue', redis.url, '--store', path.join(tmp, 'a-folder')], /^matvit: --queue needs a store every worker can write: give --store postgres:\/\//],
      ];
      for (const [args, re] of cases) assertUsageError(await run([...args, '--model', model]), re, args.join(' '));
      const tables = await bare.db.query<{ n: number }>("SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public'");
      assert.equal(tables.rows[0].n, 0, 'the database without pgvector is left as it was');
      assert.equal(fs.existsSync(path.join(tmp, 'a-folder')), false);
      const client = new Redis(redis.url);
      assert.deepEqual(await client.keys('*').finally(() => client.disconnect()), [], 'nothing enqueued');
      const written = await sql<{ n: number }>("SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public'");
      assert.equal(written[0].n, 0, 'nothing written to the store that was fine (the queue is checked first)');
    } finally {
      await bare.stop();
    }

    // A store built with another model: searching it with this one would find nothing.
    assert.equal((await run(['index', folder, '--store', pgs.url, '--model', otherModel, '--threads', '1'])).code, 0);
    const before = await sql('SELECT count(*)::int AS n FROM models');
    for (const args of [['search', '--id', '1'], ['search', firstImage()], ['stats']]) {
      const r = await run([...args, '--store', pgs.url, '--model', model]);
      if (args[0] === 'stats') assert.equal(r.code, 0, 'stats lists what the store holds');
      else assertUsageError(r, /^matvit: the store postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres has no embeddings of model model\/model\.safetensors@1 \(it has other\/model\.safetensors@1\): index with this model, or pass the --model they were made with$/m, args.join(' '));
    }
    assert.deepEqual(await sql('SELECT count(*)::int AS n FROM models'), before, 'readers created nothing');
  });
});

describe('distributed indexing', () => {
  test('3 workers index the 10,000 gallery images through the queue, one SIGKILLed mid-run: each stored once, searchable, progress 100%', async () => {
    await pgs.reset();
    const expected = new Map<string, string>(); // content hash -> member path
    for await (const item of iterateImageSource(DEMO_GALLERY)) if (!expected.has(contentHash(item.bytes))) expected.set(contentHash(item.bytes), item.path);
    const workerArgs = ['worker', '--queue', redis.url, '--store', pgs.url, '--model', model, '--threads', '1', '--stall-seconds', '3'];
    const workers = await Promise.all([0, 1, 2].map(() => started(workerArgs, /worker ready/)));

    const index = matvit(['index', DEMO_GALLERY, '--queue', redis.url, '--store', pgs.url, '--model', model, '--json']);
    // Kill one worker once a quarter is stored: it holds jobs (two at a time) that others must take over.
    let killedAt = -1;
    while (killedAt < 0) {
      const n = (await sql<{ n: number }>('SELECT count(*)::int AS n FROM images').catch(() => [{ n: 0 }]))[0].n;
      if (n >= 2500) {
        workers[0].child.kill('SIGKILL');
        killedAt = n;
      } else if (index.child.exitCode !== null) {
        assert.fail(`the enqueuer exited before the kill: ${(await index.done).stderr}`);
      } else await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(killedAt < expected.size, `killed mid-run (at ${killedAt})`);
    const r = await index.done;
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.deepEqual(report.progress, { done: 10_000, total: 10_000 }, 'progress reached 100%');
    assert.equal(report.indexed + report.duplicates, 10_000);
    assert.deepEqual(report.failed, []);
    assert.equal(report.indexed, expected.size, 'each distinct image indexed once');
    assert.equal(new Set(report.ids).size, report.indexed, 'the ids of the indexed images, once each');

    // Every image exactly once, with its embedding; the killed worker's jobs were taken over (stalled, then done).
    const rows = await sql<{ content_hash: string; source: string }>('SELECT content_hash, source FROM images');
    assert.equal(rows.length, expected.size);
    assert.deepEqual(new Set(rows.map((x) => x.content_hash)), new Set(expected.keys()));
    assert.equal((await sql<{ n: number }>('SELECT count(*)::int AS n FROM embeddings_1'))[0].n, expected.size);
    const connection = new Redis(redis.url, { maxRetriesPerRequest: null });
    const queue = new Queue('matvit-index', { connection });
    try {
      const jobs = await queue.getJobs(['completed']);
      assert.equal(jobs.length, report.jobs);
      assert.ok(jobs.some((j) => j.stalledCounter > 0 || j.attemptsMade > 0), 'a job of the killed worker was run again by another');
    } finally {
      await queue.close();
      connection.disconnect();
    }

    // Searchable: an image's own bytes find it first.
    const [hash, member] = [...expected][1234];
    const file = path.join(tmp, 'query.jpg');
    for await (const item of iterateImageSource(DEMO_GALLERY)) if (item.path === member) fs.writeFileSync(file, item.bytes);
    const s = await run(['search', file, '--k', '3', '--json', '--store', pgs.url, '--model', model]);
    assert.equal(s.code, 0, s.stderr);
    const top = JSON.parse(s.stdout).results[0];
    assert.equal(rows.find((x) => x.source === top.path)?.content_hash, hash);

    // Enqueueing the same archive again adds nothing: every job is known, every image a duplicate.
    const again = await run(['index', DEMO_GALLERY, '--queue', redis.url, '--store', pgs.url, '--model', model, '--json']);
    assert.deepEqual((({ indexed, duplicates, jobs }) => ({ indexed, duplicates, jobs }))(JSON.parse(again.stdout)), { indexed: 0, duplicates: 10_000, jobs: report.jobs });
    assert.equal((await sql<{ n: number }>('SELECT count(*)::int AS n FROM images'))[0].n, expected.size);

    // With --regions the same images are new jobs, whose workers give each image its region vectors.
    const regions = await run(['index', folder, '--regions', '2', '--queue', redis.url, '--store', pgs.url, '--model', model, '--json']);
    assert.equal(regions.code, 0, regions.stderr);
    assert.deepEqual((({ indexed, duplicates }) => ({ indexed, duplicates }))(JSON.parse(regions.stdout)), { indexed: FOLDER_IMAGES, duplicates: 0 });
    assert.equal((await sql<{ n: number }>('SELECT count(*)::int AS n FROM region_embeddings_1'))[0].n, 4 * FOLDER_IMAGES);

    // The others stop cleanly on SIGTERM.
    for (const w of workers.slice(1)) w.child.kill('SIGTERM');
    for (const w of workers.slice(1)) {
      const end = await w.done;
      assert.equal(end.code, 0, end.stderr);
      assert.match(end.stderr, /worker stopped: \d+ jobs, \d+ images indexed/);
    }
  });
});

describe('search replicas', () => {
  test('two servers on one store: an upload through one is found through the other, a delete never returned again, the same ids for the same query', async () => {
    await pgs.reset();
    assert.equal((await run(['index', folder, '--store', pgs.url, '--model', model, '--threads', '1'])).code, 0);
    const serve = () => started(['serve', '--store', pgs.url, '--model', model, '--no-gallery', '--port', '0', '--encode-workers', '1'], /serving \d+ images at (http:\/\/\S+)/);
    const servers = [await serve(), await serve()];
    const [a, b] = servers.map((s) => s.match[1].replace(/\/$/, ''));
    try {
      const search = async (base: string, bytes: Buffer, k = 10) => {
        const form = new FormData();
        form.append('image', new Blob([new Uint8Array(bytes)], { type: 'image/png' }), 'q.png');
        const res = await fetch(`${base}/api/search?k=${k}`, { method: 'POST', body: form });
        assert.equal(res.status, 200, await res.clone().text());
        return ((await res.json()) as { results: { id: number }[] }).results.map((r) => r.id);
      };
      const png = await sharp({ create: { width: 40, height: 40, channels: 3, background: { r: 200, g: 30, b: 90 } } }).png().toBuffer();
      const form = new FormData();
      form.append('images', new Blob([new Uint8Array(png)], { type: 'image/png' }), 'magenta.png');
      const up = await fetch(`${a}/api/images`, { method: 'POST', body: form });
      assert.equal(up.status, 201);
      const { id } = ((await up.json()) as { images: { id: number }[] }).images[0];
      assert.equal((await search(b, png, 3))[0], id, 'uploaded through A, found through B');
      // The API's where on this store: only the class asked for, all of it.
      const cls = fs.readdirSync(folder)[0];
      const byLabel = new FormData();
      byLabel.append('image', new Blob([new Uint8Array(png)], { type: 'image/png' }), 'q.png');
      byLabel.append('where', `label=${cls}`);
      const filtered = await fetch(`${b}/api/search?k=${FOLDER_IMAGES}`, { method: 'POST', body: byLabel });
      assert.equal(filtered.status, 200, await filtered.clone().text());
      const labels = ((await filtered.json()) as { results: { label: string }[] }).results.map((r) => r.label);
      assert.deepEqual(labels, new Array(fs.readdirSync(path.join(folder, cls)).length).fill(cls));
      // Thumbnails as on a folder: a small upload is its own, under a versioned URL cached for good.
      const thumb = await fetch(`${b}/api/images/${id}/thumb?v=${contentHash(png).slice(0, 16)}`);
      assert.deepEqual([thumb.status, thumb.headers.get('content-type'), thumb.headers.get('cache-control')], [200, 'image/png', 'public, max-age=31536000, immutable']);
      assert.ok(Buffer.from(await thumb.arrayBuffer()).equals(png));
      for (const file of fs.readdirSync(folder).slice(0, 3).map((c) => path.join(folder, c, fs.readdirSync(path.join(folder, c))[0]))) {
        const q = fs.readFileSync(file);
        assert.deepEqual(await search(a, q), await search(b, q), `the same ids through either for ${file}`);
      }
      const del = await fetch(`${b}/api/images/${id}`, { method: 'DELETE' });
      assert.deepEqual(await del.json(), { deleted: id });
      assert.ok(!(await search(a, png, 20)).includes(id), 'deleted through B, never returned through A');
      assert.equal((await fetch(`${a}/api/images/${id}`)).status, 404);
      assert.equal((await fetch(`${a}/api/images/${id}/thumb`)).status, 404);
    } finally {
      for (const s of servers) s.child.kill('SIGTERM');
      for (const s of servers) assert.equal((await s.done).code, 0);
    }
  });
});
