// The consistency objective's data side and its effect: copy edits are deterministic for a seed and keep the
// image's shape and range; light views match the pixels serving feeds the encoder; and on a tiny run, training
// with the consistency terms brings S's embeddings closer to XL's than the paper's sampled objective does.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { copyViews, lightViews, makeBatch } from '../src/train/augment.ts';
import { COPY_EDITS, JpegRoundTrip, copyEdit } from '../src/train/copy-edits.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { METRICS_FILE, MODEL_FILE, train } from '../src/train/trainer.ts';
import { loadModel } from '../src/encoder/checkpoint.ts';
import { Encoder, toNchw } from '../src/encoder/runtime.ts';
import { loadLabelledPixels } from '../src/data/labelled.ts';

const GALLERY = path.resolve('datasets/cifar10-test.tar.gz');
const size = 32;

/** A smooth test image with every channel in use. */
function testImage(seed: number): Uint8Array {
  const r = mulberry32(seed);
  const [a, b, c] = [r() * 6, r() * 6, r() * 6];
  return Uint8Array.from({ length: size * size * 3 }, (_, i) => {
    const p = Math.floor(i / 3);
    const [x, y] = [p % size, Math.floor(p / size)];
    return Math.round(127.5 + 127.5 * Math.sin(a + (x * (i % 3 + 1)) / 5 + (y * b) / 17 + c));
  });
}

test('copy edits: the same seed draws the same copy; every copy keeps the shape, and edits change the pixels', async () => {
  const jpeg = new JpegRoundTrip();
  const img = testImage(1);
  let changed = 0;
  for (let seed = 0; seed < 120; seed++) {
    const a = await copyEdit(img, size, mulberry32(seed), jpeg);
    const b = await copyEdit(img, size, mulberry32(seed), jpeg);
    assert.ok(a instanceof Uint8Array && a.length === size * size * 3, `seed ${seed}: ${a.length} values`);
    assert.deepEqual(a, b, `seed ${seed} drew two different copies`);
    if (a.some((v, i) => v !== img[i])) changed++;
  }
  assert.ok(changed > 100, `only ${changed} of 120 copies differ from the original`);
  const seeds = new Set<string>();
  for (let seed = 0; seed < 20; seed++) seeds.add(Buffer.from(await copyEdit(img, size, mulberry32(seed), jpeg)).toString('base64'));
  assert.ok(seeds.size >= 19, 'different seeds draw different copies');
  const floats = toNchw([await copyEdit(img, size, mulberry32(7), jpeg)], size);
  assert.ok(floats.every((v) => v >= 0 && v <= 1), 'the batch stays in [0, 1]');
});

test('copy edits: the run\'s crop area range is the one drawn from (small crops move the copy further from the original)', async () => {
  const jpeg = new JpegRoundTrip();
  const img = testImage(3);
  const meanDiff = async (cropArea?: [number, number]) => {
    let sum = 0;
    for (let seed = 0; seed < 40; seed++) {
      const copy = await copyEdit(img, size, mulberry32(seed), jpeg, { cropArea });
      sum += copy.reduce((t, v, i) => t + Math.abs(v - img[i]), 0) / copy.length;
    }
    return sum / 40;
  };
  assert.equal(await meanDiff(), await meanDiff([...COPY_EDITS.crop.area]), 'no range given is the default range');
  const [small, large] = [await meanDiff([0.05, 0.1]), await meanDiff([0.9, 1])];
  assert.ok(small > large * 1.2, `mean difference with 5-10% crops ${small.toFixed(2)}, with 90-100% crops ${large.toFixed(2)}`);
});

test('JPEG round trip: lower quality loses more, and a flat image survives it', async () => {
  const jpeg = new JpegRoundTrip();
  const img = testImage(2);
  const err = async (q: number) => {
    const out = await jpeg.apply(img, size, q);
    return out.reduce((s, v, i) => s + Math.abs(v - img[i]), 0) / out.length;
  };
  const [q10, q90] = [await err(10), await err(90)];
  assert.ok(q10 > 2 * q90, `mean error q10 ${q10.toFixed(2)}, q90 ${q90.toFixed(2)}`);
  const flat = new Uint8Array(size * size * 3).fill(200);
  assert.ok((await jpeg.apply(flat, size, 50)).every((v) => Math.abs(v - 200) <= 1));
});

