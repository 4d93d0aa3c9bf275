import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { tf } from '../src/encoder/backend.ts';
import { defaultCalibration, loadCalibration } from '../src/encoder/budget.ts';
import { loadModel, readModelConfig, saveModel } from '../src/encoder/checkpoint.ts';
import { ConfigError, DEFAULT_CONFIG, GRANULARITIES, TINY_CONFIG, countFlops, countParams, monotoneSubmodels, parseHeadCounts, parseSubmodel, validateConfig } from '../src/encoder/config.ts';
import { paramShapes } from '../src/encoder/layout.ts';
import { forward } from '../src/encoder/matvit.ts';
import { CheckpointError, decodeSafetensors, encodeSafetensors, saveSafetensors } from '../src/encoder/safetensors.ts';
import { randomModel } from './helpers/model.ts';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-enc-'));

test('granularity grammar: uniform letters, per-layer lists, and one-line errors', () => {
  const c = DEFAULT_CONFIG;
  assert.deepEqual(parseSubmodel('xl', c).widths, [512, 512, 512, 512, 512, 512]);
  assert.deepEqual(parseSubmodel('S,S,M,M,L,XL', c).widths, [64, 64, 128, 128, 256, 512]);
  assert.equal(parseSubmodel('M,M,M,M,M,M', c).spec, 'M');
  assert.throws(() => parseSubmodel('XXL', c), (e: Error) => e instanceof ConfigError && /unknown granularity "XXL"/.test(e.message));
  assert.throws(() => parseSubmodel('S,M,L', c), (e: Error) => e instanceof ConfigError && /3 entries but the model has 6 layers/.test(e.message));
});

test('Mix\'n\'Match: 84 non-decreasing lists for depth 6, and cost grows with width', () => {
  const subs = monotoneSubmodels(DEFAULT_CONFIG);
  assert.equal(subs.length, 84);
  assert.equal(new Set(subs.map((s) => s.spec)).size, 84);
  for (const s of subs) for (let i = 1; i < s.widths.length; i++) assert.ok(s.widths[i] >= s.widths[i - 1]);
  const flops = GRANULARITIES.map((g) => countFlops(DEFAULT_CONFIG, parseSubmodel(g, DEFAULT_CONFIG)));
  for (let i = 1; i < 4; i++) assert.ok(flops[i] > flops[i - 1]);
  const xlParams = countParams(DEFAULT_CONFIG, parseSubmodel('XL', DEFAULT_CONFIG));
  assert.ok(xlParams > 1.1e6 && xlParams < 1.3e6, `default model has about 1.2M parameters, got ${xlParams}`);
  // the embedding model's count equals the checkpoint tensors without the head
  const fromShapes = paramShapes(DEFAULT_CONFIG, false).reduce((s, [, sh]) => s + sh.reduce((a, b) => a * b, 1), 0);
  assert.equal(xlParams, fromShapes);
});

test('forward contract over every granularity: shape, finite, unit norm', async () => {
  const c = TINY_CONFIG;
  const { params } = await randomModel(c);
  const x = tf.randomUniform([3, c.imageSize, c.imageSize, 3], 0, 1, 'float32', 1);
  for (const spec of [...GRANULARITIES, 'S,XL']) {
    const out = forward(params, x, parseSubmodel(spec, c), c);
    assert.deepEqual(out.embedding.shape, [3, c.width]);
    assert.deepEqual(out.logits!.shape, [3, c.numClasses]);
    const e = out.embedding.arraySync() as number[][];
    for (const row of e) {
      assert.ok(row.every(Number.isFinite));
      assert.ok(Math.abs(Math.hypot(...row) - 1) < 1e-5);
    }
  }
});

test('every parameter receives a gradient at XL, and S leaves FFN neurons past its width untouched', async () => {
  const c = TINY_CONFIG;
  const { params } = await randomModel(c);
  const names = Object.keys(params);
  const x = tf.randomUniform([2, c.imageSize, c.imageSize, 3], 0, 1, 'float32', 2);
  const lossAt = (spec: string) => (...ps: tf.Tensor[]) => {
    const p = Object.fromEntries(names.map((n, i) => [n, ps[i]]));
    return tf.sum(forward(p, x, parseSubmodel(spec, c), c).logits!.square()) as tf.Scalar;
  };
  const gXL = tf.grads(lossAt('XL'))(names.map((n) => params[n]));
  names.forEach((n, i) => assert.ok(tf.max(tf.abs(gXL[i])).dataSync()[0] > 0, `${n} gets no gradient`));
  const gS = tf.grads(lossAt('S'))(names.map((n) => params[n]));
  const fc1 = gS[names.indexOf('blocks.0.mlp.fc1.weight')].arraySync() as number[][];
  const m = parseSubmodel('S', c).widths[0];
  assert.ok(fc1.every((row) => row.slice(m).every((v) => v === 0)));
  assert.ok(fc1.some((row) => row.slice(0, m).some((v) => v !== 0)));
});

