// The image formats matvit accepts, in one list: the decoder rejects every other format (SVG, HEIC, raw pixels...)
// before decoding, the folder walk of `matvit index` takes these extensions, the page advertises these (it reads the
// list from GET /api/stats), and the server serves stored originals with these content types only. None of them can
// carry script a browser would run when served with its own content type and nosniff.

export interface ImageFormat {
  name: string; // as recorded in the store: sharp's format name, with AVIF told apart from HEIC
  label: string; // as shown to users
  extensions: string[]; // file name extensions, lower case, with the dot
  contentType: string; // served as
  inBrowsers: boolean; // every current browser shows it in an <img>: a small image of this format is its own thumbnail
}

export const IMAGE_FORMATS: readonly ImageFormat[] = [
  { name: 'jpeg', label: 'JPEG', extensions: ['.jpg', '.jpeg'], contentType: 'image/jpeg', inBrowsers: true },
  { name: 'png', label: 'PNG', extensions: ['.png'], contentType: 'image/png', inBrowsers: true },
  { name: 'webp', label: 'WebP', extensions: ['.webp'], contentType: 'image/webp', inBrowsers: true },
  { name: 'gif', label: 'GIF', extensions: ['.gif'], contentType: 'image/gif', inBrowsers: true },
  { name: 'tiff', label: 'TIFF', extensions: ['.tif', '.tiff'], contentType: 'image/tiff', inBrowsers: false }, // Safari only
  { name: 'avif', label: 'AVIF', extensions: ['.avif'], contentType: 'image/avif', inBrowsers: true },
];

const BY_NAME = new Map(IMAGE_FORMATS.map((f) => [f.name, f]));

/** The accepted format recorded as `name`, or undefined (not accepted, e.g. 'svg' or 'heif'). */
export const acceptedFormat = (name: string): ImageFormat | undefined => BY_NAME.get(name);

/** Every accepted extension (".jpg", ...). */
export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set(IMAGE_FORMATS.flatMap((f) => f.extensions));

/** Content types the server may send stored originals as; anything else goes out as an attachment. */
export const SERVABLE_IMAGE_TYPES: ReadonlySet<string> = new Set(IMAGE_FORMATS.map((f) => f.contentType));

/** "JPEG, PNG, WebP, GIF, TIFF or AVIF". */
export const ACCEPTED_FORMATS_TEXT = `${IMAGE_FORMATS.slice(0, -1).map((f) => f.label).join(', ')} or ${IMAGE_FORMATS.at(-1)!.label}`;

/**
 * The format name to record for decoded bytes. sharp calls both AVIF and HEIC "heif"; the ISO-BMFF brand at bytes
 * 8-11 tells them apart, so that an AVIF original is served as image/avif.
 */
export function recordedFormat(sharpFormat: string, bytes: Uint8Array): string {
  if (sharpFormat !== 'heif' || bytes.length < 12) return sharpFormat;
  const brand = String.fromCharCode(bytes[8], bytes[9], bytes[10], bytes[11]);
  return brand === 'avif' || brand === 'avis' ? 'avif' : 'heif';
}

/**
 * Whether the bytes start like one of the accepted formats (their magic numbers). A cheap check for paths that skip
 * sharp's metadata(): bytes that fail it go through the full check, which names the format it refuses.
 */
export function looksAccepted(b: Uint8Array): boolean {
  const ascii = (from: number, to: number) => String.fromCharCode(...b.subarray(from, to));
  if (b.length < 12) return false;
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return true; // JPEG
  if (b[0] === 0x89 && ascii(1, 4) === 'PNG') return true;
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return true;
  if (ascii(0, 4) === 'GIF8') return true;
  if (ascii(0, 4) === 'II*\0' || ascii(0, 4) === 'MM\0*') return true; // TIFF, either byte order
  return ascii(4, 8) === 'ftyp' && (ascii(8, 12) === 'avif' || ascii(8, 12) === 'avis');
}
