// Image formats as the store records them (sharp's format names) and how each is saved and served: the file
// extension of a stored original and its HTTP content type.

export interface FormatInfo {
  ext: string;
  contentType: string;
}

const FORMATS: Record<string, FormatInfo> = {
  jpeg: { ext: 'jpg', contentType: 'image/jpeg' },
  png: { ext: 'png', contentType: 'image/png' },
  webp: { ext: 'webp', contentType: 'image/webp' },
  gif: { ext: 'gif', contentType: 'image/gif' },
  tiff: { ext: 'tif', contentType: 'image/tiff' },
  avif: { ext: 'avif', contentType: 'image/avif' },
  heif: { ext: 'heic', contentType: 'image/heic' },
  svg: { ext: 'svg', contentType: 'image/svg+xml' },
};

const UNKNOWN: FormatInfo = { ext: 'bin', contentType: 'application/octet-stream' };

/** Extension and content type of a stored format name; unknown formats are served as application/octet-stream. */
export function formatInfo(format: string): FormatInfo {
  return FORMATS[format] ?? UNKNOWN;
}

/**
 * The format name to record for decoded bytes. sharp calls both AVIF and HEIC "heif"; the ISO-BMFF brand at bytes
 * 8-11 tells them apart, so that an AVIF original is served as image/avif.
 */
export function recordedFormat(sharpFormat: string, bytes: Uint8Array): string {
  if (sharpFormat !== 'heif' || bytes.length < 12) return sharpFormat;
  const brand = String.fromCharCode(bytes[8], bytes[9], bytes[10], bytes[11]);
  return brand === 'avif' || brand === 'avis' ? 'avif' : 'heif';
}
