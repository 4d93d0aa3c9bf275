// Cost that adapts to load: `auto` queries step down the calibrated ladder (src/encoder/policy.ts autoLadder: the
// cascade, then cheaper frontier encoders) while the latency target is at risk, and back up once load falls. It
// never refuses a request: under load every query is still answered, only by a cheaper encoder.
//
// At risk: the p99 of the latencies of the last `windowMs` is above `riskShare` of the target, or more images are
// waiting for the encoder than it clears in `riskShare` of the target (queue depth x the measured wall time per
// image of recent batches). Calm: the p99 is below `calmShare` of the target and the queue would clear in `calmShare` of
// it. A step down waits `stepMs` after the last change (the previous step needs time to show), except past the
// target itself, where it goes straight to the cheapest step; a step up waits `holdMs` of calm (going back up too
// soon would oscillate).

export const DEFAULT_SLO_MS = 50;
const P99_REUSE_MS = 20; // the window's p99 is recomputed at most this often (a step takes stepMs, 100 by default, anyway)

export interface LoadControllerOptions {
  sloMs: number; // the p99 latency target
  steps: number; // how many steps down there are (autoLadder's length - 1)
  windowMs?: number;
  stepMs?: number;
  holdMs?: number;
  riskShare?: number;
  calmShare?: number;
  now?: () => number; // clock (tests simulate time)
}

export interface LoadState {
  sloMs: number;
  step: number; // 0: the normal auto plan
  p99Ms: number | null; // over the window
  queued: number; // images waiting for the encoder at the last update
  queueMs: number; // estimated time to clear them
  stepsDown: number; // times it stepped down so far
  stepsUp: number;
}

export class LoadController {
  private readonly o: Required<LoadControllerOptions>;
  private samples: { at: number; ms: number }[] = [];
  private msPerImage = 1; // wall time per image of recent encoder batches (a moving average)
  private lastChange = -Infinity;
  private p99: { at: number; ms: number | null } = { at: -Infinity, ms: null }; // the window's p99, kept P99_REUSE_MS
  private calmSince: number | null = null;
  private state: LoadState;

  constructor(opts: LoadControllerOptions) {
    if (!(opts.sloMs > 0)) throw new RangeError(`the latency target must be a positive number of milliseconds, got ${opts.sloMs}`);
    this.o = { windowMs: 2000, stepMs: 100, holdMs: 2000, riskShare: 0.8, calmShare: 0.4, now: () => performance.now(), ...opts };
    this.state = { sloMs: opts.sloMs, step: 0, p99Ms: null, queued: 0, queueMs: 0, stepsDown: 0, stepsUp: 0 };
  }

  get step(): number {
    return this.state.step;
  }

  /** A request's latency, from arrival to answer. */
  recordLatency(ms: number): void {
    this.samples.push({ at: this.o.now(), ms });
  }

  /**
   * An encoder batch: `images` in `ms` of wall time (it calibrates the queue's time to clear). With two batches in
   * flight the second one's wall time includes its wait for a worker, so the estimate errs long, on the safe side.
   */
  recordBatch(images: number, ms: number): void {
    if (images > 0 && ms > 0) this.msPerImage = 0.8 * this.msPerImage + (0.2 * ms) / images;
  }

  /** Looks at the queue and the recent latencies, and moves at most one step. Returns the step to plan with. */
  update(queued: number): number {
    const now = this.o.now();
    const { sloMs, windowMs, stepMs, holdMs, riskShare, calmShare, steps } = this.o;
    // Sorting the window (about 2,000 latencies under load) for every query cost 0.3 ms of the main thread per query.
    if (now - this.p99.at >= P99_REUSE_MS) {
      let drop = 0;
      while (drop < this.samples.length && this.samples[drop].at < now - windowMs) drop++;
      if (drop) this.samples.splice(0, drop);
      this.p99 = { at: now, ms: this.samples.length ? quantile(this.samples.map((s) => s.ms), 0.99) : null };
    }
    const p99 = this.p99.ms;
    const queueMs = queued * this.msPerImage;
    const atRisk = (p99 !== null && p99 > riskShare * sloMs) || queueMs > riskShare * sloMs;
    const calm = (p99 === null || p99 < calmShare * sloMs) && queueMs < calmShare * sloMs;
    const s = this.state;
    if (atRisk) {
      this.calmSince = null;
      // Past the target itself, a step per stepMs is too slow (the queue grows meanwhile): straight to the cheapest.
      const over = (p99 !== null && p99 > sloMs) || queueMs > sloMs;
      if (s.step < steps && (over || now - this.lastChange >= stepMs)) {
        s.step = over ? steps : s.step + 1;
        s.stepsDown++;
        this.lastChange = now;
      }
    } else if (calm) {
      this.calmSince ??= now;
      if (s.step > 0 && now - this.calmSince >= holdMs && now - this.lastChange >= holdMs) {
        s.step--;
        s.stepsUp++;
        this.lastChange = now;
        this.calmSince = now; // each further step up needs its own calm period
      }
    } else {
      this.calmSince = null;
    }
    s.p99Ms = p99;
    s.queued = queued;
    s.queueMs = queueMs;
    return s.step;
  }

  snapshot(): LoadState {
    return { ...this.state };
  }
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}
