// Training-time augmentation on uint8 HWC images: random crop with zero padding and horizontal flip, written
// straight into the float32 NCHW batch layout that the step graph takes (pixels in [0, 1]).

export interface AugmentOptions {
  pad: number; // crop padding in pixels (4 for 32x32 CIFAR)
  flip: boolean;
}

/** Writes image `src` (size x size x 3, uint8) into `out` at batch slot b, shifted by (dy, dx) and maybe mirrored. */
export function writeAugmented(src: Uint8Array, srcOffset: number, size: number, out: Float32Array, b: number, dy: number, dx: number, mirror: boolean): void {
  const plane = size * size;
  const base = b * 3 * plane;
  for (let y = 0; y < size; y++) {
    const sy = y + dy;
    for (let x = 0; x < size; x++) {
      const sx = mirror ? size - 1 - (x + dx) : x + dx;
      const o = base + y * size + x;
      if (sy < 0 || sy >= size || sx < 0 || sx >= size) {
        out[o] = out[o + plane] = out[o + 2 * plane] = 0;
        continue;
      }
      const s = srcOffset + (sy * size + sx) * 3;
      out[o] = src[s] / 255;
      out[o + plane] = src[s + 1] / 255;
      out[o + 2 * plane] = src[s + 2] / 255;
    }
  }
}

/** A batch of images by index, augmented with `rand` (or left as they are when opts is undefined). */
export function makeBatch(pixels: Uint8Array, size: number, indices: ArrayLike<number>, rand: () => number, opts?: AugmentOptions): Float32Array {
  const out = new Float32Array(indices.length * 3 * size * size);
  for (let b = 0; b < indices.length; b++) {
    const dy = opts ? Math.floor(rand() * (2 * opts.pad + 1)) - opts.pad : 0;
    const dx = opts ? Math.floor(rand() * (2 * opts.pad + 1)) - opts.pad : 0;
    const mirror = opts ? opts.flip && rand() < 0.5 : false;
    writeAugmented(pixels, indices[b] * size * size * 3, size, out, b, dy, dx, mirror);
  }
  return out;
}
