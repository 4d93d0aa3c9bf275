// The rules of the HTTP API, independent of express: which encoder a query uses, decoding uploads under the
// configured limits, all-or-nothing uploads, URLs of results, encoder timings and stats. Handlers call one method
// each. Its collaborators (store, encoder, batcher, indexer and search functions) are injected.
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { IMAGE_FORMATS } from '../data/formats.ts';
import { DEFAULT_MAX_PIXELS, type DecodedImage, ImageDecodeError, MAX_IMAGE_BYTES, } from '../data/images.ts';
import type { EncodeBatcher } from '../encoder/batcher.ts';
import { type Calibration, type CalibrationEntry, regionPenaltyOf } from '../encoder/budget.ts';
import { GRANULARITIES, countFlops, countParams } from '../encoder/config.ts';
import { EncoderPool } from '../encoder/pool.ts';
import { AUTO, type CascadeRule, type Escalation, type QueryPlan, autoLadder, planQuery } from '../encoder/policy.ts';
import type { Encoder, ImageEncoder } from '../encoder/runtime.ts';
import { NotFoundError } from '../errors.ts';
import { type ImageDecoder, sharedDecoder } from '../index/decoder.ts';
import type { ImageFilter } from '../index/filter.ts';
import { UPLOAD_PREFIX } from '../index/originals.ts';
import { contentHash } from '../index/store.ts';
import type { StoreBackend } from '../store/types.ts';
import { HttpError, decodeFailure } from './errors.ts';
import { UploadBudget } from './upload-budget.ts';
import type { LoadController } from './load-controller.ts';
import type { AddImagesResponse, DeleteResponse, EncodersResponse, SearchParams, SearchResponse, StatsResponse, UploadParams } from './schemas.ts';

export interface ServerLimits {
  maxUploadBytes: number; // per uploaded file (and, times maxFiles, per request body)
  maxPixels: number; // decoded width x height; larger images are rejected before decoding
  maxFiles: number; // files per POST /api/images
  maxUploadMemoryBytes: number; // upload bytes held in memory at once over all requests (upload-budget.ts)
}

// 256 MB of uploads in memory: with the encoders and decoding beside it the server stays under 1 GB RSS
// (scripts/bench-upload-memory.ts); a request larger than that (32 files of 19 MB) gets 413.
// the per-file limit is the image file reader's, so the CLI indexes what the server accepts and no more
export const DEFAULT_LIMITS: ServerLimits = { maxUploadBytes: MAX_IMAGE_BYTES, maxPixels: DEFAULT_MAX_PIXELS, maxFiles: 32, maxUploadMemoryBytes: 256 * 1024 * 1024 };

export interface Upload {
  name: string;
  bytes: Buffer;
}

// ---- collaborators (src/index/search.ts and src/index/indexer.ts), as the service uses them ---------------------

export interface SearchHitRow {
  id: number;
  score: number;
  label: string | null;
  path: string | null; // null for uploads
  source: string; // as stored (uploads: `upload:<name>`)
  contentHash: string;
  metadata: Record<string, unknown>;
  region?: boolean; // matched by a region vector
}
export interface SearchOutcome {
  results: SearchHitRow[];
  cost: { ffn: string; flops: number; encodeMs: number; searchMs: number; tried?: string[]; escalation?: Escalation };
}
export interface SearchOpts {
  k?: number;
  ffn?: string;
  ef?: number;
  cascade?: CascadeRule;
  filter?: ImageFilter | null;
  regionPenalty?: number;
}
export interface SearchApi {
  searchByPixels(store: StoreBackend, encode: (pixels: Uint8Array, spec: string) => Promise<Float32Array>, pixels: Uint8Array, opts: SearchOpts): Promise<SearchOutcome>;
  searchById(store: StoreBackend, id: number, opts: SearchOpts): Promise<SearchOutcome>;
}
export interface IndexerApi {
  indexBuffers(
    store: StoreBackend,
    encoder: ImageEncoder,
    items: { name: string; bytes: Buffer; label?: string; metadata?: Record<string, unknown>; decoded?: DecodedImage }[],
  ): Promise<({ id: number; created: boolean } | { name: string; error: ImageDecodeError })[]>;
  getOriginal(store: StoreBackend, id: number): Promise<{ bytes: Buffer; contentType: string }>;
  getThumbnail(store: StoreBackend, id: number): Promise<{ bytes: Buffer; contentType: string }>;
}

