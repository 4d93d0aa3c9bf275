// Nesting the heads of a model trained with whole heads: sorting them by importance must not change what the full
// model computes, and a fine-tune with --attn-heads from such a model starts from the sorted weights.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { tf } from '../src/encoder/backend.ts';
import { loadModel, saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG, parseSubmodel } from '../src/encoder/config.ts';
import { forward, fromTensorMap } from '../src/encoder/matvit.ts';
import { orderHeadsByImportance } from '../src/train/head-order.ts';
import { train } from '../src/train/trainer.ts';
import { writeTextureIdx } from './helpers/datasets.ts';
import { maxAbsDiff, randomModel } from './helpers/model.ts';

const c = { ...TINY_CONFIG, heads: 4 };

test('sorting heads by importance leaves the full model\'s output unchanged and puts the strongest head first', async () => {
  const { tensors } = await randomModel(c, 4);
  // make head 2 of layer 0 clearly the strongest and head 0 the weakest: scale its value columns and projection rows
  const dh = c.width / c.heads;
  const qkv = tensors['blocks.0.attn.qkv.weight'];
  const proj = tensors['blocks.0.attn.proj.weight'];
  for (let r = 0; r < c.width; r++) for (let j = 0; j < dh; j++) {
    qkv.data[r * 3 * c.width + 2 * c.width + 2 * dh + j] *= 4;
    qkv.data[r * 3 * c.width + 2 * c.width + j] *= 0.1;
  }
  for (let r = 2 * dh; r < 3 * dh; r++) for (let j = 0; j < c.width; j++) proj.data[r * c.width + j] *= 4;
  const { params: sorted, order } = orderHeadsByImportance(tensors, c);
  assert.equal(order[0][0], 2, 'the strengthened head comes first');
  assert.equal(order[0][c.heads - 1], 0, 'the weakened head comes last');
  for (const o of order) assert.deepEqual([...o].sort(), [0, 1, 2, 3], 'a permutation');
  const x = tf.randomUniform([3, 32, 32, 3], 0, 1, 'float32', 5);
  const xl = parseSubmodel('XL', c);
  const before = forward(fromTensorMap(tensors), x, xl, c).embedding.dataSync();
  const after = forward(fromTensorMap(sorted), x, xl, c).embedding.dataSync();
  assert.ok(maxAbsDiff(before, after) < 1e-5, `XL changed by ${maxAbsDiff(before, after)}`);
  // a granularity keeping the first head now keeps head 2's weights
  const nested = { ...c, attnHeads: { S: 1, M: 2, L: 4, XL: 4 } };
  const kept = (t: typeof tensors) => Array.from(t['blocks.0.attn.qkv.weight'].data.subarray(2 * c.width, 2 * c.width + dh)); // row 0: the first head's v columns
  assert.deepEqual(kept(sorted), Array.from(tensors['blocks.0.attn.qkv.weight'].data.subarray(2 * c.width + 2 * dh, 2 * c.width + 3 * dh)));
  assert.ok(forward(fromTensorMap(sorted), x, parseSubmodel('S', nested), nested).embedding.dataSync().every(Number.isFinite));
});

test('--attn-heads with --init fine-tunes a whole-heads model into a nested-heads one', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-heads-'));
  const data = writeTextureIdx(dir, 300);
  const { tensors } = await randomModel(TINY_CONFIG, 2);
  const init = path.join(dir, 'init.safetensors');
  saveModel(init, TINY_CONFIG, tensors);
  const out = path.join(dir, 'run');
  const common = { data, model: 'tiny' as const, limit: 300, valSize: 60, batchSize: 32, epochs: 1, warmupEpochs: 0.2, lr: 1e-3, threads: 1, init };
  const r = await train({ ...common, out, attnHeads: 'S=1' } as never);
  assert.ok(r.finished);
  const model = loadModel(path.join(out, 'model.safetensors'));
  assert.deepEqual(model.config.attnHeads, { S: 1, M: 2, L: 2, XL: 2 });
  assert.ok(Number.isFinite(r.val.S) && Number.isFinite(r.val.XL));
  await assert.rejects(train({ ...common, out: path.join(dir, 'bad'), attnHeads: 'S=3' } as never), /non-decreasing integers from S to XL, between 1 and 2/);
});
