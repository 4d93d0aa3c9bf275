// MatViT configuration as data, the granularity grammar (S, M, L, XL and Mix'n'Match lists) and the
// cost model (parameters and FLOPs) shared by training, extraction, export, serving and evaluation.

export const GRANULARITIES = ['S', 'M', 'L', 'XL'] as const;
export type Granularity = (typeof GRANULARITIES)[number];

export interface MatViTConfig {
  imageSize: number; // input is imageSize x imageSize; CIFAR-10 native resolution
  channels: number; // RGB
  patchSize: number; // 4 -> 8x8 = 64 patches + [CLS] = 65 tokens
  width: number; // d_model
  depth: number; // number of Transformer blocks
  heads: number; // attention heads; width must divide by heads
  ffnRatios: Record<Granularity, number>; // FFN width of each granularity, as a multiple of width
  // Attention heads each granularity keeps (the first ones; absent: every granularity keeps all, as in the paper).
  // Nesting heads as well as FFN neurons shrinks the attention projections, which FFN nesting alone leaves whole.
  attnHeads?: Record<Granularity, number>;
  numClasses: number; // classification head, used for training only
  mean: [number, number, number]; // per-channel normalisation, applied inside the model
  std: [number, number, number];
  layerNormEps: number;
}

export const DEFAULT_CONFIG: MatViTConfig = {
  imageSize: 32,
  channels: 3,
  patchSize: 4,
  width: 128,
  depth: 6,
  heads: 4,
  ffnRatios: { S: 0.5, M: 1, L: 2, XL: 4 }, // the paper's g = 4 nested widths
  numClasses: 10,
  mean: [0.4914, 0.4822, 0.4465], // CIFAR-10 training-set statistics
  std: [0.247, 0.2435, 0.2616],
  layerNormEps: 1e-6,
};

