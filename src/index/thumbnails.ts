// Thumbnails for the gallery page: small WebP images, made at index time and stored with their image in the
// store's database (store.getThumbnail), except for tiny images whose original the store keeps (archive members,
// uploads), whose thumbnail is made from that original when asked for (originals.ts, getThumbnail). Images smaller
// than TINY are enlarged by a whole factor with the nearest-neighbour kernel (a 32x32 CIFAR image becomes a crisp
// 96x96 rather than a blur); larger ones are shrunk to fit in MAX x MAX.
import sharp from 'sharp';
import { encodeWebpLosslessUpscaled } from './webp-lossless.ts';

export const THUMB = {
  tiny: 96, // images whose longer side is under this are enlarged to about this size
  max: 256, // longer side of the thumbnail of a larger image
  quality: 80, // WebP quality
} as const;

const WEBP = { quality: THUMB.quality, effort: 2 } as const; // effort 2: a fraction of the default's time, same size

/** Whole enlargement factor for an image whose longer side is `side` (1 for images that need none). */
export const upscaleFactor = (side: number) => (side < THUMB.tiny ? Math.max(1, Math.round(THUMB.tiny / side)) : 1);

/**
 * Whether an image's thumbnail is made on request from its kept original instead of being stored. For a tiny image
 * the stored thumbnail (4.5 KB for 32x32) is larger than its original, and making and storing it took about 0.06 ms
 * of the indexing thread per image; made on request it costs one small decode.
 */
export const thumbnailOnRequest = (width: number, height: number, originalKept: boolean): boolean => originalKept && upscaleFactor(Math.max(width, height)) > 1;

/**
 * A thumbnail from the model's decoded pixels (size x size RGB). Only valid when they are the whole image, i.e. the
 * original was already size x size: then no second decode of the file is needed. Tiny images (the CIFAR case) are
 * written by a lossless WebP writer in JS, which costs far less than another sharp call.
 */
export function thumbnailFromPixels(pixels: Uint8Array, size: number): Promise<Buffer> {
  const f = upscaleFactor(size);
  if (f > 1) {
    const webp = encodeWebpLosslessUpscaled(pixels, size, size, f);
    return Promise.resolve(Buffer.from(webp.buffer, webp.byteOffset, webp.byteLength));
  }
  return sharp(pixels, { raw: { width: size, height: size, channels: 3 } })
    .resize(THUMB.max, THUMB.max, { fit: 'inside', withoutEnlargement: true })
    .webp(WEBP)
    .toBuffer();
}

/**
 * A thumbnail from the original bytes (EXIF-rotated, first frame). `width`/`height` are after rotation. Tiny
 * images get the same lossless enlargement as thumbnailFromPixels (alpha flattened onto white).
 */
export async function thumbnailFromBytes(bytes: Buffer, width: number, height: number, maxPixels: number): Promise<Buffer> {
  const img = sharp(bytes, { limitInputPixels: maxPixels, pages: 1 }).rotate();
  const f = upscaleFactor(Math.max(width, height));
  if (f === 1) return img.resize(THUMB.max, THUMB.max, { fit: 'inside', withoutEnlargement: true }).webp(WEBP).toBuffer();
  const { data, info } = await img.flatten({ background: { r: 255, g: 255, b: 255 } }).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`expected 3 channels after flattening, got ${info.channels}`);
  const webp = encodeWebpLosslessUpscaled(data, info.width, info.height, f);
  return Buffer.from(webp.buffer, webp.byteOffset, webp.byteLength);
}
