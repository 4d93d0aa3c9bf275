// Region views of an image: a grid of half-side squares, each the model's input size. A copy cropped to a part of the
// picture (a 50%-side crop keeps a quarter of it) is far from the whole image's embedding but close to the region it
// came from, so a database that also holds region embeddings finds the original of such a crop.
// A region is cut from the image decoded at twice the model's size, so it needs no second resize: decodeImage(bytes,
// 2 * size) gives the same pixels as upscaling decodeImage(bytes, size) when the file is already size x size.
/** Regions per side by default: 3 x 3 half-side squares, their corners a quarter of the side apart. */
export const DEFAULT_REGION_GRID = 3;

/** Top-left offsets (in the 2 * size image) of the grid's squares along one side. */
export function regionOffsets(size: number, grid: number): number[] {
  if (!Number.isInteger(grid) || grid < 1) throw new RangeError(`region grid must be a positive integer, got ${grid}`);
  return Array.from({ length: grid }, (_, k) => (grid === 1 ? Math.floor(size / 2) : Math.round((k * size) / (grid - 1))));
}

/**
 * The grid x grid regions (row-major, each size x size x 3) of a 2 * size square RGB image, concatenated: region
 * r sits at rows offsets[floor(r / grid)], columns offsets[r % grid].
 */
export function regionViews(double: Uint8Array, size: number, grid = DEFAULT_REGION_GRID): Uint8Array {
  const side = 2 * size;
  if (double.length !== side * side * 3) throw new RangeError(`expected a ${side}x${side} RGB image (${side * side * 3} bytes), got ${double.length}`);
  const offsets = regionOffsets(size, grid);
  const out = new Uint8Array(grid * grid * size * size * 3);
  let at = 0;
  for (const top of offsets) {
    for (const left of offsets) {
      for (let y = 0; y < size; y++) {
        const from = ((top + y) * side + left) * 3;
        out.set(double.subarray(from, from + size * 3), at);
        at += size * 3;
      }
    }
  }
  return out;
}

/** Upscales a size x size RGB image to 2 * size with decodeImage's resize, for images held only at model size. */
export async function doubleSize(pixels: Uint8Array, size: number): Promise<Uint8Array> {
  const raw = { width: size, height: size, channels: 3 as const };
  const { default: sharp } = await import('sharp'); // here only: the CLI imports this module for its constants
  const data = await sharp(pixels, { raw }).resize(2 * size, 2 * size, { fit: 'cover', position: 'centre' }).raw().toBuffer();
  return new Uint8Array(data.buffer, data.byteOffset, data.length);
}
