// A fast path for the commonest case of a large collection: small JPEGs already at the model's size. A sharp call
// costs about 1 ms of CPU for a 32x32 JPEG, most of it per call rather than per pixel (libvips pipeline set-up and
// the thread pool); so does each image of sharp's `join` (0.66 ms/image in groups of 32). libjpeg itself, compiled
// to WebAssembly (@jsquash/jpeg: mozjpeg, the JPEG library sharp's own libvips is built with), decodes the same
// image in about 0.07 ms on this thread, with no thread hand-off. Measured on CIFAR-10 (scripts/bench-index).
//
// It is only used where it cannot change the pixels: JPEGs already at the model's size (no resize or crop), 8-bit,
// three components, baseline or progressive, with no EXIF block (so no orientation) and no ICC profile (so no
// colour conversion). For those, decodeImage's rotate/flatten/colourspace steps do nothing and its result is
// libjpeg's output. Any message from libjpeg (a warning about corrupt or truncated data, or an error) sends the
// image to decodeImage, which decides whether it is good and gives bad files their error. The first image decoded
// is also compared with decodeImage before any result is returned, and any difference turns the fast path off.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import mozjpegDecoder, { type MozJPEGModule } from '@jsquash/jpeg/codec/dec/mozjpeg_dec.js';
import { type DecodedImage, decodeImage } from '../data/images.ts';
import { logger } from '../log.ts';

/** Width and height of a JPEG that qualifies for the fast path (see above), or null. Reads only the headers. */
export function plainJpegSize(b: Uint8Array): { width: number; height: number } | null {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return null;
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) return null;
    const marker = b[p + 1];
    if (marker === 0xff) {
      p++; // fill byte
      continue;
    }
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      p += 2; // markers without a length
      continue;
    }
    const len = (b[p + 2] << 8) | b[p + 3];
    if (len < 2 || p + 2 + len > b.length) return null;
    const seg = p + 4;
    if (marker === 0xe1 && ascii(b, seg, 6) === 'Exif\0\0') return null; // may carry an orientation
    if (marker === 0xe2 && ascii(b, seg, 12) === 'ICC_PROFILE\0') return null; // would be colour-converted
    if (marker === 0xc0 || marker === 0xc1 || marker === 0xc2) {
      if (len < 8) return null;
      const precision = b[seg];
      const height = (b[seg + 1] << 8) | b[seg + 2];
      const width = (b[seg + 3] << 8) | b[seg + 4];
      const components = b[seg + 5];
      return precision === 8 && components === 3 && width > 0 && height > 0 ? { width, height } : null;
    }
    if ((marker >= 0xc3 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) || marker === 0xda || marker === 0xd9) {
      return null; // lossless/arithmetic frames, or scan data before any frame header
    }
    p += 2 + len;
  }
  return null;
}

const ascii = (b: Uint8Array, at: number, n: number) => String.fromCharCode(...b.subarray(at, at + n));

let compiled: Promise<WebAssembly.Module> | null = null;
const wasmModule = () =>
  (compiled ??= WebAssembly.compile(fs.readFileSync(createRequire(import.meta.url).resolve('@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm'))));

/** Decodes plain size x size JPEGs (see above) exactly as decodeImage does, at a fraction of its CPU. */
export class PlainJpegDecoder {
  private codec: MozJPEGModule | null = null;
  private loading: Promise<void> | null = null;
  private messages = 0; // libjpeg messages during the current decode
  private verified: Promise<void> | null = null; // the first fast decode compared with decodeImage
  private disabled = false;
  /** Images decoded by the fast path (the others went to decodeImage). */
  fastDecodes = 0;

  constructor(private size: number) {}

  /** True when `bytes` can take the fast path (a size x size plain JPEG) and the path is enabled. */
  accepts(bytes: Uint8Array): boolean {
    if (this.disabled) return false;
    const dim = plainJpegSize(bytes);
    return dim !== null && dim.width === this.size && dim.height === this.size;
  }

  /** Same result as decodeImage(bytes, size) for an accepted image (bad images get decodeImage's error). */
  async decode(bytes: Buffer): Promise<DecodedImage> {
    const codec = this.disabled ? null : await this.ready();
    const pixels = codec && this.decodeClean(codec, bytes);
    if (pixels) await (this.verified ??= this.verify(bytes, pixels));
    if (!pixels || this.disabled) return decodeImage(bytes, this.size);
    this.fastDecodes++;
    return { pixels, width: this.size, height: this.size, format: 'jpeg' };
  }

  /** The WebAssembly decoder, or null (logged, the path turned off) if it cannot be loaded. */
  private async ready(): Promise<MozJPEGModule | null> {
    try {
      while (!this.codec) await (this.loading ??= this.load());
      return this.codec;
    } catch (err) {
      if (!this.disabled) logger.warn({ err: (err as Error).message }, 'no WebAssembly JPEG decoder: decoding every image with sharp');
      this.disabled = true;
      return null;
    }
  }

  private async load(): Promise<void> {
    const module = await wasmModule();
    this.codec = await mozjpegDecoder({
      noInitialRun: true,
      instantiateWasm: (imports: WebAssembly.Imports, done: (i: WebAssembly.Instance) => void) => {
        const instance = new WebAssembly.Instance(module, imports);
        done(instance);
        return instance.exports;
      },
      printErr: () => this.messages++, // libjpeg's warnings and errors: not printed, counted
      print: () => this.messages++,
    } as Parameters<typeof mozjpegDecoder>[0]);
    this.loading = null;
  }

  /** RGB pixels, or null when libjpeg said anything (the caller then uses decodeImage). */
  private decodeClean(codec: MozJPEGModule, bytes: Buffer): Uint8Array | null {
    this.messages = 0;
    let rgba: ImageData | null;
    try {
      rgba = codec.decode(bytes as Uint8Array<ArrayBuffer>, false); // (a Buffer never wraps a SharedArrayBuffer here)
    } catch {
      this.codec = null; // libjpeg's fatal errors end in emscripten's exit: start from a fresh instance
      return null;
    }
    if (!rgba || this.messages > 0 || rgba.width !== this.size || rgba.height !== this.size) return null;
    const n = this.size * this.size;
    const out = new Uint8Array(n * 3);
    for (let i = 0; i < n; i++) {
      out[3 * i] = rgba.data[4 * i];
      out[3 * i + 1] = rgba.data[4 * i + 1];
      out[3 * i + 2] = rgba.data[4 * i + 2];
    }
    return out;
  }

  /** Compares a fast decode with decodeImage; a difference disables the fast path (logged). */
  private async verify(bytes: Buffer, pixels: Uint8Array): Promise<void> {
    const ref = (await decodeImage(bytes, this.size)).pixels;
    if (ref.length === pixels.length && ref.every((v, i) => v === pixels[i])) return;
    this.disabled = true;
    logger.warn('WebAssembly JPEG decoding differs from decodeImage on this system: decoding every image with sharp');
  }
}
