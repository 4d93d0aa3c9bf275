// Query adapters: the closed-form fit, the sidecar file and its tie to the model's bytes, the same mapped embedding
// from every runtime path (Encoder, encoder pool, extracted ONNX file), and `matvit adapt` end to end.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { adaptModel } from '../src/encoder/adapt.ts';
import { type QueryAdapter, adaptersPath, applyAdapter, fitAdapter, saveAdapters } from '../src/encoder/adapters.ts';
import { loadModel, saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG } from '../src/encoder/config.ts';
import { extractToFile } from '../src/encoder/extract.ts';
import { EncoderPool } from '../src/encoder/pool.ts';
import { Encoder, toNchw } from '../src/encoder/runtime.ts';
import { CheckpointError } from '../src/encoder/safetensors.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { writeTextureIdx } from './helpers/datasets.ts';
import { maxAbsDiff, randomModel } from './helpers/model.ts';

const c = TINY_CONFIG;
const D = c.width;

function randomAdapter(seed: number): QueryAdapter {
  const rand = mulberry32(seed);
  const weight = Float32Array.from({ length: D * D }, (_, i) => (i % (D + 1) === 0 ? 1 : 0) + (rand() - 0.5) * 0.4);
  return { weight, bias: Float32Array.from({ length: D }, () => (rand() - 0.5) * 0.2) };
}

async function tinyModelFile(seed: number): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-adapters-'));
  const file = path.join(dir, 'model.safetensors');
  saveModel(file, c, (await randomModel(c, seed)).tensors);
  return file;
}

const images = Array.from({ length: 6 }, (_, i) => Uint8Array.from({ length: 32 * 32 * 3 }, (_, j) => (j * 29 + i * 83) % 256));
const flat = (rows: Float32Array[]) => {
  const out = new Float32Array(rows.length * D);
  rows.forEach((r, i) => out.set(r, i * D));
  return out;
};

test('fitAdapter recovers an exact affine map, and refuses too few images', () => {
  const dim = 6;
  const rand = mulberry32(5);
  const W = Float32Array.from({ length: dim * dim }, () => rand() - 0.5);
  const b = Float32Array.from({ length: dim }, () => rand() - 0.5);
  const n = 200;
  const x = Float32Array.from({ length: n * dim }, () => rand() * 2 - 1);
  const y = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) for (let j = 0; j < dim; j++) {
    let s = b[j];
    for (let k = 0; k < dim; k++) s += x[i * dim + k] * W[k * dim + j];
    y[i * dim + j] = s;
  }
  const fit = fitAdapter(x, y, dim, 0);
  assert.ok(maxAbsDiff(fit.weight, W) < 1e-5, `weight off by ${maxAbsDiff(fit.weight, W)}`);
  assert.ok(maxAbsDiff(fit.bias, b) < 1e-5, `bias off by ${maxAbsDiff(fit.bias, b)}`);
  // The penalty shrinks the weights toward zero, not the bias.
  const ridge = fitAdapter(x, y, dim, 1e4);
  assert.ok(Math.max(...ridge.weight.map(Math.abs)) < 0.05);
  assert.throws(() => fitAdapter(x.subarray(0, dim * dim), y.subarray(0, dim * dim), dim, 0), /needs more than 6 images/);
});

