// The load controller on a simulated queue and clock: it steps auto queries down while the latency target is at
// risk, one step per stepMs (straight to the cheapest once the target itself is passed), never past the cheapest,
// holds in between, and steps back up once load has been calm for holdMs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LoadController } from '../src/server/load-controller.ts';

function simulated(steps = 3) {
  let now = 0;
  const c = new LoadController({ sloMs: 50, steps, now: () => now, stepMs: 250, holdMs: 2000, windowMs: 2000 });
  c.recordBatch(10, 10); // 1 ms per image (moving average from its start of 1)
  return { c, advance: (ms: number) => (now += ms) };
}

test('steps down while the target is at risk, one step per stepMs, not past the cheapest', () => {
  const { c, advance } = simulated();
  assert.equal(c.update(0), 0, 'no load');
  assert.equal(c.update(45), 1, '45 images queued at 1 ms each: 45 ms > 0.8 x 50');
  advance(100);
  assert.equal(c.update(48), 1, 'too soon after the last step');
  advance(200);
  assert.equal(c.update(48), 2);
  for (let i = 0; i < 5; i++) {
    advance(300);
    c.update(45);
  }
  assert.equal(c.step, 3, 'the cheapest step, and no further');
  assert.equal(c.snapshot().stepsDown, 3);
});

test('past the target itself it goes straight to the cheapest step', () => {
  const { c } = simulated();
  assert.equal(c.update(100), 3, '100 ms of queue > 50: a step per 250 ms would let the queue grow for 750 ms');
  assert.equal(c.snapshot().stepsDown, 1);
});

test('steps down when the recent p99 latency is at risk even with no queue', () => {
  const { c, advance } = simulated();
  for (let i = 0; i < 100; i++) c.recordLatency(i < 95 ? 10 : 45); // p99 45 ms > 40
  assert.equal(c.update(0), 1);
  advance(3000); // the slow requests leave the 2 s window
  c.recordLatency(5);
  assert.equal(c.update(0), 1, 'calm starts now; no step up before holdMs');
  advance(2000);
  assert.equal(c.update(0), 0, 'calm for holdMs: one step up');
});

test('holds between risk and calm, and steps back up one step per calm holdMs once the queue drains', () => {
  const { c, advance } = simulated();
  for (let i = 0; i < 3; i++) {
    c.update(500);
    advance(300);
  }
  assert.equal(c.step, 3);
  advance(5000);
  assert.equal(c.update(30), 3, '30 ms of queue: neither at risk (> 40) nor calm (< 20)');
  assert.equal(c.update(0), 3, 'drained: calm starts');
  advance(1999);
  assert.equal(c.update(0), 3);
  advance(1);
  assert.equal(c.update(0), 2);
  advance(1000);
  assert.equal(c.update(5), 2, 'each step up needs its own calm period');
  advance(1000);
  assert.equal(c.update(5), 1);
  advance(2000);
  assert.equal(c.update(0), 0);
  advance(10_000);
  assert.equal(c.update(0), 0, 'never above the normal plan');
  assert.deepEqual([c.snapshot().stepsDown, c.snapshot().stepsUp], [1, 3], 'down in one jump, up in three steps');
  c.update(45);
  assert.equal(c.step, 1, 'load again: down again');
});

test('a bad target is refused', () => {
  assert.throws(() => new LoadController({ sloMs: 0, steps: 2 }), /positive number of milliseconds/);
});
