// A piscina worker holding its own onnxruntime sessions of the server's model. The weights come from the main
// thread (workerData), not from the file, so every worker encodes with exactly the model the index was built for
// even if the checkpoint file is rewritten meanwhile.
import { workerData } from 'piscina';
import type { ModelCheckpoint } from '../encoder/checkpoint.ts';
import { Encoder } from '../encoder/runtime.ts';

export interface EncodeTask {
  spec: string;
  pixels: Float32Array; // NCHW batch in [0, 1]
  n: number;
}

const { ckpt, modelPath, specs } = workerData as { ckpt: ModelCheckpoint; modelPath: string; specs: string[] };
const encoder = new Encoder(ckpt, modelPath, { threads: 1 });
for (const spec of specs) await encoder.info(spec); // sessions ready before the first task

export default async function encode(task: EncodeTask): Promise<Float32Array> {
  return encoder.encodeBatch(task.pixels, task.n, task.spec);
}
