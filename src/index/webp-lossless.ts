// A minimal lossless WebP (VP8L) writer for thumbnails of tiny images enlarged by a whole factor with the
// nearest-neighbour kernel. Writing one in JS costs microseconds, where a sharp call per 32x32 image costs about as
// much as decoding it, and the indexer makes one per image.
//
// The bitstream (https://developers.google.com/speed/webp/docs/webp_lossless_bitstream_specification) is kept as
// simple as the spec allows: no transforms, no colour cache, fixed prefix codes (8 or 9 bits per literal channel),
// and only two kinds of backward reference, both made cheap by the enlargement: "copy the pixel to the left"
// (the repeats along a row) and "copy the row above" (the repeated rows). A 32x32 image enlarged to 96x96 takes
// about 4.5 KB.

const VP8L_SIGNATURE = 0x2f;
const NUM_LITERALS = 256;
const NUM_LENGTH_CODES = 24;
const GREEN_SYMBOLS = NUM_LITERALS + NUM_LENGTH_CODES; // no colour cache
const MAX_SIDE = 16384;
const MAX_COPY = 4096; // longest backward reference
// Order in which the code-length code's lengths are written.
const CODE_LENGTH_ORDER = [17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
// Distance codes of the 2-D neighbourhood (spec, "LZ77 backward reference"): 1 is (0, 1), the pixel above; 2 is
// (1, 0), the pixel to the left.
const DIST_ABOVE = 1;
const DIST_LEFT = 2;

class BitWriter {
  private buf: Uint8Array;
  private pos: number; // bytes completed
  private acc = 0; // pending bits, LSB first
  private nbits = 0;

  /** `reserve` bytes are left free at the start (for the RIFF header), then room for `capacity` (it grows if needed). */
  constructor(reserve: number, capacity: number) {
    this.buf = new Uint8Array(reserve + capacity);
    this.pos = reserve;
  }

  /** Writes the low `n` bits of `value` (n <= 24), least significant first. */
  bits(value: number, n: number): void {
    this.acc |= (value & ((1 << n) - 1)) << this.nbits;
    this.nbits += n;
    while (this.nbits >= 8) {
      if (this.pos === this.buf.length) this.grow();
      this.buf[this.pos++] = this.acc & 0xff;
      this.acc >>>= 8;
      this.nbits -= 8;
    }
  }

  /** Writes a prefix code: its bits from the most significant, as the decoder's table lookups read them. */
  code(code: number, len: number): void {
    this.bits(reverseBits(code, len), len);
  }

  /** The buffer up to the last byte written, the reserved bytes included, with room for one padding byte. */
  finish(): { buf: Uint8Array; end: number } {
    if (this.nbits > 0) this.bits(0, 8 - this.nbits);
    if (this.pos === this.buf.length) this.grow();
    return { buf: this.buf, end: this.pos };
  }

  private grow(): void {
    const next = new Uint8Array(this.buf.length * 2);
    next.set(this.buf);
    this.buf = next;
  }
}

const reverseBits = (code: number, len: number) => {
  let rev = 0;
  for (let i = 0; i < len; i++) rev |= ((code >> i) & 1) << (len - 1 - i);
  return rev;
};

// Fixed canonical codes. Green+length alphabet (280 symbols): 0..231 take 8 bits, 232..279 take 9 (232/256 +
// 48/512 = 1, a complete code). Red and blue: every symbol 8 bits, the code being the symbol itself. Both are
// kept bit-reversed, ready for BitWriter.bits.
const GREEN_SHORT = 232;
const GREEN_REV = Uint16Array.from({ length: GREEN_SYMBOLS }, (_, s) => (s < GREEN_SHORT ? reverseBits(s, 8) : reverseBits((GREEN_SHORT << 1) + (s - GREEN_SHORT), 9)));
const BYTE_REV = Uint8Array.from({ length: 256 }, (_, s) => reverseBits(s, 8));
const greenCode = (w: BitWriter, symbol: number) => w.bits(GREEN_REV[symbol], symbol < GREEN_SHORT ? 8 : 9);

const GREEN_LENGTHS = Array.from({ length: GREEN_SYMBOLS }, (_, i) => (i < GREEN_SHORT ? 8 : 9));
const BYTE_LENGTHS = new Array<number>(256).fill(8);

/** Writes a "normal" prefix code whose lengths are all 8 or 9, with a code-length code of {8: '0', 9: '1'}. */
function writeLengths(w: BitWriter, lengths: number[]): void {
  w.bits(0, 1); // normal (not simple) code
  const used = CODE_LENGTH_ORDER.indexOf(9) + 1; // code-length code lengths written, in CODE_LENGTH_ORDER
  w.bits(used - 4, 4);
  for (let i = 0; i < used; i++) {
    const sym = CODE_LENGTH_ORDER[i];
    w.bits(sym === 8 || sym === 9 ? 1 : 0, 3);
  }
  w.bits(0, 1); // max_symbol = alphabet size
  for (const len of lengths) w.bits(len === 8 ? 0 : 1, 1);
}

/** Prefix symbol and extra bits of a length or distance value (spec, "Prefix Coding for LZ77"). */
function prefixOf(value: number): { symbol: number; extraBits: number; extra: number } {
  if (value < 5) return { symbol: value - 1, extraBits: 0, extra: 0 };
  const v = value - 1;
  const high = 31 - Math.clz32(v);
  const second = (v >> (high - 1)) & 1;
  const extraBits = high - 1;
  return { symbol: 2 * high + second, extraBits, extra: v & ((1 << extraBits) - 1) };
}

/** The bits of a backward reference as one LSB-first value (n may exceed 24 for long lengths: then use backref). */
function backrefBits(length: number, distCode: number): { value: number; n: number } {
  const l = prefixOf(length);
  const sym = NUM_LITERALS + l.symbol;
  const gn = sym < GREEN_SHORT ? 8 : 9;
  const value = GREEN_REV[sym] | (l.extra << gn) | ((distCode - 1) << (gn + l.extraBits));
  return { value, n: gn + l.extraBits + 1 };
}

function backref(w: BitWriter, length: number, distCode: number): void {
  const l = prefixOf(length);
  greenCode(w, NUM_LITERALS + l.symbol);
  w.bits(l.extra, l.extraBits);
  w.code(distCode - 1, 1); // distance prefix symbols 0 (code 1) and 1 (code 2), one bit each
}

/**
 * A lossless WebP of an RGB image (HWC, width*height*3 bytes) enlarged `factor` times in each direction with the
 * nearest-neighbour kernel.
 */
export function encodeWebpLosslessUpscaled(rgb: Uint8Array, width: number, height: number, factor: number): Uint8Array {
  if (!Number.isInteger(factor) || factor < 1) throw new RangeError(`factor must be a positive integer, got ${factor}`);
  if (rgb.length !== width * height * 3) throw new RangeError(`expected ${width}x${height}x3 = ${width * height * 3} bytes, got ${rgb.length}`);
  const W = width * factor;
  const H = height * factor;
  if (W < 1 || H < 1 || W > MAX_SIDE || H > MAX_SIDE) throw new RangeError(`a ${W}x${H} WebP is out of range (1..${MAX_SIDE} per side)`);

  // Room for the worst case, so that the buffer never regrows: per source pixel three literals (25 bits) and a
  // backward reference (at most 20 bits); per row, (factor - 1) * W / MAX_COPY references of at most 20 bits.
  const w = new BitWriter(RIFF_HEADER, 1024 + Math.ceil((width * height * 45) / 8) + height * 3 * Math.ceil(((factor - 1) * W + 1) / MAX_COPY));
  w.bits(VP8L_SIGNATURE, 8);
  w.bits(W - 1, 14);
  w.bits(H - 1, 14);
  w.bits(0, 1); // alpha not used
  w.bits(0, 3); // version
  w.bits(0, 1); // no transform
  w.bits(0, 1); // no colour cache
  w.bits(0, 1); // no meta prefix codes
  writeLengths(w, GREEN_LENGTHS);
  writeLengths(w, BYTE_LENGTHS); // red
  writeLengths(w, BYTE_LENGTHS); // blue
  w.bits(1, 1), w.bits(0, 1), w.bits(1, 1), w.bits(255, 8); // alpha: simple code, one 8-bit symbol (255), zero bits per pixel
  w.bits(1, 1), w.bits(1, 1), w.bits(0, 1), w.bits(0, 1), w.bits(1, 8); // distance: simple code, symbols 0 and 1

  // The "copy the pixel to the left factor - 1 times" reference is the same after every pixel: precompute its bits
  // (length symbol, extra bits, distance symbol) to write it with the blue byte in one call when it fits.
  const left = factor > 1 ? backrefBits(factor - 1, DIST_LEFT) : { value: 0, n: 0 };
  const fused = left.n <= 16;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const o = 3 * (y * width + x);
      const g = rgb[o + 1];
      const gn = g < GREEN_SHORT ? 8 : 9;
      w.bits(GREEN_REV[g] | (BYTE_REV[rgb[o]] << gn), gn + 8); // green, then red
      if (fused) {
        w.bits(BYTE_REV[rgb[o + 2]] | (left.value << 8), 8 + left.n); // blue, then the reference
      } else {
        w.bits(BYTE_REV[rgb[o + 2]], 8);
        backref(w, factor - 1, DIST_LEFT);
      }
    }
    for (let left = (factor - 1) * W; left > 0; left -= MAX_COPY) backref(w, Math.min(left, MAX_COPY), DIST_ABOVE);
  }
  return riff(w.finish());
}

const RIFF_HEADER = 20;

/** Wraps the VP8L bitstream written after RIFF_HEADER reserved bytes of `buf` into a WebP file, in place. */
function riff({ buf, end }: { buf: Uint8Array; end: number }): Uint8Array {
  const vp8lBytes = end - RIFF_HEADER;
  const pad = vp8lBytes & 1;
  if (pad) buf[end] = 0;
  const out = buf.subarray(0, end + pad);
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.set([0x52, 0x49, 0x46, 0x46], 0); // RIFF
  dv.setUint32(4, out.length - 8, true);
  out.set([0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x4c], 8); // WEBPVP8L
  dv.setUint32(16, vp8lBytes, true);
  return out;
}
