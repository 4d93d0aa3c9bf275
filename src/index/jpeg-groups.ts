// Decoding many small JPEGs in one sharp call. A sharp call costs about as much CPU as the XL encoder spends on a
// 32x32 image in a batch, most of it per call rather than per pixel; joining a group of images into one libvips
// pipeline (sharp's `join`) halves the decoding CPU of a CIFAR-sized collection (measured: 1.7 -> 0.7 ms/image).
//
// It is only used where it cannot change the pixels: JPEGs already at the model's size (no resize or crop), 8-bit,
// three components, baseline or progressive, with no EXIF block (so no orientation) and no ICC profile (so no
// colour conversion). For those, decodeImage's rotate/flatten/colourspace steps do nothing and its result is
// libjpeg's output, which is what the joined pipeline returns. The first group of every decoder is also compared
// with decodeImage, and any difference turns the fast path off. Everything else, and every group whose decode
// fails (so that each bad file gets its own error), goes through decodeImage one image at a time.
import sharp from 'sharp';
import { type DecodedImage, decodeImage } from '../data/images.ts';
import { logger } from '../log.ts';

/** Width and height of a JPEG that qualifies for group decoding (see above), or null. Reads only the headers. */
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

interface Waiting {
  bytes: Buffer;
  resolve: (d: DecodedImage) => void;
  reject: (err: unknown) => void;
}

export class JpegGroupDecoder {
  private queue: Waiting[] = [];
  private timer: NodeJS.Timeout | null = null;
  private checked = false;
  private disabled = false;

  /** `size`: the model's image size; groups of up to `maxGroup`, sent at the latest `waitMs` after their first image. */
  constructor(private size: number, private maxGroup = 32, private waitMs = 5) {}

  /** True when `bytes` can take the group path (a size x size plain JPEG) and the path is enabled. */
  accepts(bytes: Uint8Array): boolean {
    if (this.disabled) return false;
    const dim = plainJpegSize(bytes);
    return dim !== null && dim.width === this.size && dim.height === this.size;
  }

  /** Same result as decodeImage(bytes, size) for an accepted image. */
  decode(bytes: Buffer): Promise<DecodedImage> {
    return new Promise((resolve, reject) => {
      this.queue.push({ bytes, resolve, reject });
      if (this.queue.length >= this.maxGroup) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.waitMs);
    });
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const group = this.queue.splice(0, this.maxGroup);
    if (group.length > 0) void this.run(group);
    if (this.queue.length > 0) this.timer = setTimeout(() => this.flush(), this.waitMs);
  }

  private async run(group: Waiting[]): Promise<void> {
    let pixels: Uint8Array[] | null = null;
    if (group.length > 1 && !this.disabled) {
      try {
        pixels = await this.joined(group.map((w) => w.bytes));
        if (!this.checked) pixels = (await this.parity(group[0].bytes, pixels[0])) ? pixels : null;
      } catch {
        pixels = null; // some image is bad: decode one by one, each with its own error
      }
    }
    await Promise.all(
      group.map(async (w, i) => {
        try {
          w.resolve(pixels ? { pixels: pixels[i], width: this.size, height: this.size, format: 'jpeg' } : await decodeImage(w.bytes, this.size));
        } catch (err) {
          w.reject(err);
        }
      }),
    );
  }

  /** One libvips pipeline for the group, its images side by side; then cut apart. */
  private async joined(images: Buffer[]): Promise<Uint8Array[]> {
    const n = images.length;
    const s = this.size;
    const { data, info } = await sharp(images, { join: { across: n }, failOn: 'truncated', limitInputPixels: n * s * s }).raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== n * s || info.height !== s) throw new Error(`joined decode gave ${info.width}x${info.height}x${info.channels}`);
    const row = s * 3;
    return images.map((_, k) => {
      const out = new Uint8Array(s * row);
      for (let y = 0; y < s; y++) out.set(data.subarray(y * n * row + k * row, y * n * row + (k + 1) * row), y * row);
      return out;
    });
  }

  /** The first group is checked against decodeImage; a difference disables the group path (logged). */
  private async parity(bytes: Buffer, pixels: Uint8Array): Promise<boolean> {
    this.checked = true;
    const ref = (await decodeImage(bytes, this.size)).pixels;
    const same = ref.length === pixels.length && ref.every((v, i) => v === pixels[i]);
    if (!same) {
      this.disabled = true;
      logger.warn('grouped JPEG decoding differs from decodeImage on this system: decoding one image at a time');
    }
    return same;
  }
}
