// The store commands of the `matvit` CLI: index, search, rm, stats, reindex. Each parses its flags, calls the
// services (indexer.ts, search.ts, service.ts) and prints; heavy modules load only when a command runs.
import fs from 'node:fs';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { UsageError } from '../errors.ts';
import type { Encoder } from '../encoder/runtime.ts';
import type { IndexReport } from './indexer.ts';
import { WHERE_SYNTAX, parseWhere } from './filter.ts';
import { DEFAULT_K, MAX_EF, MAX_K } from './limits.ts';
import type { SearchResponse } from './search.ts';

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

const STORE_HELP = 'store folder: database (images, embeddings, thumbnails), HNSW file';

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
    .addOption(new Option('--store <dir>', STORE_HELP).env('MATVIT_STORE').default('./data'))
    .option('--model <file>', 'model checkpoint (default: the shipped model, models/matvit-cifar10)')
    .showHelpAfterError(false)
    .hook('preAction', async (cmd) => {
      // PostgreSQL stores (src/store/postgres.ts) are not wired into the commands yet (issue 15): a URL must
      // never be taken for a folder name, and a bad one is named.
      const { StoreError } = await import('./store.ts');
      const { parseStoreLocation } = await import('../store/location.ts');
      try {
        if (parseStoreLocation(cmd.opts().store).kind === 'postgres') throw new StoreError(`matvit ${name} does not use PostgreSQL stores yet: give a store folder`);
      } catch (err) {
        throw err instanceof StoreError ? new UsageError(err.message) : err;
      }
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
    .addHelpText(
      'after',
      `
Images already indexed with the same model (same content) are skipped, so a rerun after Ctrl-C or a crash indexes
only the rest. Bad files are listed with their reason and never stop the job.
${EXIT_HELP} 3: nothing could be indexed (no image found, or every file failed); 5: a folder or archive could
not be read (whole, or past some point: listed, everything else is indexed); 130: interrupted (what was committed
is kept). Some files failing still exits 0: they are listed in the summary.`,
    )
    .action(async (paths: string[], opts: CommonOptions & { batchSize: number; threads?: number }) => {
      for (const p of paths) if (!fs.existsSync(p)) throw new UsageError(`no such file or directory: ${p}`);
      const { defaultEncoderThreads, indexSources } = await import('./indexer.ts');
      const encoder = await loadEncoder(opts.model, opts.threads ?? (await defaultEncoderThreads()));
      const { openIndex } = await import('./service.ts');
      const handle = await withStore(() => openIndex(opts.store, encoder.modelId, encoder.dim, { writer: true, config: encoder.config }));
      const stop = new AbortController();
      const onSignal = () => {
        if (stop.signal.aborted) process.exit(EXIT.interrupted); // second Ctrl-C: committed batches are safe
        stop.abort();
        process.stderr.write('\nmatvit: stopping after the current batch (Ctrl-C again to quit at once)\n');
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const bar = progressReporter();
      let report: IndexReport;
      try {
        report = await indexSources(handle, encoder, paths, { batchSize: opts.batchSize, signal: stop.signal, onProgress: bar.update });
      } finally {
        bar.stop();
        handle.close();
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      const interrupted = stop.signal.aborted;
      if (opts.json) console.log(JSON.stringify({ ...report, interrupted }));
      else printSummary(report, interrupted);
      process.exitCode = interrupted ? EXIT.interrupted : report.unread.length > 0 ? EXIT.incomplete : report.indexed + report.duplicates === 0 ? EXIT.nothingIndexed : EXIT.ok;
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
      const handle = await openForReading(opts.store, encoder);
      try {
        const search = await import('./search.ts');
        let res: SearchResponse;
        if (bytes) {
          const { decodeImage } = await import('../data/images.ts');
          const decoded = await decodeImage(bytes, encoder.config.imageSize);
          const plan = await queryPlan(encoder, opts.model, opts);
          const cascade = plan.chosenBy === 'cascade' ? plan.rule : undefined;
          res = await search.searchByPixels(handle, (p, s) => encoder.encode([p], s).then((e) => e[0]), decoded.pixels, { k: opts.k, ffn: plan.spec, ef: opts.ef, cascade, filter });
        } else {
          res = await search.searchById(handle, opts.id!, { k: opts.k, ef: opts.ef, filter });
        }
        if (opts.json) {
          const results = res.results.map(({ id, score, label, path }) => ({ id, score, label, path }));
          console.log(JSON.stringify({ results, cost: res.cost }));
        } else {
          printResults(res);
        }
      } finally {
        handle.close();
      }
    });

  storeCommand(program, 'rm')
    .description('remove images (with their embeddings, thumbnails and kept originals) by id')
    .argument('<ids...>', 'image ids', (v: string, prev: number[] = []) => [...prev, positiveInt('image id')(v)])
    .option('--json', 'print {"removed": [...], "missing": [...]}')
    .addHelpText('after', `${EXIT_HELP} Ids that do not exist exit 2 after the others are removed.`)
    .action(async (ids: number[], opts: CommonOptions) => {
      const encoder = await loadEncoder(opts.model, 1);
      const { deleteImages, openIndex } = await import('./service.ts');
      const handle = await withStore(() => openIndex(requireStore(opts.store), encoder.modelId, encoder.dim, { writer: true, config: encoder.config }));
      let removed: number[];
      try {
        removed = deleteImages(handle, ids);
      } finally {
        handle.close();
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
      const { storeStats } = await import('./stats.ts');
      const modelId = await modelIdOrNull(opts.model);
      const stats = await withStore(() => storeStats(requireStore(opts.store), modelId));
      if (opts.json) console.log(JSON.stringify(stats));
      else console.log(formatStats(stats));
    });

  storeCommand(program, 'reindex')
    .description('rebuild the HNSW index of the model from the embeddings stored in SQLite')
    .option('--m <n>', 'graph degree M (default 16)', positiveInt('M', 128))
    .option('--ef-construction <n>', 'build beam width (default: HNSW_DEFAULTS)', positiveInt('ef-construction', 10_000))
    .option('--json', 'print the result as JSON')
    .addHelpText('after', EXIT_HELP)
    .action(async (opts: CommonOptions & { m?: number; efConstruction?: number }) => {
      const encoder = await loadEncoder(opts.model, 1);
      const { reindex } = await import('./stats.ts');
      const r = await withStore(() => reindex(requireStore(opts.store), encoder.modelId, encoder.dim, { M: opts.m, efConstruction: opts.efConstruction }));
      if (opts.json) console.log(JSON.stringify(r));
      else console.log(`rebuilt the HNSW index of ${r.modelId}: ${r.vectors} vectors, M ${r.M}, ef-construction ${r.efConstruction}, ${r.seconds.toFixed(1)} s -> ${r.file}`);
    });
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

async function openForReading(dir: string, encoder: Encoder) {
  const { openIndex } = await import('./service.ts');
  const handle = await withStore(() => openIndex(requireStore(dir), encoder.modelId, encoder.dim, { config: encoder.config }));
  if (handle.store.count(encoder.modelId) === 0) {
    const others = handle.store.stats().models.filter((m) => m.embeddings > 0);
    if (others.length > 0) {
      handle.close();
      throw new UsageError(`the store has no embeddings of model ${encoder.modelId} (it has ${others.map((m) => m.modelId).join(', ')}): index with this model, or pass the --model they were made with`);
    }
  }
  return handle;
}

/** Runs a store operation, turning store errors into one-line usage errors and a busy store into exit code 4. */
async function withStore<T>(fn: () => T | Promise<T>): Promise<T> {
  const { StoreError, StoreLockedError } = await import('./store.ts');
  try {
    return await fn();
  } catch (err) {
    if (err instanceof StoreLockedError) {
      process.stderr.write(`matvit: ${err.message}\n`);
      process.exit(EXIT.storeBusy);
    }
    if (err instanceof StoreError) throw new UsageError(err.message);
    throw err;
  }
}

function readQuery(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`cannot read query image "${file}": ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : (err as Error).message}`);
  }
}

/** The query's encoders (src/encoder/policy.ts); a calibrated choice says why on stderr. */
async function queryPlan(encoder: Encoder, model: string | undefined, req: { ffn?: string; budget?: number; maxEncodeMs?: number }) {
  const { loadCalibration } = await import('../encoder/budget.ts');
  const { planQuery } = await import('../encoder/policy.ts');
  try {
    const plan = planQuery(req, loadCalibration(model ?? encoder.modelPath, { modelId: encoder.modelId, config: encoder.config }));
    if (plan.reason) process.stderr.write(`matvit: query encoder ${plan.reason}\n`);
    return plan;
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
    const state = h.file === null ? 'no HNSW file' : `HNSW ${mb(h.bytes)}, ${h.inSync ? 'in sync' : `stale (${h.staleReason}; rebuilt at the next open)`}, M ${h.M ?? '?'}, ef-construction ${h.efConstruction ?? '?'}`;
    lines.push(`${m.current ? '* ' : '  '}${m.modelId}: ${m.embeddings} embeddings of dimension ${m.dim ?? '?'}; ${state}`);
  }
  if (s.models.length === 0) lines.push('no embeddings yet');
  lines.push(`default search ef ${s.defaultEf}`);
  return lines.join('\n');
}
