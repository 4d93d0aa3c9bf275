// The training step graph (forward + hand-built backward, run by onnxruntime) against tfjs autodiff of the
// reference model: same loss, same gradient for every parameter, for one granularity and for the joint sum.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { tf } from '../src/encoder/backend.ts';
import { type MatViTConfig, TINY_CONFIG, parseSubmodel } from '../src/encoder/config.ts';
import { paramShapes } from '../src/encoder/layout.ts';
import { forward } from '../src/encoder/matvit.ts';
import { type ConsistencyWeights, buildConsistencyGraph, buildTrainGraph } from '../src/train/step-graph.ts';
import { randomModel } from './helpers/model.ts';

const c = TINY_CONFIG;
// Nested attention heads as well: S keeps 1 of 4 heads, M 2, L 3 (attention widths 8, 16, 24 of 32).
const nestedHeads: MatViTConfig = { ...TINY_CONFIG, heads: 4, attnHeads: { S: 1, M: 2, L: 3, XL: 4 } };

for (const [specs, c] of [[['M'], TINY_CONFIG], [['S', 'M', 'L', 'XL'], TINY_CONFIG], [['S,XL'], TINY_CONFIG], [['S', 'M', 'L', 'XL'], nestedHeads], [['S,M'], nestedHeads]] as [string[], MatViTConfig][]) {
  test(`step graph gradients equal tfjs autodiff (${specs.join(' + ')}${c.attnHeads ? ', nested heads' : ''})`, async () => {
    const { params, tensors } = await randomModel(c, 5);
    const B = 6;
    const x = tf.randomUniform([B, 32, 32, 3], 0, 1, 'float32', 3);
    const y = tf.oneHot(tf.tensor1d([0, 3, 9, 1, 1, 5], 'int32'), 10).toFloat();
    const names = paramShapes(c).map(([n]) => n);
    const subs = specs.map((s) => parseSubmodel(s, c));
    const lossFn = (...ps: tf.Tensor[]) => {
      const p = Object.fromEntries(names.map((n, i) => [n, ps[i]]));
      return subs.map((w) => tf.losses.softmaxCrossEntropy(y, forward(p, x, w, c).logits!)).reduce((a, b) => tf.add(a, b)) as tf.Scalar;
    };
    const { value, grads } = tf.valueAndGrads(lossFn)(names.map((n) => params[n]));

    const g = buildTrainGraph(c, B, subs);
    const sess = await ort.InferenceSession.create(g.onnx);
    const feeds: Record<string, ort.Tensor> = {
      pixels: new ort.Tensor('float32', tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array, [B, 3, 32, 32]),
      targets: new ort.Tensor('float32', y.dataSync() as Float32Array, [B, 10]),
    };
    for (const n of names) feeds[n] = new ort.Tensor('float32', tensors[n].data, tensors[n].shape);
    const out = await sess.run(feeds);
    assert.ok(Math.abs((out.loss.data as Float32Array)[0] - value.dataSync()[0]) < 1e-5);
    assertGradientsMatch(names, grads, out, 1e-4);
  });
}

