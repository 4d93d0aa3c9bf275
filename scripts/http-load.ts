// A lean HTTP/1.1 load generator for scripts/bench-server.ts, run in a process of its own: raw keep-alive sockets
// and request bytes built once, so that on a 2-core machine the client takes little of the CPU it measures
// (autocannon took about 0.9 ms per request here by our estimate, as much as the server's main thread). Two modes:
//   closed loop: each connection sends its next request when the previous answer has arrived;
//   open loop:   requests arrive at a fixed rate whether or not the server keeps up; one waits for a free
//                connection if it must, and its latency counts from its arrival time (no coordinated omission).
// Reads a JSON job on stdin, writes one JSON result on stdout:
//   { url, path, contentType, bodyFiles: [...], connections, seconds, rate?, timeoutMs? }
//   -> { requests, seconds, requestsPerSec, p50, p99, p99BySecond, non2xx, errors, timeouts, unsent, cpuMs }
import fs from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface LoadJob {
  url: string; // http://host:port
  path: string;
  contentType: string;
  bodyFiles: string[]; // request bodies, sent in turn
  connections: number;
  seconds: number;
  rate?: number; // requests per second in all: open loop; absent: closed loop
  timeoutMs?: number;
}

export interface LoadResult {
  requests: number; // answered (any status)
  seconds: number; // from the first request to the last answer
  requestsPerSec: number;
  p50: number; // ms
  p99: number;
  p99BySecond: number[]; // the p99 of the requests sent (open loop: arrived) in each second of the run: where the tail is
  non2xx: number;
  errors: number; // connection errors
  timeouts: number;
  unsent: number; // open loop: arrivals still waiting for a connection when the run's time and the timeout ran out
  cpuMs: number; // this process's CPU over the run
}

const HEADER_END = Buffer.from('\r\n\r\n');

/** One keep-alive connection that carries one request at a time and reads answers framed by Content-Length. */
class Connection {
  private socket!: net.Socket;
  private buf: Buffer = Buffer.alloc(0);
  private onDone: ((status: number) => void) | null = null;
  private onFail: ((err: Error) => void) | null = null;
  busySince = 0;

  constructor(private readonly host: string, private readonly port: number) {
    this.connect();
  }

  private connect(): void {
    this.buf = Buffer.alloc(0);
    this.socket = net.connect({ host: this.host, port: this.port, noDelay: true });
    this.socket.on('data', (chunk: Buffer) => this.read(chunk));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.fail(new Error('connection closed')));
  }

  get busy(): boolean {
    return this.onDone !== null;
  }

  send(request: Buffer, done: (status: number) => void, fail: (err: Error) => void): void {
    this.onDone = done;
    this.onFail = fail;
    this.busySince = performance.now();
    if (this.socket.destroyed) this.connect();
    this.socket.write(request);
  }

  /** Gives up on the request in flight (a timeout): the socket is replaced, since its answer may still come. */
  abandon(): void {
    this.onDone = null;
    this.onFail = null;
    this.socket.removeAllListeners();
    this.socket.destroy();
    this.connect();
  }

  close(): void {
    this.socket.removeAllListeners();
    this.socket.destroy();
  }

  private fail(err: Error): void {
    const f = this.onFail;
    this.onDone = null;
    this.onFail = null;
    if (!this.socket.destroyed) this.socket.destroy();
    f?.(err);
  }

  private read(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const end = this.buf.indexOf(HEADER_END);
    if (end < 0) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const status = Number(head.slice(9, 12));
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (!m) return this.fail(new Error('an answer without Content-Length'));
    const total = end + 4 + Number(m[1]);
    if (this.buf.length < total) return;
    this.buf = this.buf.subarray(total);
    const done = this.onDone;
    this.onDone = null;
    this.onFail = null;
    done?.(status);
  }
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

