// The safetensors file format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range (plus a free "__metadata__" map of strings), then the raw little-endian data.
// Only float32 tensors are used by this project. Writes are atomic (temporary file, fsync, rename).
import fs from 'node:fs';
import { writeFileAtomic } from '../durable-file.ts';

export interface NamedTensor {
  shape: number[];
  data: Float32Array;
}
export type TensorMap = Record<string, NamedTensor>;

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

const ALIGN = 8;

export function encodeSafetensors(tensors: TensorMap, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new CheckpointError(`tensor ${name}: shape [${t.shape}] holds ${n} values but data has ${t.data.length}`);
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (ALIGN - (json.length % ALIGN)) % ALIGN; // the spec allows trailing spaces to align the data
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.alloc(8 + json.length + offset);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  let pos = 8 + json.length;
  for (const t of Object.values(tensors)) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(out, pos);
    pos += t.data.byteLength;
  }
  return out;
}

type TensorEntry = { dtype: string; shape: number[]; data_offsets: [number, number] };

/**
 * The one parser of a safetensors header. `head` holds the file's first bytes (at least the whole header),
 * `fileBytes` is the whole file's length (to tell a truncated file from a header that lies).
 */
function parseHeader(head: Buffer, fileBytes: number, source: string): { metadata: Record<string, string>; tensors: [string, TensorEntry][]; dataStart: number } {
  if (fileBytes < 8) throw new CheckpointError(`${source} is truncated: ${fileBytes} bytes, not even a header length`);
  const headerLen = Number(head.readBigUInt64LE(0));
  if (headerLen > fileBytes - 8) throw new CheckpointError(`${source} is truncated or not a safetensors file: header claims ${headerLen} bytes, file has ${fileBytes - 8}`);
  let header: Record<string, TensorEntry | Record<string, string>>;
  try {
    header = JSON.parse(head.subarray(8, 8 + headerLen).toString('utf8'));
  } catch {
    throw new CheckpointError(`${source} is not a safetensors file: its header is not valid JSON`);
  }
  const { __metadata__: metadata = {}, ...tensors } = header;
  return { metadata: metadata as Record<string, string>, tensors: Object.entries(tensors) as [string, TensorEntry][], dataStart: 8 + headerLen };
}

export function decodeSafetensors(buf: Buffer, source = 'checkpoint'): { tensors: TensorMap; metadata: Record<string, string> } {
  const header = parseHeader(buf, buf.length, source);
  const tensors: TensorMap = {};
  for (const [name, { dtype, shape, data_offsets }] of header.tensors) {
    if (dtype !== 'F32') throw new CheckpointError(`${source}: tensor ${name} has dtype ${dtype}; only F32 is supported`);
    const [begin, end] = data_offsets;
    const n = shape.reduce((a, b) => a * b, 1);
    if (end - begin !== n * 4) throw new CheckpointError(`${source}: tensor ${name} of shape [${shape}] needs ${n * 4} bytes but spans ${end - begin}`);
    if (header.dataStart + end > buf.length) throw new CheckpointError(`${source} is truncated: tensor ${name} ends at byte ${header.dataStart + end} of ${buf.length}`);
    // Copy into an aligned buffer: the data section of a Buffer may not be 4-byte aligned.
    const data = new Float32Array(n);
    Buffer.from(data.buffer).set(buf.subarray(header.dataStart + begin, header.dataStart + end));
    tensors[name] = { shape, data };
  }
  return { tensors, metadata: header.metadata };
}

/** The "__metadata__" map of a safetensors file, reading only its header (not the weights). */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw new CheckpointError(`cannot read checkpoint ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  try {
    const fileBytes = fs.fstatSync(fd).size;
    const len = Buffer.alloc(8);
    fs.readSync(fd, len, 0, 8, 0);
    const headerLen = fileBytes < 8 ? 0 : Math.min(Number(len.readBigUInt64LE(0)), fileBytes - 8); // parseHeader reports a lie
    const head = Buffer.alloc(8 + headerLen);
    fs.readSync(fd, head, 0, head.length, 0);
    return parseHeader(head, fileBytes, file).metadata;
  } finally {
    fs.closeSync(fd);
  }
}

export function saveSafetensors(file: string, tensors: TensorMap, metadata: Record<string, string> = {}): void {
  writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}

/** Reads and decodes a file; `bytes` is what was read (a caller that hashes the file must hash these, not re-read it). */
export function loadSafetensors(file: string): { tensors: TensorMap; metadata: Record<string, string>; bytes: Buffer } {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    throw new CheckpointError(`cannot read checkpoint ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  return { ...decodeSafetensors(buf, file), bytes: buf };
}
