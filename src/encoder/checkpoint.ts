// Model checkpoints: safetensors with the model config (and any extra metadata) in the header. Loading is one
// pipeline: read, parse the config, check every expected tensor's name and shape, report what is wrong.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type QueryAdapters, loadAdapters, removeAdapters, sha256 } from './adapters.ts';
import { type MatViTConfig, ConfigError, validateConfig } from './config.ts';
import { paramShapes } from './layout.ts';
import { CheckpointError, type TensorMap, loadSafetensors, readSafetensorsMetadata, saveSafetensors } from './safetensors.ts';

export const FORMAT = 'matvit/1';
const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The shipped model: trained on CIFAR-10 by `matvit train` (see models/matvit-cifar10/MODEL_CARD.md). */
export const DEFAULT_MODEL_PATH = path.join(projectRoot, 'models/matvit-cifar10/model.safetensors');

export interface ModelCheckpoint {
  config: MatViTConfig;
  params: TensorMap; // float32 weights by name
  metadata: Record<string, string>; // everything else in the header (training run, step, accuracy...)
  sha256: string; // of the file's bytes that were decoded: what query adapters are keyed to
  adapters?: QueryAdapters; // per narrower submodel, from the model's sidecar file (adapters.ts)
}

export function saveModel(file: string, config: MatViTConfig, params: TensorMap, extra: Record<string, string> = {}): void {
  saveSafetensors(file, params, { ...extra, format: FORMAT, config: JSON.stringify(config) });
  removeAdapters(file); // fitted to the weights this file held before
}

/** Loads and validates a model checkpoint. `requireHead` is for training; embedding models need no head. */
export function loadModel(file: string, { requireHead = false } = {}): ModelCheckpoint {
  const { tensors, metadata, bytes } = loadSafetensors(file);
  const config = configOf(metadata, file);
  const params: TensorMap = {};
  for (const [name, shape] of paramShapes(config, true)) {
    const t = tensors[name];
    if (!t) {
      if (name.startsWith('head.') && !requireHead) continue;
      throw new CheckpointError(`${file}: tensor ${name} is missing (config says width ${config.width}, depth ${config.depth})`);
    }
    if (t.shape.join('x') !== shape.join('x')) {
      throw new CheckpointError(`${file}: tensor ${name} has shape [${t.shape}] but the config needs [${shape}]`);
    }
    params[name] = t;
  }
  const { format: _f, config: _c, ...rest } = metadata;
  const hash = sha256(bytes);
  return { config, params, metadata: rest, sha256: hash, adapters: loadAdapters(file, hash, config.width) };
}

/** A checkpoint's model config, read from its header alone (not the weights). Throws CheckpointError. */
export function readModelConfig(file: string): MatViTConfig {
  return configOf(readSafetensorsMetadata(file), file);
}

function configOf(metadata: Record<string, string>, file: string): MatViTConfig {
  if (metadata.format !== FORMAT) throw new CheckpointError(`${file} is not a MatViT checkpoint (format "${metadata.format ?? 'missing'}", expected "${FORMAT}")`);
  try {
    return validateConfig(JSON.parse(metadata.config));
  } catch (err) {
    throw new CheckpointError(`${file}: invalid model config: ${err instanceof ConfigError ? err.message : 'not JSON'}`);
  }
}
