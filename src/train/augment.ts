// Training-time views of uint8 HWC images: the light view (random crop with zero padding and a horizontal flip)
// and the copy view (src/train/copy-edits.ts), turned into the float32 NCHW batch the step graph takes by the one
// conversion serving uses (toNchw), so training and serving see identical pixel values.
import { toNchw } from '../encoder/runtime.ts';
import { type CopyEditOptions, type JpegRoundTrip, copyEdit } from './copy-edits.ts';

export interface AugmentOptions {
  pad: number; // crop padding in pixels (4 for 32x32 CIFAR)
  flip: boolean;
}

/** Image `index` of `pixels` (size x size x 3 uint8 each), shifted by (dy, dx) with zero fill and maybe mirrored. */
function shiftedImage(pixels: Uint8Array, index: number, size: number, dy: number, dx: number, mirror: boolean): Uint8Array {
  const src = pixels.subarray(index * size * size * 3, (index + 1) * size * size * 3);
  if (dy === 0 && dx === 0 && !mirror) return src;
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    const sy = y + dy;
    if (sy < 0 || sy >= size) continue;
    for (let x = 0; x < size; x++) {
      const sx = mirror ? size - 1 - (x + dx) : x + dx;
      if (sx < 0 || sx >= size) continue;
      out.set(src.subarray((sy * size + sx) * 3, (sy * size + sx) * 3 + 3), (y * size + x) * 3);
    }
  }
  return out;
}

/** Light views of the images by index, drawn from `rand` (or the images as they are when opts is undefined). */
export function lightViews(pixels: Uint8Array, size: number, indices: ArrayLike<number>, rand: () => number, opts?: AugmentOptions): Uint8Array[] {
  return Array.from(indices, (index) => {
    const dy = opts ? Math.floor(rand() * (2 * opts.pad + 1)) - opts.pad : 0;
    const dx = opts ? Math.floor(rand() * (2 * opts.pad + 1)) - opts.pad : 0;
    const mirror = opts ? opts.flip && rand() < 0.5 : false;
    return shiftedImage(pixels, index, size, dy, dx, mirror);
  });
}

/** A float32 NCHW batch of light views (see lightViews). */
export function makeBatch(pixels: Uint8Array, size: number, indices: ArrayLike<number>, rand: () => number, opts?: AugmentOptions): Float32Array {
  return toNchw(lightViews(pixels, size, indices, rand, opts), size);
}

/** Copy views (src/train/copy-edits.ts) of the images by index: the consistency objective's second view. */
export async function copyViews(pixels: Uint8Array, size: number, indices: ArrayLike<number>, rand: () => number, jpeg: JpegRoundTrip, opts?: CopyEditOptions): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const index of Array.from(indices)) out.push(await copyEdit(pixels.subarray(index * size * size * 3, (index + 1) * size * size * 3), size, rand, jpeg, opts));
  return out;
}
