// The store commands of the `matvit` CLI: index (here, or through a queue), worker, search, rm, stats, reindex. Each
// parses its flags, opens the store through the store seam (src/store/open.ts: a folder, or a postgres:// URL),
// calls the services (indexer.ts, search.ts, stats.ts, src/queue) and prints; heavy modules load only when a
// command runs. Store and queue errors reach main (cli.ts): one line, exit code 2 (4: a store locked by a writer).
import fs from 'node:fs';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_REGION_GRID } from '../data/regions.ts';
import { UsageError } from '../errors.ts';
import type { Encoder } from '../encoder/runtime.ts';
import type { IndexReport } from './indexer.ts';
import { WHERE_SYNTAX, parseWhere } from './filter.ts';
import { DEFAULT_K, MAX_EF, MAX_K } from './limits.ts';
import type { SearchResponse } from './search.ts';
import type { StoreBackend } from '../store/types.ts';

/** Exit codes of the store commands (also listed in each command's --help). */
export const EXIT = {
  ok: 0,
  unexpected: 1, // a bug or an environment failure: the message and a log line say what
  usage: 2, // bad flags or arguments, a missing file, an undecodable query image, an unknown id or FFN spec
  nothingIndexed: 3, // `index`: no image found, or every file failed
  storeBusy: 4, // another process is writing the store (an indexing job): retry when it is done
  incomplete: 5, // `index`: a folder or archive could not be read (whole, or past some point); the rest was indexed
  interrupted: 130, // stopped by Ctrl-C / SIGTERM; everything committed before is kept
} as const;

const EXIT_HELP = `
Exit codes: 0 ok; 1 unexpected error; 2 bad usage or input (one line on stderr); 4 the store is being written by
another process.`;

const STORE_HELP = 'store: a folder (SQLite database of images, embeddings, thumbnails; HNSW file), or postgres://USER@HOST:PORT/DATABASE (PostgreSQL with pgvector)';

const positiveInt = (name: string, max = Number.MAX_SAFE_INTEGER) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}`);
  return n;
};
const positiveNumber = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a positive number');
  return n;
};

interface CommonOptions {
  store: string;
  model?: string;
  json?: boolean;
}

/** --store and --model, and errors that print one line and exit 2 instead of commander's usage text and exit 1. */
function storeCommand(program: Command, name: string): Command {
  return program
    .command(name)
    .addOption(new Option('--store <dir|url>', STORE_HELP).env('MATVIT_STORE').default('./data'))
    .option('--model <file>', 'model checkpoint (default: the shipped model, models/matvit-cifar10)')
    .showHelpAfterError(false)
    .hook('preAction', async (cmd) => {
      // A bad URL is named before any model loads; a URL is never taken for a folder name.
      const { parseStoreLocation } = await import('../store/location.ts');
      parseStoreLocation(cmd.opts().store);
    })
    .configureOutput({ outputError: () => {} })
    .exitOverride((err) => {
      if (err.exitCode === 0) process.exit(0); // --help
      throw new UsageError(err.message.replace(/^error: /, ''));
    });
}

export function registerIndexCommands(program: Command): void {
  storeCommand(program, 'index')
    .description('index images: folders (recursive), single files, .tar/.tar.gz archives; JPEG, PNG, WebP, GIF, TIFF, AVIF')
    .argument('<paths...>', 'folders, image files or archives')
    .option('--batch-size <n>', 'images per encoder run', positiveInt('batch size', 4096), 64)
    .option('--threads <n>', 'encoder threads, each a worker with a one-thread session (default: all cores when the machine is idle, else 1)', positiveInt('threads', 256))
    .option('--json', 'print the report as JSON')
    .option('--regions [grid]', `also store region vectors, a grid x grid of half-side squares per image (default ${DEFAULT_REGION_GRID}): a crop of an image then finds it; ten times the encoding`, positiveInt('region grid', 8))
    .option('--queue <url>', 'enqueue the work for `matvit worker` processes on this Redis (redis://HOST:PORT) instead of indexing here; needs a PostgreSQL --store')
    .option('--queue-name <name>', 'BullMQ queue name, the same for the workers (default matvit-index)')
    .option('--job-size <n>', 'with --queue: images per job', positiveInt('job size', 4096), 64)
    .addHelpText(
      'after',
      `
