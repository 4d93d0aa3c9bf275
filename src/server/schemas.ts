// One zod schema per request input (parsed in the routes) and per response body (documentation only); all of them
// feed the OpenAPI document in openapi.ts, so the document cannot drift from what the handlers accept.
import { z } from 'zod';
import { FilterError, WHERE_SYNTAX, parseWhere } from '../index/filter.ts';
import { DEFAULT_K, MAX_EF, MAX_K } from '../index/limits.ts';

/** An integer given as a JSON number or as text (multipart fields and query strings are text). */
const intParam = (min: number, max: number) =>
  z
    .union([z.number(), z.string().trim().regex(/^[+-]?\d+$/, 'must be an integer')])
    .pipe(z.coerce.number<string | number>().int('must be an integer').min(min).max(max));

const numParam = () => z.union([z.number(), z.string().trim().regex(/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i, 'must be a number')]).pipe(z.coerce.number<string | number>());

const MAX_WHERE = 20;

/** Search filter clauses (src/index/filter.ts), one string or several (a repeated form field or query parameter). */
const WhereParam = z
  .union([z.string().max(8192), z.array(z.string().max(8192)).max(MAX_WHERE)])
  .transform((v, ctx) => {
    try {
      return parseWhere(typeof v === 'string' ? [v] : v);
    } catch (err) {
      if (!(err instanceof FilterError)) throw err;
      ctx.addIssue({ code: 'custom', message: err.message });
      return z.NEVER;
    }
  });

export const ImageId = intParam(1, Number.MAX_SAFE_INTEGER).describe('image id');

/** POST /api/search: multipart fields (with an `image` file) or a JSON body (with `id`). */
export const SearchParams = z
  .strictObject({
    id: ImageId.optional().describe('search with a stored image instead of an upload (JSON body or form field)'),
    k: intParam(1, MAX_K).default(DEFAULT_K).describe('number of results'),
    ffn: z
      .string()
      .trim()
      .min(1)
      .max(200)
      .optional()
      .describe("query encoder: S | M | L | XL, one granularity per layer such as 'S,S,M,M,L,XL', or 'auto' (a calibrated cascade: a cheap encoder, then a wide one when its result is uncertain) (default: the server's)"),
    budget: numParam()
      .pipe(z.number().gt(0, 'must be above 0').lte(1, 'must be at most 1'))
      .optional()
      .describe("fraction of XL's FLOPs the query encoder may spend; picks the best encoder within it (exclusive with ffn)"),
    ef: intParam(1, MAX_EF).optional().describe('HNSW search beam width (raised to k when smaller)'),
    where: WhereParam.optional().describe(
      `only images that pass every clause (AND): ${WHERE_SYNTAX}. label and meta.KEY take comma-separated values (any one matches; \\, is a comma); source is an absolute path (the file, a folder's images, an archive's members) or upload:; after (inclusive) and before take a date (YYYY-MM-DD, UTC) or a time with its zone. Repeat the form field or query parameter, or give a JSON array, for several clauses`,
    ),
  })
  .refine((p) => p.ffn === undefined || p.budget === undefined, { message: 'give either ffn or budget, not both', path: ['budget'] })
  ;
export type SearchParams = z.infer<typeof SearchParams>;

/** POST /api/images: multipart fields next to the `images` files. */
export const UploadParams = z
  .strictObject({
    label: z.string().trim().min(1).max(200).optional().describe('label stored with every uploaded image'),
    metadata: z
      .string()
      .max(4096)
      .optional()
      .describe('JSON object stored with every uploaded image')
      .transform((text, ctx) => {
        if (text === undefined) return undefined;
        try {
          const v = JSON.parse(text);
          if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
        } catch {
          // reported below
        }
        ctx.addIssue({ code: 'custom', message: 'must be a JSON object' });
        return z.NEVER;
      }),
  })
  ;
export type UploadParams = z.infer<typeof UploadParams>;

export const IdPath = z.strictObject({ id: ImageId });
export const ThumbQuery = z.strictObject({
  v: z
    .string()
    .regex(/^[0-9a-f]{16}$/, 'must be 16 lowercase hex digits (the start of the content hash, as thumbUrl gives it)')
    .optional()
    .describe('the content version from thumbUrl: with it the thumbnail is cached for good'),
});

// ---- responses ------------------------------------------------------------------------------------------------

export const SearchResult = z
  .object({
    id: z.number().int(),
    score: z.number().describe('cosine similarity to the query, in [-1, 1]; for a region match, the region\'s less the penalty'),
    region: z.boolean().describe('matched by one of the image\'s region vectors (the query looks like a part of it, such as a crop), not by the whole image'),
    label: z.string().nullable(),
    name: z.string().describe('file name the image was indexed from'),
    metadata: z.record(z.string(), z.unknown()),
    imageUrl: z.string(),
    thumbUrl: z.string(),
  })
  ;

export const SearchCost = z
  .object({
    ffn: z.string().describe('the submodel that encoded the query (canonical spec)'),
    flops: z.number().describe('FLOPs of one query encoding with it (0 when searching by a stored id: no encoding)'),
    flopsRel: z.number().describe("flops as a fraction of XL's"),
    encodeMs: z.number().describe('wall time from decoded image to embedding, including waiting for a shared batch'),
    searchMs: z.number().describe('HNSW search time'),
    decodeMs: z.number().describe('upload decode and resize time'),
  })
  ;

