// Response headers that keep uploaded bytes data: nothing the server sends may be sniffed into another type, and
// only the page (its own script and style, from this origin) may run script. Stored originals go out with their
// format's image type only when it is an accepted format (src/data/formats.ts), else as a download.
import type { RequestHandler, Response } from 'express';
import { SERVABLE_IMAGE_TYPES } from '../data/formats.ts';

/** The page: its own files only; previews of a picked file are blob: URLs. */
const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Everything else (JSON, images): no script, no plugins, no same-origin privileges even if opened as a document. */
const RESOURCE_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox";

/** nosniff and a CSP on every response: the page's own for its static files, the strict one for the rest. */
export const securityHeaders: RequestHandler = (req, res, next) => {
  const api = req.path.startsWith('/api/') || req.path === '/api' || req.path === '/healthz';
  res.set({
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy': api ? RESOURCE_CSP : PAGE_CSP,
    'Referrer-Policy': 'no-referrer',
    'Cross-Origin-Opener-Policy': 'same-origin',
  });
  next();
};

/** Sets the type of an image body: an accepted image type as is, anything else as an octet-stream download. */
export function setImageType(res: Response, contentType: string, id: number): void {
  if (SERVABLE_IMAGE_TYPES.has(contentType)) {
    res.type(contentType);
  } else {
    res.type('application/octet-stream').attachment(`image-${id}.bin`);
  }
}