Images already indexed with the same model (same content) are skipped, so a rerun after Ctrl-C or a crash indexes
only the rest; with --regions, images indexed without region vectors get them. Once a store holds region vectors,
every image added to it (by index, upload or worker) gets them too. Bad files are listed with their reason and never
stop the job. With --queue, jobs are named after what they hold, so enqueueing the same sources again adds nothing;
Ctrl-C stops waiting, the workers go on.
${EXIT_HELP} 3: nothing could be indexed (no image found, or every file failed); 5: a folder or archive could
not be read (whole, or past some point: listed, everything else is indexed); 130: interrupted (what was committed
is kept). Some files failing still exits 0: they are listed in the summary.`,
    )
    .action(async (paths: string[], given: CommonOptions & { batchSize: number; threads?: number; queue?: string; queueName?: string; jobSize: number; regions?: number | true }) => {
      const opts = { ...given, regionGrid: given.regions === true ? DEFAULT_REGION_GRID : given.regions };
      for (const p of paths) if (!fs.existsSync(p)) throw new UsageError(`no such file or directory: ${p}`);
      if (opts.queue !== undefined) return enqueueCommand(paths, { ...opts, queue: opts.queue });
      const { defaultEncoderThreads, indexSources } = await import('./indexer.ts');
      const encoder = await loadEncoder(opts.model, opts.threads ?? (await defaultEncoderThreads()));
      const store = await openFor(opts.store, encoder, { writer: true, create: true });
      const { stop, release } = stopOnSignals('\nmatvit: stopping after the current batch (Ctrl-C again to quit at once)\n');
      const bar = progressReporter();
      let report: IndexReport;
      try {
        report = await indexSources(store, encoder, paths, { batchSize: opts.batchSize, regionGrid: opts.regionGrid, signal: stop.signal, onProgress: bar.update });
      } finally {
        bar.stop();
        await store.close();
        release();
      }
      reportIndexing(report, stop.signal.aborted, opts.json);
    });

  storeCommand(program, 'worker')
    .description('index images enqueued by `matvit index --queue`: take jobs from Redis, encode with XL, write to the PostgreSQL --store; runs until SIGTERM/SIGINT')
    .requiredOption('--queue <url>', 'the Redis of the queue (redis://HOST:PORT)')
    .option('--queue-name <name>', 'BullMQ queue name (default matvit-index)')
    .option('--threads <n>', 'encoder threads (default: all cores when the machine is idle, else 1)', positiveInt('threads', 256))
    .option('--concurrency <n>', 'jobs in hand at once', positiveInt('concurrency', 64), 2)
    .option('--batch-size <n>', 'images per encoder run', positiveInt('batch size', 4096), 64)
    .option('--stall-seconds <n>', 'lock of a job in hand: the job of a worker that died goes to another after about this long', positiveInt('stall seconds', 3600), 30)
    .addHelpText('after', `${EXIT_HELP} On SIGTERM/SIGINT the jobs in hand are finished first (a second signal exits at once: they are retried elsewhere).`)
    .action(async (opts: CommonOptions & { queue: string; queueName?: string; threads?: number; concurrency: number; batchSize: number; stallSeconds: number }) => {
      const queueLoc = await sharedStoreAndQueue(opts.store, opts.queue);
      const { connectQueue } = await import('../queue/connection.ts');
      const redis = await connectQueue(queueLoc); // first: a queue that is down must not leave a new store behind
      const { defaultEncoderThreads } = await import('./indexer.ts');
      let encoder: Encoder;
      let store: StoreBackend;
      try {
        encoder = await loadEncoder(opts.model, opts.threads ?? (await defaultEncoderThreads()));
        store = await openFor(opts.store, encoder, { writer: true, create: true });
      } catch (err) {
        redis.disconnect();
        throw err;
      }
      const { runWorker } = await import('../queue/worker.ts');
      const { EncoderPool } = await import('../encoder/pool.ts');
      let pool: import('../encoder/pool.ts').EncoderPool | null = null;
      // A second signal quits at once: the jobs in hand go back to the queue when their locks expire.
      const { stop, release } = stopOnSignals('matvit: worker stopping after the jobs in hand (signal again to quit at once)\n');
      try {
        pool = await EncoderPool.tryStart(encoder, { threads: encoder.threads });
        process.stderr.write(`matvit: worker ready: queue on ${queueLoc.display}, store ${store.location}\n`);
        const r = await runWorker(redis, store, pool ?? encoder, stop.signal, { queueName: opts.queueName, concurrency: opts.concurrency, batchSize: opts.batchSize, stallSeconds: opts.stallSeconds });
        process.stderr.write(`matvit: worker stopped: ${r.jobs} jobs, ${r.indexed} images indexed\n`);
      } finally {
        release();
        await pool?.close();
        await store.close();
        redis.disconnect();
        await encoder.close();
      }
    });

  storeCommand(program, 'search')
    .description('find the images most similar to IMAGE (or to stored image --id)')
    .argument('[image]', 'query image file')
    .option('--id <n>', 'query with a stored image instead of a file', positiveInt('id'))
    .option('--k <n>', 'results', positiveInt('k', MAX_K), DEFAULT_K)
    .option('--ffn <spec>', "query encoder: S | M | L | XL | a per-layer list such as 'S,S,M,M,L,XL' | auto (the calibrated cascade) (default XL)")
    .option('--budget <fraction>', "pick the query encoder by cost: at most this fraction of XL's FLOPs", positiveNumber)
    .option('--max-encode-ms <ms>', 'pick the query encoder by measured encode time', positiveNumber)
    .option('--ef <n>', 'HNSW search beam width (default: the index default, shown by matvit stats)', positiveInt('ef', MAX_EF))
    .option('--where <clause>', `only images that pass (repeatable, all must pass): ${WHERE_SYNTAX}`, (v: string, prev: string[] = []) => [...prev, v])
    .option('--json', 'print {"results": [{id, score, label, path}], "cost": {ffn, flops, encodeMs, searchMs}}')
    .addHelpText(
      'after',
      `
