// The MatViT model in TensorFlow.js, bottom-up: parameters, patch embedding, attention, nested MLP, block, model.
// Parameters are a flat name -> tensor map (the checkpoint layout); the forward pass takes one FFN width and one
// head count per layer, so uniform S/M/L/XL and every Mix'n'Match list run on the same weights.
import { tf } from './backend.ts';
import { type LayerWidths, type MatViTConfig, numPatches, numTokens, patchDim } from './config.ts';
import { type KeptRanges, ffnSlices, headSlices, paramShapes } from './layout.ts';
import { bmm, dense, gelu, layerNorm } from './ops.ts';

export type Params = Record<string, tf.Tensor>;

/** timm-style init: truncated normal(0.02) weights and positions, zero biases, unit LayerNorm gains, zero head. */
export function initParams(c: MatViTConfig, seed = 0): Params {
  return tf.tidy(() => {
    const params: Params = {};
    paramShapes(c).forEach(([name, shape], i) => {
      const isNormGain = /norm\d?\.weight$/.test(name);
      if (isNormGain) params[name] = tf.ones(shape);
      else if (name.startsWith('head.') || name.endsWith('.bias')) params[name] = tf.zeros(shape);
      else params[name] = tf.truncatedNormal(shape, 0, 0.02, 'float32', seed * 1000 + i + 1); // tfjs treats seed 0 as "unseeded"
    });
    return params;
  });
}

function patchEmbed(p: Params, images: tf.Tensor, c: MatViTConfig): tf.Tensor {
  const B = images.shape[0];
  const g = c.imageSize / c.patchSize;
  const x = tf.div(tf.sub(images, c.mean), c.std); // [B, H, W, C], normalised inside the model
  const patches = tf.reshape(tf.transpose(tf.reshape(x, [B, g, c.patchSize, g, c.patchSize, c.channels]), [0, 1, 3, 2, 4, 5]), [B * numPatches(c), patchDim(c)]); // [B*P, p*p*C], (row, col, channel) order
  const emb = tf.reshape(dense(patches, p['patch_embed.weight'], p['patch_embed.bias']), [B, numPatches(c), c.width]); // [B, P, D]
  const cls = tf.tile(tf.reshape(p['cls_token'], [1, 1, c.width]), [B, 1, 1]); // [B, 1, D]
  return tf.add(tf.concat([cls, emb], 1), p['pos_embed']); // [B, T, D]
}

/** The part of a tensor that a submodel keeps (layout.ts's rule): its ranges along one axis, joined. */
function keep(t: tf.Tensor, { axis, ranges }: KeptRanges): tf.Tensor {
  if (ranges.length === 1 && ranges[0][0] === 0 && ranges[0][1] === t.shape[axis]) return t;
  const parts = ranges.map(([start, end]) => tf.slice(t, t.shape.map((_, i) => (i === axis ? start : 0)), t.shape.map((d, i) => (i === axis ? end - start : d))));
  return parts.length === 1 ? parts[0] : tf.concat(parts, axis);
}

/** Self-attention with the layer's first H of c.heads heads (attention width A = H * dh). */
function attention(p: Params, pre: string, x: tf.Tensor, B: number, H: number, c: MatViTConfig): tf.Tensor {
  const T = numTokens(c);
  const dh = c.width / c.heads;
  const A = H * dh;
  const s = headSlices(c.width, c.heads, H);
  const qkv = dense(x, keep(p[pre + 'qkv.weight'], s['qkv.weight']), keep(p[pre + 'qkv.bias'], s['qkv.bias'])); // [B*T, 3A]
  // Rank-4 transposes only: tfjs-wasm runs a rank-5 transpose about 100x slower.
  const [q, k, v] = tf.split(qkv, 3, 1).map((t) => tf.reshape(t, [B, T, H, dh])); // each [B, T, H, dh]
  const toHeads = (t: tf.Tensor, perm: number[]) => tf.reshape(tf.transpose(t, perm), [B * H, ...(perm[3] === 3 ? [T, dh] : [dh, T])]);
  const scores = bmm(toHeads(tf.mul(q, 1 / Math.sqrt(dh)), [0, 2, 1, 3]), toHeads(k, [0, 2, 3, 1])); // [B*H, T, dh] x [B*H, dh, T] -> [B*H, T, T]
  const out = bmm(tf.softmax(scores), toHeads(v, [0, 2, 1, 3])); // [B*H, T, dh]
  const merged = tf.reshape(tf.transpose(tf.reshape(out, [B, H, T, dh]), [0, 2, 1, 3]), [B * T, A]); // [B*T, A]
  return dense(merged, keep(p[pre + 'proj.weight'], s['proj.weight']), p[pre + 'proj.bias']);
}

