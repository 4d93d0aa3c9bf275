// A whole training step (forward, loss and every parameter's gradient) as one ONNX graph run by onnxruntime-node.
// Why not tfjs: on this 2-core machine a tfjs-wasm step of the default model ran at about 8 images/s (its batched
// matMul takes a slow path); the same step in onnxruntime is several times faster (see README, scripts/bench-train).
// The tfjs model stays the reference: tests/train-graph.test.ts checks these gradients against tfjs autodiff.
import { gradients } from '../onnx/autodiff.ts';
import { GraphBuilder, type V } from '../onnx/graph.ts';
import * as op from '../onnx/ops.ts';
import type { MatViTConfig } from '../encoder/config.ts';
import { ffnSlices, paramShapes } from '../encoder/layout.ts';
import { type WeightSource, matvitGraph } from '../encoder/onnx-matvit.ts';

/** Full-size weights as graph inputs; each granularity slices the FFN inside the graph (gradients pad back). */
class InputWeights implements WeightSource {
  readonly inputs: V[];
  private byName: Map<string, V>;
  private ffnCache = new Map<string, { w1: V; b1: V; w2: V }>();
  constructor(private g: GraphBuilder, private c: MatViTConfig, differentiable: boolean) {
    this.inputs = paramShapes(c, true).map(([name, shape]) => g.input(name, shape, 'float', differentiable));
    this.byName = new Map(this.inputs.map((v) => [v.name, v]));
  }
  get(name: string): V {
    const v = this.byName.get(name);
    if (!v) throw new Error(`no parameter ${name}`);
    return v;
  }
  ffn(layer: number, m: number) {
    const key = `${layer}:${m}`;
    let w = this.ffnCache.get(key);
    if (!w) {
      const pre = `blocks.${layer}.mlp.`;
      const s = ffnSlices(this.c.width, m);
      const cut = (k: keyof typeof s) => {
        const full = this.get(pre + k);
        // Each weight is cut along the one axis where size differs from the full shape.
        return s[k].size.reduce((v, size, axis) => (size === full.shape[axis] ? v : op.slice(this.g, v, axis, s[k].begin[axis], s[k].begin[axis] + size)), full);
      };
      w = { w1: cut('fc1.weight'), b1: cut('fc1.bias'), w2: cut('fc2.weight') };
      this.ffnCache.set(key, w);
    }
    return w;
  }
}

export interface TrainGraph {
  onnx: Uint8Array;
  paramNames: string[]; // graph inputs besides pixels/targets, and outputs `grad.<name>` in the same order
  outputs: string[]; // loss, logits_0..k-1, then the gradients
}

/**
 * One training step for a fixed batch size: the loss is the sum over `widthsList` of each submodel's mean
 * cross-entropy (one entry: the sampled-granularity objective; all four: the joint objective of the official code).
 */
export function buildTrainGraph(c: MatViTConfig, batch: number, widthsList: number[][]): TrainGraph {
  const g = new GraphBuilder();
  const pixels = g.input('pixels', [batch, c.channels, c.imageSize, c.imageSize]);
  const targets = g.input('targets', [batch, c.numClasses]);
  const W = new InputWeights(g, c, true);
  const outs = matvitGraph(g, c, W, pixels, widthsList, batch, true);
  const losses = outs.map((o) => op.crossEntropy(g, o.logits!, targets));
  const loss = losses.slice(1).reduce((a, b) => op.add(g, a, b), losses[0]);
  const grads = gradients(g, loss, W.inputs);
  g.output(loss, 'loss');
  outs.forEach((o, i) => g.output(o.logits!, `logits_${i}`));
  const paramNames = W.inputs.map((v) => v.name);
  grads.forEach((d, i) => g.output(d, `grad.${paramNames[i]}`));
  return { onnx: g.toBytes({}, 'matvit_train_step'), paramNames, outputs: ['loss', ...outs.map((_, i) => `logits_${i}`), ...paramNames.map((n) => `grad.${n}`)] };
}

/** Forward only, dynamic batch, weights as inputs: logits and features of each submodel (validation during training). */
export function buildEvalGraph(c: MatViTConfig, widthsList: number[][]): TrainGraph {
  const g = new GraphBuilder();
  const pixels = g.input('pixels', [-1, c.channels, c.imageSize, c.imageSize]);
  const W = new InputWeights(g, c, false);
  const outs = matvitGraph(g, c, W, pixels, widthsList, -1, true);
  outs.forEach((o, i) => g.output(o.logits!, `logits_${i}`));
  const paramNames = W.inputs.map((v) => v.name);
  return { onnx: g.toBytes({}, 'matvit_eval'), paramNames, outputs: outs.map((_, i) => `logits_${i}`) };
}