export async function runLoad(job: LoadJob): Promise<LoadResult> {
  const u = new URL(job.url);
  const host = u.hostname;
  const port = Number(u.port || 80);
  const requests = job.bodyFiles.map((f) => {
    const body = fs.readFileSync(f);
    const head = `POST ${job.path} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: ${job.contentType}\r\nContent-Length: ${body.length}\r\n\r\n`;
    return Buffer.concat([Buffer.from(head, 'latin1'), body]);
  });
  const timeoutMs = job.timeoutMs ?? 10_000;
  const conns = Array.from({ length: job.connections }, () => new Connection(host, port));
  const latencies: number[] = [];
  const sentAt: number[] = []; // ms after the start, beside latencies
  let next = 0;
  let non2xx = 0;
  let errors = 0;
  let timeouts = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const endAt = t0 + job.seconds * 1000;
  const totalArrivals = job.rate === undefined ? 0 : Math.floor(job.seconds * job.rate + 1e-9); // open loop
  let lastAnswer = t0;

  const result = await new Promise<{ unsent: number }>((resolve) => {
    const waiting: number[] = []; // open loop: arrival times of requests without a connection yet
    let arrived = 0;
    let finished = false;

    const dispatch = (c: Connection, since: number) => {
      c.send(
        requests[next++ % requests.length],
        (status) => {
          const now = performance.now();
          latencies.push(now - since);
          sentAt.push(since - t0);
          lastAnswer = now;
          if (status < 200 || status > 299) non2xx++;
          afterAnswer(c);
        },
        () => {
          errors++;
          afterAnswer(c);
        },
      );
    };
    const afterAnswer = (c: Connection) => {
      if (job.rate === undefined) {
        if (performance.now() < endAt) dispatch(c, performance.now());
      } else if (waiting.length > 0) dispatch(c, waiting.shift()!);
      check();
    };
    /** Open loop: every arrival due by now (or by the end), even if a tick came late: a starved client still sends them all. */
    const admit = (now: number) => {
      if (job.rate === undefined) return;
      // At the end, the run's whole count: (t0 + 500) - t0 can come out one ulp below 500, which lost the last arrival.
      const due = now >= endAt ? totalArrivals : Math.floor(((now - t0) / 1000) * job.rate);
      for (; arrived < due; arrived++) waiting.push(t0 + (arrived * 1000) / job.rate);
      for (const c of conns) if (!c.busy && waiting.length > 0) dispatch(c, waiting.shift()!);
    };
    const check = () => {
      if (finished) return;
      const now = performance.now();
      admit(now); // arrivals due before the end must not be lost to an early finish
      const idle = conns.every((c) => !c.busy);
      const drained = job.rate === undefined || waiting.length === 0 || now > endAt + timeoutMs;
      if (now >= endAt && idle && drained) {
        finished = true;
        clearInterval(ticker);
        resolve({ unsent: waiting.length });
      }
    };
    const ticker = setInterval(() => {
      const now = performance.now();
      for (const c of conns) {
        if (c.busy && now - c.busySince > timeoutMs) {
          timeouts++;
          c.abandon();
          afterAnswer(c);
        }
      }
      check();
    }, job.rate === undefined ? 50 : 1); // open loop: arrivals every millisecond; closed loop: only timeouts to check
    if (job.rate === undefined) for (const c of conns) dispatch(c, performance.now());
  });

  for (const c of conns) c.close();
  const cpu = process.cpuUsage(cpu0);
  const sorted = Float64Array.from(latencies).sort();
  const seconds = (lastAnswer - t0) / 1000;
  return {
    requests: latencies.length,
    seconds: Number(seconds.toFixed(3)),
    requestsPerSec: Number((latencies.length / seconds).toFixed(1)),
    p50: Number(percentile(sorted, 0.5).toFixed(2)),
    p99: Number(percentile(sorted, 0.99).toFixed(2)),
    p99BySecond: p99BySecond(latencies, sentAt),
    non2xx,
    errors,
    timeouts,
    unsent: result.unsent,
    cpuMs: Number(((cpu.user + cpu.system) / 1000).toFixed(1)),
  };
}

function p99BySecond(latencies: number[], sentAt: number[]): number[] {
  const bySecond: number[][] = [];
  latencies.forEach((ms, i) => (bySecond[Math.floor(sentAt[i] / 1000)] ??= []).push(ms));
  return Array.from(bySecond, (xs) => (xs ? Number(percentile(Float64Array.from(xs).sort(), 0.99).toFixed(1)) : 0));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const job = JSON.parse(fs.readFileSync(0, 'utf8')) as LoadJob;
  process.stdout.write(JSON.stringify(await runLoad(job)) + '\n');
}
