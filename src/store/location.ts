// Where a store lives, from --store / MATVIT_STORE: a folder (the embedded SQLite + hnswlib store) or a
// postgres:// URL (PostgreSQL with pgvector). Any other URL is refused rather than taken for a folder name.
import path from 'node:path';
import { StoreError } from '../index/store.ts';

export type StoreLocation = { kind: 'embedded'; dir: string } | { kind: 'postgres'; url: string; display: string };

const URL_LIKE = /^([a-z][a-z0-9+.-]*):\/\//i;
const POSTGRES_SCHEMES = new Set(['postgres', 'postgresql']);

export function parseStoreLocation(location: string): StoreLocation {
  const scheme = URL_LIKE.exec(location)?.[1].toLowerCase();
  if (scheme === undefined) return { kind: 'embedded', dir: path.resolve(location) };
  if (!POSTGRES_SCHEMES.has(scheme)) {
    throw new StoreError(`unsupported store URL "${redact(location)}": give a folder or postgres://USER@HOST:PORT/DATABASE`);
  }
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw new StoreError(`invalid PostgreSQL URL "${redact(location)}": expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`);
  }
  if (!url.hostname) throw new StoreError(`invalid PostgreSQL URL "${redact(location)}": it names no host (postgres://USER@HOST:PORT/DATABASE)`);
  if (url.pathname.length <= 1) throw new StoreError(`invalid PostgreSQL URL "${redact(location)}": it names no database (postgres://USER@HOST:PORT/DATABASE)`);
  return { kind: 'postgres', url: location, display: redact(location) };
}

/** The URL with its password replaced by *** (messages and logs must not carry it). */
export function redact(location: string): string {
  return location.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:***@');
}