test('nested attention heads: each granularity keeps its first heads, costs less, and leaves the others untouched', async () => {
  const c = { ...TINY_CONFIG, heads: 4, attnHeads: parseHeadCounts('S=1,M=2', { ...TINY_CONFIG, heads: 4 }) };
  assert.deepEqual(c.attnHeads, { S: 1, M: 2, L: 4, XL: 4 });
  assert.deepEqual(parseSubmodel('S,XL', c).heads, [1, 4]);
  assert.deepEqual(parseSubmodel('L', TINY_CONFIG).heads, [2, 2], 'without attnHeads every granularity keeps every head');
  assert.ok(countFlops(c, parseSubmodel('S', c)) < countFlops(TINY_CONFIG, parseSubmodel('S', TINY_CONFIG)) * 0.8);
  const flat = { ...TINY_CONFIG, heads: 4 }; // the same model without nesting
  assert.equal(countFlops(c, parseSubmodel('XL', c)), countFlops(flat, parseSubmodel('XL', flat)));
  const fromShapes = paramShapes(c, false).reduce((s, [, sh]) => s + sh.reduce((a, b) => a * b, 1), 0);
  assert.equal(countParams(c, parseSubmodel('XL', c)), fromShapes);
  assert.equal(countParams(c, parseSubmodel('S', c)), countParams(TINY_CONFIG, parseSubmodel('S', TINY_CONFIG)) - 2 * (3 * 32 * 24 + 3 * 24 + 24 * 32), 'S drops 3 of 4 heads (24 of 32 attention columns) in both layers');
  assert.throws(() => parseHeadCounts('S=3,M=2', c), (e: Error) => e instanceof ConfigError && /non-decreasing/.test(e.message));
  assert.throws(() => parseHeadCounts('S=two', c), (e: Error) => e instanceof ConfigError && /GRANULARITY=HEADS/.test(e.message));
  assert.throws(() => validateConfig({ ...c, attnHeads: { S: 1, M: 2, L: 3, XL: 3 } }), /XL keeps every attention head/);
  assert.throws(() => parseHeadCounts('S=0', c), ConfigError);

  const { params } = await randomModel(c);
  const names = Object.keys(params);
  const x = tf.randomUniform([2, c.imageSize, c.imageSize, 3], 0, 1, 'float32', 2);
  const loss = (...ps: tf.Tensor[]) => tf.sum(forward(Object.fromEntries(names.map((n, i) => [n, ps[i]])), x, parseSubmodel('M', c), c).logits!.square()) as tf.Scalar;
  const g = tf.grads(loss)(names.map((n) => params[n]));
  const qkv = g[names.indexOf('blocks.0.attn.qkv.weight')].arraySync() as number[][]; // [32, 96]: q | k | v, 8 columns a head
  const proj = g[names.indexOf('blocks.0.attn.proj.weight')].arraySync() as number[][]; // [32, 32]: 8 rows a head
  for (const part of [0, 32, 64]) {
    assert.ok(qkv.every((row) => row.slice(part + 16, part + 32).every((v) => v === 0)), 'heads 3 and 4 get no gradient at M');
    assert.ok(qkv.some((row) => row.slice(part, part + 16).some((v) => v !== 0)), 'heads 1 and 2 do');
  }
  assert.ok(proj.slice(16).every((row) => row.every((v) => v === 0)) && proj.slice(0, 16).some((row) => row.some((v) => v !== 0)));
});

test('checkpoints round-trip, and bad files get errors that name the problem', async () => {
  const c = TINY_CONFIG;
  const { tensors } = await randomModel(c);
  const dir = tmp();
  const file = path.join(dir, 'm.safetensors');
  saveModel(file, c, tensors, { note: 'x' });
  const back = loadModel(file, { requireHead: true });
  assert.deepEqual(back.config, c);
  assert.equal(back.metadata.note, 'x');
  for (const [k, t] of Object.entries(tensors)) assert.deepEqual(back.params[k].data, t.data);

  // The header alone gives the config (what the budget's default calibration needs): loadModel's, by one parser.
  assert.deepEqual(readModelConfig(file), c);
  assert.equal(loadCalibration(file).xlFlops, defaultCalibration(c).xlFlops, 'the default calibration is the checkpoint\'s config');
  assert.notEqual(defaultCalibration(c).xlFlops, defaultCalibration().xlFlops);

  const bytes = fs.readFileSync(file);
  fs.writeFileSync(file, bytes.subarray(0, bytes.length - 100));
  assert.throws(() => loadModel(file), (e: Error) => e instanceof CheckpointError && /truncated/.test(e.message));
  assert.deepEqual(readModelConfig(file), c, 'the weights are not read');
  fs.writeFileSync(file, bytes.subarray(0, 5));
  assert.throws(() => loadModel(file), /truncated/);
  assert.throws(() => readModelConfig(file), /truncated/);
  fs.writeFileSync(file, bytes.subarray(0, 40));
  assert.throws(() => readModelConfig(file), /truncated or not a safetensors file: header claims \d+ bytes, file has 32/);
  saveSafetensors(file, tensors, { format: 'other/1' });
  assert.throws(() => readModelConfig(file), /is not a MatViT checkpoint \(format "other\/1"/);

  // wrong dtype
  const f16 = encodeSafetensors({ a: { shape: [2], data: new Float32Array(2) } }).toString('latin1').replace('"F32"', '"F16"');
  assert.throws(() => decodeSafetensors(Buffer.from(f16, 'latin1')), /dtype F16/);

  // a config that does not match the tensors
  saveModel(file, { ...c, width: 64, heads: 2 }, tensors);
  assert.throws(() => loadModel(file), (e: Error) => e instanceof CheckpointError && /patch_embed.weight has shape \[48,32\] but the config needs \[48,64\]/.test(e.message));
  // a missing tensor
  const { ['blocks.1.mlp.fc2.bias']: _, ...missing } = tensors;
  saveModel(file, c, missing);
  assert.throws(() => loadModel(file), /blocks.1.mlp.fc2.bias is missing/);
  fs.writeFileSync(file, 'not a checkpoint at all, just some text here');
  assert.throws(() => loadModel(file), CheckpointError);
});
