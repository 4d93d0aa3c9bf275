// The one error middleware: every error a request can raise becomes a JSON body { error: { code, message } } with
// a stable machine-readable code. Known errors map to 4xx; anything else is logged and becomes a generic 500.
import type { ErrorRequestHandler, RequestHandler } from 'express';
import multer from 'multer';
import { z } from 'zod';
import { ImageDecodeError } from '../data/images.ts';
import { BudgetError } from '../encoder/budget.ts';
import { ConfigError } from '../encoder/config.ts';
import { NotFoundError, UsageError } from '../errors.ts';
import { logger } from '../log.ts';

export const ERROR_CODES = {
  bad_request: 400,
  not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  unsupported_media_type: 415,
  undecodable_image: 422,
  service_unavailable: 503,
  insufficient_storage: 507,
  internal_error: 500,
} as const;
export type ErrorCode = keyof typeof ERROR_CODES;

/** An error that already knows its HTTP status and code (raised by the server's own checks). */
export class HttpError extends Error {
  override name = 'HttpError';
  readonly status: number;
  constructor(readonly code: ErrorCode, message: string, readonly details?: Record<string, unknown>) {
    super(message);
    this.status = ERROR_CODES[code];
  }
}

/** What the client sees; also the OpenAPI schema of every error response. */
export const ErrorBody = z
  .object({
    error: z.object({
      code: z.enum(Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]]).describe('stable machine-readable code'),
      message: z.string().describe('human-readable explanation'),
      details: z.record(z.string(), z.unknown()).optional().describe('extra context, e.g. the failing file or the decode reason'),
    }),
  })
  ;
export type ErrorBody = z.infer<typeof ErrorBody>;

const DECODE_CODES: Record<ImageDecodeError['reason'], ErrorCode> = {
  'not-image': 'unsupported_media_type',
  empty: 'undecodable_image',
  corrupt: 'undecodable_image',
  unreadable: 'undecodable_image',
  'too-large': 'payload_too_large',
};

/** Wraps an image decode failure of an uploaded file, keeping the file's name for the message. */
export function decodeFailure(err: ImageDecodeError, file: string): HttpError {
  return new HttpError(DECODE_CODES[err.reason], `${file}: ${err.message}`, { file, reason: err.reason });
}

/** Maps any thrown value to the response it deserves. Exported for tests. */
export function toHttpError(err: unknown, limits: { maxUploadBytes: number }): HttpError | null {
  if (err instanceof HttpError) return err;
  if (err instanceof z.ZodError) {
    const message = err.issues.map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message)).join('; ');
    return new HttpError('bad_request', message, { issues: err.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) });
  }
  if (err instanceof UsageError || err instanceof ConfigError || err instanceof BudgetError) return new HttpError('bad_request', err.message);
  if (err instanceof NotFoundError) return new HttpError('not_found', err.message);
  if (err instanceof ImageDecodeError) return new HttpError(DECODE_CODES[err.reason], err.message, { reason: err.reason });
  if (err instanceof multer.MulterError) {
    if (err.code === 'LIMIT_FILE_SIZE') return new HttpError('payload_too_large', `file "${err.field}" is larger than the upload limit of ${formatBytes(limits.maxUploadBytes)}`, { limitBytes: limits.maxUploadBytes });
    if (err.code === 'LIMIT_UNEXPECTED_FILE') return new HttpError('bad_request', `unexpected file field "${err.field}" (or too many files)`);
    return new HttpError('bad_request', `bad multipart body: ${err.message}${err.field ? ` (field "${err.field}")` : ''}`);
  }
  if (isDiskFull(err)) return new HttpError('insufficient_storage', 'the server is out of disk space: nothing was stored; try again once space is freed on the server');
  // body-parser (express.json) and busboy (multer) errors carry these.
  const e = err as { type?: string; status?: number; message?: string; expose?: boolean };
  if (e?.type === 'entity.too.large') return new HttpError('payload_too_large', 'the request body is too large');
  if (e?.type === 'entity.parse.failed') return new HttpError('bad_request', `the JSON body does not parse: ${e.message}`);
  if (e?.type === 'encoding.unsupported' || e?.type === 'charset.unsupported') return new HttpError('unsupported_media_type', String(e.message));
  if (typeof e?.message === 'string' && /^(Unexpected end of form|Malformed part header|Multipart: Boundary not found|Unexpected end of multipart data)/i.test(e.message)) {
    return new HttpError('bad_request', `bad multipart body: ${e.message}`);
  }
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500 && e.expose) return new HttpError(e.status === 413 ? 'payload_too_large' : e.status === 415 ? 'unsupported_media_type' : 'bad_request', String(e.message));
  return null;
}

export function errorMiddleware(limits: { maxUploadBytes: number }): ErrorRequestHandler {
  return (err, req, res, next) => {
    if (res.headersSent) return next(err); // express closes the connection
    let http = toHttpError(err, limits);
    if (!http) {
      logger.error({ err, method: req.method, url: req.originalUrl }, 'unexpected error while serving a request');
      http = new HttpError('internal_error', 'internal server error');
    } else if (http.status >= 500) {
      logger.warn({ code: http.code, url: req.originalUrl }, http.message);
    }
    // A body left unread (a rejected upload) would otherwise keep the connection busy: close it after replying,
    // unless the refusal asks for the body to be read and dropped (a client still sending would not see an answer
    // on a closed connection; Node discards what it reads after the response).
    if (!req.complete && !res.locals.drainBody) res.setHeader('Connection', 'close');
    if (typeof http.details?.retryAfterSeconds === 'number') res.setHeader('Retry-After', String(http.details.retryAfterSeconds));
    const body: ErrorBody = { error: { code: http.code, message: http.message, ...(http.details ? { details: http.details } : {}) } };
    res.status(http.status).json(body);
  };
}

// A full disk as Node (ENOSPC, or EDQUOT over quota) and SQLite (SQLITE_FULL) report it, also when wrapped as a cause.
const DISK_FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);
function isDiskFull(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && DISK_FULL_CODES.has(e.code)) return true;
  }
  return false;
}

/** For a path's other methods: 405 with an Allow header (OPTIONS: 204 with the same header). */
export function methodNotAllowed(methods: string[]): RequestHandler {
  const allow = [...methods, ...(methods.includes('GET') ? ['HEAD'] : []), 'OPTIONS'].join(', ');
  return (req, res, next) => {
    res.set('Allow', allow);
    if (req.method === 'OPTIONS') return void res.status(204).end();
    next(new HttpError('method_not_allowed', `${req.method} is not allowed on ${req.originalUrl.split('?')[0]}; allowed: ${allow}`, { allow }));
  };
}

/** 404 for anything under /api that no route matched. */
export const apiNotFound: RequestHandler = (req, _res, next) => next(new HttpError('not_found', `no route for ${req.method} ${req.originalUrl.split('?')[0]}`));

export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${+(n / (1024 * 1024)).toFixed(1)} MB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KB`;
  return `${n} bytes`;
}
