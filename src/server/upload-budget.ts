// One budget for the upload bytes the server holds in memory at once, over all requests: multer buffers every file
// of a request, so without it, concurrent uploads took memory without bound. A request reserves its declared
// length before any of its body is read, and gets 503 with Retry-After when the budget has no room (413 when it is
// larger than the whole budget); a body without a declared length (chunked) reserves as it arrives and is cut off
// the same way. A reservation ends when the response is done and the work started with the body has settled.
import type { RequestHandler, Response } from 'express';
import { HttpError, formatBytes } from './errors.ts';

const RETRY_AFTER_SECONDS = 2;

interface Lease {
  bytes: number;
  closed: boolean; // the response is done (sent, or the client went away)
  holds: number; // work still using the body
  released: boolean;
}

export class UploadBudget {
  private used = 0;
  private peakBytes = 0;
  private refused = 0;

  constructor(readonly capacity: number) {
    if (!(capacity > 0)) throw new RangeError(`the upload memory budget must be positive, got ${capacity}`);
  }

  /** Bytes reserved now, the most ever reserved at once, and requests refused for want of room. */
  get figures(): { inFlightBytes: number; peakBytes: number; capacityBytes: number; refused: number } {
    return { inFlightBytes: this.used, peakBytes: this.peakBytes, capacityBytes: this.capacity, refused: this.refused };
  }

  /** Express middleware, before the body parser. */
  admit(): RequestHandler {
    return (req, res, next) => {
      const lease: Lease = { bytes: 0, closed: false, holds: 0, released: false };
      res.locals.uploadLease = lease;
      res.once('close', () => {
        lease.closed = true;
        this.settle(lease);
      });
      const declared = Number(req.headers['content-length']);
      if (Number.isFinite(declared) && declared >= 0) {
        const refusal = this.reserve(lease, declared);
        // A refused body (within the route's size limit) is read and dropped, so that its sender, still sending,
        // gets the answer; dropping holds no memory.
        if (refusal) res.locals.drainBody = true;
        return next(refusal ?? undefined);
      }
      // No declared length: count the body as it arrives. Its bytes go on to the parser in the same tick, so this
      // listener sees every chunk the parser buffers.
      let cut = false;
      const count = (chunk: Buffer) => {
        if (cut) return; // what the parser drains after the cut is discarded, not held
        const refusal = this.reserve(lease, chunk.length);
        if (refusal) {
          cut = true;
          req.off('data', count);
          req.emit('error', refusal); // the parser stops, drains the rest and answers with this error
        }
      };
      req.on('data', count);
      next();
    };
  }

  /** Keeps the response's reservation until `work` (which holds the uploaded bytes) has settled; returns it. */
  holdUntil<T>(res: Response, work: Promise<T>): Promise<T> {
    const lease = res.locals.uploadLease as Lease | undefined;
    if (!lease) return work;
    lease.holds++;
    const done = () => {
      lease.holds--;
      this.settle(lease);
    };
    work.then(done, done);
    return work;
  }

  private reserve(lease: Lease, bytes: number): HttpError | null {
    if (lease.bytes + bytes > this.capacity) {
      this.refused++;
      return new HttpError('payload_too_large', `the request body is over the server's upload memory of ${formatBytes(this.capacity)}: send fewer or smaller files per request`, { limitBytes: this.capacity });
    }
    if (this.used + bytes > this.capacity) {
      this.refused++;
      return new HttpError('service_unavailable', `the server is busy with other uploads (${formatBytes(this.used)} of ${formatBytes(this.capacity)} in memory): retry in ${RETRY_AFTER_SECONDS} s`, { retryAfterSeconds: RETRY_AFTER_SECONDS });
    }
    lease.bytes += bytes;
    this.used += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.used);
    return null;
  }

  private settle(lease: Lease): void {
    if (lease.released || !lease.closed || lease.holds > 0) return;
    lease.released = true;
    this.used -= lease.bytes;
  }
}
