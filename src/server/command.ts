// `matvit serve`: what `npm start` runs. On a store with nothing for the model it first indexes the demo gallery,
// then serves the page and the JSON API on localhost:3000 until SIGTERM or SIGINT, which stop it gracefully
// (finish in-flight requests, save the HNSW index, release the store's writer lock).
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type Command, InvalidArgumentError } from 'commander';
import { UsageError } from '../errors.ts';
import { logger } from '../log.ts';
import { DEFAULT_SLO_MS } from './load-controller.ts';
import { DEFAULT_LIMITS } from './service.ts';

const SHUTDOWN_GRACE_MS = 10_000; // in-flight requests get this long after a stop signal

const positiveInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('not a positive integer');
  return n;
};
const nonNegativeInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('not a non-negative integer');
  return n;
};
const port = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('not a port number (0-65535)');
  return n;
};
const milliseconds = (v: string) => {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError('not a positive number of milliseconds');
  return n;
};
const megabytes = (v: string) => {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError('not a positive number of megabytes');
  return Math.round(n * 1024 * 1024);
};

function envPort(): number {
  if (!process.env.PORT) return 3000;
  try {
    return port(process.env.PORT);
  } catch {
    throw new UsageError(`PORT=${process.env.PORT} is not a port number (0-65535)`);
  }
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('serve the search page and JSON API; on first start, index the demo gallery into the store')
    .option('--port <n>', 'port to listen on (env PORT; default 3000)', port)
    .option('--host <addr>', 'address to listen on (env HOST; default 127.0.0.1)')
    .option('--store <dir|url>', 'store folder, or postgres://USER@HOST:PORT/DATABASE (env MATVIT_STORE; default ./data)')
    .option('--model <ckpt>', 'model checkpoint (default: the shipped model)')
    .option('--gallery <source>', 'images indexed when the store has none for the model (default: the bundled demo gallery)')
    .option('--no-gallery', 'never index a gallery on start')
    .option('--ffn <spec>', 'query encoder when a search names none (a spec such as S or S,M,L,XL,XL,XL, or auto)', 'XL')
    .option('--max-upload-mb <x>', `largest uploaded file, in MB (default: ${DEFAULT_LIMITS.maxUploadBytes / 1024 / 1024})`, megabytes)
    .option('--max-pixels <n>', 'largest image, in pixels (width x height)', positiveInt, DEFAULT_LIMITS.maxPixels)
    .option('--max-files <n>', 'files per upload request', positiveInt, DEFAULT_LIMITS.maxFiles)
    .option('--upload-memory-mb <x>', `upload bytes held in memory at once, over all requests, in MB; beyond it 503 (default: ${DEFAULT_LIMITS.maxUploadMemoryBytes / 1024 / 1024})`, megabytes)
    .option('--slo-ms <ms>', 'p99 latency target of auto queries: under load they step down to cheaper encoders to keep it', milliseconds, DEFAULT_SLO_MS)
    .option('--encode-workers <n>', 'encoder pool workers, which run every encoding off the event loop (default: one per core; 0: on the main thread)', nonNegativeInt)
    .action(async (opts) => {
      const listen = { port: opts.port ?? envPort(), host: opts.host ?? (process.env.HOST || '127.0.0.1') };
      const store: string = opts.store ?? (process.env.MATVIT_STORE || './data');
      const { openServer } = await import('./server.ts');
      const { buildApp } = await import('./app.ts');
      const stop = new AbortController();
      const early = () => stop.abort(); // a stop signal while indexing the gallery
      process.once('SIGTERM', early).once('SIGINT', early);

      const t0 = Date.now();
      const opened = await openServer({
        store,
        model: opts.model,
        gallery: typeof opts.gallery === 'string' ? opts.gallery : opts.gallery === false ? null : undefined, // true: the default
        defaultFfn: opts.ffn,
        limits: { maxUploadBytes: opts.maxUploadMb ?? DEFAULT_LIMITS.maxUploadBytes, maxPixels: opts.maxPixels, maxFiles: opts.maxFiles, maxUploadMemoryBytes: opts.uploadMemoryMb ?? DEFAULT_LIMITS.maxUploadMemoryBytes },
        encodeWorkers: opts.encodeWorkers,
        sloMs: opts.sloMs,
        signal: stop.signal,
      });
      process.off('SIGTERM', early).off('SIGINT', early);
      if (stop.signal.aborted) {
        await opened.close();
        logger.info('stopped before serving; the gallery indexed so far is kept and the next start continues');
        return;
      }

      const server = buildApp(opened.service).listen(listen.port, listen.host);
      await new Promise<void>((resolve, reject) => {
        server.once('listening', resolve).once('error', (err: NodeJS.ErrnoException) =>
          reject(err.code === 'EADDRINUSE' ? new UsageError(`${listen.host}:${listen.port} is already in use: pick another with --port or PORT`) : err),
        );
      }).catch(async (err) => {
        await opened.close();
        throw err;
      });
      server.requestTimeout = 60_000; // a client that stops sending its body cannot hold a connection forever
      server.headersTimeout = 20_000;
      server.keepAliveTimeout = 15_000; // a refused upload's body is read and dropped after the answer: a busy client may pause longer than the default 5 s
      const addr = server.address() as AddressInfo;
      const loopback = addr.address === '127.0.0.1' || addr.address === '::1';
      const url = `http://${loopback ? 'localhost' : addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}/`;
      const images = await opened.store.count();
      logger.info({ url, store: opened.store.location, model: opened.encoder.modelId, images, startupSeconds: (Date.now() - t0) / 1000 }, 'serving');
      process.stderr.write(`matvit: serving ${images} images at ${url}\n`);
      handleStopSignals(server, opened.close);
    });
}

/** First SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to a grace period), then clean up. */
function handleStopSignals(server: Server, cleanup: () => Promise<void>): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second stop signal: exiting now');
      process.exit(130);
    }
    stopping = true;
    logger.info({ signal }, 'stopping: finishing in-flight requests');
    const force = setTimeout(() => server.closeAllConnections(), SHUTDOWN_GRACE_MS).unref();
    server.close(async () => {
      clearTimeout(force);
      try {
        await cleanup();
        logger.info('stopped');
      } catch (err) {
        logger.error({ err }, 'error while stopping');
        process.exitCode = 1;
      }
      process.exit(); // onnxruntime and pino may hold handles; everything is saved by now
    });
    server.closeIdleConnections();
  };
  process.on('SIGTERM', () => stop('SIGTERM')).on('SIGINT', () => stop('SIGINT'));
}
