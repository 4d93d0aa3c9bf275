// The express app, built from an injected SearchService so that tests can build it on a temporary store. It knows
// routes, static files and the error middleware; nothing here touches the model or the store directly.
import path from 'node:path';
import express, { type Express } from 'express';
import { apiNotFound, errorMiddleware, methodNotAllowed } from './errors.ts';
import { securityHeaders } from './headers.ts';
import { openApiDocument } from './openapi.ts';
import { apiRouter } from './routes.ts';
import type { SearchService } from './service.ts';

export const PUBLIC_DIR = path.join(import.meta.dirname, 'public');

export function buildApp(service: SearchService): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple'); // no nested objects from query strings
  app.use(securityHeaders);
  const openapi = openApiDocument(service.limits);

  app.get('/healthz', async (_req, res) => void res.json(await service.health()));
  app.get('/api/openapi.json', (_req, res) => void res.json(openapi));
  app.all(['/healthz', '/api/openapi.json'], methodNotAllowed(['GET']));
  app.use('/api', apiRouter(service));
  app.use('/api', apiNotFound);
  app.use(express.static(PUBLIC_DIR, { index: 'index.html', maxAge: 0 }));
  app.use(apiNotFound);
  app.use(errorMiddleware(service.limits));
  return app;
}
