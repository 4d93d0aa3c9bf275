// AdamW (decoupled weight decay) with global-norm gradient clipping, over plain Float32Arrays: the optimiser
// runs in JavaScript between onnxruntime steps and its state is saved in the checkpoint.

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  clipNorm: number; // 0 disables clipping
}

export interface AdamWSlot {
  param: Float32Array;
  m: Float32Array;
  v: Float32Array;
  decay: boolean;
}

export function globalNorm(grads: Float32Array[]): number {
  let s = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  return Math.sqrt(s);
}

/** One update at 1-based step t with learning rate lr; returns the gradient norm before clipping. */
export function adamwStep(slots: AdamWSlot[], grads: Float32Array[], t: number, lr: number, o: AdamWOptions): number {
  const norm = globalNorm(grads);
  const clip = o.clipNorm > 0 && norm > o.clipNorm ? o.clipNorm / norm : 1;
  const bc1 = 1 - o.beta1 ** t;
  const bc2 = 1 - o.beta2 ** t;
  slots.forEach(({ param, m, v, decay }, k) => {
    const g = grads[k];
    const wd = decay ? lr * o.weightDecay : 0;
    for (let i = 0; i < param.length; i++) {
      const gi = g[i] * clip;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * gi;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * gi * gi;
      param[i] -= lr * (m[i] / bc1) / (Math.sqrt(v[i] / bc2) + o.eps) + wd * param[i];
    }
  });
  return norm;
}

/** Linear warm-up to the peak, then cosine decay to minLr at the last step. */
export function learningRate(step: number, total: number, warmup: number, peak: number, minLr: number): number {
  if (step < warmup) return (peak * (step + 1)) / warmup;
  const progress = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
  return minLr + 0.5 * (peak - minLr) * (1 + Math.cos(Math.PI * progress));
}