/** The nested FFN at hidden width m. */
function mlp(p: Params, pre: string, x: tf.Tensor, m: number, c: MatViTConfig): tf.Tensor {
  const s = ffnSlices(c.width, m);
  const w1 = tf.slice(p[pre + 'fc1.weight'], s['fc1.weight'].begin, s['fc1.weight'].size);
  const b1 = tf.slice(p[pre + 'fc1.bias'], s['fc1.bias'].begin, s['fc1.bias'].size);
  const w2 = tf.slice(p[pre + 'fc2.weight'], s['fc2.weight'].begin, s['fc2.weight'].size);
  return dense(gelu(dense(x, w1, b1)), w2, p[pre + 'fc2.bias']); // [B*T, D]
}

function block(p: Params, i: number, x: tf.Tensor, m: number, heads: number, B: number, c: MatViTConfig): tf.Tensor {
  const pre = `blocks.${i}.`;
  const eps = c.layerNormEps;
  const h = tf.add(x, attention(p, pre + 'attn.', layerNorm(x, p[pre + 'norm1.weight'], p[pre + 'norm1.bias'], eps), B, heads, c));
  return tf.add(h, mlp(p, pre + 'mlp.', layerNorm(h, p[pre + 'norm2.weight'], p[pre + 'norm2.bias'], eps), m, c)); // [B*T, D]
}

export interface ForwardOutput {
  features: tf.Tensor; // [B, D] the [CLS] token after the final LayerNorm
  embedding: tf.Tensor; // [B, D] features, L2-normalised
  logits?: tf.Tensor; // [B, classes] when the head is present
}

/** images [B, H, W, C] float32 in [0, 1]; sub: the FFN width and attention heads of each layer (a Submodel). */
export function forward(p: Params, images: tf.Tensor, sub: LayerWidths, c: MatViTConfig): ForwardOutput {
  if (sub.widths.length !== c.depth || sub.heads.length !== c.depth) throw new Error(`expected ${c.depth} FFN widths and head counts, got ${sub.widths.length} and ${sub.heads.length}`);
  const B = images.shape[0];
  let x = tf.reshape(patchEmbed(p, images, c), [B * numTokens(c), c.width]); // [B*T, D]
  for (let i = 0; i < c.depth; i++) x = block(p, i, x, sub.widths[i], sub.heads[i], B, c);
  const cls = tf.reshape(tf.slice(tf.reshape(x, [B, numTokens(c), c.width]), [0, 0, 0], [B, 1, c.width]), [B, c.width]); // [B, D]
  const features = layerNorm(cls, p['norm.weight'], p['norm.bias'], c.layerNormEps);
  const embedding = tf.div(features, tf.maximum(tf.norm(features, 'euclidean', 1, true), 1e-12));
  const logits = p['head.weight'] ? dense(features, p['head.weight'], p['head.bias']) : undefined;
  return { features, embedding, logits };
}

/** tfjs tensors -> plain float32 arrays (the checkpoint and ONNX representation). */
export function toTensorMap(p: Params): Record<string, { shape: number[]; data: Float32Array }> {
  return Object.fromEntries(Object.entries(p).map(([k, t]) => [k, { shape: t.shape, data: t.dataSync() as Float32Array }]));
}

export function fromTensorMap(m: Record<string, { shape: number[]; data: Float32Array }>): Params {
  return Object.fromEntries(Object.entries(m).map(([k, t]) => [k, tf.tensor(t.data, t.shape, 'float32')]));
}
