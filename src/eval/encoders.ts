// The query encoders an evaluation compares: the four uniform granularities and the monotone Mix'n'Match lists of
// the MatViT, and independently trained baselines (a checkpoint whose trained_granularities is one letter).
import fs from 'node:fs';
import path from 'node:path';
import { type ModelCheckpoint, loadModel } from '../encoder/checkpoint.ts';
import { GRANULARITIES, type MatViTConfig, monotoneSubmodels, parseSubmodel } from '../encoder/config.ts';
import { logger } from '../log.ts';

export type EncoderFamily = 'uniform' | 'mixnmatch' | 'baseline';

export interface QueryEncoderRef {
  id: string; // unique in a report: "XL", "S,S,M,M,L,XL" or "baseline-S"
  family: EncoderFamily;
  spec: string; // the submodel to run
  modelPath: string;
  ckpt: ModelCheckpoint;
}

/** Uniform granularities, in FLOPs order. */
export function uniformEncoders(modelPath: string, ckpt: ModelCheckpoint): QueryEncoderRef[] {
  return GRANULARITIES.map((g) => ({ id: g, family: 'uniform', spec: g, modelPath, ckpt }));
}

/**
 * The non-uniform monotone Mix'n'Match lists (80 for depth 6; with the 4 uniform ones, the 84 non-decreasing
 * lists), or the given specs. Uniform specs among the given ones are dropped (they are evaluated as 'uniform').
 */
export function mixnmatchEncoders(modelPath: string, ckpt: ModelCheckpoint, specs?: string[]): QueryEncoderRef[] {
  const c = ckpt.config;
  const subs = specs ? specs.map((s) => parseSubmodel(s, c)) : monotoneSubmodels(c);
  const seen = new Set<string>();
  const out: QueryEncoderRef[] = [];
  for (const s of subs) {
    if (!s.spec.includes(',') || seen.has(s.spec)) continue;
    seen.add(s.spec);
    out.push({ id: s.spec, family: 'mixnmatch', spec: s.spec, modelPath, ckpt });
  }
  return out;
}

/** The one granularity a baseline checkpoint was trained at, or null for a MatViT (or no metadata). */
export function baselineGranularity(ckpt: ModelCheckpoint): string | null {
  const trained = ckpt.metadata.trained_granularities?.split(',').filter(Boolean);
  return trained && trained.length === 1 ? trained[0] : null;
}

/**
 * Baseline checkpoints: the given paths (a model file or its folder), or else every models/<dir>/model.safetensors
 * beside the evaluated model's folder whose metadata names one trained granularity. Checkpoints that cannot be
 * read, are not baselines, or embed in another dimension are skipped with a note.
 */
export function findBaselines(modelPath: string, config: MatViTConfig, given?: string[]): { encoders: QueryEncoderRef[]; notes: string[] } {
  const notes: string[] = [];
  let candidates: string[];
  if (given) {
    candidates = given.map((p) => (fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() ? path.join(p, 'model.safetensors') : p));
  } else {
    const modelsDir = path.dirname(path.dirname(path.resolve(modelPath)));
    const dirs = fs.existsSync(modelsDir) ? fs.readdirSync(modelsDir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort() : [];
    candidates = dirs.map((d) => path.join(modelsDir, d, 'model.safetensors')).filter((f) => fs.existsSync(f) && path.resolve(f) !== path.resolve(modelPath));
  }
  const encoders: QueryEncoderRef[] = [];
  const ids = new Set<string>();
  for (const file of candidates) {
    let ckpt: ModelCheckpoint;
    try {
      ckpt = loadModel(file);
    } catch (err) {
      if (given) throw err;
      notes.push(`skipped ${file}: ${(err as Error).message}`);
      continue;
    }
    const g = baselineGranularity(ckpt);
    if (!g) {
      if (given) throw new Error(`${file} is not a baseline: its metadata trained_granularities is "${ckpt.metadata.trained_granularities ?? ''}", not one granularity`);
      continue; // another MatViT: not a baseline
    }
    if (ckpt.config.width !== config.width) {
      notes.push(`skipped baseline ${file}: it embeds in ${ckpt.config.width} dimensions, the database in ${config.width}`);
      continue;
    }
    let id = path.basename(path.dirname(file));
    if (!id.startsWith('baseline')) id = `baseline-${id}`;
    while (ids.has(id)) id += "'";
    ids.add(id);
    encoders.push({ id, family: 'baseline', spec: g, modelPath: file, ckpt });
  }
  for (const n of notes) logger.warn(n);
  return { encoders, notes };
}
