// The jobs of distributed indexing: a batch of items (files by path, which workers read from the same path; archive
// members with their bytes, since a worker cannot seek into an archive it does not have), validated with zod on
// both sides. A job's id is a hash of what it holds (paths, labels, file sizes and times, member contents), so
// enqueueing the same sources again adds nothing: BullMQ ignores a job whose id it already has.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { z } from 'zod';
import type { IndexItem } from '../index/indexer.ts';
import { contentHash } from '../index/store.ts';

export const DEFAULT_QUEUE_NAME = 'matvit-index';
export const DEFAULT_JOB_ITEMS = 64; // images per job: one encoder batch
export const MAX_JOB_BYTES = 4 * 1024 * 1024; // member bytes carried by one job (Redis holds it until it is done)
const KEEP_SECONDS = 7 * 24 * 3600; // finished jobs are kept this long: re-enqueueing within it adds nothing

export const JobItem = z.object({
  path: z.string().min(1),
  label: z.string().nullable(),
  bytes: z.base64().optional(), // archive members
});
export const IndexJobData = z.object({
  items: z.array(JobItem).min(1),
  regionGrid: z.number().int().positive().optional(), // also store region vectors (IndexOptions.regionGrid)
});
export type IndexJobData = z.infer<typeof IndexJobData>;

/** What a worker returns for a job (BullMQ keeps it as the job's return value). */
export const IndexJobResult = z.object({
  indexed: z.number().int(),
  duplicates: z.number().int(),
  failed: z.array(z.object({ path: z.string(), reason: z.string() })),
  ids: z.array(z.number().int()).default([]), // of the images it indexed
});
export type IndexJobResult = z.input<typeof IndexJobResult>;

export const jobOptions = {
  attempts: 5, // an error of the store or the encoder (not a bad image: those are reported) is retried
  backoff: { type: 'exponential', delay: 2000 },
  removeOnComplete: { age: KEEP_SECONDS },
  removeOnFail: { age: KEEP_SECONDS },
} as const;

/** Groups items into jobs of at most `maxItems` items and MAX_JOB_BYTES of member bytes, in order. */
export async function* batchJobs(items: AsyncIterable<IndexItem>, maxItems = DEFAULT_JOB_ITEMS, regionGrid?: number): AsyncGenerator<{ id: string; data: IndexJobData }> {
  let batch: IndexJobData['items'] = [];
  let bytes = 0;
  // A job that also stores region vectors is another job than the same items without them.
  const newKey = () => crypto.createHash('sha256').update(regionGrid ? `regions ${regionGrid}\n` : '');
  let key = newKey();
  const data = (): IndexJobData => ({ items: batch, ...(regionGrid ? { regionGrid } : {}) });
  for await (const item of items) {
    const size = item.bytes?.length ?? 0;
    if (batch.length > 0 && (batch.length >= maxItems || bytes + size > MAX_JOB_BYTES)) {
      yield { id: jobId(key), data: data() };
      [batch, bytes, key] = [[], 0, newKey()];
    }
    batch.push({ path: item.path, label: item.label ?? null, ...(item.bytes ? { bytes: item.bytes.toString('base64') } : {}) });
    bytes += size;
    key.update(JSON.stringify([item.path, item.label ?? null, item.bytes ? contentHash(item.bytes) : fileVersion(item.path)]));
  }
  if (batch.length > 0) yield { id: jobId(key), data: data() };
}

/** The job's items as the indexer takes them. */
export const toIndexItems = (data: IndexJobData): IndexItem[] =>
  data.items.map((i) => ({ path: i.path, ...(i.label !== null ? { label: i.label } : {}), ...(i.bytes !== undefined ? { bytes: Buffer.from(i.bytes, 'base64') } : {}) }));

// BullMQ refuses custom ids that are integers or contain ':'.
const jobId = (h: crypto.Hash) => `index-${h.digest('hex').slice(0, 40)}`;

/** A file's size and modification time: a file changed since it was enqueued is a new job. */
function fileVersion(file: string): string {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st ? `${st.size}:${st.mtimeMs}` : 'missing';
}