export const SearchResponse = z
  .object({
    results: z.array(SearchResult),
    cost: SearchCost,
    encoder: z.object({
      spec: z.string().describe('the encoder whose results these are'),
      chosenBy: z.enum(['default', 'ffn', 'budget', 'cascade', 'load']).describe("load: an auto query stepped down to a cheaper encoder by the server's load controller"),
      reason: z.string().optional(),
      fits: z.boolean().optional(),
      tried: z.array(z.string()).optional().describe('a cascade: the encoders run, in order'),
      escalated: z.boolean().optional().describe('a cascade: whether the first result was uncertain enough to run the wider encoder'),
      why: z.string().optional().describe("a cascade: the rule's verdict on the first result"),
    }),
    query: z.object({ k: z.number().int(), ef: z.number().int().optional(), id: z.number().int().optional() }),
  })
  ;
export type SearchResponse = z.infer<typeof SearchResponse>;

export const AddedImage = z
  .object({
    id: z.number().int(),
    created: z.boolean().describe('false when the same content was already stored (its existing id is returned)'),
    name: z.string(),
    imageUrl: z.string(),
    thumbUrl: z.string(),
  })
  ;
export const AddImagesResponse = z.object({ images: z.array(AddedImage) });
export type AddImagesResponse = z.infer<typeof AddImagesResponse>;

export const DeleteResponse = z.object({ deleted: z.number().int() });
export type DeleteResponse = z.infer<typeof DeleteResponse>;

export const EncoderEntry = z
  .object({
    spec: z.string(),
    family: z.enum(['uniform', 'mixnmatch']),
    flops: z.number(),
    flopsRel: z.number(),
    params: z.number(),
    adapter: z.boolean().describe("whether it runs with a query adapter (`matvit adapt`: a fitted map of its embedding toward XL's)"),
    accuracy: z.number().nullable().describe('1-NN accuracy from the calibration file, when measured'),
    encodeMs: z.number().nullable().describe('median batch-1 encode time measured by this server at start (null: not yet)'),
    servedEncodeMs: z.number().nullable().describe('median encode wait of the last queries served with it'),
  })
  ;
export const EncodersResponse = z
  .object({
    modelId: z.string(),
    xlFlops: z.number(),
    default: z.string().describe('the encoder used when a search names neither ffn nor budget'),
    calibration: z.object({ source: z.enum(['measured', 'default']), stale: z.boolean(), metric: z.string() }),
    encoders: z.array(EncoderEntry),
  })
  ;
export type EncodersResponse = z.infer<typeof EncodersResponse>;

export const StatsResponse = z
  .object({
    modelId: z.string(),
    images: z.number().int(),
    labelled: z.number().int(),
    indexed: z.number().int().describe('vectors in the HNSW index'),
    regions: z
      .object({ vectors: z.number().int(), penalty: z.number() })
      .describe('region vectors stored for the model (`matvit index --regions`), which an upload\'s search also matches, each less the penalty'),
    hnsw: z.object({ M: z.number(), efConstruction: z.number(), ef: z.number(), capacity: z.number() }),
    dbBytes: z.number(),
    limits: z.object({ maxUploadBytes: z.number(), maxPixels: z.number(), maxFiles: z.number(), maxUploadMemoryBytes: z.number() }),
    formats: z
      .array(z.object({ name: z.string(), label: z.string(), extensions: z.array(z.string()), contentType: z.string() }))
      .describe('the image formats uploads may be in (any other gets 415), as the page and `matvit index` take them'),
    server: z.object({
      uptimeSec: z.number(),
      searches: z.number().int(),
      batches: z.object({ count: z.number().int(), meanSize: z.number(), maxSize: z.number().int() }),
      eventLoopUtilization: z.number().describe('fraction of time the JS thread was busy since the last stats call'),
      uploads: z
        .object({ inFlightBytes: z.number(), peakBytes: z.number(), capacityBytes: z.number(), refused: z.number().int() })
        .describe('upload bytes held in memory now and at most, the budget, and requests refused for want of room (503/413)'),
      queue: z.number().int().describe('query images waiting for an encoder batch'),
      encoderThreadIds: z.array(z.number().int()).describe("Linux thread ids of the encoder pool's workers (scripts/bench-server reads their CPU time from /proc)"),
      encoderMix: z.record(z.string(), z.number().int()).describe("searches by the encoder that answered them ('S→XL': a cascade that escalated)"),
      load: z
        .object({
          sloMs: z.number(),
          step: z.number().int().describe('how far auto queries are stepped down the ladder (0: the normal auto plan)'),
          ladder: z.array(z.string()).describe('what auto runs, from the normal plan down to the cheapest'),
          p99Ms: z.number().nullable().describe('p99 latency of searches by upload over the last 2 s'),
          queued: z.number().int(),
          queueMs: z.number().describe('estimated time to clear the queue'),
          stepsDown: z.number().int(),
          stepsUp: z.number().int(),
        })
        .optional()
        .describe('the load controller (matvit serve --slo-ms)'),
    }),
  })
  ;
export type StatsResponse = z.infer<typeof StatsResponse>;

export const HealthResponse = z.object({ status: z.literal('ok'), modelId: z.string(), images: z.number().int() });
