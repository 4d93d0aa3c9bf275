// The /api routes: each handler parses its input with one schema and makes one call into the service. Body parsing
// (multipart uploads with limits, small JSON bodies) happens in front of the handlers; errors go to errors.ts.
import express, { type NextFunction, type Request, type RequestHandler, type Response, Router } from 'express';
import multer from 'multer';
import type { ZodType } from 'zod';
import { HttpError, formatBytes, methodNotAllowed } from './errors.ts';
import { setImageType } from './headers.ts';
import { IdPath, SearchParams, ThumbQuery, UploadParams } from './schemas.ts';
import type { SearchService, Upload } from './service.ts';

const MULTIPART_OVERHEAD = 64 * 1024; // headers of parts and the text fields next to the files
export const JSON_LIMIT = '16kb';

export function apiRouter(service: SearchService): Router {
  const { maxUploadBytes, maxFiles } = service.limits;
  const fieldLimits = { fields: 10, fieldSize: 8 * 1024, fieldNameSize: 100, headerPairs: 100 };
  const searchUpload = multer({ storage: multer.memoryStorage(), limits: { ...fieldLimits, fileSize: maxUploadBytes, files: 1, parts: 12 } }).single('image');
  const imagesUpload = multer({ storage: multer.memoryStorage(), limits: { ...fieldLimits, fileSize: maxUploadBytes, files: maxFiles, parts: maxFiles + 10 } }).array('images', maxFiles);
  const json = express.json({ limit: JSON_LIMIT, strict: true });

  const r = Router();

  r.get('/encoders', (_req, res) => void res.json(service.encoders()));
  r.get('/stats', async (_req, res) => void res.json(await service.stats()));

  // Each upload route: the body's limit, its type, a reservation in the server's upload memory, then the parser.
  const admit = service.uploads.admit();
  r.post('/search', bodyLimit(maxUploadBytes + MULTIPART_OVERHEAD, `the upload limit of ${formatBytes(maxUploadBytes)}`), acceptBody(['multipart/form-data', 'application/json'], true), admit, searchUpload, json, async (req, res) => {
    const params = parse(SearchParams, { ...req.query, ...req.body });
    res.json(await service.uploads.holdUntil(res, service.search(params, uploadOf(req.file))));
  });

  r.post('/images', bodyLimit(maxUploadBytes * maxFiles + MULTIPART_OVERHEAD, `the upload limit of ${maxFiles} files of ${formatBytes(maxUploadBytes)}`), acceptBody(['multipart/form-data'], false), admit, imagesUpload, async (req, res) => {
    const params = parse(UploadParams, { ...req.body });
    const files = (req.files as Express.Multer.File[] | undefined) ?? [];
    res.status(201).json(await service.uploads.holdUntil(res, service.addImages(files.map((f) => uploadOf(f)!), params)));
  });

  r.get('/images/:id', async (req, res) => {
    const { id } = parse(IdPath, req.params);
    const { bytes, contentType } = await service.original(id);
    setImageType(res, contentType, id);
    res.set('Cache-Control', 'private, max-age=3600').send(bytes);
  });

  r.get('/images/:id/thumb', async (req, res) => {
    const { id } = parse(IdPath, req.params);
    const { v } = parse(ThumbQuery, req.query);
    const thumb = await service.thumbnail(id, v); // before any header is set: a 404 must go out as JSON
    // send() adds an ETag and answers a matching If-None-Match with 304. A URL with the content's version never
    // changes its answer; without it, the cache checks back each time (a new store reuses ids).
    setImageType(res, thumb.contentType, id);
    res.set('Cache-Control', thumb.immutable ? 'public, max-age=31536000, immutable' : 'public, no-cache').send(thumb.bytes);
  });

  r.delete('/images/:id', async (req, res) => {
    const { id } = parse(IdPath, req.params);
    res.json(await service.deleteImage(id));
  });

  r.all('/encoders', methodNotAllowed(['GET']));
  r.all('/stats', methodNotAllowed(['GET']));
  r.all('/search', methodNotAllowed(['POST']));
  r.all('/images', methodNotAllowed(['POST']));
  r.all('/images/:id', methodNotAllowed(['GET', 'DELETE']));
  r.all('/images/:id/thumb', methodNotAllowed(['GET']));
  return r;
}

/** Parses with a schema; a ZodError becomes a 400 in the error middleware. */
function parse<T>(schema: ZodType<T>, input: unknown): T {
  return schema.parse(input);
}

function uploadOf(f: Express.Multer.File | undefined): Upload | undefined {
  return f && { name: f.originalname || f.fieldname, bytes: f.buffer };
}

/** Rejects a declared body over the limit before reading any of it. */
function bodyLimit(maxBytes: number, limitText: string): RequestHandler {
  return (req, _res, next) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > maxBytes) {
      return next(new HttpError('payload_too_large', `the request body (${formatBytes(declared)}) is over ${limitText}`, { limitBytes: maxBytes }));
    }
    next();
  };
}

/** 415 for a body of another media type; `optional`: a request without a body passes (parameters in the query). */
function acceptBody(types: string[], optional: boolean): RequestHandler {
  return (req: Request, _res: Response, next: NextFunction) => {
    if (!req.is(types)) {
      const hasBody = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
      if (hasBody || !optional) {
        const got = req.headers['content-type'] ?? 'none';
        return next(new HttpError('unsupported_media_type', `expected a body of type ${types.join(' or ')}, got ${got}`));
      }
    }
    next();
  };
}
