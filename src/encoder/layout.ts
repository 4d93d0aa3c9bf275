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
