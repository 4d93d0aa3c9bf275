// `matvit index PATH... --queue redis://...`: walks the sources as local indexing does, enqueues them as BullMQ jobs
// (jobs.ts) and follows every worker's progress through QueueEvents until all its jobs are done, then reports as
// local indexing does: stored, duplicates, bad files with their reason, folders or archives that could not be read.
import { Job, Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { type IndexProgress, type IndexReport, sourceItems } from '../index/indexer.ts';
import { DEFAULT_JOB_ITEMS, DEFAULT_QUEUE_NAME, IndexJobResult, batchJobs, jobOptions } from './jobs.ts';

export interface EnqueueOptions {
  queueName?: string;
  jobItems?: number; // images per job
  regionGrid?: number; // the workers also store region vectors (IndexOptions.regionGrid)
  onProgress?: (p: IndexProgress) => void;
  /** Called once if no worker is connected when the jobs are in the queue (they wait for one). */
  onNoWorkers?: () => void;
  /** Stops waiting (the jobs stay queued and workers go on); the report says what was done so far. */
  signal?: AbortSignal;
}

/** IndexReport with its ids in the order the jobs finished (they run in parallel), and the queue's figures. */
export interface QueueReport extends IndexReport {
  jobs: number;
  progress: { done: number; total: number };
}

const ADD_CHUNK = 100; // jobs per addBulk
const RECONCILE_MS = 15_000; // job states are read again this often, besides the events

export async function indexThroughQueue(redis: Redis, sources: string[], opts: EnqueueOptions = {}): Promise<QueueReport> {
  const t0 = Date.now();
  const name = opts.queueName ?? DEFAULT_QUEUE_NAME;
  const queue = new Queue(name, { connection: redis });
  const eventsConnection = redis.duplicate(); // QueueEvents blocks on its connection: one of its own
  const events = new QueueEvents(name, { connection: eventsConnection });
  const report: QueueReport = { indexed: 0, duplicates: 0, failed: [], unread: [], ids: [], seconds: 0, jobs: 0, progress: { done: 0, total: 0 } };
  const size = new Map<string, number>(); // job id -> items
  const partial = new Map<string, number>(); // job id -> items done, from its progress events
  const finished = new Set<string>();
  let walked = false;
  let total = 0; // items enqueued
  let allDone: () => void = () => {};
  const done = new Promise<void>((resolve) => (allDone = resolve));

  const emit = () => {
    let n = 0;
    for (const [id, items] of size) n += finished.has(id) ? items : Math.min(items, partial.get(id) ?? 0);
    report.progress = { done: n, total };
    opts.onProgress?.({ done: n, total: walked ? total : undefined, indexed: report.indexed, duplicates: report.duplicates, failed: report.failed.length });
    if (walked && finished.size === size.size) allDone();
  };
  /** A job's result; `earlier`: it finished before this run (the same sources enqueued again): all duplicates now. */
  const finish = (id: string, result: IndexJobResult, earlier = false) => {
    if (!size.has(id) || finished.has(id)) return;
    finished.add(id);
    if (earlier) report.duplicates += result.indexed + result.duplicates;
    else {
      report.indexed += result.indexed;
      report.duplicates += result.duplicates;
      report.ids.push(...(result.ids ?? []));
    }
    report.failed.push(...result.failed);
    emit();
  };
  const failJob = (job: Job) => {
    const items: { path: string }[] = job.data?.items ?? [];
    finish(job.id!, { indexed: 0, duplicates: 0, failed: items.map((i) => ({ path: i.path, reason: `unreadable: the indexing job failed ${job.attemptsMade} times (${job.failedReason})` })) });
  };
  /** Reads the state of every job not yet finished: catches jobs finished before this run, and retries failed ones. */
  const reconcile = async () => {
    for (const id of size.keys()) {
      if (finished.has(id)) continue;
      const job = await Job.fromId(queue, id);
      if (!job) continue; // removed meanwhile (kept for a week): its completion event says the rest
      const state = await job.getState();
      const earlier = (job.finishedOn ?? Infinity) < t0;
      if (state === 'completed') finish(id, IndexJobResult.parse(job.returnvalue), earlier);
      else if (state === 'failed' && earlier) await job.retry(); // enqueued again: give it another chance
      else if (state === 'failed') failJob(job);
    }
  };

  events.on('progress', ({ jobId, data }) => {
    if (!size.has(jobId) || typeof data !== 'number') return;
    partial.set(jobId, Math.max(partial.get(jobId) ?? 0, data));
    emit();
  });
  events.on('completed', ({ jobId, returnvalue }) => {
    const parsed = IndexJobResult.safeParse(typeof returnvalue === 'string' ? JSON.parse(returnvalue) : returnvalue);
    if (parsed.success) finish(jobId, parsed.data);
  });
  events.on('failed', ({ jobId }) => {
    if (!size.has(jobId)) return;
    // Emitted when an attempt fails; only a job out of attempts is in the failed state.
    void Job.fromId(queue, jobId).then(async (job) => job && (await job.getState()) === 'failed' && failJob(job)).catch(() => {}); // reconcile retries
  });

  let timer: NodeJS.Timeout | undefined;
  try {
    await events.waitUntilReady();
    let chunk: { name: string; data: unknown; opts: object }[] = [];
    const flush = async () => {
      if (chunk.length) await queue.addBulk(chunk);
      chunk = [];
    };
    for await (const job of batchJobs(sourceItems(sources, report), opts.jobItems ?? DEFAULT_JOB_ITEMS, opts.regionGrid)) {
      if (opts.signal?.aborted) break;
      if (size.has(job.id)) continue; // the same items twice on the command line
      size.set(job.id, job.data.items.length);
      total += job.data.items.length;
      chunk.push({ name: 'index', data: job.data, opts: { ...jobOptions, jobId: job.id } });
      if (chunk.length >= ADD_CHUNK) await flush();
    }
    await flush();
    report.jobs = size.size;
    walked = true;
    await reconcile();
    emit();
    if (finished.size < size.size && (await queue.getWorkersCount()) === 0) opts.onNoWorkers?.();
    timer = setInterval(() => void reconcile().catch(() => {}), RECONCILE_MS);
    const stopped = new Promise<void>((resolve) => opts.signal?.addEventListener('abort', () => resolve(), { once: true }));
    await Promise.race([done, stopped]);
  } finally {
    clearInterval(timer);
    await events.close();
    await queue.close();
    eventsConnection.disconnect();
  }
  report.seconds = (Date.now() - t0) / 1000;
  return report;
}
