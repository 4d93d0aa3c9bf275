// Searching the store: a query image (decoded pixels) is encoded with the requested submodel and looked up in the
// HNSW index of the XL embeddings; or a stored image's own XL embedding is the query. Results carry the stored
// rows' label, path and metadata, and the cost of the query.
import { countFlops, parseSubmodel } from '../encoder/config.ts';
import { type CascadeRule, type Escalation, shouldEscalate } from '../encoder/policy.ts';
import { NotFoundError, UsageError } from '../errors.ts';
import type { ImageFilter } from './filter.ts';
import { DEFAULT_K, MAX_EF, MAX_K } from './limits.ts';
import { sourcePath } from './originals.ts';
import type { SearchHit } from './hnsw.ts';
import type { StoreBackend } from '../store/types.ts';

export interface SearchOptions {
  k?: number; // results wanted (default DEFAULT_K, at most MAX_K: limits.ts)
  ffn?: string; // query encoder: S | M | L | XL | a per-layer list (default XL)
  ef?: number; // HNSW beam width (default: the index's, HNSW_DEFAULTS.ef; raised to k when smaller)
  cascade?: CascadeRule; // run this cascade (src/encoder/policy.ts) instead of `ffn`
  filter?: ImageFilter | null; // only images that pass (filter.ts)
  regionPenalty?: number; // an upload also matches stored region vectors, less this (StoreBackend.nearest)
}

export interface SearchResult {
  id: number;
  score: number; // cosine similarity
  label: string | null;
  path: string | null; // file path, or `archive:member`; null for uploads
  source: string; // as stored: the path, or `upload:<name>`
  contentHash: string; // names the content (the thumbnail URL carries it)
  metadata: Record<string, unknown>;
  region: boolean; // matched by one of its region vectors (a part of it), not by the whole image
}

export interface SearchResponse {
  results: SearchResult[];
  cost: {
    ffn: string; // canonical spec of the query encoder that gave the results
    flops: number; // of encoding the query, every encoder tried included (0 for searchById)
    encodeMs: number;
    searchMs: number;
    tried?: string[]; // a cascade: the encoders run, in order
    escalation?: Escalation; // a cascade: the rule's verdict on the first encoder's results
  };
}

/** Encodes `pixels` (size x size x 3 RGB, as decodeImage returns them) with `ffn` and returns its nearest images. */
export async function searchByPixels(
  store: StoreBackend,
  encode: (pixels: Uint8Array, spec: string) => Promise<Float32Array>,
  pixels: Uint8Array,
  opts: SearchOptions = {},
): Promise<SearchResponse> {
  const { k, ef } = checkOptions(opts);
  const config = store.config;
  if (!config) {
    throw new Error(`the model config of "${store.modelId}" is unknown: open the store with { config: encoder.config }`);
  }
  const pass = async (spec: string, k: number) => {
    const sub = parseSubmodel(spec, config); // throws ConfigError for a bad spec
    const t0 = performance.now();
    const query = await encode(pixels, sub.spec);
    const t1 = performance.now();
    const hits = await store.nearest(query, k, ef, opts.filter, opts.regionPenalty);
    return { spec: sub.spec, flops: countFlops(config, sub), results: await rows(store, hits), encodeMs: t1 - t0, searchMs: performance.now() - t1 };
  };
  const rule = opts.cascade;
  if (!rule) {
    const { results, ...cost } = await pass(opts.ffn ?? 'XL', k);
    return { results, cost: { ffn: cost.spec, flops: cost.flops, encodeMs: cost.encodeMs, searchMs: cost.searchMs } };
  }
  const first = await pass(rule.first, Math.max(k, rule.agreementK)); // the rule looks at agreementK results
  const escalation = shouldEscalate(rule, first.results);
  const second = escalation.escalate ? await pass(rule.then, k) : null;
  const last = second ?? first;
  return {
    results: last.results.slice(0, k),
    cost: {
      ffn: last.spec,
      flops: first.flops + (second?.flops ?? 0),
      encodeMs: first.encodeMs + (second?.encodeMs ?? 0),
      searchMs: first.searchMs + (second?.searchMs ?? 0),
      tried: second ? [first.spec, second.spec] : [first.spec],
      escalation,
    },
  };
}

/** The images nearest to stored image `id` (by its XL embedding; the image itself is left out). */
export async function searchById(store: StoreBackend, id: number, opts: SearchOptions = {}): Promise<SearchResponse> {
  const { k, ef } = checkOptions(opts);
  if (!Number.isSafeInteger(id) || id <= 0) throw new UsageError(`image id must be a positive integer, got ${id}`);
  if ((await store.rows([id])).length === 0) throw new NotFoundError(`no image with id ${id}`);
  const query = await store.embedding(id);
  if (!query) throw new NotFoundError(`image ${id} has no embedding for model ${store.modelId}: index it again with this model`);
  const t0 = performance.now();
  const hits = await store.nearest(query, k + 1, ef === undefined ? undefined : Math.max(ef, k + 1), opts.filter);
  const searchMs = performance.now() - t0;
  const others = hits.filter((h) => h.id !== id).slice(0, k);
  return { results: await rows(store, others), cost: { ffn: 'XL', flops: 0, encodeMs: 0, searchMs } };
}

function checkOptions(opts: SearchOptions): { k: number; ef: number | undefined } {
  const k = opts.k ?? DEFAULT_K;
  if (!Number.isInteger(k) || k < 1 || k > MAX_K) throw new UsageError(`k must be an integer from 1 to ${MAX_K}, got ${opts.k}`);
  const ef = opts.ef;
  if (ef !== undefined && (!Number.isInteger(ef) || ef < 1 || ef > MAX_EF)) throw new UsageError(`ef must be an integer from 1 to ${MAX_EF}, got ${ef}`);
  return { k, ef };
}

/** Hits joined with their stored rows, best first; ids deleted since the index was loaded are dropped. */
async function rows(store: StoreBackend, hits: SearchHit[]): Promise<SearchResult[]> {
  const byId = new Map((await store.rows(hits.map((h) => h.id))).map((r) => [r.id, r]));
  return hits.flatMap((h) => {
    const r = byId.get(h.id);
    return r ? [{ id: h.id, score: h.score, label: r.label, path: sourcePath(r.source), source: r.source, contentHash: r.contentHash, metadata: r.metadata, region: h.region ?? false }] : [];
  });
}
