// Building blocks with hand-written gradients. On tfjs-backend-wasm, matMul with a transpose flag runs 10-25x
// slower than an explicit transpose followed by a plain product (see platform notes), and the default gradients
// use the flags; fused LayerNorm and GELU gradients also cut the number of small ops per step.
import { tf } from './backend.ts';

type T = tf.Tensor;
type Save = (tensors: T[]) => void;
// tf.customGrad's typing only accepts a variadic (...args: Tensor[]) signature; this keeps call sites typed.
const customGrad = tf.customGrad as unknown as <A extends T[]>(f: (...args: [...A, Save]) => { value: T; gradFunc: (dy: T, saved: T[]) => T[] }) => (...args: A) => T;

const t2 = (x: T) => tf.transpose(x); // [a, b] -> [b, a]
const t3 = (x: T) => tf.transpose(x, [0, 2, 1]); // [n, a, b] -> [n, b, a]

/** x [N, in] · w [in, out] + b [out] -> [N, out] */
export const dense = customGrad<[T, T, T]>((x, w, b, save) => {
  save([x, w]);
  return {
    value: tf.add(tf.matMul(x, w), b),
    gradFunc: (dy, [x, w]) => [tf.matMul(dy, t2(w)), tf.matMul(t2(x), dy), tf.sum(dy, 0)],
  };
});

/** Batched product a [B, M, K] · b [B, K, N] -> [B, M, N]; pass b already transposed instead of using a flag. */
export const bmm = customGrad<[T, T]>((a, b, save) => {
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    gradFunc: (dy, [a, b]) => [tf.matMul(dy, t3(b)), tf.matMul(t3(a), dy)],
  };
});

/** LayerNorm over the last axis of x [N, D] with gain g [D] and bias b [D]. */
export function layerNorm(x: T, g: T, b: T, eps: number): T {
  return layerNormOp(x, g, b, tf.scalar(eps));
}
const layerNormOp = customGrad<[T, T, T, T]>((x, g, b, eps, save) => {
  const mean = tf.mean(x, -1, true);
  const xc = tf.sub(x, mean);
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(xc), -1, true), eps)); // [N, 1]
  const xhat = tf.mul(xc, rstd);
  save([xhat, rstd, g]);
  return {
    value: tf.add(tf.mul(xhat, g), b),
    gradFunc: (dy, [xhat, rstd, g]) => {
      const dxhat = tf.mul(dy, g);
      const dx = tf.mul(rstd, tf.sub(tf.sub(dxhat, tf.mean(dxhat, -1, true)), tf.mul(xhat, tf.mean(tf.mul(dxhat, xhat), -1, true))));
      return [dx, tf.sum(tf.mul(dy, xhat), 0), tf.sum(dy, 0), tf.zerosLike(eps)];
    },
  };
});

/** Exact GELU, 0.5·x·(1 + erf(x/√2)), the form that ONNX runtimes fuse into one Gelu kernel. */
export const gelu = customGrad<[T]>((x, save) => {
  save([x]);
  return {
    value: tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)),
    gradFunc: (dy, [x]) => {
      const cdf = tf.mul(tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1), 0.5);
      const pdf = tf.mul(tf.exp(tf.mul(tf.square(x), -0.5)), 1 / Math.sqrt(2 * Math.PI));
      return [tf.mul(dy, tf.add(cdf, tf.mul(x, pdf)))];
    },
  };
});
