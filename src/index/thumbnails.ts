// Thumbnails for the gallery page. An image that already fits the thumbnail size, in a format browsers show, is its
// own thumbnail: served at its native size from its bytes (kept by the store, or its file on disk), and the page
// scales it up with `image-rendering: pixelated`. Any other image gets a WebP of at most MAX x MAX, made at index
// time and stored with the image in the store's database (store.getThumbnail).
import sharp from 'sharp';
import { acceptedFormat } from '../data/formats.ts';

export const THUMB = {
  max: 256, // longer side of a thumbnail; an image that fits needs no smaller copy
  // A fitting file larger than this (a 256x256 PNG photo: about 190 KB) gets a WebP instead (about 10-20 KB): the page
  // loads dozens of thumbnails at once.
  ownMaxBytes: 32 * 1024,
  quality: 80, // WebP quality
} as const;

const WEBP = { quality: THUMB.quality, effort: 2 } as const; // effort 2: a fraction of the default's time, same size

/** Whether an image of this size and format can be shown as its own thumbnail (it fits, and browsers show it). */
export const fitsAsOwnThumbnail = (width: number, height: number, format: string): boolean =>
  Math.max(width, height) <= THUMB.max && (acceptedFormat(format)?.inBrowsers ?? false);

/** Whether indexing an image makes (and stores) a WebP thumbnail for it: it cannot be its own, or its file is heavy. */
export const needsMadeThumbnail = (width: number, height: number, format: string, byteLength: number): boolean =>
  !fitsAsOwnThumbnail(width, height, format) || byteLength > THUMB.ownMaxBytes;

/** A WebP thumbnail from the image's bytes (EXIF-rotated, first frame), shrunk to fit in MAX x MAX, never enlarged. */
export function makeThumbnail(bytes: Buffer, maxPixels: number): Promise<Buffer> {
  return sharp(bytes, { limitInputPixels: maxPixels, pages: 1 }).rotate().resize(THUMB.max, THUMB.max, { fit: 'inside', withoutEnlargement: true }).webp(WEBP).toBuffer();
}
