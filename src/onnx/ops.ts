// Differentiable ONNX operators: each emits its forward node(s) and records a vector-Jacobian product that
// emits the backward nodes. Shapes are static; -1 marks a batch-dependent dimension (dynamic in exported files).
import type { GraphBuilder, V } from './graph.ts';

const prod = (s: number[]) => s.reduce((a, b) => a * b, 1);
const swapLast = (rank: number) => [...Array(rank - 2).keys(), rank - 1, rank - 2];

/** numpy broadcasting of two static shapes */
function broadcastShape(a: number[], b: number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const x = a[a.length - r + i] ?? 1;
    const y = b[b.length - r + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`cannot broadcast [${a}] with [${b}]`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** Sums a broadcast gradient back down to `shape` (ReduceSum over broadcast axes, then Reshape). */
export function sumToShape(g: GraphBuilder, dy: V, shape: number[]): V {
  if (dy.shape.join() === shape.join()) return dy;
  const lead = dy.shape.length - shape.length;
  const axes = dy.shape.map((_, i) => i).filter((i) => i < lead || (shape[i - lead] === 1 && dy.shape[i] !== 1));
  const kept = dy.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const summed = axes.length ? g.node('ReduceSum', [dy, g.constInt64(axes)], kept, { keepdims: 1 }) : dy;
  return summed.shape.join() === shape.join() ? summed : g.node('Reshape', [summed, g.constInt64(shape)], shape);
}

export function add(g: GraphBuilder, a: V, b: V): V {
  const y = g.node('Add', [a, b], broadcastShape(a.shape, b.shape));
  return g.record([a, b], y, (dy) => [sumToShape(g, dy, a.shape), sumToShape(g, dy, b.shape)]);
}

export function sub(g: GraphBuilder, a: V, b: V): V {
  const y = g.node('Sub', [a, b], broadcastShape(a.shape, b.shape));
  return g.record([a, b], y, (dy) => [sumToShape(g, dy, a.shape), g.needsGrad(b) ? sumToShape(g, g.node('Neg', [dy], dy.shape), b.shape) : undefined]);
}

export function mul(g: GraphBuilder, a: V, b: V): V {
  const y = g.node('Mul', [a, b], broadcastShape(a.shape, b.shape));
  return g.record([a, b], y, (dy) => [
    g.needsGrad(a) ? sumToShape(g, g.node('Mul', [dy, b], dy.shape), a.shape) : undefined,
    g.needsGrad(b) ? sumToShape(g, g.node('Mul', [dy, a], dy.shape), b.shape) : undefined,
  ]);
}

export function scale(g: GraphBuilder, a: V, s: number): V {
  const c = g.constFloat([s], []);
  const y = g.node('Mul', [a, c], a.shape);
  return g.record([a], y, (dy) => [g.node('Mul', [dy, c], dy.shape)]);
}

/** Reshape; a target dimension that depends on the batch is written -1 (at most one per shape). */
export function reshape(g: GraphBuilder, a: V, shape: number[]): V {
  const onnxShape = shape.map((d) => (d < 0 ? -1 : d));
  if (onnxShape.filter((d) => d === -1).length > 1) throw new Error(`reshape to [${shape}] has more than one dynamic dimension`);
  const y = g.node('Reshape', [a, g.constInt64(onnxShape)], shape.map((d) => (d < 0 ? -1 : d)));
  return g.record([a], y, (dy) => [reshape(g, dy, a.shape)]);
}

export function transpose(g: GraphBuilder, a: V, perm: number[]): V {
  const y = g.node('Transpose', [a], perm.map((p) => a.shape[p]), { perm });
  const inverse = perm.map((_, i) => perm.indexOf(i));
  return g.record([a], y, (dy) => [transpose(g, dy, inverse)]);
}

/** a [..., M, K] · b [..., K, N], both of the same rank. */
export function matmul(g: GraphBuilder, a: V, b: V): V {
  const r = a.shape.length;
  if (b.shape.length !== r) throw new Error(`matmul of rank ${r} and ${b.shape.length}`);
  const y = g.node('MatMul', [a, b], [...a.shape.slice(0, -1), b.shape[r - 1]]);
  // Gradients as plain products of explicit transposes.
  return g.record([a, b], y, (dy) => [
    g.needsGrad(a) ? matmul(g, dy, transpose(g, b, swapLast(r))) : undefined,
    g.needsGrad(b) ? matmul(g, transpose(g, a, swapLast(r)), dy) : undefined,
  ]);
}

/** x [N, in] · w [in, out] + b [out] */
export function dense(g: GraphBuilder, x: V, w: V, b: V): V {
  return add(g, matmul(g, x, w), b);
}

/** Static slice along one axis: a[..., start:end, ...]. */
export function slice(g: GraphBuilder, a: V, axis: number, start: number, end: number): V {
  const shape = a.shape.map((d, i) => (i === axis ? end - start : d));
  const y = g.node('Slice', [a, g.constInt64([start]), g.constInt64([end]), g.constInt64([axis])], shape);
  return g.record([a], y, (dy) => [pad(g, dy, axis, start, a.shape[axis] - end)]);
}

/** Zero padding along one axis (the adjoint of slice). */
export function pad(g: GraphBuilder, a: V, axis: number, before: number, after: number): V {
  const r = a.shape.length;
  const pads = Array(2 * r).fill(0);
  pads[axis] = before;
  pads[r + axis] = after;
  const shape = a.shape.map((d, i) => (i === axis ? d + before + after : d));
  const y = g.node('Pad', [a, g.constInt64(pads)], shape, { mode: 'constant' });
  return g.record([a], y, (dy) => [slice(g, dy, axis, before, before + a.shape[axis])]);
}

export function concat(g: GraphBuilder, xs: V[], axis: number): V {
  const shape = xs[0].shape.map((d, i) => (i === axis ? xs.reduce((s, x) => s + x.shape[axis], 0) : d));
  const y = g.node('Concat', xs, shape, { axis });
  return g.record(xs, y, (dy) => {
    let off = 0;
    return xs.map((x) => {
      const part = g.needsGrad(x) ? slice(g, dy, axis, off, off + x.shape[axis]) : undefined;
      off += x.shape[axis];
      return part;
    });
  });
}

/** Softmax over the last axis. */
export function softmax(g: GraphBuilder, a: V): V {
  const y = g.node('Softmax', [a], a.shape, { axis: -1 });
  return g.record([a], y, (dy) => {
    const dotShape = [...a.shape.slice(0, -1), 1];
    const dot = g.node('ReduceSum', [g.node('Mul', [dy, y], a.shape), g.constInt64([-1])], dotShape, { keepdims: 1 });
    return [g.node('Mul', [y, g.node('Sub', [dy, dot], a.shape)], a.shape)];
  });
}

/**
 * Exact GELU, x·Φ(x) with Φ(x) = (1 + erf(x/√2))/2, written as (x·0.5)·(1 + erf(x/√2)): the node order that
 * onnxruntime's GeluFusion matches, so an exported model runs one Gelu kernel instead of five elementwise passes.
 */
export function gelu(g: GraphBuilder, x: V): V {
  const onePlusErf = g.node('Add', [g.node('Erf', [g.node('Div', [x, g.constFloat([Math.SQRT2], [])], x.shape)], x.shape), g.constFloat([1], [])], x.shape);
  const y = g.node('Mul', [g.node('Mul', [x, g.constFloat([0.5], [])], x.shape), onePlusErf], x.shape);
  return g.record([x], y, (dy) => {
    const cdf = g.node('Mul', [onePlusErf, g.constFloat([0.5], [])], x.shape);
    const pdf = g.node('Mul', [g.node('Exp', [g.node('Mul', [g.node('Mul', [x, x], x.shape), g.constFloat([-0.5], [])], x.shape)], x.shape), g.constFloat([1 / Math.sqrt(2 * Math.PI)], [])], x.shape);
    const dydx = g.node('Add', [cdf, g.node('Mul', [x, pdf], x.shape)], x.shape);
    return [g.node('Mul', [dy, dydx], x.shape)];
  });
}

/** LayerNorm over the last axis of x [N, D]; the forward node also returns the mean and 1/std used by the backward. */
export function layerNorm(g: GraphBuilder, x: V, gamma: V, beta: V, eps: number): V {
  const stat = [...x.shape.slice(0, -1), 1];
  const [y, mean, rstd] = g.nodeMulti('LayerNormalization', [x, gamma, beta], [x.shape, stat, stat], { axis: -1, epsilon: eps });
  return g.record([x, gamma, beta], y, (dy) => {
    const xhat = g.node('Mul', [g.node('Sub', [x, mean], x.shape), rstd], x.shape);
    const dxhat = g.node('Mul', [dy, gamma], x.shape);
    const m1 = g.node('ReduceMean', [dxhat], stat, { axes: [-1], keepdims: 1 });
    const m2 = g.node('ReduceMean', [g.node('Mul', [dxhat, xhat], x.shape)], stat, { axes: [-1], keepdims: 1 });
    const dx = g.node('Mul', [rstd, g.node('Sub', [g.node('Sub', [dxhat, m1], x.shape), g.node('Mul', [xhat, m2], x.shape)], x.shape)], x.shape);
    const lead = g.constInt64(x.shape.slice(0, -1).map((_, i) => i));
    return [
      g.needsGrad(x) ? dx : undefined,
      g.needsGrad(gamma) ? g.node('ReduceSum', [g.node('Mul', [dy, xhat], x.shape), lead], gamma.shape, { keepdims: 0 }) : undefined,
      g.needsGrad(beta) ? g.node('ReduceSum', [dy, lead], beta.shape, { keepdims: 0 }) : undefined,
    ];
  });
}

/** Mean cross-entropy of logits [B, C] against target distributions [B, C] (label smoothing is done by the caller). */
export function crossEntropy(g: GraphBuilder, logits: V, targets: V): V {
  const [B] = logits.shape;
  const logp = g.node('LogSoftmax', [logits], logits.shape, { axis: -1 });
  const total = g.node('ReduceSum', [g.node('Mul', [targets, logp], logits.shape), g.constInt64([0, 1])], [], { keepdims: 0 });
  const loss = g.node('Mul', [total, g.constFloat([-1 / B], [])], []);
  return g.record([logits], loss, (dy) => {
    const diff = g.node('Sub', [g.node('Softmax', [logits], logits.shape, { axis: -1 }), targets], logits.shape);
    return [g.node('Mul', [diff, g.node('Mul', [dy, g.constFloat([1 / B], [])], [])], logits.shape)];
  });
}

/** The same value with no gradient through it: a fixed target (the stop-gradient of distillation). */
export function stopGradient(g: GraphBuilder, a: V): V {
  const y = g.node('Identity', [a], a.shape);
  g.differentiable.delete(y.name);
  return y;
}

/** Sum of every element: a scalar. */
export function sumAll(g: GraphBuilder, a: V): V {
  const y = g.node('ReduceSum', [a, g.constInt64(a.shape.map((_, i) => i))], [], { keepdims: 0 });
  return g.record([a], y, (dy) => [g.node('Expand', [dy, g.constInt64(a.shape)], a.shape)]);
}

/** Rows of x [N, D] divided by their L2 norm (at least 1e-12, as the tfjs reference). */
export function l2Normalize(g: GraphBuilder, x: V): V {
  const stat = [...x.shape.slice(0, -1), 1];
  const norm = g.node('Max', [g.node('Sqrt', [g.node('ReduceSumSquare', [x], stat, { axes: [-1], keepdims: 1 })], stat), g.constFloat([1e-12], [])], stat);
  const y = g.node('Div', [x, norm], x.shape);
  return g.record([x], y, (dy) => {
    // d(x/|x|) = (dy - y·<dy, y>) / |x|
    const dot = g.node('ReduceSum', [g.node('Mul', [dy, y], x.shape), g.constInt64([-1])], stat, { keepdims: 1 });
    return [g.node('Div', [g.node('Sub', [dy, g.node('Mul', [y, dot], x.shape)], x.shape), norm], x.shape)];
  });
}

export { prod };
