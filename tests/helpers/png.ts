// Hand-built PNG pieces for tests that need files no encoder would write (a 50-megapixel header, a text chunk).
import zlib from 'node:zlib';

/** A PNG chunk: length, type, data, CRC over type and data. */
export function pngChunk(type: string, data: Buffer): Buffer {
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const out = Buffer.alloc(td.length + 8);
  out.writeUInt32BE(data.length, 0);
  td.copy(out, 4);
  out.writeUInt32BE(zlib.crc32(td), td.length + 4);
  return out;
}
