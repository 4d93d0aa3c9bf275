import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { EncodeBatcher } from '../src/encoder/batcher.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG } from '../src/encoder/config.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { maxAbsDiff, randomModel } from './helpers/model.ts';

test('concurrent requests for one submodel share onnxruntime runs and get their own embeddings', async () => {
  const { tensors } = await randomModel(TINY_CONFIG, 2);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-batch-')), 'm.safetensors');
  saveModel(file, TINY_CONFIG, tensors);
  const encoder = Encoder.load(file);
  const images = Array.from({ length: 20 }, (_, i) => Uint8Array.from({ length: 32 * 32 * 3 }, (_, j) => (j * 7 + i * 13) % 256));
  const one = await Promise.all(images.map((im) => encoder.encode([im], 'S').then((e) => e[0])));
  const batcher = new EncodeBatcher(encoder, 8);
  const got = await Promise.all([...images.map((im) => batcher.encode(im, 's')), batcher.encode(images[0], 'XL')]);
  images.forEach((_, i) => assert.ok(maxAbsDiff(got[i], one[i]) < 1e-5));
  assert.ok(maxAbsDiff(got[20], one[0]) > 1e-3, 'XL request is not mixed into the S batch');
  assert.ok(batcher.batchSizes.length < 21, `batched: ${batcher.batchSizes}`);
  assert.ok(Math.max(...batcher.batchSizes) <= 8);
  await assert.rejects(batcher.encode(images[0], 'XXL'), /unknown granularity/);
  await encoder.close();
});

test('up to maxInFlight batches run at once: the next batch starts while the previous one runs', async () => {
  const { tensors } = await randomModel(TINY_CONFIG, 3);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-batch-')), 'm.safetensors');
  saveModel(file, TINY_CONFIG, tensors);
  const encoder = Encoder.load(file);
  // The real encoder, watched: how many of its runs overlap.
  let running = 0;
  let most = 0;
  const watched = Object.create(encoder) as Encoder;
  watched.encode = async (images, spec) => {
    most = Math.max(most, ++running);
    try {
      await new Promise((r) => setTimeout(r, 20)); // a run long enough for the next requests to arrive during it
      return await encoder.encode(images, spec);
    } finally {
      running--;
    }
  };
  const image = (i: number) => Uint8Array.from({ length: 32 * 32 * 3 }, (_, j) => (j * 5 + i * 11) % 256);
  for (const [inFlight, expected] of [[1, 1], [2, 2]] as const) {
    most = 0;
    const batcher = new EncodeBatcher(watched, 4, inFlight);
    const first = batcher.encode(image(0), 'S'); // starts a batch of one at once
    await new Promise((r) => setTimeout(r, 5));
    const rest = Array.from({ length: 6 }, (_, i) => batcher.encode(image(i + 1), i % 2 ? 'XL' : 'S'));
    const got = await Promise.all([first, ...rest]);
    assert.equal(most, expected, `maxInFlight ${inFlight}: at most ${expected} runs at once`);
    const alone = await encoder.encode([image(2)], 'XL'); // rest[1]: image 2 with XL
    assert.ok(maxAbsDiff(got[2], alone[0]) < 1e-5, 'each request still gets its own embedding');
    assert.ok(Math.max(...batcher.batchSizes) <= 4);
  }
  assert.throws(() => new EncodeBatcher(encoder, 4, 0), /positive integer/);
  await encoder.close();
});