export interface ServiceDeps {
  store: StoreBackend;
  encoder: Encoder; // the model: submodel specs, config, and the encode-time measurements at start
  work?: ImageEncoder; // what runs encodings of uploads (the encoder pool; default: encoder)
  batcher: EncodeBatcher;
  calibration: Calibration;
  search: SearchApi;
  indexer: IndexerApi;
  limits?: Partial<ServerLimits>;
  defaultFfn?: string; // encoder of a search naming neither ffn nor budget (a spec, or 'auto')
  load?: LoadController; // steps auto queries down under load (none: auto never steps down)
}

const SERVED_WINDOW = 200; // encode times kept per submodel for servedEncodeMs

export const imageUrl = (id: number) => `/api/images/${id}`;
/** The content's version in a thumbnail URL: an id is never reused within a store, but a new store starts again at 1. */
export const contentVersion = (hash: string) => hash.slice(0, 16);
/** Names the image's content as well as its id, so that the response may be cached for good (immutable). */
export const thumbUrl = (id: number, hash: string) => `/api/images/${id}/thumb?v=${contentVersion(hash)}`;

/** A short display name: the member path of an archive entry, the file name otherwise. */
export function displayName(source: string): string {
  const m = /\.(?:tar\.gz|tgz|tar):(.+)$/i.exec(source);
  return m ? m[1] : path.basename(source);
}

/** What the response says about the encoders: the plan, the encoder that answered, and a cascade's verdict. */
function describeEncoder(plan: QueryPlan, cost: SearchOutcome['cost']): SearchResponse['encoder'] {
  const { rule: _rule, ef: _ef, ...chosen } = plan as QueryPlan & { rule?: CascadeRule; ef?: number }; // ef: in `query`
  const cascade = cost.tried && cost.escalation ? { tried: cost.tried, escalated: cost.escalation.escalate, why: cost.escalation.why } : {};
  return { ...chosen, spec: cost.ffn, ...cascade };
}

/** The name an uploaded image was given (its source is `upload:<name>`). */
const uploadName = (source: string) => (source.startsWith(UPLOAD_PREFIX) ? source.slice(UPLOAD_PREFIX.length) : displayName(source));

export class SearchService {
  readonly limits: ServerLimits;
  readonly uploads: UploadBudget; // the upload bytes in memory, over all requests
  readonly defaultFfn: string;
  private readonly xlFlops: number;
  private readonly regionPenalty: number; // for a store that holds region vectors
  private readonly decoder: ImageDecoder;
  private readonly measured = new Map<string, number>(); // spec -> median batch-1 encode ms, measured at start
  private readonly served = new Map<string, number[]>(); // spec -> recent encode waits
  private searches = 0;
  private closing = false;
  private readonly batches = { count: 0, images: 0, max: 0 }; // query encoder runs so far
  private readonly mix = new Map<string, number>(); // searches by the encoder that answered (a cascade: 'S→XL')
  private readonly inflight = new Set<Promise<void>>();
  private readonly started = performance.now();
  private elu = performance.eventLoopUtilization();

