// A worker of the encoder pool (pool.ts): its own single-thread onnxruntime sessions of the main thread's model.
// The weights come from the main thread (workerData), not from the file, so every worker encodes with exactly the
// model the index was built for even if the checkpoint file is rewritten meanwhile.
import fs from 'node:fs';
import { workerData } from 'piscina';
import type { ModelCheckpoint } from './checkpoint.ts';
import { Encoder } from './runtime.ts';

export interface EncodeTask {
  spec: string; // canonical submodel spec
  pixels: Float32Array; // NCHW batch in [0, 1]
  n: number;
}

export interface EncodeReply {
  embeddings: Float32Array; // n x dim
  ms: number; // time spent running the model
  tid: number | null; // this thread's Linux thread id (benchmarks read its CPU time from /proc), null elsewhere
}

const { ckpt, modelPath, specs } = workerData as { ckpt: ModelCheckpoint; modelPath: string; specs: string[] };
const encoder = new Encoder(ckpt, modelPath, { threads: 1 });
for (const spec of specs) await encoder.info(spec); // sessions ready before the first task
const tid = threadId();

export default async function encode(task: EncodeTask): Promise<EncodeReply> {
  const t0 = performance.now();
  const embeddings = await encoder.encodeBatch(task.pixels, task.n, task.spec);
  return { embeddings, ms: performance.now() - t0, tid };
}

/** The calling thread's id from /proc/thread-self (onnxruntime runs a one-thread session on the calling thread). */
function threadId(): number | null {
  try {
    return Number(fs.readFileSync('/proc/thread-self/stat', 'utf8').split(' ')[0]);
  } catch {
    return null;
  }
}
