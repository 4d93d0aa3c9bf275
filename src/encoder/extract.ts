// `matvit extract`: load a checkpoint, pick a submodel, write its standalone ONNX file.
import fs from 'node:fs';
import { writeFileAtomic } from '../durable-file.ts';
import { adapterFor } from './adapters.ts';
import { DEFAULT_MODEL_PATH, loadModel } from './checkpoint.ts';
import { ConfigError, parseSubmodel } from './config.ts';
import { exportSubmodel } from './export.ts';

export function extractToFile(modelPath: string | undefined, ffn: string, out: string) {
  const file = modelPath ?? DEFAULT_MODEL_PATH;
  const ckpt = loadModel(file);
  const sub = parseSubmodel(ffn, ckpt.config);
  const trained = ckpt.metadata.trained_granularities?.split(',');
  if (trained && trained.length < 4 && sub.granularities.some((g) => !trained.includes(g))) {
    throw new ConfigError(`${file} is a baseline trained only at ${trained.join(',')}; its other widths are untrained`);
  }
  const ex = exportSubmodel(ckpt.config, ckpt.params, sub, { metadata: { 'matvit.source': file }, adapter: adapterFor(ckpt.adapters, sub.spec) });
  writeFileAtomic(out, Buffer.from(ex.onnx));
  return { out, ffn: sub.spec, widths: sub.widths, heads: sub.heads, adapter: ex.metadata['matvit.adapter'] === 'yes', flops: ex.flops, params: ex.params, bytes: fs.statSync(out).size };
}
