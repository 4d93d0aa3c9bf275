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
