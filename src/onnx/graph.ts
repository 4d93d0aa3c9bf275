// A small ONNX graph builder over the onnx-proto definitions, with shapes tracked statically and a tape for
// reverse-mode differentiation (see autodiff.ts). Standard opset-17 operators only, so the files run in any runtime.
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
export const OPSET = 17;

/** A value in the graph: its name and shape. A dimension of -1 is the dynamic batch (export) or depends on it. */
export interface V {
  name: string;
  shape: number[];
}

type Attr = number | number[] | string;
type VjpFn = (dy: V) => (V | undefined)[];
interface TapeEntry {
  inputs: V[];
  output: V;
  vjp: VjpFn;
}

export class GraphBuilder {
  readonly nodes: onnxProto.onnx.INodeProto[] = [];
  readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  readonly tape: TapeEntry[] = [];
  /** Names of values that depend on a differentiable input (only those are recorded on the tape). */
  readonly differentiable = new Set<string>();
  /** Off while gradients are being emitted: backward nodes are never differentiated again. */
  recording = true;
  private counter = 0;
  private constCache = new Map<string, V>();

  fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  input(name: string, shape: number[], elemType: 'float' | 'int64' = 'float', differentiable = false): V {
    this.inputs.push(valueInfo(name, shape, elemType));
    if (differentiable) this.differentiable.add(name);
    return { name, shape };
  }

  output(v: V, name: string): V {
    const out = name === v.name ? v : this.node('Identity', [v], v.shape, {}, name);
    this.outputs.push(valueInfo(name, out.shape, 'float'));
    return out;
  }

  initializer(name: string, data: Float32Array, shape: number[]): V {
    this.initializers.push({ name, dims: shape, dataType: onnx.TensorProto.DataType.FLOAT, rawData: bytes(data) });
    return { name, shape };
  }

  constFloat(values: number[] | Float32Array, shape: number[]): V {
    return this.cachedConst('f', Float32Array.from(values), shape);
  }

  constInt64(values: number[]): V {
    return this.cachedConst('i', BigInt64Array.from(values.map(BigInt)), [values.length]);
  }

  private cachedConst(kind: string, data: Float32Array | BigInt64Array, shape: number[]): V {
    const key = `${kind}:${shape}:${Array.from(data as ArrayLike<number | bigint>).join(',')}`;
    let v = this.constCache.get(key);
    if (!v) {
      const name = this.fresh('const');
      const dataType = kind === 'f' ? onnx.TensorProto.DataType.FLOAT : onnx.TensorProto.DataType.INT64;
      this.initializers.push({ name, dims: shape, dataType, rawData: bytes(data) });
      v = { name, shape };
      this.constCache.set(key, v);
    }
    return v;
  }

  /** Emits one node with a single output of the given shape. */
  node(op: string, inputs: (V | string)[], shape: number[], attrs: Record<string, Attr> = {}, name = this.fresh(op)): V {
    return this.nodeMulti(op, inputs, [shape], attrs, [name])[0];
  }

  nodeMulti(op: string, inputs: (V | string)[], shapes: number[][], attrs: Record<string, Attr> = {}, names = shapes.map(() => this.fresh(op))): V[] {
    const inNames = inputs.map((i) => (typeof i === 'string' ? i : i.name));
    this.nodes.push({ opType: op, name: this.fresh(`n_${op}`), input: inNames, output: names, attribute: Object.entries(attrs).map(([k, a]) => attribute(k, a)) });
    const outs = names.map((name, i) => ({ name, shape: shapes[i] }));
    if (inNames.some((n) => this.differentiable.has(n))) for (const o of outs) this.differentiable.add(o.name);
    return outs;
  }

  /** Records how to pull a gradient of `output` back to `inputs` (only when the output is differentiable). */
  record(inputs: V[], output: V, vjp: VjpFn): V {
    if (this.recording && this.differentiable.has(output.name)) this.tape.push({ inputs, output, vjp });
    return output;
  }

  needsGrad(v: V): boolean {
    return this.differentiable.has(v.name);
  }

  toBytes(metadata: Record<string, string> = {}, graphName = 'matvit'): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'matvit-search',
      opsetImport: [{ domain: '', version: OPSET }],
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      graph: { name: graphName, node: this.nodes, initializer: this.initializers, input: this.inputs, output: this.outputs },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function bytes(a: Float32Array | BigInt64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function valueInfo(name: string, shape: number[], elemType: 'float' | 'int64'): onnxProto.onnx.IValueInfoProto {
  const dim = shape.map((d) => (d < 0 ? { dimParam: 'N' } : { dimValue: d }));
  const type = elemType === 'float' ? onnx.TensorProto.DataType.FLOAT : onnx.TensorProto.DataType.INT64;
  return { name, type: { tensorType: { elemType: type, shape: { dim } } } };
}

function attribute(name: string, a: Attr): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof a === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(a) };
  if (Array.isArray(a)) return { name, type: T.INTS, ints: a };
  return Number.isInteger(a) && !Object.is(a, -0) && name !== 'epsilon' && name !== 'alpha' ? { name, type: T.INT, i: a } : { name, type: T.FLOAT, f: a };
}
