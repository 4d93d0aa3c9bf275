// The Redis behind the indexing queue (BullMQ): its URL from --queue, and a check at start that it answers and is
// recent enough, so that a wrong URL or a server that is down is one line naming it instead of endless retries.
import { Redis } from 'ioredis';
import { redact } from '../store/location.ts';

/** BullMQ needs Redis 6.2 or later (its scripts use commands added then). */
export const MIN_REDIS = [6, 2, 0];
const CONNECT_TIMEOUT_MS = 5000;

export class QueueError extends Error {
  override name = 'QueueError';
}

export interface QueueLocation {
  url: string;
  display: string; // without the password
}

export function parseQueueLocation(location: string): QueueLocation {
  const display = redact(location);
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw new QueueError(`invalid Redis URL "${display}": expected redis://[USER:PASSWORD@]HOST:PORT[/DB]`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new QueueError(`unsupported queue URL "${display}": give redis://HOST:PORT (or rediss:// for TLS)`);
  if (!url.hostname) throw new QueueError(`invalid Redis URL "${display}": it names no host (redis://HOST:PORT)`);
  const db = url.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) throw new QueueError(`invalid Redis URL "${display}": the database after the port must be a number, got "${db}"`);
  return { url: location, display };
}

/**
 * A connection for BullMQ (which retries requests forever: maxRetriesPerRequest null), opened only after a first
 * connection showed the server answers and runs Redis >= 6.2.
 */
export async function connectQueue(loc: QueueLocation): Promise<Redis> {
  const probe = new Redis(loc.url, { lazyConnect: true, connectTimeout: CONNECT_TIMEOUT_MS, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  probe.on('error', () => {}); // reported by connect() below
  try {
    await probe.connect();
    const info = await probe.info('server');
    const version = /redis_version:([\d.]+)/.exec(info)?.[1] ?? '0';
    const have = version.split('.').map(Number);
    const first = MIN_REDIS.findIndex((m, i) => (have[i] ?? 0) !== m);
    if (first !== -1 && (have[first] ?? 0) < MIN_REDIS[first]) throw new QueueError(`Redis at ${loc.display} is version ${version}; the queue needs ${MIN_REDIS.join('.')} or later`);
  } catch (err) {
    if (err instanceof QueueError) throw err;
    throw new QueueError(`cannot reach Redis at ${loc.display}: ${(err as Error).message}`);
  } finally {
    probe.disconnect();
  }
  const redis = new Redis(loc.url, { maxRetriesPerRequest: null });
  redis.on('error', () => {}); // ioredis reconnects by itself; BullMQ reports what fails
  return redis;
}
