// The fastest correct decoder for each image, shared by indexing and the server. A plain JPEG already at the
// model's size goes to libjpeg in WebAssembly on this thread (plain-jpeg.ts: 0.04-0.1 ms of CPU against about
// 1 ms for a sharp call); anything else to sharp, whose resize decodes large JPEGs and WebPs at a reduced scale
// (shrink-on-load). A query needs only pixels, so it skips decodeImage's metadata() pass (decodePixels); indexing
// records the original's size and format, so it keeps it. Every path gives decodeImage's pixels exactly
// (tests/data.test.ts).
import { type DecodedImage, DEFAULT_MAX_PIXELS, decodeImage, decodePixels } from '../data/images.ts';
import { PlainJpegDecoder } from './plain-jpeg.ts';

export class ImageDecoder {
  private readonly jpegs: PlainJpegDecoder;

  constructor(readonly size: number) {
    this.jpegs = new PlainJpegDecoder(size);
  }

  /** Pixels plus the original's width, height and format (what the store records). Throws ImageDecodeError. */
  decode(bytes: Buffer, maxPixels = DEFAULT_MAX_PIXELS): Promise<DecodedImage> {
    return this.jpegs.accepts(bytes) ? this.jpegs.decode(bytes) : decodeImage(bytes, this.size, { maxPixels });
  }

  /** Only the size x size x 3 pixels (a query). Throws ImageDecodeError. */
  async pixels(bytes: Buffer, maxPixels = DEFAULT_MAX_PIXELS): Promise<Uint8Array> {
    return this.jpegs.accepts(bytes) ? (await this.jpegs.decode(bytes)).pixels : decodePixels(bytes, this.size, { maxPixels });
  }

  /** Images decoded by the WebAssembly path so far. */
  get fastDecodes(): number {
    return this.jpegs.fastDecodes;
  }
}

const shared = new Map<number, ImageDecoder>();

/** One decoder per image size and process: its WebAssembly instance and its first-image check are made once. */
export function sharedDecoder(size: number): ImageDecoder {
  let d = shared.get(size);
  if (!d) shared.set(size, (d = new ImageDecoder(size)));
  return d;
}
