// npm run bench:train [-- --batch 128 --steps 6 --threads 2 --quick]
// Images/s of one sampled-granularity training step (forward, loss, backward; no optimiser) for the default model:
// the onnxruntime step graph that `matvit train` runs, beside the tfjs-wasm step of the reference model, in the
// same run; and the consistency step (`--objective consistency`: XL on one view, the student width on that view and
// a copy view), whose images/s count each training image once. Pause any background job first (kill -STOP <pid>): the figures are wall time on two cores.
import os from 'node:os';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { initTf, tf } from '../src/encoder/backend.ts';
import { DEFAULT_CONFIG as c, GRANULARITIES, parseSubmodel } from '../src/encoder/config.ts';
import { paramShapes } from '../src/encoder/layout.ts';
import { forward, initParams, toTensorMap } from '../src/encoder/matvit.ts';
import { buildConsistencyGraph, buildTrainGraph } from '../src/train/step-graph.ts';
import { consistencySettings } from '../src/train/trainer.ts';

const { values: args } = parseArgs({
  options: {
    batch: { type: 'string', default: '128' },
    steps: { type: 'string', default: '8' },
    threads: { type: 'string', default: '2' },
    quick: { type: 'boolean', default: false },
  },
});
const B = Number(args.batch);
const steps = args.quick ? 2 : Number(args.steps);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
// the paper's sampling probabilities, as `matvit train` uses them; each granularity is timed and then weighted
const probs = { S: 0.17, M: 0.2, L: 0.22, XL: 0.41 };

await initTf('wasm');
const params = initParams(c, 0);
const tensors = toTensorMap(params);
const names = paramShapes(c).map(([n]) => n);
const pixels = Float32Array.from({ length: B * 3 * c.imageSize * c.imageSize }, (_, i) => ((i * 2654435761) % 1000) / 1000);
const targets = Float32Array.from({ length: B * c.numClasses }, (_, i) => (i % c.numClasses === (Math.floor(i / c.numClasses) % c.numClasses) ? 1 : 0));

async function onnxStepMs(spec: string, objective: 'sample' | 'consistency' = 'sample'): Promise<number> {
  const sub = parseSubmodel(spec, c);
  const g = objective === 'sample' ? buildTrainGraph(c, B, [sub]) : buildConsistencyGraph(c, B, sub, consistencySettings({} as never));
  const sess = await ort.InferenceSession.create(g.onnx, { intraOpNumThreads: Number(args.threads), interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const feeds: Record<string, ort.Tensor> = {
    pixels: new ort.Tensor('float32', pixels, [B, 3, c.imageSize, c.imageSize]),
    targets: new ort.Tensor('float32', targets, [B, c.numClasses]),
  };
  if (objective === 'consistency') feeds.pixels_b = feeds.pixels;
  for (const n of names) feeds[n] = new ort.Tensor('float32', tensors[n].data, tensors[n].shape);
  await sess.run(feeds);
  const ms: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    await sess.run(feeds);
    ms.push(performance.now() - t0);
  }
  await sess.release();
  return median(ms);
}

function tfjsStepMs(spec: string): number {
  const sub = parseSubmodel(spec, c);
  const x = tf.tensor(pixels, [B, 3, c.imageSize, c.imageSize]).transpose([0, 2, 3, 1]);
  const y = tf.tensor(targets, [B, c.numClasses]);
  const loss = (...ps: tf.Tensor[]) => tf.losses.softmaxCrossEntropy(y, forward(Object.fromEntries(names.map((n, i) => [n, ps[i]])), x, sub, c).logits!) as tf.Scalar;
  const run = () => tf.tidy(() => tf.grads(loss)(names.map((n) => params[n])).forEach((g) => g.dataSync()));
  run();
  const ms: number[] = [];
  for (let i = 0; i < Math.max(1, Math.ceil(steps / 4)); i++) {
    const t0 = performance.now();
    run();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

const rows: { runtime: string; perSpec: Record<string, number> }[] = [];
const onnx: Record<string, number> = {};
for (const g of GRANULARITIES) onnx[g] = await onnxStepMs(g);
rows.push({ runtime: `onnxruntime step graph (${args.threads} threads)`, perSpec: onnx });
const consistency: Record<string, number> = {};
for (const g of GRANULARITIES) consistency[g] = await onnxStepMs(g, 'consistency');
const tfjsRow: Record<string, number> = {};
for (const g of GRANULARITIES) tfjsRow[g] = tfjsStepMs(g);
rows.push({ runtime: `tfjs-wasm reference model (explicit-transpose gradients, 1 core)`, perSpec: tfjsRow });

const sampledImgPerSec = (perSpec: Record<string, number>, p: Record<string, number> = probs) => (B * 1000) / GRANULARITIES.reduce((s, g) => s + p[g] * perSpec[g], 0);
console.log(`# bench-train: default MatViT (width ${c.width}, depth ${c.depth}), batch ${B}, median of ${steps} steps`);
console.log(`# ${os.cpus().length} cores, ${os.cpus()[0]?.model}, node ${process.version}\n`);
console.log('| runtime | S img/s | M img/s | L img/s | XL img/s | sampled step img/s |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) console.log(`| ${r.runtime} | ${GRANULARITIES.map((g) => ((B * 1000) / r.perSpec[g]).toFixed(1)).join(' | ')} | ${sampledImgPerSec(r.perSpec).toFixed(1)} |`);
const studentProbs = Object.fromEntries(GRANULARITIES.map((g, i) => [g, consistencySettings({} as never).studentProbs[i]]));
console.log(`| consistency step graph, student width (${args.threads} threads) | ${GRANULARITIES.map((g) => ((B * 1000) / consistency[g]).toFixed(1)).join(' | ')} | ${sampledImgPerSec(consistency, studentProbs).toFixed(1)} |`);
console.log(`\nconsistency step / sampled step images/s in this run: ${(sampledImgPerSec(consistency, studentProbs) / sampledImgPerSec(onnx)).toFixed(2)}`);
console.log(`\nsampled-step speed-up of the onnxruntime graph over tfjs in this run: ${(sampledImgPerSec(onnx) / sampledImgPerSec(tfjsRow)).toFixed(1)}x`);