/** A tiny variant so tests of every code path run in seconds on the CPU. */
export const TINY_CONFIG: MatViTConfig = { ...DEFAULT_CONFIG, width: 32, depth: 2, heads: 2 };

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function validateConfig(c: MatViTConfig): MatViTConfig {
  const ints: (keyof MatViTConfig)[] = ['imageSize', 'channels', 'patchSize', 'width', 'depth', 'heads', 'numClasses'];
  for (const k of ints) {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new ConfigError(`config.${k} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  if (c.imageSize % c.patchSize !== 0) throw new ConfigError(`imageSize ${c.imageSize} is not divisible by patchSize ${c.patchSize}`);
  if (c.width % c.heads !== 0) throw new ConfigError(`width ${c.width} is not divisible by heads ${c.heads}`);
  if (c.channels !== 3) throw new ConfigError(`only RGB models are supported (channels must be 3, got ${c.channels})`);
  let prev = 0;
  for (const g of GRANULARITIES) {
    const w = c.width * c.ffnRatios[g];
    if (!Number.isInteger(w) || w <= prev) throw new ConfigError(`FFN widths must be increasing integers S < M < L < XL; ${g} gives ${w}`);
    prev = w;
  }
  if (c.attnHeads !== undefined) {
    let fewest = 1;
    for (const g of GRANULARITIES) {
      const h = c.attnHeads[g];
      if (!Number.isInteger(h) || h < fewest || h > c.heads) throw new ConfigError(`attention heads must be non-decreasing integers from S to XL, between 1 and ${c.heads}; ${g} gives ${JSON.stringify(h)}`);
      fewest = h;
    }
    if (c.attnHeads.XL !== c.heads) throw new ConfigError(`XL keeps every attention head (${c.heads}); config.attnHeads.XL is ${c.attnHeads.XL}`);
  }
  return c;
}

/** Attention heads each granularity keeps: config.attnHeads, or all of them when heads are not nested. */
export function headCounts(c: MatViTConfig): Record<Granularity, number> {
  return c.attnHeads ?? { S: c.heads, M: c.heads, L: c.heads, XL: c.heads };
}

/** Parses "S=2,M=4" (the granularities not named keep every head) into a config's attnHeads. */
export function parseHeadCounts(text: string, c: MatViTConfig): Record<Granularity, number> {
  const counts = { ...headCounts(c) };
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(S|M|L|XL)=(\d+)$/i.exec(part);
    if (!m) throw new ConfigError(`attention heads "${part}" in "${text}": write GRANULARITY=HEADS, e.g. S=2,M=3`);
    counts[m[1].toUpperCase() as Granularity] = Number(m[2]);
  }
  validateConfig({ ...c, attnHeads: counts });
  return counts;
}

/** FFN hidden width of each granularity, e.g. {S: 64, M: 128, L: 256, XL: 512} for width 128. */
export function ffnWidths(c: MatViTConfig): Record<Granularity, number> {
  return Object.fromEntries(GRANULARITIES.map((g) => [g, c.width * c.ffnRatios[g]])) as Record<Granularity, number>;
}

export const numPatches = (c: MatViTConfig) => (c.imageSize / c.patchSize) ** 2;
export const numTokens = (c: MatViTConfig) => numPatches(c) + 1; // + [CLS]
export const patchDim = (c: MatViTConfig) => c.patchSize * c.patchSize * c.channels;
export const maxFfn = (c: MatViTConfig) => c.width * c.ffnRatios.XL;

/** What each layer keeps: its FFN hidden width (the first widths[i] neurons) and its attention heads (the first heads[i]). */
export interface LayerWidths {
  widths: number[];
  heads: number[];
}

/**
 * A submodel: one granularity per layer. `spec` is the canonical text ("XL" for uniform, "S,S,M,M,L,XL" for a
 * Mix'n'Match list); each layer keeps its granularity's FFN width and attention heads.
 */
export interface Submodel extends LayerWidths {
  spec: string;
  granularities: Granularity[];
}

/** Parses "S", "XL" or a comma-separated per-layer list such as "S,S,M,M,L,XL". */
export function parseSubmodel(text: string, c: MatViTConfig): Submodel {
  const parts = String(text).trim().toUpperCase().split(',').map((p) => p.trim());
  for (const p of parts) {
    if (!(GRANULARITIES as readonly string[]).includes(p)) {
      throw new ConfigError(`unknown granularity "${p}" in "${text}": use S, M, L, XL or a comma-separated list of ${c.depth} of them`);
    }
  }
  const granularities = (parts.length === 1 ? Array(c.depth).fill(parts[0]) : parts) as Granularity[];
  if (granularities.length !== c.depth) {
    throw new ConfigError(`FFN list "${text}" has ${granularities.length} entries but the model has ${c.depth} layers`);
  }
  return submodelOf(granularities, c);
}

export function submodelOf(granularities: Granularity[], c: MatViTConfig): Submodel {
  const uniform = granularities.every((g) => g === granularities[0]);
  const w = ffnWidths(c);
  const h = headCounts(c);
  return { spec: uniform ? granularities[0] : granularities.join(','), granularities, widths: granularities.map((g) => w[g]), heads: granularities.map((g) => h[g]) };
}

/** Every Mix'n'Match list whose granularity never decreases with depth (84 for depth 6 and 4 granularities). */
export function monotoneSubmodels(c: MatViTConfig): Submodel[] {
  const out: Submodel[] = [];
  const rec = (prefix: Granularity[], minIdx: number) => {
    if (prefix.length === c.depth) return void out.push(submodelOf(prefix, c));
    for (let i = minIdx; i < GRANULARITIES.length; i++) rec([...prefix, GRANULARITIES[i]], i);
  };
  rec([], 0);
  return out;
}

/** Parameters of the embedding model (no classification head) that a submodel keeps. */
export function countParams(c: MatViTConfig, sub: LayerWidths): number {
  const D = c.width;
  const embed = patchDim(c) * D + D + D + numTokens(c) * D; // patch projection, bias, [CLS], positions
  const attn = (a: number) => 4 * D + 3 * D * a + 3 * a + a * D + D; // two LayerNorms, qkv, proj at attention width a
  const ffn = (m: number) => D * m + m + m * D + D;
  return embed + sub.widths.reduce((s, m, i) => s + attn(sub.heads[i] * (D / c.heads)) + ffn(m), 0) + 2 * D;
}

/**
 * Multiply-accumulate-based FLOPs (2 per MAC) of one image's forward pass through the embedding model, as the ONNX
 * graph runs it: the last block computes keys and values for every token but the rest for the [CLS] token only.
 */
export function countFlops(c: MatViTConfig, sub: LayerWidths): number {
  const D = c.width;
  const T = numTokens(c);
  const embed = 2 * numPatches(c) * patchDim(c) * D;
  // qkv over all T tokens; scores, weighted sum, projection and FFN over `queries` tokens; attention width a
  const layer = (m: number, a: number, queries: number) => 2 * T * D * 3 * a + 2 * 2 * queries * T * a + 2 * queries * a * D + 2 * 2 * queries * D * m;
  const last = sub.widths.length - 1;
  return embed + sub.widths.reduce((s, m, i) => s + layer(m, sub.heads[i] * (D / c.heads), i === last ? 1 : T), 0);
}
