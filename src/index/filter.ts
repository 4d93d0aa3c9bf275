// Search filters: which stored images a search may return. One syntax everywhere (CLI `--where`, API `where`, the
// page): clauses `key=value[,value...]`, combined with AND:
//   label=cat,dog          the label is one of these
//   meta.album=trip        metadata key `album` (nested: meta.exif.camera) equals one of the values; a value matches
//                          the metadata string with that text, or the number / true / false it spells
//   source=/photos/2024    the source is that path, a path under it, or a member of that archive
//   after=2026-01-01       added at or after this time (a date is midnight UTC; a time needs its zone)
//   before=2026-02-01      added before this time
// Each backend turns an ImageFilter into its own SQL (store.ts, src/store/postgres.ts) from the same parts below.
import path from 'node:path';
import { UsageError } from '../errors.ts';

export interface ImageFilter {
  labels?: string[];
  meta?: { key: string[]; values: string[] }[]; // key: the path of object keys
  source?: string;
  after?: string; // ISO 8601 UTC with milliseconds, as the stores record added_at
  before?: string;
}

/** A malformed filter clause; the message names it. */
export class FilterError extends UsageError {
  override name = 'FilterError';
}

export const WHERE_SYNTAX = 'label=A,B | meta.KEY=V1,V2 | source=PATH | after=TIME | before=TIME';
const MAX_VALUES = 100;
const MAX_VALUE_LENGTH = 500;
const KEY_PART = /^[A-Za-z0-9_-]{1,100}$/;
const DATE = /^\d{4}-\d{2}-\d{2}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/i;

/**
 * Parses `--where` clauses into a filter (null when there are none). `resolveSource` turns a relative source path
 * into the absolute one the store records (the CLI resolves against its working folder; the API has none, so it
 * refuses relative paths).
 */
export function parseWhere(clauses: readonly string[], resolveSource: (p: string) => string = refuseRelative): ImageFilter | null {
  const f: ImageFilter = {};
  const seen = new Set<string>();
  for (const clause of clauses) {
    const eq = clause.indexOf('=');
    if (eq < 0) throw new FilterError(`filter "${clause}" is not key=value (${WHERE_SYNTAX})`);
    const key = clause.slice(0, eq).trim();
    const raw = clause.slice(eq + 1);
    if (seen.has(key)) throw new FilterError(`filter ${key} is given twice: list its values in one clause (${key}=A,B)`);
    seen.add(key);
    if (raw.trim() === '') throw new FilterError(`filter ${key}= has no value`);
    if (key === 'label') {
      f.labels = values(key, raw);
    } else if (key.startsWith('meta.')) {
      const parts = key.slice(5).split('.');
      if (!parts.every((p) => KEY_PART.test(p))) throw new FilterError(`filter ${key}: a metadata key is letters, digits, _ and -, with dots between nested keys`);
      (f.meta ??= []).push({ key: parts, values: values(key, raw) });
    } else if (key === 'source') {
      f.source = sourcePrefix(raw.trim(), resolveSource);
    } else if (key === 'after' || key === 'before') {
      f[key] = parseTime(key, raw.trim());
    } else {
      throw new FilterError(`unknown filter "${key}" (${WHERE_SYNTAX})`);
    }
  }
  if (f.after && f.before && f.after >= f.before) throw new FilterError(`filter after=${f.after} is not before before=${f.before}: no image can pass`);
  return seen.size === 0 ? null : f;
}

function refuseRelative(p: string): string {
  throw new FilterError(`filter source=${p}: give the path as the store records it (absolute, or upload:NAME)`);
}

/** Comma-separated values; `\,` is a comma inside a value. */
function values(key: string, raw: string): string[] {
  const out = raw.split(/(?<!\\),/).map((v) => v.trim().replaceAll('\\,', ','));
  if (out.some((v) => v === '')) throw new FilterError(`filter ${key}=${raw} has an empty value`);
  if (out.length > MAX_VALUES) throw new FilterError(`filter ${key} has ${out.length} values, at most ${MAX_VALUES}`);
  if (out.some((v) => v.length > MAX_VALUE_LENGTH)) throw new FilterError(`filter ${key} has a value over ${MAX_VALUE_LENGTH} characters`);
  return [...new Set(out)];
}

function sourcePrefix(p: string, resolve: (p: string) => string): string {
  if (p.length > 4096) throw new FilterError('filter source= is over 4096 characters');
  if (p.startsWith('upload:') || path.isAbsolute(p)) return p;
  return resolve(p);
}

function parseTime(key: string, v: string): string {
  const ms = DATE.test(v) ? Date.parse(`${v}T00:00:00Z`) : TIME.test(v) ? Date.parse(v) : NaN;
  if (!Number.isFinite(ms)) throw new FilterError(`filter ${key}=${v} is not a date (YYYY-MM-DD) or a time with its zone (2026-01-01T12:00:00Z)`);
  const iso = new Date(ms).toISOString();
  if (DATE.test(v) && !iso.startsWith(v)) throw new FilterError(`filter ${key}=${v} is not a date of the calendar`);
  return iso;
}

// ---- what the backends' SQL is made of --------------------------------------------------------------------------

/**
 * The metadata texts a filter value matches: the JSON string of it, and the JSON number / boolean it spells (so
 * meta.year=2024 finds {"year": 2024} and {"year": "2024"}). Compared with the stored metadata's JSON text at the
 * key, which both stores keep as JSON.stringify wrote it.
 */
export function metaTexts(values: readonly string[]): string[] {
  const out = new Set<string>();
  for (const v of values) {
    out.add(JSON.stringify(v));
    if (/^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(v) || v === 'true' || v === 'false') out.add(JSON.stringify(JSON.parse(v)));
  }
  return [...out];
}

/**
 * The source ranges of a prefix as [from, to) pairs in code-unit order, plus the exact path: a prefix ending in / or
 * : is taken as is; any other is a file, a folder (what is under "<p>/") or an archive (its members, "<p>:...").
 */
export function sourceRanges(prefix: string): { exact: string | null; ranges: [string, string][] } {
  const range = (p: string): [string, string] => [p, p.slice(0, -1) + String.fromCharCode(p.charCodeAt(p.length - 1) + 1)];
  if (prefix.endsWith('/') || prefix.endsWith(':')) return { exact: null, ranges: [range(prefix)] };
  return { exact: prefix, ranges: [range(`${prefix}/`), range(`${prefix}:`)] };
}

/** A canonical text of a filter: equal filters give equal keys (the cache of allowed ids is keyed by it). */
export function filterKey(f: ImageFilter): string {
  const meta = [...(f.meta ?? [])].map((m) => ({ key: m.key, values: [...m.values].sort() })).sort((a, b) => (a.key.join('.') < b.key.join('.') ? -1 : 1));
  return JSON.stringify([f.labels ? [...f.labels].sort() : null, meta, f.source ?? null, f.after ?? null, f.before ?? null]);
}