Filters: label=cat,dog (one of these labels); meta.album=trip (a metadata value; meta.exif.camera for a nested key);
source=photos/2024 (images under this folder or in this archive, relative to the working folder); after=2026-01-01
and before=2026-02-01 (added at or after / before: a date in UTC, or a time with its zone).
${EXIT_HELP}`,
    )
    .action(async (image: string | undefined, opts: CommonOptions & { id?: number; k: number; ffn?: string; budget?: number; maxEncodeMs?: number; ef?: number; where?: string[] }) => {
      if ((image === undefined) === (opts.id === undefined)) throw new UsageError('give a query image file or --id, not both');
      const filter = parseWhere(opts.where ?? [], (p) => path.resolve(p));
      if (opts.ffn !== undefined && (opts.budget !== undefined || opts.maxEncodeMs !== undefined)) throw new UsageError('give --ffn or --budget/--max-encode-ms, not both');
      const bytes = image === undefined ? null : readQuery(image);
      const encoder = await loadEncoder(opts.model, 1);
      const store = await openFor(opts.store, encoder, { writer: false });
      try {
        const search = await import('./search.ts');
        let res: SearchResponse;
        if (bytes) {
          const { decodeImage } = await import('../data/images.ts');
          const decoded = await decodeImage(bytes, encoder.config.imageSize);
          const { plan, regionPenalty } = await queryPlan(encoder, opts.model, opts);
          const cascade = plan.chosenBy === 'cascade' ? plan.rule : undefined;
          res = await search.searchByPixels(store, (p, s) => encoder.encode([p], s).then((e) => e[0]), decoded.pixels, { k: opts.k, ffn: plan.spec, ef: opts.ef ?? plan.ef, cascade, filter, regionPenalty });
        } else {
          res = await search.searchById(store, opts.id!, { k: opts.k, ef: opts.ef, filter });
        }
        if (opts.json) {
          const results = res.results.map(({ id, score, label, path }) => ({ id, score, label, path }));
          console.log(JSON.stringify({ results, cost: res.cost }));
        } else {
          printResults(res);
        }
      } finally {
        await store.close();
      }
    });

  storeCommand(program, 'rm')
    .description('remove images (with their embeddings, thumbnails and kept originals) by id')
    .argument('<ids...>', 'image ids', (v: string, prev: number[] = []) => [...prev, positiveInt('image id')(v)])
    .option('--json', 'print {"removed": [...], "missing": [...]}')
    .addHelpText('after', `${EXIT_HELP} Ids that do not exist exit 2 after the others are removed.`)
    .action(async (ids: number[], opts: CommonOptions) => {
      const encoder = await loadEncoder(opts.model, 1);
      const store = await openFor(opts.store, encoder, { writer: true });
      let removed: number[];
      try {
        removed = await store.delete(ids);
      } finally {
        await store.close();
      }
      const missing = ids.filter((id) => !removed.includes(id));
      if (opts.json) console.log(JSON.stringify({ removed, missing }));
      else if (removed.length) console.log(`removed ${removed.length} image${removed.length === 1 ? '' : 's'}: ${removed.join(' ')}`);
      if (missing.length) throw new UsageError(`no image with id ${missing.join(', ')}`);
    });

  storeCommand(program, 'stats')
    .description('what the store holds: images, embeddings per model, HNSW files, disk use')
    .option('--json', 'print the statistics as JSON')
    .addHelpText('after', EXIT_HELP)
    .action(async (opts: CommonOptions) => {
      const { databaseStats, storeStats } = await import('./stats.ts');
      const { parseStoreLocation } = await import('../store/location.ts');
      let stats: import('./stats.ts').StoreStatsReport;
      if (parseStoreLocation(opts.store).kind === 'embedded') {
        stats = storeStats(requireStore(opts.store), await modelIdOrNull(opts.model));
      } else {
        // A PostgreSQL store is opened for a model (its table); the database holds every model's counts.
        const { openStore } = await import('../store/open.ts');
        const encoder = await loadEncoder(opts.model, 1);
        const store = await openStore(opts.store, { modelId: encoder.modelId, dim: encoder.dim }, { writer: false });
        try {
          stats = await databaseStats(store);
        } finally {
          await store.close();
        }
      }
      if (opts.json) console.log(JSON.stringify(stats));
      else console.log(formatStats(stats));
    });

  storeCommand(program, 'reindex')
    .description('rebuild the HNSW index of the model from the stored embeddings (a folder: its HNSW file; PostgreSQL: its pgvector index)')
    .option('--m <n>', 'graph degree M (default 16)', positiveInt('M', 128))
    .option('--ef-construction <n>', 'build beam width (default: HNSW_DEFAULTS)', positiveInt('ef-construction', 10_000))
    .option('--json', 'print the result as JSON')
    .addHelpText('after', EXIT_HELP)
    .action(async (opts: CommonOptions & { m?: number; efConstruction?: number }) => {
      const encoder = await loadEncoder(opts.model, 1);
      const { reindex } = await import('./stats.ts');
      const { parseStoreLocation } = await import('../store/location.ts');
      const params = { M: opts.m, efConstruction: opts.efConstruction };
      let r: import('./stats.ts').ReindexResult;
      if (parseStoreLocation(opts.store).kind === 'embedded') {
        r = reindex(requireStore(opts.store), encoder.modelId, encoder.dim, params);
      } else {
        const store = (await openFor(opts.store, encoder, { writer: true })) as import('../store/postgres.ts').PostgresStore;
        try {
          r = await store.rebuildIndex(params);
        } finally {
          await store.close();
        }
      }
      if (opts.json) console.log(JSON.stringify(r));
      else console.log(`rebuilt the HNSW index of ${r.modelId}: ${r.vectors} vectors, M ${r.M}, ef-construction ${r.efConstruction}, ${r.seconds.toFixed(1)} s -> ${r.file}`);
    });
}

/** A queue needs a store every worker can write (PostgreSQL) and a Redis URL; both checked before any work. */
async function sharedStoreAndQueue(store: string, queue: string) {
  const { parseStoreLocation } = await import('../store/location.ts');
  const { parseQueueLocation } = await import('../queue/connection.ts');
  const queueLoc = parseQueueLocation(queue);
  if (parseStoreLocation(store).kind !== 'postgres') throw new UsageError(`--queue needs a store every worker can write: give --store postgres://USER@HOST:PORT/DATABASE (not the folder ${store})`);
  return queueLoc;
}

