// The one image preprocessing used everywhere (training, indexing, querying): whatever the input, the model sees
// size x size sRGB pixels, EXIF-oriented, alpha flattened onto white, centre-cropped to a square. Keeping this in
// one function is what makes query embeddings comparable with indexed ones.
import sharp, { type Metadata } from 'sharp';
import { ACCEPTED_FORMATS_TEXT, acceptedFormat, looksAccepted, recordedFormat } from './formats.ts';

export type ImageDecodeReason = 'empty' | 'not-image' | 'corrupt' | 'too-large' | 'unreadable';

const REASON_TEXT: Record<ImageDecodeReason, string> = {
  empty: 'the file is empty',
  'not-image': 'not an image in a supported format',
  corrupt: 'the image data is corrupt or truncated',
  'too-large': 'the image has too many pixels',
  unreadable: 'the file could not be read',
};

export class ImageDecodeError extends Error {
  override name = 'ImageDecodeError';
  readonly reason: ImageDecodeReason;
  constructor(reason: ImageDecodeReason, detail?: string) {
    super(`${reason}: ${REASON_TEXT[reason]}${detail ? ` (${detail})` : ''}`);
    this.reason = reason;
  }
}

export interface DecodedImage {
  pixels: Uint8Array; // size*size*3, HWC, RGB
  width: number; // original width after EXIF rotation
  height: number;
  format: string; // one of IMAGE_FORMATS' names (formats.ts): jpeg, png, webp, gif, tiff, avif
}

export const DEFAULT_MAX_PIXELS = 40_000_000;
/**
 * The largest image file read, by `matvit index` as by the API's uploads (its default upload limit): the same file
 * is accepted by both or by neither. (A member of an archive given to `matvit index` is read whole: the archive is
 * the user's own, and its pixel count still meets DEFAULT_MAX_PIXELS.) A 40-megapixel JPEG is about 10-20 MB.
 */
export const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
const WHITE = { r: 255, g: 255, b: 255 };

function checkSize(size: number): void {
  if (!Number.isInteger(size) || size <= 0) throw new RangeError(`image size must be a positive integer, got ${size}`);
}

/** Decodes any supported image into size x size RGB (HWC uint8). Throws ImageDecodeError for bad input. */
export async function decodeImage(bytes: Buffer, size: number, opts: { maxPixels?: number } = {}): Promise<DecodedImage> {
  checkSize(size);
  const maxPixels = opts.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (!bytes || bytes.length === 0) throw new ImageDecodeError('empty');

  // Metadata reads only the header: reject non-images and decompression bombs before decoding any pixels.
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    const msg = firstLine(err);
    throw /unsupported image format/i.test(msg) ? new ImageDecodeError('not-image') : new ImageDecodeError('corrupt', msg);
  }
  // Only the accepted formats: an SVG (script, external references) or any format the page does not offer is
  // refused before a pixel is decoded.
  const format = recordedFormat(meta.format ?? 'unknown', bytes);
  if (!acceptedFormat(format)) throw new ImageDecodeError('not-image', `${format.toUpperCase()} is not accepted; send ${ACCEPTED_FORMATS_TEXT}`);
  const width = meta.autoOrient?.width ?? meta.width;
  const height = meta.autoOrient?.height ?? meta.height;
  if (!width || !height) throw new ImageDecodeError('corrupt', 'no dimensions in the header');
  if (width * height > maxPixels) {
    throw new ImageDecodeError('too-large', `${width}x${height} is over the limit of ${maxPixels} pixels`);
  }

  try {
    // pages: 1 keeps only the first frame of animated GIF/WebP; failOn 'truncated' rejects cut-off files while
    // tolerating the harmless warnings many real-world JPEGs trigger. limitInputPixels guards against a header
    // that lied to metadata().
    let img = sharp(bytes, { limitInputPixels: maxPixels, failOn: 'truncated', pages: 1 })
      .rotate()
      .flatten({ background: WHITE })
      .toColourspace('srgb');
    if (width !== size || height !== size) img = img.resize(size, size, { fit: 'cover', position: 'centre' });
    const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
    return { pixels: toRgb(data, info.channels, size), width, height, format };
  } catch (err) {
    const msg = firstLine(err);
    if (/pixel limit/i.test(msg)) throw new ImageDecodeError('too-large', msg);
    throw new ImageDecodeError('corrupt', msg);
  }
}

/**
 * decodeImage's pixels without its metadata() pass, for a query that needs only the pixels: one sharp call, which
 * resizes with shrink-on-load (libjpeg's DCT scaling, WebP's scaled decode) and lets limitInputPixels reject a
 * decompression bomb from the header before decoding. The pixels equal decodeImage's (tests/data.test.ts).
 */
export async function decodePixels(bytes: Buffer, size: number, opts: { maxPixels?: number } = {}): Promise<Uint8Array> {
  checkSize(size);
  if (!bytes || bytes.length === 0) throw new ImageDecodeError('empty');
  // anything that does not start like an accepted format (an SVG...) takes decodeImage's checks, which refuse it
  if (!looksAccepted(bytes)) return (await decodeImage(bytes, size, opts)).pixels;
  try {
    const { data, info } = await sharp(bytes, { limitInputPixels: opts.maxPixels ?? DEFAULT_MAX_PIXELS, failOn: 'truncated', pages: 1 })
      .rotate()
      .flatten({ background: WHITE })
      .toColourspace('srgb')
      .resize(size, size, { fit: 'cover', position: 'centre' })
      .raw()
      .toBuffer({ resolveWithObject: true });
    return toRgb(data, info.channels, size);
  } catch (err) {
    const msg = firstLine(err);
    if (/unsupported image format/i.test(msg)) throw new ImageDecodeError('not-image');
    if (/pixel limit/i.test(msg)) {
      await decodeImage(bytes, size, opts); // on this rare path, for the error that names the image's size
      throw new ImageDecodeError('too-large', msg);
    }
    throw new ImageDecodeError('corrupt', msg);
  }
}

/** Turns a grayscale image (e.g. a Fashion-MNIST IDX record, w*h bytes) into the same size x size RGB layout. */
export async function decodeRawGray(pixels: Uint8Array, w: number, h: number, size: number): Promise<Uint8Array> {
  checkSize(size);
  if (pixels.length !== w * h) throw new RangeError(`grayscale image should have ${w}x${h} = ${w * h} bytes, got ${pixels.length}`);
  let img = sharp(Buffer.from(pixels.buffer, pixels.byteOffset, pixels.length), { raw: { width: w, height: h, channels: 1 } });
  if (w !== size || h !== size) img = img.resize(size, size, { fit: 'cover', position: 'centre' });
  const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
  return toRgb(data, info.channels, size);
}

// libvips repeats its messages over several lines; the first says it all.
const firstLine = (err: unknown) => String((err as Error)?.message ?? err).split('\n')[0];

/** Copies sharp's output into a standalone RGB array, expanding gray and dropping any alpha left over. */
function toRgb(data: Buffer, channels: number, size: number): Uint8Array {
  const n = size * size;
  if (data.length !== n * channels) throw new Error(`sharp returned ${data.length} bytes for ${size}x${size}x${channels}`);
  const out = new Uint8Array(n * 3);
  if (channels === 3) {
    out.set(data);
  } else if (channels === 1 || channels === 2) {
    for (let i = 0; i < n; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = data[i * channels];
  } else {
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) out[3 * i + c] = data[i * channels + c];
  }
  return out;
}
