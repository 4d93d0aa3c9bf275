// The HNSW file on disk: its checksum and shape, and durable replacement. hnswlib reads a file without checking its
// contents (a flipped block in the middle loads, and the first search follows a bad neighbour id out of memory) and
// writes one without checking for errors (a full disk leaves a short file). So every file is checked here before it
// is trusted: after writing, before it replaces the previous one, and on open, against the checksum in its sidecar.
import fs from 'node:fs';
import zlib from 'node:zlib';

export interface IndexFileScan {
  bytes: number;
  crc32: number; // of the whole file (zlib's CRC-32; measured 3x faster than SHA-256 here, and corruption is the threat)
  problem: string | null; // why the file is not a complete hnswlib index, or null
}

// hnswlib 0.8 (hnswalg.h saveIndex), x86-64: 6 size_t, int maxlevel, uint32 entry point, 3 size_t, double mult,
// size_t efConstruction; then every element's level-0 record; then per element a uint32 byte count and its upper
// level links.
const HEADER_BYTES = 96;
const CHUNK = 1 << 20;

/** Reads the file once: its CRC-32, and whether its length is exactly what its header and link-list sizes say. */
export function scanIndexFile(file: string, expect: { dim: number; M: number }): IndexFileScan {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    let crc = 0;
    let pos = 0; // absolute offset of buf[0]
    let header = false;
    let elements = 0;
    let next = 0; // absolute offset of the next link-list size to read
    let left = 0; // link-list sizes still to read
    let linkBytes = 0; // bytes of one upper level's links of one element
    const split = Buffer.alloc(4); // a size that straddles two chunks, read on its own
    let problem: string | null = null;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, CHUNK, pos);
      if (n === 0) break;
      const chunk = buf.subarray(0, n);
      crc = zlib.crc32(chunk, crc);
      if (pos === 0 && n >= HEADER_BYTES) {
        elements = Number(chunk.readBigUInt64LE(16));
        const perElement = Number(chunk.readBigUInt64LE(24));
        const maxM = Number(chunk.readBigUInt64LE(56));
        const wantPer = 2 * expect.M * 4 + 4 + expect.dim * 4 + 8; // level-0 links, vector, label
        if (perElement !== wantPer || maxM !== expect.M) problem = `its header says ${perElement} bytes per element and M ${maxM}, expected ${wantPer} and ${expect.M}`;
        header = true;
        next = HEADER_BYTES + elements * perElement;
        left = elements;
        linkBytes = maxM * 4 + 4;
      }
      // The link-list sizes that end in this chunk.
      while (!problem && left > 0 && next + 4 <= pos + n) {
        const size = next >= pos ? chunk.readUInt32LE(next - pos) : (fs.readSync(fd, split, 0, 4, next), split.readUInt32LE(0));
        if (size % linkBytes !== 0) problem = `a link list of ${size} bytes is not a whole number of levels`;
        next += 4 + size;
        left--;
      }
      pos += n;
    }
    if (!problem) {
      if (!header) problem = `it is ${pos} bytes long, shorter than its header`;
      else if (left > 0 || next !== pos) problem = `it is ${pos} bytes long, but its header and link lists say ${left > 0 ? 'more' : `${next} bytes`}`;
    }
    return { bytes: pos, crc32: crc >>> 0, problem };
  } finally {
    fs.closeSync(fd);
  }
}
