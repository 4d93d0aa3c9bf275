// Before a model that was trained with every head whole is fine-tuned with nested heads (config.attnHeads), each
// layer's heads are put in order of importance, so that a granularity keeping the first h heads keeps the h that
// mattered most. Permuting heads (q, k and v column blocks and the projection's row blocks alike) leaves the full
// model's function unchanged; the FFN needs no such step because its nesting was trained from the start.
import type { MatViTConfig } from '../encoder/config.ts';
import type { TensorMap } from '../encoder/safetensors.ts';

/**
 * A head's importance, from its weights alone: the Frobenius norm of its value columns times that of its rows of
 * the output projection, which bounds how much the head can add to the residual stream.
 */
function headImportance(params: TensorMap, c: MatViTConfig, layer: number): number[] {
  const D = c.width;
  const dh = D / c.heads;
  const qkv = params[`blocks.${layer}.attn.qkv.weight`].data; // [D, 3D]
  const proj = params[`blocks.${layer}.attn.proj.weight`].data; // [D, D]
  return Array.from({ length: c.heads }, (_, h) => {
    let v = 0;
    let p = 0;
    for (let r = 0; r < D; r++) for (let j = 0; j < dh; j++) v += qkv[r * 3 * D + 2 * D + h * dh + j] ** 2;
    for (let r = h * dh; r < (h + 1) * dh; r++) for (let j = 0; j < D; j++) p += proj[r * D + j] ** 2;
    return Math.sqrt(v * p);
  });
}

/** New weights with each layer's heads sorted by importance, most important first; `order[layer]` lists the old heads. */
export function orderHeadsByImportance(params: TensorMap, c: MatViTConfig): { params: TensorMap; order: number[][] } {
  const D = c.width;
  const dh = D / c.heads;
  const out: TensorMap = { ...params };
  const order: number[][] = [];
  for (let layer = 0; layer < c.depth; layer++) {
    const score = headImportance(params, c, layer);
    const perm = score.map((_, h) => h).sort((a, b) => score[b] - score[a] || a - b);
    order.push(perm);
    const pre = `blocks.${layer}.attn.`;
    const qkv = params[pre + 'qkv.weight'];
    const bias = params[pre + 'qkv.bias'];
    const proj = params[pre + 'proj.weight'];
    const qkvNew = new Float32Array(qkv.data.length);
    const biasNew = new Float32Array(bias.data.length);
    const projNew = new Float32Array(proj.data.length);
    perm.forEach((from, to) => {
      for (let part = 0; part < 3; part++) {
        const src = part * D + from * dh;
        const dst = part * D + to * dh;
        for (let r = 0; r < D; r++) qkvNew.set(qkv.data.subarray(r * 3 * D + src, r * 3 * D + src + dh), r * 3 * D + dst);
        biasNew.set(bias.data.subarray(src, src + dh), dst);
      }
      projNew.set(proj.data.subarray(from * dh * D, (from + 1) * dh * D), to * dh * D);
    });
    out[pre + 'qkv.weight'] = { shape: qkv.shape, data: qkvNew };
    out[pre + 'qkv.bias'] = { shape: bias.shape, data: biasNew };
    out[pre + 'proj.weight'] = { shape: proj.shape, data: projNew };
  }
  return { params: out, order };
}
