// scripts/http-load.ts, the benchmark's load client: answers are counted by status, and the open loop measures a
// request's latency from its arrival, not from when a connection was free (no coordinated omission).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { runLoad } from '../scripts/http-load.ts';

let server: http.Server;
let url: string;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'http-load-'));
const SERVICE_MS = 10; // the server answers one request at a time, each after this long

before(async () => {
  let busyUntil = 0;
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const start = Math.max(Date.now(), busyUntil); // one request at a time, in arrival order
      busyUntil = start + SERVICE_MS;
      setTimeout(() => {
        const status = body === 'fail' ? 500 : 200;
        const answer = `${status} ${body.length}`;
        // the client reads answers framed by Content-Length, as the server sends them
        res.writeHead(status, { 'content-type': 'text/plain', 'content-length': answer.length }).end(answer);
      }, busyUntil - Date.now());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  fs.writeFileSync(path.join(tmp, 'ok'), 'hello');
  fs.writeFileSync(path.join(tmp, 'fail'), 'fail');
});

after(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('closed loop: every answer is counted, and bodies are sent in turn (one in two answers 500 here)', async () => {
  const r = await runLoad({ url, path: '/', contentType: 'text/plain', bodyFiles: [path.join(tmp, 'ok'), path.join(tmp, 'fail')], connections: 2, seconds: 0.5 });
  assert.equal(r.errors, 0);
  assert.ok(r.requests >= 2 && r.requests <= r.seconds * (1000 / SERVICE_MS) + 2, `${r.requests} answers in ${r.seconds} s from a server that answers one per ${SERVICE_MS} ms`);
  assert.ok(Math.abs(r.non2xx - r.requests / 2) <= 1, `${r.non2xx} of ${r.requests} were 500s`);
  assert.ok(r.p50 >= SERVICE_MS, `p50 ${r.p50} ms: no answer comes sooner than the server gives it`);
});

test('open loop: arrivals beyond the server\'s rate queue, and their wait counts in the latency', async () => {
  // 200 arrivals/s for 0.5 s against a server that answers 100/s: the last arrivals wait about 0.5 s.
  const r = await runLoad({ url, path: '/', contentType: 'text/plain', bodyFiles: [path.join(tmp, 'ok')], connections: 1, seconds: 0.5, rate: 200, timeoutMs: 5000 });
  assert.equal(r.errors + r.timeouts + r.unsent, 0);
  assert.equal(r.requests, 100, 'every arrival is sent and answered');
  assert.ok(r.p99 > 300, `p99 ${r.p99} ms: a client that timed from the free connection would report about ${SERVICE_MS} ms`);
  assert.ok(r.requestsPerSec < 130, `${r.requestsPerSec}/s answered: the server's pace, not the arrival rate`);
});

test('open loop: the p99 by second of arrival shows when the tail grew', async () => {
  // 150 arrivals/s for 1.2 s against 100/s: the queue grows all along, so the second second's arrivals wait longer.
  const r = await runLoad({ url, path: '/', contentType: 'text/plain', bodyFiles: [path.join(tmp, 'ok')], connections: 1, seconds: 1.2, rate: 150, timeoutMs: 5000 });
  assert.equal(r.requests, 180);
  assert.equal(r.p99BySecond.length, 2);
  assert.ok(r.p99BySecond[0] > 300 && r.p99BySecond[1] > r.p99BySecond[0] + 100, `p99 by second ${r.p99BySecond.join(', ')}`);
  assert.ok(r.p99 >= r.p99BySecond[0]);
});