// The consistency objective: XL and a student width on view A (labels, KL to XL's softened logits and 1 - cosine
// to XL's embedding, XL held fixed), an InfoNCE between the student on view B and XL on view A, and the ranking term
// (the student's and XL's similarity distributions over the other images' fixed XL embeddings). tfjs has no stop-gradient, so the fixed XL targets are
// computed outside the differentiated function: the same semantics.
// With a bank, the ranking also runs over stored XL embeddings, of which the masked slots take no part. The pull is
// 1 - cosine of XL's embedding to the fixed student's.
for (const [student, bankSize] of [['S', 0], ['M,XL', 0], ['L', 7]] as const) {
  test(`consistency step gradients equal tfjs autodiff (student ${student}${bankSize ? `, bank of ${bankSize}` : ''})`, async () => {
    const { params, tensors } = await randomModel(c, 9);
    const B = 5;
    const w: ConsistencyWeights = { kd: 0.7, kdTemp: 2, cos: 1.3, nce: 0.9, nceTemp: 0.2, rank: 1.1, rankTemp: 0.3, rankBank: bankSize, pull: 0.8 };
    const xA = tf.randomUniform([B, 32, 32, 3], 0, 1, 'float32', 11);
    const xB = tf.randomUniform([B, 32, 32, 3], 0, 1, 'float32', 12);
    const y = tf.oneHot(tf.tensor1d([2, 3, 9, 1, 2], 'int32'), 10).toFloat();
    const eye = tf.eye(B);
    const names = paramShapes(c).map(([n]) => n);
    const xl = parseSubmodel('XL', c);
    const studentSub = parseSubmodel(student, c);
    const fixed = forward(params, xA, xl, c); // XL's targets, outside the gradient
    const pXl = tf.softmax(tf.div(fixed.logits!, w.kdTemp));
    const bank = tf.randomNormal([bankSize, c.width], 0, 1, 'float32', 13);
    const bankZ = tf.div(bank, tf.norm(bank, 2, 1, true)); // unit rows, as stored XL embeddings are
    const bankBias = tf.tile(tf.tensor2d([Array.from({ length: bankSize }, (_, j) => (j >= 5 ? -1e4 : 0))]), [B, 1]); // two slots unfilled
    const database = tf.concat([fixed.embedding, bankZ], 0);
    const notSelf = tf.concat([tf.mul(eye, -1e4), bankBias], 1); // an image's own entry is left out of the ranking
    const xlScores = tf.add(tf.div(tf.matMul(fixed.embedding, tf.transpose(database)), w.rankTemp), notSelf);
    const pRank = tf.softmax(xlScores);
    const fixedStudent = forward(params, xA, studentSub, c).embedding; // the pull's target, outside the gradient
    const lossFn = (...ps: tf.Tensor[]) => {
      const p = Object.fromEntries(names.map((n, i) => [n, ps[i]]));
      const a = forward(p, xA, xl, c);
      const s = forward(p, xA, studentSub, c);
      const b = forward(p, xB, studentSub, c);
      const ce = tf.add(tf.losses.softmaxCrossEntropy(y, a.logits!), tf.losses.softmaxCrossEntropy(y, s.logits!));
      const kl = tf.mean(tf.sum(tf.mul(pXl, tf.sub(tf.log(pXl), tf.logSoftmax(tf.div(s.logits!, w.kdTemp)))), 1));
      const cos = tf.sub(1, tf.mean(tf.sum(tf.mul(s.embedding, fixed.embedding), 1)));
      const sim = tf.div(tf.matMul(b.embedding, tf.transpose(a.embedding)), w.nceTemp);
      const nce = tf.mul(0.5, tf.add(tf.losses.softmaxCrossEntropy(eye, sim), tf.losses.softmaxCrossEntropy(eye, tf.transpose(sim))));
      const studentScores = tf.add(tf.div(tf.matMul(s.embedding, tf.transpose(database)), w.rankTemp), notSelf);
      const rank = tf.sub(tf.losses.softmaxCrossEntropy(pRank, studentScores), tf.losses.softmaxCrossEntropy(pRank, xlScores));
      const pull = tf.sub(1, tf.mean(tf.sum(tf.mul(fixedStudent, a.embedding), 1)));
      return tf.addN([ce, tf.mul(w.kd * w.kdTemp ** 2, kl), tf.mul(w.cos, cos), tf.mul(w.nce, nce), tf.mul(w.rank, rank), tf.mul(w.pull, pull)]) as tf.Scalar;
    };
    const { value, grads } = tf.valueAndGrads(lossFn)(names.map((n) => params[n]));

    const g = buildConsistencyGraph(c, B, studentSub, w);
    const sess = await ort.InferenceSession.create(g.onnx);
    const nchw = (x: tf.Tensor) => new ort.Tensor('float32', tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array, [B, 3, 32, 32]);
    const feeds: Record<string, ort.Tensor> = { pixels: nchw(xA), pixels_b: nchw(xB), targets: new ort.Tensor('float32', y.dataSync() as Float32Array, [B, 10]) };
    if (bankSize) {
      feeds.rank_bank = new ort.Tensor('float32', bankZ.dataSync() as Float32Array, [bankSize, c.width]);
      feeds.rank_bank_bias = new ort.Tensor('float32', bankBias.dataSync() as Float32Array, [B, bankSize]);
    }
    for (const n of names) feeds[n] = new ort.Tensor('float32', tensors[n].data, tensors[n].shape);
    const out = await sess.run(feeds);
    const loss = (out.loss.data as Float32Array)[0];
    assert.ok(Math.abs(loss - value.dataSync()[0]) < 1e-4 * Math.abs(loss), `loss ${loss} vs ${value.dataSync()[0]}`);
    const kd = (out['loss.kd'].data as Float32Array)[0];
    assert.ok(kd > 0, 'the KL term is positive when the widths disagree');
    assert.ok((out['loss.rank'].data as Float32Array)[0] > 0, 'so is the ranking term');
    if (bankSize) {
      const ref = fixed.embedding.dataSync();
      const got = out.embedding_xl.data as Float32Array;
      assert.ok(ref.every((r, j) => Math.abs(r - got[j]) < 1e-5), 'the step hands back XL\'s embeddings for the bank');
    }
    assertGradientsMatch(names, grads, out, 2e-4);
  });
}

/** Each parameter's step-graph gradient equals tfjs's within `rel` of that gradient's largest value. */
function assertGradientsMatch(names: string[], grads: tf.Tensor[], out: ort.InferenceSession.OnnxValueMapType, rel: number): void {
  names.forEach((n, i) => {
    const ref = grads[i].dataSync();
    const got = out[`grad.${n}`].data as Float32Array;
    let diff = 0;
    let scale = 1e-8;
    for (let j = 0; j < ref.length; j++) {
      diff = Math.max(diff, Math.abs(ref[j] - got[j]));
      scale = Math.max(scale, Math.abs(ref[j]));
    }
    assert.ok(diff <= rel * scale + 1e-7, `${n}: max diff ${diff} at gradient scale ${scale}`);
  });
}
