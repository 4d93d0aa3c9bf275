// Shared fixtures: a model with random (not freshly initialised) weights, so every parameter matters.
import { initTf, tf } from '../../src/encoder/backend.ts';
import { type MatViTConfig } from '../../src/encoder/config.ts';
import { type Params, initParams, toTensorMap } from '../../src/encoder/matvit.ts';

export async function randomModel(c: MatViTConfig, seed = 1): Promise<{ params: Params; tensors: ReturnType<typeof toTensorMap> }> {
  await initTf('wasm');
  const base = initParams(c, seed);
  const params: Params = {};
  Object.entries(base).forEach(([k, t], i) => (params[k] = tf.add(t, tf.randomNormal(t.shape, 0, 0.05, 'float32', seed * 7919 + i))));
  return { params, tensors: toTensorMap(params) };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}