/** `matvit index --queue`: enqueue the sources, follow the workers, report as local indexing does. */
async function enqueueCommand(paths: string[], opts: CommonOptions & { queue: string; queueName?: string; jobSize: number; regionGrid?: number }): Promise<void> {
  const queueLoc = await sharedStoreAndQueue(opts.store, opts.queue);
  const { connectQueue } = await import('../queue/connection.ts');
  const { indexThroughQueue } = await import('../queue/enqueue.ts');
  const redis = await connectQueue(queueLoc);
  try {
    // The store is checked (reachable, pgvector, built for this model) before anything is enqueued.
    const encoder = await loadEncoder(opts.model, 1);
    await (await openFor(opts.store, encoder, { writer: true, create: true })).close();
    await encoder.close();
  } catch (err) {
    redis.disconnect();
    throw err;
  }
  const { stop, release } = stopOnSignals('\nmatvit: no longer waiting; the enqueued jobs stay queued for the workers\n');
  const bar = progressReporter();
  let report: import('../queue/enqueue.ts').QueueReport;
  try {
    report = await indexThroughQueue(redis, paths, {
      queueName: opts.queueName,
      jobItems: opts.jobSize,
      regionGrid: opts.regionGrid,
      signal: stop.signal,
      onProgress: bar.update,
      onNoWorkers: () => process.stderr.write(`matvit: no worker is connected yet: the jobs wait for one (matvit worker --queue ${queueLoc.display} --store ...)\n`),
    });
  } finally {
    bar.stop();
    redis.disconnect();
    release();
  }
  reportIndexing(report, stop.signal.aborted, opts.json);
}