  constructor(private readonly deps: ServiceDeps) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    this.uploads = new UploadBudget(this.limits.maxUploadMemoryBytes);
    const byDefault = deps.defaultFfn ?? 'XL';
    this.defaultFfn = byDefault.toLowerCase() === AUTO ? AUTO : deps.encoder.submodel(byDefault).spec;
    const c = deps.encoder.config;
    this.xlFlops = countFlops(c, deps.encoder.submodel('XL'));
    this.regionPenalty = regionPenaltyOf(deps.calibration);
    this.decoder = sharedDecoder(c.imageSize);
  }

  get store(): StoreBackend {
    return this.deps.store;
  }

  // ---- search ------------------------------------------------------------------------------------------------

  async search(params: SearchParams, upload?: Upload): Promise<SearchResponse> {
    return this.track(() => this.searchNow(params, upload));
  }

  private async searchNow(params: SearchParams, upload?: Upload): Promise<SearchResponse> {
    if (upload && params.id !== undefined) throw new HttpError('bad_request', 'give either an uploaded image or an id, not both');
    if (!upload && params.id === undefined) throw new HttpError('bad_request', 'upload an image (multipart field "image") or give the "id" of a stored image');
    const t0 = performance.now();
    const plan = this.plan(params);
    // The plan's beam (a cheap encoder's calibrated one, or a narrower one under load) applies to an encoder's query;
    // a stored image's own XL embedding searches with the index's.
    const ef = params.ef ?? (upload ? plan.ef : undefined);
    const opts: SearchOpts = { k: params.k, ffn: plan.spec, ef, filter: params.where, regionPenalty: this.regionPenalty, ...(plan.chosenBy === 'cascade' && upload ? { cascade: plan.rule } : {}) };
    let outcome: SearchOutcome;
    let decodeMs = 0;
    if (upload) {
      const pixels = await this.decodeFailing(upload, () => this.decoder.pixels(upload.bytes, this.limits.maxPixels));
      decodeMs = performance.now() - t0;
      outcome = await this.deps.search.searchByPixels(this.deps.store, (px, spec) => this.deps.batcher.encode(px, spec), pixels, opts);
    } else {
      outcome = await this.deps.search.searchById(this.deps.store, params.id!, opts);
    }
    this.searches++;
    if (this.deps.batcher.batchSizes.length >= 1000) this.foldBatches();
    const { cost } = outcome;
    if (upload && !cost.tried) this.recordServed(cost.ffn, cost.encodeMs);
    if (upload) this.deps.load?.recordLatency(performance.now() - t0);
    if (upload) {
      // The encoder mix counts encoder runs: a search by a stored id runs none.
      const answered = cost.tried && cost.tried.length > 1 ? cost.tried.join('→') : cost.ffn;
      this.mix.set(answered, (this.mix.get(answered) ?? 0) + 1);
    }
    const encoder = upload ? describeEncoder(plan, cost) : { chosenBy: plan.chosenBy, spec: cost.ffn, reason: 'a stored image: its own XL embedding is the query, no encoder runs' };
    return {
      results: outcome.results.map((r) => ({
        id: r.id,
        score: round(r.score, 6),
        label: r.label ?? null,
        name: r.path !== null ? displayName(r.path) : uploadName(r.source),
        metadata: r.metadata ?? {},
        region: r.region ?? false,
        imageUrl: imageUrl(r.id),
        thumbUrl: thumbUrl(r.id, r.contentHash),
      })),
      cost: { ffn: cost.ffn, flops: cost.flops, flopsRel: round(cost.flops / this.xlFlops, 4), encodeMs: round(cost.encodeMs, 3), searchMs: round(cost.searchMs, 3), decodeMs: round(decodeMs, 3) },
      encoder,
      query: { k: params.k, ...(ef !== undefined ? { ef } : {}), ...(params.id !== undefined ? { id: params.id } : {}) },
    };
  }

  /**
   * The encoders a search runs (src/encoder/policy.ts), with canonical specs; a bad ffn throws ConfigError. An auto
   * query asks the load controller how far down to step first.
   */
  plan(p: Pick<SearchParams, 'ffn' | 'budget'>): QueryPlan {
    const auto = p.budget === undefined && (p.ffn ?? this.defaultFfn).toLowerCase() === AUTO;
    const step = auto && this.deps.load ? this.deps.load.update(this.deps.batcher.pending) : 0;
    const plan = planQuery(p, this.deps.calibration, this.defaultFfn, step);
    return { ...plan, spec: this.deps.encoder.submodel(plan.spec).spec };
  }

  /** Decodes an upload to the model's input under the pixel limit; failures become 413/415/422 naming the file. */
  decode(upload: Upload): Promise<DecodedImage> {
    return this.decodeFailing(upload, () => this.decoder.decode(upload.bytes, this.limits.maxPixels));
  }

  private async decodeFailing<T>(upload: Upload, decode: () => Promise<T>): Promise<T> {
    try {
      return await decode();
    } catch (err) {
      if (err instanceof ImageDecodeError) throw decodeFailure(err, upload.name);
      throw err;
    }
  }

  // ---- images ------------------------------------------------------------------------------------------------

  /** Indexes uploads with XL. All or nothing: every file is decoded first, and one bad file stores none. */
  async addImages(uploads: Upload[], params: UploadParams): Promise<AddImagesResponse> {
    return this.track(() => this.addImagesNow(uploads, params));
  }

  private async addImagesNow(uploads: Upload[], params: UploadParams): Promise<AddImagesResponse> {
    if (uploads.length === 0) throw new HttpError('bad_request', 'no image uploaded: send one or more files in the multipart field "images"');
    const decoded: DecodedImage[] = [];
    for (const u of uploads) decoded.push(await this.decode(u)); // throws before anything is stored
    const results = await this.deps.indexer.indexBuffers(
      this.deps.store,
      this.deps.work ?? this.deps.encoder,
      uploads.map((u, i) => ({ name: u.name, bytes: u.bytes, decoded: decoded[i], ...(params.label ? { label: params.label } : {}), ...(params.metadata ? { metadata: params.metadata } : {}) })),
    );
    const failed = results.find((r): r is { name: string; error: ImageDecodeError } => 'error' in r);
    if (failed) throw decodeFailure(failed.error, failed.name); // not expected: the same bytes decoded above
    return {
      images: results.map((r, i) => {
        const { id, created } = r as { id: number; created: boolean };
        return { id, created, name: uploads[i].name, imageUrl: imageUrl(id), thumbUrl: thumbUrl(id, contentHash(uploads[i].bytes)) };
      }),
    };
  }

  async deleteImage(id: number): Promise<DeleteResponse> {
    return this.track(async () => {
      const gone = await this.deps.store.delete([id]);
      if (gone.length === 0) throw new NotFoundError(`no image with id ${id}`);
      return { deleted: id };
    });
  }

  async original(id: number): Promise<{ bytes: Buffer; contentType: string }> {
    return this.deps.indexer.getOriginal(this.deps.store, id); // it throws NotFoundError for an unknown id
  }

  /**
   * The thumbnail of an image (the image itself when it is small, else a WebP: getThumbnail). `version`, from the
   * URL's v: the content it names must be the image's; then the response never changes (`immutable`).
   */
  async thumbnail(id: number, version?: string): Promise<{ bytes: Buffer; contentType: string; immutable: boolean }> {
    if (version !== undefined) {
      const [row] = await this.deps.store.rows([id]);
      if (!row) throw new NotFoundError(`no image with id ${id}`);
      if (contentVersion(row.contentHash) !== version) throw new NotFoundError(`image ${id} does not have the content v=${version} names (the store was rebuilt since: search again)`);
    }
    const thumb = await this.deps.indexer.getThumbnail(this.deps.store, id); // it throws NotFoundError for an unknown id
    return { ...thumb, immutable: version !== undefined };
  }

  // ---- encoders and stats ------------------------------------------------------------------------------------

  /** The query encoders the page offers: uniform S..XL plus calibrated Mix'n'Match frontier entries. */
  encoderSpecs(): string[] {
    const frontier = this.deps.calibration.source === 'measured' ? this.deps.calibration.frontier.map((e) => e.spec) : [];
    const specs: string[] = [...GRANULARITIES];
    for (const s of frontier) {
      try {
        const canon = this.deps.encoder.submodel(s).spec;
        if (!specs.includes(canon)) specs.push(canon);
      } catch {
        // a calibration entry this model cannot run (other depth): leave it out
      }
    }
    return specs;
  }

  encoders(): EncodersResponse {
    const cal = this.deps.calibration;
    const c = this.deps.encoder.config;
    const bySpec = new Map<string, CalibrationEntry>(cal.frontier.map((e) => [e.spec, e]));
    const encoders = this.encoderSpecs()
      .map((spec) => {
        const sub = this.deps.encoder.submodel(spec);
        const flops = countFlops(c, sub);
        const served = this.served.get(spec);
        return {
          spec,
          family: sub.granularities.every((g) => g === sub.granularities[0]) ? ('uniform' as const) : ('mixnmatch' as const),
          flops,
          flopsRel: round(flops / this.xlFlops, 4),
          params: countParams(c, sub),
          adapter: this.deps.encoder.adapterOf(spec) !== undefined,
          accuracy: cal.source === 'measured' ? (bySpec.get(spec)?.accuracy ?? null) : null,
          encodeMs: this.measured.has(spec) ? round(this.measured.get(spec)!, 3) : null,
          servedEncodeMs: served?.length ? round(median(served), 3) : null,
        };
      })
      .sort((a, b) => a.flops - b.flops);
    return {
      modelId: this.deps.encoder.modelId,
      xlFlops: this.xlFlops,
      default: this.defaultFfn,
      calibration: { source: cal.source, stale: cal.stale ?? false, metric: cal.metric },
      encoders,
    };
  }

  /**
   * Opens each encoder's onnxruntime session (so no query pays for it) and measures its median batch-1 encode time,
   * the figure the page shows next to the cost control.
   */
  async warmUp(specs = this.encoderSpecs(), runs = 15): Promise<void> {
    const size = this.deps.encoder.config.imageSize;
    const image = new Uint8Array(size * size * 3).map((_, i) => (i * 37) % 256);
    for (const spec of specs) {
      await this.deps.encoder.encode([image], spec);
      const ms: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        await this.deps.encoder.encode([image], spec);
        ms.push(performance.now() - t0);
      }
      this.measured.set(this.deps.encoder.submodel(spec).spec, median(ms));
    }
  }

  async stats(): Promise<StatsResponse> {
    const [s, index] = await Promise.all([this.deps.store.stats(), this.deps.store.indexInfo()]);
    this.foldBatches();
    const b = this.batches;
    const elu = performance.eventLoopUtilization(this.elu);
    this.elu = performance.eventLoopUtilization();
    return {
      modelId: this.deps.encoder.modelId,
      images: s.images,
      labelled: s.labelled,
      indexed: index.vectors,
      regions: { vectors: s.models.find((m) => m.modelId === this.deps.store.modelId)?.regionVectors ?? 0, penalty: this.regionPenalty },
      hnsw: { M: index.M, efConstruction: index.efConstruction, ef: index.ef, capacity: index.capacity },
      dbBytes: s.dbBytes,
      limits: { ...this.limits },
      formats: IMAGE_FORMATS.map(({ name, label, extensions, contentType }) => ({ name, label, extensions, contentType })),
      server: {
        uptimeSec: round((performance.now() - this.started) / 1000, 1),
        searches: this.searches,
        batches: { count: b.count, meanSize: b.count ? round(b.images / b.count, 2) : 0, maxSize: b.max },
        eventLoopUtilization: round(elu.utilization, 4),
        uploads: this.uploads.figures,
        queue: this.deps.batcher.pending,
        encoderThreadIds: this.deps.work instanceof EncoderPool ? [...this.deps.work.threadIds] : [],
        encoderMix: Object.fromEntries(this.mix),
        ...(this.deps.load ? { load: { ...this.loadState(), ladder: autoLadder(this.deps.calibration) } } : {}),
      },
    };
  }

  private loadState() {
    // A read-only view: polling the stats must not step the controller (only queries do).
    const { p99Ms, queueMs, ...rest } = this.deps.load!.snapshot();
    return { ...rest, p99Ms: p99Ms === null ? null : round(p99Ms, 2), queueMs: round(queueMs, 2) };
  }

  async health(): Promise<{ status: 'ok'; modelId: string; images: number }> {
    return { status: 'ok', modelId: this.deps.encoder.modelId, images: await this.deps.store.count() };
  }

  /**
   * Stops taking new searches and uploads (503) and waits for those in flight. A request whose client went away
   * keeps running until it settles, so waiting for connections to close is not enough before closing the store
   * and the encoders under it.
   */
  async drain(): Promise<void> {
    this.closing = true;
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  private track<T>(op: () => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(new HttpError('service_unavailable', 'the server is shutting down'));
    const p = op();
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.inflight.add(settled);
    void settled.then(() => this.inflight.delete(settled));
    return p;
  }

  /** Moves the batcher's list of batch sizes (which only grows) into running totals. */
  private foldBatches(): void {
    const sizes = this.deps.batcher.batchSizes;
    for (const n of sizes) {
      this.batches.count++;
      this.batches.images += n;
      this.batches.max = Math.max(this.batches.max, n);
    }
    sizes.length = 0;
  }

  private recordServed(spec: string, ms: number): void {
    const list = this.served.get(spec) ?? [];
    list.push(ms);
    if (list.length > SERVED_WINDOW) list.splice(0, list.length - SERVED_WINDOW);
    this.served.set(spec, list);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;
