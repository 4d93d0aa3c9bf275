// The OpenAPI 3.1 document served at /api/openapi.json, generated from the same zod schemas the routes parse with
// (requests as their input side, responses as their output side), so it cannot drift from the handlers.
import { z } from 'zod';
import { ACCEPTED_FORMATS_TEXT, IMAGE_FORMATS } from '../data/formats.ts';
import { ERROR_CODES, ErrorBody, type ErrorCode } from './errors.ts';
import * as S from './schemas.ts';
import type { ServerLimits } from './service.ts';

type Json = Record<string, unknown>;

function components(schemas: Record<string, z.ZodType>, io: 'input' | 'output'): Record<string, Json> {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(schemas)) registry.add(schema, { id });
  const out = z.toJSONSchema(registry, { io, uri: (id) => `#/components/schemas/${id}`, unrepresentable: 'any' }).schemas as Record<string, Json>;
  for (const s of Object.values(out)) {
    delete s.$schema;
    delete s.$id;
  }
  return out;
}

const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
const jsonContent = (id: string) => ({ 'application/json': { schema: ref(id) } });

function errors(...codes: ErrorCode[]): Json {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const c of codes) byStatus.set(ERROR_CODES[c], [...(byStatus.get(ERROR_CODES[c]) ?? []), c]);
  return Object.fromEntries([...byStatus].map(([status, cs]) => [String(status), { description: `error (code ${cs.join(' or ')})`, content: jsonContent('Error') }]));
}

export function openApiDocument(limits: ServerLimits): Json {
  const requests = components({ SearchParams: S.SearchParams, UploadParams: S.UploadParams }, 'input');
  const responses = components(
    {
      Error: ErrorBody,
      SearchResult: S.SearchResult,
      SearchCost: S.SearchCost,
      SearchResponse: S.SearchResponse,
      AddedImage: S.AddedImage,
      AddImagesResponse: S.AddImagesResponse,
      DeleteResponse: S.DeleteResponse,
      EncoderEntry: S.EncoderEntry,
      EncodersResponse: S.EncodersResponse,
      StatsResponse: S.StatsResponse,
      HealthResponse: S.HealthResponse,
    },
    'output',
  );
  const file = (description: string) => ({ type: 'string', format: 'binary', contentMediaType: 'application/octet-stream', description });
  const withFiles = (base: Json, files: Json): Json => ({ ...base, properties: { ...(base.properties as Json), ...files } });
  const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } };
  const limitText = `Uploads: at most ${limits.maxUploadBytes} bytes per file and ${limits.maxPixels} pixels per image (413 beyond either); at most ${limits.maxUploadMemoryBytes} upload bytes in memory over all requests (a request larger than that: 413; no room now: 503 with Retry-After).`;

  return {
    openapi: '3.1.0',
    info: {
      title: 'matvit-search',
      version: '1',
      description: `Image search with elastic query cost: images are indexed with the full MatViT (XL); each query picks a cheaper submodel (ffn) or a FLOPs budget. Errors are JSON { error: { code, message } } with a stable code. ${limitText}`,
    },
    paths: {
      '/api/search': {
        post: {
          operationId: 'search',
          summary: 'Nearest images to an uploaded image (multipart field "image") or to a stored image ({ "id": N })',
          description: 'Parameters may also be given in the query string; body fields win.',
          requestBody: {
            required: true,
            content: {
              'multipart/form-data': { schema: withFiles(requests.SearchParams, { image: file(`the query image (${ACCEPTED_FORMATS_TEXT}; any other format gets 415)`) }) },
              'application/json': { schema: ref('SearchParams') },
            },
          },
          responses: { '200': { description: 'results and the cost actually spent', content: jsonContent('SearchResponse') }, ...errors('bad_request', 'not_found', 'payload_too_large', 'unsupported_media_type', 'undecodable_image', 'service_unavailable') },
        },
      },
      '/api/images': {
        post: {
          operationId: 'addImages',
          summary: 'Index one or more uploaded images (multipart field "images", repeatable) with XL; all or nothing',
          requestBody: {
            required: true,
            content: { 'multipart/form-data': { schema: withFiles(requests.UploadParams, { images: { type: 'array', items: file(`an image (${ACCEPTED_FORMATS_TEXT}; any other format gets 415)`), maxItems: limits.maxFiles } }) } },
          },
          responses: { '201': { description: 'the stored images', content: jsonContent('AddImagesResponse') }, ...errors('bad_request', 'payload_too_large', 'unsupported_media_type', 'undecodable_image', 'service_unavailable', 'insufficient_storage') },
        },
      },
      '/api/images/{id}': {
        get: {
          operationId: 'getImage',
          summary: 'The original image as it was indexed',
          parameters: [idParam],
          responses: { '200': { description: 'the image bytes, with their format\'s type (an original in a format no longer accepted: application/octet-stream, as an attachment)', content: Object.fromEntries([...IMAGE_FORMATS.map((f) => f.contentType), 'application/octet-stream'].map((t) => [t, { schema: file('image') }])) }, ...errors('bad_request', 'not_found') },
        },
        delete: {
          operationId: 'deleteImage',
          summary: 'Remove an image from the store and the index',
          parameters: [idParam],
          responses: { '200': { description: 'deleted', content: jsonContent('DeleteResponse') }, ...errors('bad_request', 'not_found') },
        },
      },
      '/api/images/{id}/thumb': {
        get: {
          operationId: 'getThumbnail',
          summary: 'A thumbnail of the image: the image itself when it fits in 256x256 (shown at its native size; the page scales it), else a WebP of at most 256x256',
          parameters: [idParam, { name: 'v', in: 'query', required: false, schema: { type: 'string', pattern: '^[0-9a-f]{16}$' }, description: 'the content version thumbUrl carries: with it the response is cached for good (immutable); an image with other content is 404' }],
          responses: { '200': { description: "the image's own bytes with its format's type, or WebP bytes", content: Object.fromEntries(IMAGE_FORMATS.filter((f) => f.inBrowsers).map((f) => [f.contentType, { schema: file('thumbnail') }])) }, ...errors('bad_request', 'not_found') },
        },
      },
      '/api/encoders': {
        get: {
          operationId: 'listEncoders',
          summary: 'Query encoders offered (S, M, L, XL and calibrated Mix\'n\'Match entries) with FLOPs and measured encode times',
          responses: { '200': { description: 'encoders by FLOPs', content: jsonContent('EncodersResponse') } },
        },
      },
      '/api/stats': { get: { operationId: 'stats', summary: 'Store, index and server statistics', responses: { '200': { description: 'statistics', content: jsonContent('StatsResponse') } } } },
      '/api/openapi.json': { get: { operationId: 'openapi', summary: 'This document', responses: { '200': { description: 'OpenAPI 3.1 document' } } } },
      '/healthz': { get: { operationId: 'health', summary: 'Liveness: the index is loaded', responses: { '200': { description: 'serving', content: jsonContent('HealthResponse') } } } },
    },
    components: { schemas: { ...responses, SearchParams: requests.SearchParams, UploadParams: requests.UploadParams } },
  };
}
