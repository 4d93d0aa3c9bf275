// Export is a contract: the standalone sliced ONNX file run by onnxruntime-node must equal the tfjs forward.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { tf } from '../src/encoder/backend.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { DEFAULT_CONFIG, type MatViTConfig, parseSubmodel } from '../src/encoder/config.ts';
import { extractToFile } from '../src/encoder/extract.ts';
import { forward } from '../src/encoder/matvit.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { maxAbsDiff, randomModel } from './helpers/model.ts';

const c = DEFAULT_CONFIG;

/**
 * Saves a random model of config `cfg`, encodes a few images with the serving runtime (an exported, sliced ONNX file
 * per submodel) and asserts each spec's embeddings equal the tfjs forward within 1e-4, at unit length.
 */
async function assertRuntimeMatchesTfjs(cfg: MatViTConfig, seed: number, specs: string[]): Promise<string> {
  const { params, tensors } = await randomModel(cfg, seed);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-parity-')), 'model.safetensors');
  saveModel(file, cfg, tensors);
  const encoder = Encoder.load(file);
  const images = Array.from({ length: 5 }, (_, i) => Uint8Array.from({ length: 32 * 32 * 3 }, (_, j) => (j * 31 + i * 97 + seed) % 256));
  const x = tf.div(tf.tensor(images.flatMap((im) => Array.from(im)), [5, 32, 32, 3]), 255);
  for (const spec of specs) {
    const ref = forward(params, x, parseSubmodel(spec, cfg), cfg).embedding.dataSync();
    const got = await encoder.encode(images, spec);
    const flat = new Float32Array(got.length * cfg.width);
    got.forEach((e, i) => flat.set(e, i * cfg.width));
    const d = maxAbsDiff(flat, ref);
    assert.ok(d < 1e-4, `${spec}: max abs difference ${d}`);
    for (const e of got) assert.ok(Math.abs(Math.hypot(...e) - 1) < 1e-5);
  }
  await encoder.close();
  return file;
}

test('ONNX submodels equal the tfjs forward within 1e-4 for S, XL and a Mix\'n\'Match list', async () => {
  await assertRuntimeMatchesTfjs(c, 3, ['S', 'XL', 'S,S,M,M,L,XL']);
});

test('with nested attention heads, the exported files (heads sliced out) equal the tfjs forward too', async () => {
  const file = await assertRuntimeMatchesTfjs({ ...c, attnHeads: { S: 2, M: 3, L: 4, XL: 4 } }, 6, ['S', 'M', 'XL', 'S,M,M,L,XL,XL']);
  const dir = path.dirname(file);
  extractToFile(file, 'M', path.join(dir, 'm.onnx'));
  const model = onnxProto.onnx.ModelProto.decode(fs.readFileSync(path.join(dir, 'm.onnx')));
  const dims = (name: string) => model.graph!.initializer!.find((t) => t.name === name)!.dims!.map(Number);
  assert.deepEqual(dims('blocks.0.attn.qkv.weight'), [128, 3 * 96], 'M keeps 3 of 4 heads: 96 columns each of q, k and v');
  assert.deepEqual(dims('blocks.0.attn.proj.weight'), [96, 128]);
  const meta = Object.fromEntries(model.metadataProps.map((p) => [p.key, p.value]));
  assert.deepEqual(JSON.parse(meta['matvit.attn_heads']), [3, 3, 3, 3, 3, 3]);
});

test('extract writes a standalone sliced ONNX file with its config in metadata, S under half of XL', async () => {
  const { tensors } = await randomModel(c, 4);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-extract-'));
  const file = path.join(dir, 'model.safetensors');
  saveModel(file, c, tensors);
  const s = extractToFile(file, 'S', path.join(dir, 's.onnx'));
  const xl = extractToFile(file, 'XL', path.join(dir, 'xl.onnx'));
  assert.ok(s.bytes < xl.bytes / 2, `S ${s.bytes} bytes vs XL ${xl.bytes}`);
  assert.ok(s.flops < xl.flops && s.params < xl.params);
  const model = onnxProto.onnx.ModelProto.decode(fs.readFileSync(path.join(dir, 's.onnx')));
  const meta = Object.fromEntries(model.metadataProps.map((p) => [p.key, p.value]));
  assert.equal(meta['matvit.ffn'], 'S');
  assert.deepEqual(JSON.parse(meta['matvit.ffn_widths']), [64, 64, 64, 64, 64, 64]);
  assert.deepEqual(JSON.parse(meta['matvit.config']), c);
  const fc1 = model.graph!.initializer!.find((t) => t.name === 'blocks.0.mlp.fc1.weight')!;
  assert.deepEqual(fc1.dims!.map(Number), [128, 64]);
  assert.ok(model.graph!.node!.every((n) => !n.domain), 'only standard-domain operators');
  // onnxruntime fuses each block's GELU into one kernel (1.15-1.2x XL throughput); a graph change that breaks the
  // pattern would only show as a slower encoder, so check the optimised graph keeps it fused.
  const optimised = path.join(dir, 's.optimised.onnx');
  await (await ort.InferenceSession.create(path.join(dir, 's.onnx'), { graphOptimizationLevel: 'extended', optimizedModelFilePath: optimised })).release();
  const ops = onnxProto.onnx.ModelProto.decode(fs.readFileSync(optimised)).graph!.node!.map((n) => n.opType);
  assert.equal(ops.filter((o) => o === 'Gelu').length, c.depth, `one fused Gelu per block: ${ops.join(' ')}`);
  assert.ok(!ops.includes('Erf'), 'no unfused erf left');
  // the file runs on its own, with a dynamic batch
  const sess = await ort.InferenceSession.create(path.join(dir, 's.onnx'));
  for (const n of [1, 7]) {
    const out = await sess.run({ pixels: new ort.Tensor('float32', new Float32Array(n * 3 * 32 * 32).fill(0.5), [n, 3, 32, 32]) });
    assert.deepEqual(out.embedding.dims, [n, 128]);
  }
  assert.throws(() => extractToFile(file, 'S,M', path.join(dir, 'bad.onnx')), /2 entries but the model has 6 layers/);
});
