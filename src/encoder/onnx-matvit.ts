// The MatViT forward pass as an ONNX graph, the same network as matvit.ts (the parity test keeps them equal).
// Weights come from a WeightSource: initializers with physically sliced FFNs and heads for an exported submodel, or
// graph inputs sliced inside the graph for a training step (whose backward pass autodiff.ts appends).
import type { GraphBuilder, V } from '../onnx/graph.ts';
import * as op from '../onnx/ops.ts';
import { type LayerWidths, type MatViTConfig, numPatches, numTokens, patchDim } from './config.ts';

export interface WeightSource {
  get(name: string): V;
  /** The layer's FFN weights at hidden width m (the first m neurons). */
  ffn(layer: number, m: number): { w1: V; b1: V; w2: V };
  /** The layer's attention weights for its first h heads (layout.ts's headSlices). */
  attn(layer: number, h: number): { qkvW: V; qkvB: V; projW: V };
}

/** pixels [B, 3, H, W] in [0, 1] -> tokens [B*T, D]; B = -1 for a dynamic batch. */
function patchEmbed(g: GraphBuilder, c: MatViTConfig, W: WeightSource, pixels: V, B: number): V {
  const n = c.imageSize / c.patchSize;
  const p = c.patchSize;
  const mean = g.constFloat(c.mean, [1, 3, 1, 1]);
  const std = g.constFloat(c.std, [1, 3, 1, 1]);
  const x = g.node('Div', [g.node('Sub', [pixels, mean], pixels.shape), std], pixels.shape); // normalised inside the model
  const grid = op.reshape(g, x, [B, c.channels, n, p, n, p]); // [B, C, gy, py, gx, px]
  const patches = op.reshape(g, op.transpose(g, grid, [0, 2, 4, 3, 5, 1]), [B * numPatches(c), patchDim(c)]); // [B*P, py*px*C], same order as tfjs
  const emb = op.reshape(g, op.dense(g, patches, W.get('patch_embed.weight'), W.get('patch_embed.bias')), [B, numPatches(c), c.width]); // [B, P, D]
  // concat([CLS], patches) + pos == pad(patches, one zero row in front) + (pos with CLS added to row 0): no batch-sized Expand needed.
  const clsRow = op.pad(g, op.reshape(g, W.get('cls_token'), [1, c.width]), 0, 0, numPatches(c)); // [T, D]
  const tokens = op.add(g, op.pad(g, emb, 1, 1, 0), op.add(g, W.get('pos_embed'), clsRow)); // [B, T, D]
  return op.reshape(g, tokens, [B * numTokens(c), c.width]); // [B*T, D]
}

/**
 * Multi-head self-attention over x [B*T, D] with the layer's first H heads (attention width A = H * dh). With
 * `clsOnly` only the [CLS] token's output is computed ([B, D]): keys and values still come from every token, but
 * queries, the weighted sum and the projection only for [CLS].
 */
function attention(g: GraphBuilder, c: MatViTConfig, W: WeightSource, layer: number, H: number, x: V, B: number, clsOnly: boolean): V {
  const T = numTokens(c);
  const Tq = clsOnly ? 1 : T; // query tokens
  const dh = c.width / c.heads;
  const A = H * dh;
  const { qkvW, qkvB, projW } = W.attn(layer, H);
  const qkv = op.dense(g, x, qkvW, qkvB); // [B*T, 3A]
  // Heads stay a separate axis (4-D batched products): fewer nodes than folding them into the batch.
  const heads = (i: number, perm: number[]) => op.transpose(g, op.reshape(g, op.slice(g, qkv, 1, i * A, (i + 1) * A), [B, T, H, dh]), perm);
  const kT = heads(1, [0, 2, 3, 1]); // [B, H, dh, T]
  const v = heads(2, [0, 2, 1, 3]); // [B, H, T, dh]
  const q = clsOnly
    ? op.reshape(g, op.slice(g, op.reshape(g, op.slice(g, qkv, 1, 0, A), [B, T, A]), 1, 0, 1), [B, H, 1, dh]) // [B, H, 1, dh]: a [B, 1, H, dh] is [B, H, 1, dh]
    : heads(0, [0, 2, 1, 3]); // [B, H, T, dh]
  const attn = op.softmax(g, op.matmul(g, op.scale(g, q, 1 / Math.sqrt(dh)), kT)); // [B, H, Tq, T]
  const out = op.matmul(g, attn, v); // [B, H, Tq, dh]
  const merged = clsOnly ? op.reshape(g, out, [B, A]) : op.reshape(g, op.transpose(g, out, [0, 2, 1, 3]), [B * Tq, A]); // [B*Tq, A]
  return op.dense(g, merged, projW, W.get(`blocks.${layer}.attn.proj.bias`)); // [B*Tq, D]
}

/**
 * One pre-LayerNorm transformer block, x [B*T, D] -> [B*T, D]; with `clsOnly` -> [B, D], the [CLS] token alone.
 * The last block only needs that: the embedding is its [CLS] output, so the other tokens' attention outputs and
 * FFNs (about an eighth of the model's FLOPs) are never computed. Gradients are the same: nothing else reaches the loss.
 */
function block(g: GraphBuilder, c: MatViTConfig, W: WeightSource, i: number, x: V, m: number, heads: number, B: number, clsOnly: boolean): V {
  const pre = `blocks.${i}.`;
  const eps = c.layerNormEps;
  const residual = clsOnly ? op.reshape(g, op.slice(g, op.reshape(g, x, [B, numTokens(c), c.width]), 1, 0, 1), [B, c.width]) : x;
  const h = op.add(g, residual, attention(g, c, W, i, heads, op.layerNorm(g, x, W.get(pre + 'norm1.weight'), W.get(pre + 'norm1.bias'), eps), B, clsOnly));
  const { w1, b1, w2 } = W.ffn(i, m);
  const hidden = op.gelu(g, op.dense(g, op.layerNorm(g, h, W.get(pre + 'norm2.weight'), W.get(pre + 'norm2.bias'), eps), w1, b1)); // [B*Tq, m]
  return op.add(g, h, op.dense(g, hidden, w2, W.get(pre + 'mlp.fc2.bias'))); // [B*Tq, D]
}

export interface GraphOutputs {
  features: V; // [B, D] [CLS] after the final LayerNorm
  logits?: V; // [B, classes]
}

/** One forward per submodel (each layer's FFN width and heads), sharing the patch embedding; B = -1 for a dynamic batch. */
export function matvitGraph(g: GraphBuilder, c: MatViTConfig, W: WeightSource, pixels: V, subs: LayerWidths[], B: number, withHead: boolean): GraphOutputs[] {
  const tokens = patchEmbed(g, c, W, pixels, B);
  return subs.map((sub) => {
    let x = tokens;
    for (let i = 0; i < c.depth; i++) x = block(g, c, W, i, x, sub.widths[i], sub.heads[i], B, i === c.depth - 1); // the last: [CLS] only, [B, D]
    const features = op.layerNorm(g, x, W.get('norm.weight'), W.get('norm.bias'), c.layerNormEps);
    return { features, logits: withHead ? op.dense(g, features, W.get('head.weight'), W.get('head.bias')) : undefined };
  });
}
