// The training step graph (forward + hand-built backward, run by onnxruntime) against tfjs autodiff of the
// reference model: same loss, same gradient for every parameter, for one granularity and for the joint sum.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { tf } from '../src/encoder/backend.ts';
import { TINY_CONFIG, parseSubmodel } from '../src/encoder/config.ts';
import { paramShapes } from '../src/encoder/layout.ts';
import { forward } from '../src/encoder/matvit.ts';
import { buildTrainGraph } from '../src/train/step-graph.ts';
import { randomModel } from './helpers/model.ts';

const c = TINY_CONFIG;

for (const specs of [['M'], ['S', 'M', 'L', 'XL'], ['S,XL']]) {
  test(`step graph gradients equal tfjs autodiff (${specs.join(' + ')})`, async () => {
    const { params, tensors } = await randomModel(c, 5);
    const B = 6;
    const x = tf.randomUniform([B, 32, 32, 3], 0, 1, 'float32', 3);
    const y = tf.oneHot(tf.tensor1d([0, 3, 9, 1, 1, 5], 'int32'), 10).toFloat();
    const names = paramShapes(c).map(([n]) => n);
    const widthsList = specs.map((s) => parseSubmodel(s, c).widths);
    const lossFn = (...ps: tf.Tensor[]) => {
      const p = Object.fromEntries(names.map((n, i) => [n, ps[i]]));
      return widthsList.map((w) => tf.losses.softmaxCrossEntropy(y, forward(p, x, w, c).logits!)).reduce((a, b) => tf.add(a, b)) as tf.Scalar;
    };
    const { value, grads } = tf.valueAndGrads(lossFn)(names.map((n) => params[n]));

    const g = buildTrainGraph(c, B, widthsList);
    const sess = await ort.InferenceSession.create(g.onnx);
    const feeds: Record<string, ort.Tensor> = {
      pixels: new ort.Tensor('float32', tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array, [B, 3, 32, 32]),
      targets: new ort.Tensor('float32', y.dataSync() as Float32Array, [B, 10]),
    };
    for (const n of names) feeds[n] = new ort.Tensor('float32', tensors[n].data, tensors[n].shape);
    const out = await sess.run(feeds);
    assert.ok(Math.abs((out.loss.data as Float32Array)[0] - value.dataSync()[0]) < 1e-5);
    names.forEach((n, i) => {
      const ref = grads[i].dataSync();
      const got = out[`grad.${n}`].data as Float32Array;
      let diff = 0;
      let scale = 1e-8;
      for (let j = 0; j < ref.length; j++) {
        diff = Math.max(diff, Math.abs(ref[j] - got[j]));
        scale = Math.max(scale, Math.abs(ref[j]));
      }
      assert.ok(diff <= 1e-4 * scale + 1e-7, `${n}: max diff ${diff} at gradient scale ${scale}`);
    });
  });
}
