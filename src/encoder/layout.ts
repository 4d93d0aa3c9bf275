// The parameter layout of a MatViT, as pure functions of its config: every parameter's name and shape, which ones
// get weight decay, and the MatFormer slicing rule. Shared by the tfjs model (matvit.ts), checkpoints, ONNX export
// and training; kept apart from the model so that serving and the command line never load TensorFlow.js.
import { type MatViTConfig, maxFfn, numTokens, patchDim } from './config.ts';

export type ParamShapes = [name: string, shape: number[]][];

/** Every parameter's name and shape, in checkpoint order. Weights are [in, out]. */
export function paramShapes(c: MatViTConfig, withHead = true): ParamShapes {
  const D = c.width;
  const F = maxFfn(c);
  const out: ParamShapes = [
    ['patch_embed.weight', [patchDim(c), D]],
    ['patch_embed.bias', [D]],
    ['cls_token', [D]],
    ['pos_embed', [numTokens(c), D]],
  ];
  for (let i = 0; i < c.depth; i++) {
    const p = `blocks.${i}.`;
    out.push(
      [p + 'norm1.weight', [D]], [p + 'norm1.bias', [D]],
      [p + 'attn.qkv.weight', [D, 3 * D]], [p + 'attn.qkv.bias', [3 * D]], // columns: q | k | v, heads contiguous
      [p + 'attn.proj.weight', [D, D]], [p + 'attn.proj.bias', [D]],
      [p + 'norm2.weight', [D]], [p + 'norm2.bias', [D]],
      [p + 'mlp.fc1.weight', [D, F]], [p + 'mlp.fc1.bias', [F]],
      [p + 'mlp.fc2.weight', [F, D]], [p + 'mlp.fc2.bias', [D]],
    );
  }
  out.push(['norm.weight', [D]], ['norm.bias', [D]]);
  if (withHead) out.push(['head.weight', [D, c.numClasses]], ['head.bias', [c.numClasses]]);
  return out;
}

/** Weight matrices get weight decay; biases, norms, [CLS] and positions do not (the usual ViT recipe). */
export const isDecayed = (name: string, shape: number[]) => shape.length === 2 && name.endsWith('.weight');

/**
 * The MatFormer slicing rule, the one place it is written: granularity with FFN width m keeps the first m hidden
 * neurons, W1[:, :m], b1[:m], W2[:m, :]; b2 stays whole. Used by the tfjs forward and by ONNX export.
 */
export function ffnSlices(d: number, m: number): Record<'fc1.weight' | 'fc1.bias' | 'fc2.weight', { begin: number[]; size: number[] }> {
  return {
    'fc1.weight': { begin: [0, 0], size: [d, m] },
    'fc1.bias': { begin: [0], size: [m] },
    'fc2.weight': { begin: [0, 0], size: [m, d] },
  };
}

/** One tensor's part that a submodel keeps: the [start, end) ranges along `axis`, joined in order. */
export interface KeptRanges {
  axis: number;
  ranges: [number, number][];
}

/**
 * The nested-heads rule, beside the FFN's: a layer that keeps its first h of H heads (head width dh = D / H, attention
 * width a = h * dh) keeps the first a columns of each of q, k and v in qkv (columns q | k | v, heads contiguous)
 * and the first a rows of proj; proj's bias stays whole. With h = H every range is the whole tensor.
 */
export function headSlices(d: number, heads: number, h: number): Record<'qkv.weight' | 'qkv.bias' | 'proj.weight', KeptRanges> {
  const a = h * (d / heads);
  const qkv: [number, number][] = [[0, a], [d, d + a], [2 * d, 2 * d + a]];
  return {
    'qkv.weight': { axis: 1, ranges: qkv },
    'qkv.bias': { axis: 0, ranges: qkv },
    'proj.weight': { axis: 0, ranges: [[0, a]] },
  };
}
