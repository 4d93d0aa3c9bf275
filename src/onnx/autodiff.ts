// Reverse-mode differentiation over a GraphBuilder's tape: walks the recorded operators backwards from a scalar
// loss, summing the gradient contributions that reach each value, and emits the backward nodes into the same graph.
import type { GraphBuilder, V } from './graph.ts';

/** Emits d(loss)/d(w) for each w in `wrt`; returns them in the same order (a zero tensor when w is unused). */
export function gradients(g: GraphBuilder, loss: V, wrt: V[]): V[] {
  if (loss.shape.length !== 0) throw new Error('gradients() needs a scalar loss');
  const grads = new Map<string, V>([[loss.name, g.constFloat([1], [])]]);
  g.recording = false;
  for (let i = g.tape.length - 1; i >= 0; i--) {
    const { inputs, output, vjp } = g.tape[i];
    const dy = grads.get(output.name);
    if (!dy) continue; // does not reach the loss
    vjp(dy).forEach((dx, j) => {
      const x = inputs[j];
      if (!dx || !g.needsGrad(x)) return;
      const prev = grads.get(x.name);
      grads.set(x.name, prev ? g.node('Add', [prev, dx], x.shape) : dx);
    });
  }
  g.recording = true;
  return wrt.map((w) => grads.get(w.name) ?? g.constFloat(new Float32Array(w.shape.reduce((a, b) => a * b, 1)), w.shape));
}