test('views: light views without augmentation are the stored pixels, exactly as serving converts them', async () => {
  const pixels = Uint8Array.from({ length: 3 * size * size * 3 }, (_, i) => (i * 37) % 256);
  const idx = [2, 0];
  const batch = makeBatch(pixels, size, idx, Math.random);
  const images = idx.map((j) => pixels.subarray(j * size * size * 3, (j + 1) * size * size * 3));
  assert.deepEqual(batch, toNchw(images, size));
  // a one-pixel shift moves every value by one column, with zeros coming in
  const shifted = lightViews(pixels, size, [1], () => 0.5 + 1 / 18, { pad: 4, flip: false })[0]; // dy = dx = 1
  assert.equal(shifted[0], pixels[size * size * 3 + (size + 1) * 3]);
  assert.equal(shifted[(size * size - 1) * 3], 0);
  // copy views are drawn per image from the one generator: the same seed, the same views
  const copies = async () => copyViews(pixels, size, idx, mulberry32(4), new JpegRoundTrip());
  assert.deepEqual(await copies(), await copies());
});

/**
 * Mean squared distance between each image's S and XL embeddings, relative to the mean squared distance between
 * different images' XL embeddings: scale-free, 0 when the widths agree exactly.
 */
async function relativeDistance(modelFile: string, images: Uint8Array[]): Promise<number> {
  const encoder = new Encoder(loadModel(modelFile), modelFile, { threads: 1 });
  const [s, xl] = [await encoder.encode(images, 'S'), await encoder.encode(images, 'XL')];
  await encoder.close();
  const d2 = (a: Float32Array, b: Float32Array) => a.reduce((t, v, k) => t + (v - b[k]) ** 2, 0);
  const own = s.reduce((t, e, i) => t + d2(e, xl[i]), 0) / s.length;
  let others = 0;
  for (let i = 0; i < xl.length; i++) others += d2(xl[i], xl[(i + 1) % xl.length]);
  return own / (others / xl.length);
}

test('a tiny run: the consistency objective brings S closer to XL than sampling one width per step', async (t) => {
  const common = { data: GALLERY, model: 'tiny' as const, limit: 800, valSize: 160, batchSize: 32, epochs: 3, warmupEpochs: 0.3, lr: 3e-3, threads: 1, logEvery: 5 };
  const heldOut = await loadLabelledPixels(GALLERY, size, { limit: 1000 }); // images 800.. were never trained on
  const images = Array.from({ length: 200 }, (_, i) => heldOut.pixels.slice((800 + i) * size * size * 3, (801 + i) * size * size * 3));
  const run = async (objective: 'sample' | 'consistency') => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), `matvit-${objective}-`));
    t.after(() => fs.rmSync(out, { recursive: true, force: true }));
    const r = await train({ ...common, out, objective } as never);
    assert.equal(r.finished, true);
    const steps = fs.readFileSync(path.join(out, METRICS_FILE), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'step');
    return { steps, distance: await relativeDistance(path.join(out, MODEL_FILE), images) };
  };
  const sample = await run('sample');
  const consistency = await run('consistency');
  assert.ok(consistency.steps.every((s) => s.ffn.startsWith('XL+') && s.terms.nce > 0 && s.terms.cos >= 0), 'every consistency step reports its terms');
  t.diagnostic(`relative S-to-XL distance: consistency ${consistency.distance.toFixed(4)}, sample ${sample.distance.toFixed(4)}`);
  assert.ok(consistency.distance < 0.8 * sample.distance, `S-to-XL distance relative to XL's spread: consistency ${consistency.distance.toFixed(4)}, sample ${sample.distance.toFixed(4)}`);
});