/**
 * The first SIGINT/SIGTERM aborts `stop` (the caller winds down, keeping what was committed) and says `message`; a
 * second one exits at once. `release` removes the handlers.
 */
function stopOnSignals(message: string): { stop: AbortController; release: () => void } {
  const stop = new AbortController();
  const onSignal = () => {
    if (stop.signal.aborted) process.exit(EXIT.interrupted);
    stop.abort();
    process.stderr.write(message);
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  return { stop, release: () => void process.off('SIGINT', onSignal).off('SIGTERM', onSignal) };
}

/** The end of `matvit index`, here or through a queue: the summary (or JSON) and the exit code. */
function reportIndexing(report: IndexReport, interrupted: boolean, json: boolean | undefined): void {
  if (json) console.log(JSON.stringify({ ...report, interrupted }));
  else printSummary(report, interrupted);
  process.exitCode = interrupted ? EXIT.interrupted : report.unread.length > 0 ? EXIT.incomplete : report.indexed + report.duplicates === 0 ? EXIT.nothingIndexed : EXIT.ok;
}

async function loadEncoder(model: string | undefined, threads: number): Promise<Encoder> {
  const { Encoder } = await import('../encoder/runtime.ts');
  if (model !== undefined && !fs.existsSync(model)) throw new UsageError(`no such model file: ${model}`);
  return model === undefined ? Encoder.load(undefined, { threads }) : Encoder.load(path.resolve(model), { threads });
}

async function modelIdOrNull(model: string | undefined): Promise<string | null> {
  try {
    return (await loadEncoder(model, 1)).modelId;
  } catch (err) {
    if (model !== undefined) throw err; // named explicitly: its problem is the user's to know
    return null;
  }
}

/** The store folder, which must already hold a store: only `index` and `serve` create one. */
function requireStore(dir: string): string {
  if (!fs.existsSync(path.join(dir, 'store.sqlite'))) throw new UsageError(`no image store in "${dir}": index images first (matvit index PATH --store ${dir})`);
  return dir;
}

/**
 * Opens the store at `location` for the encoder's model. A folder must hold a store already unless `create`;
 * a reader is refused a store that has embeddings of other models only (it would find nothing).
 */
async function openFor(location: string, encoder: Encoder, opts: { writer: boolean; create?: boolean }): Promise<StoreBackend> {
  const { assertHoldsModel, openStore } = await import('../store/open.ts');
  const { parseStoreLocation } = await import('../store/location.ts');
  const loc = parseStoreLocation(location);
  if (loc.kind === 'embedded' && !opts.create) requireStore(loc.dir);
  const store = await openStore(location, { modelId: encoder.modelId, dim: encoder.dim, config: encoder.config }, { writer: opts.writer });
  if (opts.writer) return store;
  try {
    await assertHoldsModel(store);
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}

function readQuery(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`cannot read query image "${file}": ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : (err as Error).message}`);
  }
}

/**
 * The query's encoders (src/encoder/policy.ts) and the region penalty, from the model's calibration; a calibrated
 * choice says why on stderr.
 */
