// Extraction: a submodel (one FFN width and head count per layer) written as a standalone ONNX file whose FFN and
// attention weights are physically sliced, so the file is smaller and the runtime does fewer FLOPs. Input `pixels`
// [N, 3, H, W] float32 RGB in [0, 1]; output `embedding` [N, D], L2-normalised; the config, widths and heads travel
// in metadata_props.
import { GraphBuilder, type V } from '../onnx/graph.ts';
import type { QueryAdapter } from './adapters.ts';
import { type MatViTConfig, type Submodel, countFlops, countParams } from './config.ts';
import { type KeptRanges, ffnSlices, headSlices } from './layout.ts';
import { type WeightSource, matvitGraph } from './onnx-matvit.ts';
import type { NamedTensor, TensorMap } from './safetensors.ts';

/** Copies a row-major sub-block (begin, size) out of a tensor; the slicing rule itself lives in ffnSlices. */
export function sliceTensor(t: NamedTensor, begin: number[], size: number[]): NamedTensor {
  if (t.shape.length === 1) return { shape: size, data: t.data.slice(begin[0], begin[0] + size[0]) };
  const [, cols] = t.shape;
  const out = new Float32Array(size[0] * size[1]);
  for (let r = 0; r < size[0]; r++) out.set(t.data.subarray((begin[0] + r) * cols + begin[1], (begin[0] + r) * cols + begin[1] + size[1]), r * size[1]);
  return { shape: size, data: out };
}

/** The ranges of a 1-D or 2-D tensor that a submodel keeps along one axis, joined (layout.ts's KeptRanges). */
export function keepRanges(t: NamedTensor, { axis, ranges }: KeptRanges): NamedTensor {
  const parts = ranges.map(([start, end]) => sliceTensor(t, t.shape.map((_, i) => (i === axis ? start : 0)), t.shape.map((d, i) => (i === axis ? end - start : d))));
  if (parts.length === 1) return parts[0];
  if (t.shape.length === 1 || axis === 0) {
    // rows (or a vector's runs) are contiguous: the pieces follow one another
    const data = new Float32Array(parts.reduce((s, p) => s + p.data.length, 0));
    parts.reduce((at, p) => (data.set(p.data, at), at + p.data.length), 0);
    return { shape: t.shape.map((d, i) => (i === axis ? parts.reduce((s, p) => s + p.shape[axis], 0) : d)), data };
  }
  // columns of a matrix: interleave each row's pieces
  const [rows] = t.shape;
  const cols = parts.reduce((s, p) => s + p.shape[1], 0);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let at = r * cols;
    for (const p of parts) {
      out.set(p.data.subarray(r * p.shape[1], (r + 1) * p.shape[1]), at);
      at += p.shape[1];
    }
  }
  return { shape: [rows, cols], data: out };
}

/** Weights as initializers, each FFN cut to its layer's width and each attention to its layer's heads. */
class SlicedWeights implements WeightSource {
  private cache = new Map<string, V>();
  constructor(private g: GraphBuilder, private params: TensorMap, private c: MatViTConfig) {}
  get(name: string): V {
    let v = this.cache.get(name);
    if (!v) {
      const t = this.params[name];
      if (!t) throw new Error(`checkpoint has no tensor ${name}`);
      v = this.g.initializer(name, t.data, t.shape);
      this.cache.set(name, v);
    }
    return v;
  }
  ffn(layer: number, m: number) {
    const pre = `blocks.${layer}.mlp.`;
    const s = ffnSlices(this.c.width, m);
    const cut = (k: keyof typeof s) => {
      const t = sliceTensor(this.params[pre + k], s[k].begin, s[k].size);
      return this.g.initializer(pre + k, t.data, t.shape);
    };
    return { w1: cut('fc1.weight'), b1: cut('fc1.bias'), w2: cut('fc2.weight') };
  }
  attn(layer: number, h: number) {
    const pre = `blocks.${layer}.attn.`;
    if (h === this.c.heads) return { qkvW: this.get(pre + 'qkv.weight'), qkvB: this.get(pre + 'qkv.bias'), projW: this.get(pre + 'proj.weight') };
    const s = headSlices(this.c.width, this.c.heads, h);
    const cut = (k: keyof typeof s) => {
      const t = keepRanges(this.params[pre + k], s[k]);
      return this.g.initializer(pre + k, t.data, t.shape);
    };
    return { qkvW: cut('qkv.weight'), qkvB: cut('qkv.bias'), projW: cut('proj.weight') };
  }
}

export interface ExportedModel {
  onnx: Uint8Array;
  flops: number; // per image
  params: number; // embedding model parameters
  metadata: Record<string, string>;
}

export interface ExportOptions {
  metadata?: Record<string, string>; // added to the file's metadata_props
  adapter?: QueryAdapter; // the submodel's query adapter (adapters.ts): applied to the normalised embedding, then normalised again
}

export function exportSubmodel(config: MatViTConfig, params: TensorMap, sub: Submodel, opts: ExportOptions = {}): ExportedModel {
  const { adapter } = opts;
  const g = new GraphBuilder();
  const pixels = g.input('pixels', [-1, config.channels, config.imageSize, config.imageSize]);
  const [{ features }] = matvitGraph(g, config, new SlicedWeights(g, params, config), pixels, [sub], -1, false);
  let embedding = g.node('LpNormalization', [features], features.shape, { axis: -1, p: 2 });
  if (adapter) {
    const D = config.width;
    const mapped = g.node('Add', [g.node('MatMul', [embedding, g.initializer('adapter.weight', adapter.weight, [D, D])], embedding.shape), g.initializer('adapter.bias', adapter.bias, [D])], embedding.shape);
    embedding = g.node('LpNormalization', [mapped], mapped.shape, { axis: -1, p: 2 });
  }
  g.output(embedding, 'embedding');
  const flops = countFlops(config, sub);
  const nParams = countParams(config, sub);
  const metadata = {
    ...opts.metadata,
    'matvit.config': JSON.stringify(config),
    'matvit.ffn': sub.spec,
    'matvit.ffn_widths': JSON.stringify(sub.widths),
    'matvit.attn_heads': JSON.stringify(sub.heads),
    'matvit.flops': String(flops),
    'matvit.params': String(nParams),
    'matvit.adapter': adapter ? 'yes' : 'no',
  };
  return { onnx: g.toBytes(metadata, `matvit_${sub.spec.replaceAll(',', '')}`), flops, params: nParams, metadata };
}