test('an adapter maps narrower submodels in every runtime path, never XL', async () => {
  const file = await tinyModelFile(11);
  const bare = Encoder.load(file);
  const bareS = flat(await bare.encode(images, 'S'));
  const bareMix = flat(await bare.encode(images, 'S,M'));
  const bareXl = flat(await bare.encode(images, 'XL'));
  await bare.close();

  const adapter = randomAdapter(3);
  saveAdapters(file, loadModel(file).sha256, { S: adapter, XL: randomAdapter(4) }, D);
  const encoder = Encoder.load(file);
  const want = applyAdapter(adapter, bareS, D);
  assert.ok(maxAbsDiff(want, bareS) > 0.05, 'the adapter moves the embedding');
  assert.ok(maxAbsDiff(flat(await encoder.encode(images, 'S')), want) < 1e-5, 'Encoder');
  assert.ok(maxAbsDiff(flat(await encoder.encode(images, 'S,M')), bareMix) < 1e-6, 'a submodel without an adapter is unchanged');
  assert.ok(maxAbsDiff(flat(await encoder.encode(images, 'XL')), bareXl) < 1e-6, 'XL never takes one, even from the file');
  assert.equal(encoder.adapterOf('S'), encoder.checkpoint.adapters!.S);

  const pool = await EncoderPool.start(encoder, { threads: 1 });
  try {
    assert.ok(maxAbsDiff(flat(await pool.encode(images, 'S')), want) < 1e-5, 'encoder pool');
  } finally {
    await pool.close();
  }
  await encoder.close();

  const out = path.join(path.dirname(file), 's.onnx');
  assert.equal(extractToFile(file, 'S', out).adapter, true);
  const session = await ort.InferenceSession.create(out);
  const got = (await session.run({ pixels: new ort.Tensor('float32', toNchw(images, 32), [images.length, 3, 32, 32]) })).embedding.data as Float32Array;
  await session.release();
  assert.ok(maxAbsDiff(got, want) < 1e-5, 'extracted ONNX file');
});

test('adapters are tied to the model file they were fitted to', async () => {
  const file = await tinyModelFile(12);
  saveAdapters(file, loadModel(file).sha256, { M: randomAdapter(6) }, D);
  const { params, adapters } = loadModel(file);
  assert.deepEqual(Object.keys(adapters!), ['M']);
  // The same file changed in place (another training run writing over it, say): loading refuses.
  const bytes = fs.readFileSync(file);
  bytes[bytes.length - 1] ^= 1;
  fs.writeFileSync(file, bytes);
  assert.throws(() => loadModel(file), (e: Error) => e instanceof CheckpointError && /fitted to another version/.test(e.message));
  // Writing a model through saveModel (the trainer's path) drops the stale adapters.
  saveModel(file, c, params);
  assert.equal(fs.existsSync(adaptersPath(file)), false);
});

test('matvit adapt brings held-out narrow embeddings closer to XL and writes what the encoder then uses', async () => {
  const file = await tinyModelFile(13);
  const data = writeTextureIdx(fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-adapt-data-')), 600, 4);
  const { file: sidecar, fits } = await adaptModel({ model: file, data, specs: ['S', 'm'], threads: 1 });
  assert.equal(sidecar, adaptersPath(file));
  assert.deepEqual(fits.map((f) => f.spec), ['S', 'M']);
  for (const f of fits) {
    assert.equal(f.heldOutImages, 60);
    assert.ok(f.cosineAfter > f.cosineBefore, `${f.spec}: held-out cosine to XL ${f.cosineBefore} -> ${f.cosineAfter}`);
  }
  const encoder = Encoder.load(file);
  assert.deepEqual(Object.keys(encoder.checkpoint.adapters!).sort(), ['M', 'S']);
  await encoder.close();
  await assert.rejects(adaptModel({ model: file, data, specs: ['XL'], threads: 1 }), /XL encodes the database/);
  await assert.rejects(adaptModel({ model: file, data, specs: ['S'], limit: 50, threads: 1 }), /too few to fit/);
});

test('matvit adapt refuses a missing or malformed dataset in one line with exit code 2, and writes nothing', async () => {
  const file = await tinyModelFile(14);
  const dir = path.dirname(file);
  const truncated = writeTextureIdx(fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-adapt-bad-')), 50, 4);
  fs.truncateSync(truncated, 100); // a download cut short
  const root = path.resolve(import.meta.dirname, '..');
  for (const [data, message] of [[path.join(dir, 'missing.tar.gz'), /cannot read dataset .*no such file/], [truncated, /truncated|not a valid gzip/]] as const) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'adapt', '--model', file, '--data', data], { cwd: root, encoding: 'utf8', env: { ...process.env, NODE_ENV: 'test' } });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  assert.equal(fs.existsSync(adaptersPath(file)), false);
});
