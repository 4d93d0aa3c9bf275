// `matvit worker`: takes indexing jobs (jobs.ts) from the BullMQ queue, encodes their images with XL and writes them
// to the shared store, reporting progress on the job. Any number run at once, on any machines: the store stores each
// content once (content-hash dedup, each batch one transaction), so two workers meeting the same image, or a job run
// again, store nothing twice. A worker that dies mid-job (SIGKILL, a lost machine) stops renewing the job's lock;
// BullMQ's stalled-job check then puts the job back and another worker runs it, skipping what was committed.
import { UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { type ImageEncoder } from '../encoder/runtime.ts';
import { indexItems } from '../index/indexer.ts';
import { logger } from '../log.ts';
import type { StoreBackend } from '../store/types.ts';
import { DEFAULT_QUEUE_NAME, IndexJobData, type IndexJobResult, toIndexItems } from './jobs.ts';

export interface WorkerOptions {
  queueName?: string;
  concurrency?: number; // jobs in flight: while one commits, the next decodes and encodes (default 2)
  batchSize?: number; // images per encoder run
  /** How long a job's lock lasts without renewal: a dead worker's job is taken over after about this long. */
  stallSeconds?: number;
}

export const DEFAULT_STALL_SECONDS = 30;

/** Runs jobs until `signal` aborts; then finishes the jobs in hand (their images are committed) and returns. */
export async function runWorker(redis: Redis, store: StoreBackend, encoder: ImageEncoder, signal: AbortSignal, opts: WorkerOptions = {}): Promise<{ jobs: number; indexed: number }> {
  const lockDuration = (opts.stallSeconds ?? DEFAULT_STALL_SECONDS) * 1000;
  const totals = { jobs: 0, indexed: 0 };
  const worker = new Worker<IndexJobData, IndexJobResult>(
    opts.queueName ?? DEFAULT_QUEUE_NAME,
    async (job) => {
      const parsed = IndexJobData.safeParse(job.data);
      if (!parsed.success) throw new UnrecoverableError(`not an indexing job: ${parsed.error.issues[0]?.message}`);
      const r = await indexItems(store, encoder, toIndexItems(parsed.data), {
        batchSize: opts.batchSize,
        regionGrid: parsed.data.regionGrid,
        onProgress: (p) => void job.updateProgress(p.done).catch(() => {}), // progress is advisory; the result is not
      });
      totals.jobs++;
      totals.indexed += r.indexed;
      logger.info({ job: job.id, indexed: r.indexed, duplicates: r.duplicates, failed: r.failed.length, attempt: job.attemptsMade + 1 }, 'job done');
      return { indexed: r.indexed, duplicates: r.duplicates, failed: r.failed, ids: r.ids };
    },
    {
      connection: redis,
      concurrency: opts.concurrency ?? 2,
      lockDuration,
      stalledInterval: Math.max(1000, lockDuration / 2),
      maxStalledCount: 3, // a job whose worker died this many times fails (a poison job must not kill every worker)
      autorun: false,
    },
  );
  worker.on('failed', (job, err) => logger.warn({ job: job?.id, attempt: job?.attemptsMade, err: err.message }, 'job failed'));
  worker.on('error', (err) => logger.warn({ err: err.message }, 'queue error'));
  const running = worker.run();
  await worker.waitUntilReady();
  await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
  await worker.close(); // waits for the jobs in hand: their batches commit, their results reach the queue
  await running;
  return totals;
}