async function queryPlan(encoder: Encoder, model: string | undefined, req: { ffn?: string; budget?: number; maxEncodeMs?: number }) {
  const { loadCalibration, regionPenaltyOf } = await import('../encoder/budget.ts');
  const { planQuery } = await import('../encoder/policy.ts');
  try {
    const calibration = loadCalibration(model ?? encoder.modelPath, { modelId: encoder.modelId, config: encoder.config });
    const plan = planQuery(req, calibration);
    if (plan.reason) process.stderr.write(`matvit: query encoder ${plan.reason}\n`);
    return { plan, regionPenalty: regionPenaltyOf(calibration) };
  } catch (err) {
    throw new UsageError((err as Error).message); // an invalid budget, or an unreadable calibration file
  }
}

/** Progress on stderr once the number of items is known: a bar on a terminal, a line every 10 s otherwise. */
function progressReporter() {
  let bar: import('../progress.ts').Progress | undefined;
  let ProgressClass: typeof import('../progress.ts').Progress | undefined;
  void import('../progress.ts').then((m) => (ProgressClass = m.Progress));
  return {
    update: (p: { done: number; total?: number; indexed: number; duplicates: number; failed: number }) => {
      if (p.total === undefined || !ProgressClass) return;
      bar ??= new ProgressClass(p.total, 0, 1, 'img', 10_000);
      bar.update(Math.min(p.done, p.total), { indexed: String(p.indexed), duplicates: String(p.duplicates), failed: String(p.failed) });
    },
    stop: () => bar?.stop(),
  };
}

function printSummary(r: IndexReport, interrupted: boolean): void {
  const rate = r.seconds > 0 ? (r.indexed + r.duplicates) / r.seconds : 0;
  const lines = [`${interrupted ? 'interrupted: ' : ''}indexed ${r.indexed}, skipped as duplicates ${r.duplicates}, failed ${r.failed.length} (${r.seconds.toFixed(1)} s, ${rate.toFixed(0)} images/s)`];
  if (r.indexed + r.duplicates + r.failed.length + r.unread.length === 0) lines.push('no images found');
  if (r.failed.length) lines.push('failed:', ...r.failed.map((f) => `  ${f.path}: ${f.reason}`));
  if (r.unread.length) lines.push('could not read (the images in these were not indexed):', ...r.unread.map((u) => `  ${u.path}: ${u.reason}`));
  console.log(lines.join('\n'));
}

function printResults(res: SearchResponse): void {
  const lines = res.results.map((r, i) => `${String(i + 1).padStart(3)}  ${String(r.id).padStart(7)}  ${r.score.toFixed(4)}  ${(r.label ?? '-').padEnd(12)}  ${r.path ?? '(upload)'}`);
  if (lines.length === 0) lines.push('no results: the store is empty, or no image passes the filter');
  const c = res.cost;
  const tried = c.tried && c.tried.length > 1 ? ` (cascade: ${c.tried.join(' then ')}, ${c.escalation!.why})` : c.tried ? ` (cascade: ${c.escalation!.why})` : '';
  lines.push(`query encoder ${c.ffn}${tried}: ${(c.flops / 1e6).toFixed(2)} MFLOPs, encode ${c.encodeMs.toFixed(2)} ms, search ${c.searchMs.toFixed(2)} ms`);
  console.log(lines.join('\n'));
}

function formatStats(s: import('./stats.ts').StoreStatsReport): string {
  const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
  const lines = [
    `store ${s.dir}`,
    `images ${s.images} (${s.labelled} labelled), database ${mb(s.dbBytes)}, stored thumbnails ${s.thumbnails} (${mb(s.thumbnailBytes)}), kept originals ${s.originals} (${mb(s.originalBytes)})`,
  ];
  for (const m of s.models) {
    const h = m.hnsw;
    const state = s.kind === 'postgres'
      ? `pgvector HNSW index in the database${h.M === null ? '' : `, M ${h.M}, ef-construction ${h.efConstruction}`}`
      : h.file === null ? 'no HNSW file' : `HNSW ${mb(h.bytes)}, ${h.inSync ? 'in sync' : `stale (${h.staleReason}; rebuilt at the next open)`}, M ${h.M ?? '?'}, ef-construction ${h.efConstruction ?? '?'}`;
    lines.push(`${m.current ? '* ' : '  '}${m.modelId}: ${m.embeddings} embeddings of dimension ${m.dim ?? '?'}${m.regionVectors ? ` and ${m.regionVectors} region vectors` : ''}; ${state}`);
  }
  if (s.models.length === 0) lines.push('no embeddings yet');
  lines.push(`default search ef ${s.defaultEf}`);
  return lines.join('\n');
}
