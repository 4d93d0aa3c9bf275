// A whole training step (forward, loss and every parameter's gradient) as one ONNX graph run by onnxruntime-node.
// Why not tfjs: on this 2-core machine a tfjs-wasm step of the default model ran at about 8 images/s (its batched
// matMul takes a slow path); the same step in onnxruntime is several times faster (see README, scripts/bench-train).
// The tfjs model stays the reference: tests/train-graph.test.ts checks these gradients against tfjs autodiff.
import { gradients } from '../onnx/autodiff.ts';
import { GraphBuilder, type V } from '../onnx/graph.ts';
import * as op from '../onnx/ops.ts';
import { type LayerWidths, type MatViTConfig, parseSubmodel } from '../encoder/config.ts';
import { ffnSlices, headSlices, paramShapes } from '../encoder/layout.ts';
import { type WeightSource, matvitGraph } from '../encoder/onnx-matvit.ts';

/** Full-size weights as graph inputs; each granularity slices the FFN and heads inside the graph (gradients pad back). */
class InputWeights implements WeightSource {
  readonly inputs: V[];
  private byName: Map<string, V>;
  private ffnCache = new Map<string, { w1: V; b1: V; w2: V }>();
  private attnCache = new Map<string, { qkvW: V; qkvB: V; projW: V }>();
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
  attn(layer: number, h: number) {
    const key = `${layer}:${h}`;
    let w = this.attnCache.get(key);
    if (!w) {
      const pre = `blocks.${layer}.attn.`;
      const s = headSlices(this.c.width, this.c.heads, h);
      const cut = (k: keyof typeof s) => {
        const full = this.get(pre + k);
        if (h === this.c.heads) return full;
        const { axis, ranges } = s[k];
        const parts = ranges.map(([start, end]) => op.slice(this.g, full, axis, start, end));
        return parts.length === 1 ? parts[0] : op.concat(this.g, parts, axis);
      };
      w = { qkvW: cut('qkv.weight'), qkvB: cut('qkv.bias'), projW: cut('proj.weight') };
      this.attnCache.set(key, w);
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
 * One training step for a fixed batch size: the loss is the sum over `subs` of each submodel's mean
 * cross-entropy (one entry: the sampled-granularity objective; all four: the joint objective of the official code).
 */
export function buildTrainGraph(c: MatViTConfig, batch: number, subs: LayerWidths[]): TrainGraph {
  const g = new GraphBuilder();
  const pixels = g.input('pixels', [batch, c.channels, c.imageSize, c.imageSize]);
  const targets = g.input('targets', [batch, c.numClasses]);
  const W = new InputWeights(g, c, true);
  const outs = matvitGraph(g, c, W, pixels, subs, batch, true);
  const losses = outs.map((o) => op.crossEntropy(g, o.logits!, targets));
  const loss = losses.slice(1).reduce((a, b) => op.add(g, a, b), losses[0]);
  const grads = gradients(g, loss, W.inputs);
  g.output(loss, 'loss');
  outs.forEach((o, i) => g.output(o.logits!, `logits_${i}`));
  const paramNames = W.inputs.map((v) => v.name);
  grads.forEach((d, i) => g.output(d, `grad.${paramNames[i]}`));
  return { onnx: g.toBytes({}, 'matvit_train_step'), paramNames, outputs: ['loss', ...outs.map((_, i) => `logits_${i}`), ...paramNames.map((n) => `grad.${n}`)] };
}

/** Weights of the consistency objective's terms beside the two label losses (0 leaves a term out of the graph). */
export interface ConsistencyWeights {
  kd: number; // KL divergence from XL's softened logits
  kdTemp: number; // the softening temperature
  cos: number; // 1 - cosine to XL's embedding, XL held fixed
  nce: number; // InfoNCE between the two views across widths
  nceTemp: number;
  rank: number; // KL between XL's and the student's similarity distributions over the batch's other XL embeddings
  rankTemp: number;
  rankBank: number; // XL embeddings of recent batches the ranking also runs over (0: the batch alone)
  pull: number; // 1 - cosine of XL's embedding to the student's, the student held fixed: XL meets the student halfway
}

/** The loss terms a consistency step reports, in output order (`loss.<name>`). */
export const CONSISTENCY_TERMS = ['ce_xl', 'ce_student', 'kd', 'cos', 'nce', 'rank', 'pull'] as const;

/**
 * One step of the consistency objective. XL sees view A (`pixels`) and learns from the labels. A narrower submodel
 * (the student) sees view A too, and learns from the labels, from XL's logits (KL at a temperature) and from XL's
 * embedding (1 - cosine), XL held fixed: in-place distillation on identical pixels, what a query for a stored image
 * needs. The student also sees view B (`pixels_b`: the same images edited as copies are), and an InfoNCE over the
 * batch pairs each image's student embedding of B with its XL embedding of A against the other images' (both
 * directions, gradients into both widths): it pulls copies together and ties the student's space to XL's. A
 * ranking term asks more than the cosine: the student's query of A, scored against the batch's XL embeddings, should
 * rank the other images as XL's own query does (KL between the two softmaxes at a temperature, each image's own
 * entry left out), which is what recall of XL's neighbours measures. A batch of 128 holds about 13 images of a class,
 * too few to show a query its ten nearest neighbours among 50,000; with `rankBank` N the ranking also runs over N
 * XL embeddings of recent batches (inputs `rank_bank` [N, D] and `rank_bank_bias` [B, N]: 0, or -1e4 for a slot
 * not yet filled), as SEED (Fang et al., 2021) distils a teacher's similarities over a queue; the step then outputs
 * `embedding_xl` to fill it. The pull term is the cosine term seen from the other side: XL's embedding moves toward
 * the student's, the student held fixed. A search compares a student's query with XL's stored vectors, so the gap
 * can also close from XL's side, in directions XL's labels do not need, where the student lacks the capacity to
 * follow. The student runs once over A and B stacked.
 * Outputs: loss, logits_0 (XL), logits_1 (student on A), each term, the gradients.
 */
export function buildConsistencyGraph(c: MatViTConfig, batch: number, studentSub: LayerWidths, w: ConsistencyWeights): TrainGraph {
  const g = new GraphBuilder();
  const shape = [batch, c.channels, c.imageSize, c.imageSize];
  const pixelsA = g.input('pixels', shape);
  const pixelsB = g.input('pixels_b', shape);
  const targets = g.input('targets', [batch, c.numClasses]);
  const W = new InputWeights(g, c, true);
  const [xl] = matvitGraph(g, c, W, pixelsA, [parseSubmodel('XL', c)], batch, true);
  const [student] = matvitGraph(g, c, W, op.concat(g, [pixelsA, pixelsB], 0), [studentSub], 2 * batch, true);
  const studentLogits = op.slice(g, student.logits!, 0, 0, batch); // view A
  const zStudent = op.l2Normalize(g, student.features); // [2B, D]: view A, then view B
  const zXl = op.l2Normalize(g, xl.features);
  const weighted = (v: V, k: number) => (k === 1 ? v : op.scale(g, v, k));
  /** A [batch, batch] constant with `value` on the diagonal and 0 elsewhere. */
  const diagonal = (value: number) => g.constFloat(Float32Array.from({ length: batch * batch }, (_, k) => (k % (batch + 1) === 0 ? value : 0)), [batch, batch]);

  const terms: Record<(typeof CONSISTENCY_TERMS)[number], V> = {
    ce_xl: op.crossEntropy(g, xl.logits!, targets),
    ce_student: op.crossEntropy(g, studentLogits, targets),
    kd: g.constFloat([0], []),
    cos: g.constFloat([0], []),
    nce: g.constFloat([0], []),
    rank: g.constFloat([0], []),
    pull: g.constFloat([0], []),
  };
  if (w.kd > 0) {
    // KL(p_XL || p_student) = CE(p_XL, student) - H(p_XL), times T² so that its gradients keep their scale across T
    const xlLogits = op.scale(g, op.stopGradient(g, xl.logits!), 1 / w.kdTemp);
    const pXl = g.node('Softmax', [xlLogits], xlLogits.shape, { axis: -1 });
    const kl = op.sub(g, op.crossEntropy(g, op.scale(g, studentLogits, 1 / w.kdTemp), pXl), op.crossEntropy(g, xlLogits, pXl));
    terms.kd = op.scale(g, kl, w.kdTemp ** 2);
  }
  if (w.cos > 0) {
    const meanCos = op.scale(g, op.sumAll(g, op.mul(g, op.slice(g, zStudent, 0, 0, batch), op.stopGradient(g, zXl))), 1 / batch);
    terms.cos = op.sub(g, g.constFloat([1], []), meanCos);
  }
  if (w.pull > 0) {
    const meanCos = op.scale(g, op.sumAll(g, op.mul(g, op.stopGradient(g, op.slice(g, zStudent, 0, 0, batch)), zXl)), 1 / batch);
    terms.pull = op.sub(g, g.constFloat([1], []), meanCos);
  }
  if (w.nce > 0) {
    const copies = op.slice(g, zStudent, 0, batch, 2 * batch);
    const sim = op.scale(g, op.matmul(g, copies, op.transpose(g, zXl, [1, 0])), 1 / w.nceTemp); // [B, B]: row i = image i's copy
    const eye = diagonal(1);
    const bothWays = op.add(g, op.crossEntropy(g, sim, eye), op.crossEntropy(g, op.transpose(g, sim, [1, 0]), eye));
    terms.nce = op.scale(g, bothWays, 0.5);
  }
  if (w.rank > 0) {
    // The stored side of a search: XL's embeddings of the batch (each image's own entry left out), then the bank's.
    const xlQueries = op.stopGradient(g, zXl);
    const bank = w.rankBank > 0 ? { z: g.input('rank_bank', [w.rankBank, c.width]), bias: g.input('rank_bank_bias', [batch, w.rankBank]) } : undefined;
    const database = bank ? op.concat(g, [xlQueries, bank.z], 0) : xlQueries;
    const bias = bank ? op.concat(g, [diagonal(-1e4), bank.bias], 1) : diagonal(-1e4);
    const scores = (queries: V) => op.add(g, op.scale(g, op.matmul(g, queries, op.transpose(g, database, [1, 0])), 1 / w.rankTemp), bias);
    const xlScores = scores(xlQueries);
    const pXl = g.node('Softmax', [xlScores], xlScores.shape, { axis: -1 });
    terms.rank = op.sub(g, op.crossEntropy(g, scores(op.slice(g, zStudent, 0, 0, batch)), pXl), op.crossEntropy(g, xlScores, pXl));
  }
  const loss = [weighted(terms.kd, w.kd), weighted(terms.cos, w.cos), weighted(terms.nce, w.nce), weighted(terms.rank, w.rank), weighted(terms.pull, w.pull)].reduce((a, b) => op.add(g, a, b), op.add(g, terms.ce_xl, terms.ce_student));
  const grads = gradients(g, loss, W.inputs);
  g.output(loss, 'loss');
  g.output(xl.logits!, 'logits_0');
  g.output(studentLogits, 'logits_1');
  const bankFill = w.rank > 0 && w.rankBank > 0 ? ['embedding_xl'] : [];
  if (bankFill.length) g.output(zXl, 'embedding_xl');
  for (const t of CONSISTENCY_TERMS) g.output(terms[t], `loss.${t}`);
  const paramNames = W.inputs.map((v) => v.name);
  grads.forEach((d, i) => g.output(d, `grad.${paramNames[i]}`));
  return { onnx: g.toBytes({}, 'matvit_consistency_step'), paramNames, outputs: ['loss', 'logits_0', 'logits_1', ...bankFill, ...CONSISTENCY_TERMS.map((t) => `loss.${t}`), ...paramNames.map((n) => `grad.${n}`)] };
}

/** Forward only, dynamic batch, weights as inputs: logits and features of each submodel (validation during training). */
export function buildEvalGraph(c: MatViTConfig, subs: LayerWidths[]): TrainGraph {
  const g = new GraphBuilder();
  const pixels = g.input('pixels', [-1, c.channels, c.imageSize, c.imageSize]);
  const W = new InputWeights(g, c, false);
  const outs = matvitGraph(g, c, W, pixels, subs, -1, true);
  outs.forEach((o, i) => g.output(o.logits!, `logits_${i}`));
  outs.forEach((o, i) => g.output(o.features, `features_${i}`));
  const paramNames = W.inputs.map((v) => v.name);
  return { onnx: g.toBytes({}, 'matvit_eval'), paramNames, outputs: [...outs.map((_, i) => `logits_${i}`), ...outs.map((_, i) => `features_${i}`)] };
}
