// Copy edits for training: the second view of an image is what a copy of it goes through on its way back to us
// (a crop, a flip, a small rotation, a letterbox, colour changes, grayscale, blur, down- then up-scaling, a caption
// bar, JPEG re-compression at some quality), drawn from a seeded generator so a resumed run draws the same edits.
// Images are size x size x 3 uint8 RGB (HWC) in and out; the work in between is float HWC in [0, 255].
import fs from 'node:fs';
import { createRequire } from 'node:module';
import mozjpegDecoder, { type MozJPEGModule as Decoder } from '@jsquash/jpeg/codec/dec/mozjpeg_dec.js';
import mozjpegEncoder, { type MozJPEGModule as Encoder } from '@jsquash/jpeg/codec/enc/mozjpeg_enc.js';
import { defaultOptions as jpegDefaults } from '@jsquash/jpeg/meta.js';

/** Probability of each edit in a copy; ranges are drawn uniformly. */
export const COPY_EDITS = {
  crop: { p: 0.8, area: [0.25, 1], aspect: [3 / 4, 4 / 3] }, // random resized crop (area fraction of the image; a run may widen the range)
  flip: { p: 0.5 },
  rotate: { p: 0.3, degrees: 15 }, // up to this many degrees either way, corners filled
  letterbox: { p: 0.15, keep: [0.55, 0.85] }, // squeezed along one axis and padded to the square
  jitter: { p: 0.8, brightness: [0.6, 1.4], contrast: [0.6, 1.4], saturation: [0.4, 1.6], hueDegrees: 40 },
  grayscale: { p: 0.2 },
  blur: { p: 0.3, sigma: [0.4, 1.6] },
  rescale: { p: 0.2, factor: [0.25, 0.6] }, // down to this fraction of the side, then back up
  caption: { p: 0.15, height: [0.12, 0.25] }, // a solid bar with text-like marks at the top or bottom
  jpeg: { p: 0.4, quality: [10, 90] },
} as const;

type Range = readonly [number, number];
const uniform = (rand: () => number, [a, b]: Range) => a + (b - a) * rand();

/** Bilinear sample of channel c at (sx, sy) in pixel coordinates, or `fill` outside the image. */
function sample(img: Float32Array, size: number, sx: number, sy: number, c: number, fill: number): number {
  if (sx < -0.5 || sy < -0.5 || sx > size - 0.5 || sy > size - 0.5) return fill;
  const x = Math.min(Math.max(sx, 0), size - 1);
  const y = Math.min(Math.max(sy, 0), size - 1);
  const x0 = Math.floor(x);
  const y0 = Math.floor(y);
  const x1 = Math.min(x0 + 1, size - 1);
  const y1 = Math.min(y0 + 1, size - 1);
  const fx = x - x0;
  const fy = y - y0;
  const at = (xx: number, yy: number) => img[(yy * size + xx) * 3 + c];
  return (at(x0, y0) * (1 - fx) + at(x1, y0) * fx) * (1 - fy) + (at(x0, y1) * (1 - fx) + at(x1, y1) * fx) * fy;
}

/**
 * One affine resampling for the geometric edits: output point u (centred, in units of the side) comes from source
 * point centre + R(angle) · diag(±sw, sh) · u, so a crop, a flip and a rotation cost one pass.
 */
function warp(img: Float32Array, size: number, t: { cx: number; cy: number; sw: number; sh: number; flip: boolean; angle: number }, fill: number[]): Float32Array {
  const out = new Float32Array(img.length);
  const cos = Math.cos(t.angle);
  const sin = Math.sin(t.angle);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const ux = ((x + 0.5) / size - 0.5) * t.sw * (t.flip ? -1 : 1);
      const uy = ((y + 0.5) / size - 0.5) * t.sh;
      const sx = (t.cx + cos * ux - sin * uy) * size - 0.5;
      const sy = (t.cy + sin * ux + cos * uy) * size - 0.5;
      for (let c = 0; c < 3; c++) out[(y * size + x) * 3 + c] = sample(img, size, sx, sy, c, fill[c]);
    }
  }
  return out;
}

/** The run-level choices of a copy's edits; the rest of COPY_EDITS is fixed. */
export interface CopyEditOptions {
  cropArea?: Range; // area fraction range of the random resized crop (default COPY_EDITS.crop.area)
}

function geometric(img: Float32Array, size: number, rand: () => number, cropArea: Range): Float32Array {
  const E = COPY_EDITS;
  let sw = 1;
  let sh = 1;
  if (rand() < E.crop.p) {
    const area = uniform(rand, cropArea);
    const aspect = Math.exp(uniform(rand, [Math.log(E.crop.aspect[0]), Math.log(E.crop.aspect[1])]));
    sw = Math.min(1, Math.sqrt(area * aspect));
    sh = Math.min(1, Math.sqrt(area / aspect));
  }
  const cx = sw / 2 + rand() * (1 - sw);
  const cy = sh / 2 + rand() * (1 - sh);
  const flip = rand() < E.flip.p;
  const angle = rand() < E.rotate.p ? ((2 * rand() - 1) * E.rotate.degrees * Math.PI) / 180 : 0;
  const grey = rand() < 0.5 ? 0 : 128;
  if (sw === 1 && sh === 1 && !flip && angle === 0) return img;
  return warp(img, size, { cx, cy, sw, sh, flip, angle }, [grey, grey, grey]);
}

/** Squeezes the image along one axis into a centred band and pads the rest with a solid colour. */
function letterbox(img: Float32Array, size: number, rand: () => number): Float32Array {
  const keep = uniform(rand, COPY_EDITS.letterbox.keep);
  const horizontal = rand() < 0.5; // bars left and right (a tall frame), else top and bottom
  const colour = [0, 255, 128][Math.floor(rand() * 3)];
  const sw = horizontal ? 1 / keep : 1;
  const sh = horizontal ? 1 : 1 / keep;
  return warp(img, size, { cx: 0.5, cy: 0.5, sw, sh, flip: false, angle: 0 }, [colour, colour, colour]);
}

const luma = (r: number, g: number, b: number) => 0.299 * r + 0.587 * g + 0.114 * b;

function jitter(img: Float32Array, rand: () => number): void {
  const J = COPY_EDITS.jitter;
  const brightness = uniform(rand, J.brightness);
  const contrast = uniform(rand, J.contrast);
  const saturation = uniform(rand, J.saturation);
  const hue = ((2 * rand() - 1) * J.hueDegrees * Math.PI) / 180;
  let mean = 0;
  for (let i = 0; i < img.length; i += 3) mean += luma(img[i], img[i + 1], img[i + 2]);
  mean = (mean / (img.length / 3)) * brightness;
  // hue: a rotation about the grey axis in YIQ space
  const ch = Math.cos(hue);
  const sh = Math.sin(hue);
  for (let i = 0; i < img.length; i += 3) {
    const r = img[i] * brightness;
    const g = img[i + 1] * brightness;
    const b = img[i + 2] * brightness;
    const y = luma(r, g, b);
    const ii = 0.596 * r - 0.274 * g - 0.322 * b;
    const q = 0.211 * r - 0.523 * g + 0.312 * b;
    const i2 = (ii * ch - q * sh) * saturation;
    const q2 = (ii * sh + q * ch) * saturation;
    const y2 = (y - mean) * contrast + mean;
    img[i] = y2 + 0.956 * i2 + 0.621 * q2;
    img[i + 1] = y2 - 0.272 * i2 - 0.647 * q2;
    img[i + 2] = y2 - 1.106 * i2 + 1.703 * q2;
  }
}

function grayscale(img: Float32Array): void {
  for (let i = 0; i < img.length; i += 3) img[i] = img[i + 1] = img[i + 2] = luma(img[i], img[i + 1], img[i + 2]);
}

/** Separable Gaussian blur, edges clamped. */
function blur(img: Float32Array, size: number, sigma: number): Float32Array {
  const r = Math.ceil(2 * sigma);
  const k = Array.from({ length: 2 * r + 1 }, (_, i) => Math.exp(-((i - r) ** 2) / (2 * sigma * sigma)));
  const sum = k.reduce((a, b) => a + b, 0);
  const pass = (src: Float32Array, dx: number, dy: number) => {
    const out = new Float32Array(src.length);
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++)
        for (let c = 0; c < 3; c++) {
          let v = 0;
          for (let j = -r; j <= r; j++) {
            const xx = Math.min(size - 1, Math.max(0, x + j * dx));
            const yy = Math.min(size - 1, Math.max(0, y + j * dy));
            v += k[j + r] * src[(yy * size + xx) * 3 + c];
          }
          out[(y * size + x) * 3 + c] = v / sum;
        }
    return out;
  };
  return pass(pass(img, 1, 0), 0, 1);
}

/** Down to a small side by box averaging, then bilinear back up: the detail a thumbnail loses. */
function rescale(img: Float32Array, size: number, factor: number): Float32Array {
  const small = Math.max(2, Math.round(size * factor));
  const s = new Float32Array(small * small * 3);
  for (let y = 0; y < small; y++)
    for (let x = 0; x < small; x++) {
      const [y0, y1, x0, x1] = [Math.floor((y * size) / small), Math.ceil(((y + 1) * size) / small), Math.floor((x * size) / small), Math.ceil(((x + 1) * size) / small)];
      for (let c = 0; c < 3; c++) {
        let v = 0;
        for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) v += img[(yy * size + xx) * 3 + c];
        s[(y * small + x) * 3 + c] = v / ((y1 - y0) * (x1 - x0));
      }
    }
  const out = new Float32Array(img.length);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      for (let c = 0; c < 3; c++) out[(y * size + x) * 3 + c] = sample(s, small, ((x + 0.5) * small) / size - 0.5, ((y + 0.5) * small) / size - 0.5, c, 0);
  return out;
}

/** A solid bar across the top or bottom with a row of text-like marks in a contrasting colour. */
function caption(img: Float32Array, size: number, rand: () => number): void {
  const h = Math.max(2, Math.round(uniform(rand, COPY_EDITS.caption.height) * size));
  const top = rand() < 0.5 ? 0 : size - h;
  const dark = rand() < 0.5;
  const [bar, ink] = dark ? [20, 235] : [235, 20];
  const mid = top + Math.floor(h / 2);
  for (let y = top; y < top + h; y++)
    for (let x = 0; x < size; x++) {
      const mark = Math.abs(y - mid) <= Math.max(0, Math.floor(h / 4)) && x > 1 && x < size - 2 && rand() < 0.45;
      img.fill(mark ? ink : bar, (y * size + x) * 3, (y * size + x) * 3 + 3);
    }
}

/** Round-trips RGB images through libjpeg (mozjpeg in WebAssembly, standard tables, 4:2:0 as sharp writes). */
export class JpegRoundTrip {
  private codecs: Promise<{ enc: Encoder; dec: Decoder }> | null = null;

  async apply(rgb: Uint8Array, size: number, quality: number): Promise<Uint8Array> {
    const { enc, dec } = await (this.codecs ??= load());
    const rgba = new Uint8Array(size * size * 4);
    for (let i = 0; i < size * size; i++) {
      rgba.set(rgb.subarray(3 * i, 3 * i + 3), 4 * i);
      rgba[4 * i + 3] = 255;
    }
    const options = { ...jpegDefaults, quality, baseline: true, progressive: false, optimize_coding: false, quant_table: 0, chroma_subsample: 2, auto_subsample: false };
    const file = enc.encode(rgba as Uint8Array<ArrayBuffer>, size, size, options);
    const back = dec.decode(file as Uint8Array<ArrayBuffer>, false);
    if (!back) throw new Error('libjpeg could not decode the JPEG it wrote');
    const out = new Uint8Array(size * size * 3);
    for (let i = 0; i < size * size; i++) out.set(back.data.subarray(4 * i, 4 * i + 3), 3 * i);
    return out;
  }
}

async function load(): Promise<{ enc: Encoder; dec: Decoder }> {
  const req = createRequire(import.meta.url);
  const instantiate = (wasm: string) => {
    const module = new WebAssembly.Module(fs.readFileSync(req.resolve(wasm)));
    return {
      noInitialRun: true,
      instantiateWasm: (imports: WebAssembly.Imports, done: (i: WebAssembly.Instance) => void) => {
        const instance = new WebAssembly.Instance(module, imports);
        done(instance);
        return instance.exports;
      },
      print: () => {},
      printErr: () => {},
    };
  };
  const enc = await mozjpegEncoder(instantiate('@jsquash/jpeg/codec/enc/mozjpeg_enc.wasm') as Parameters<typeof mozjpegEncoder>[0]);
  const dec = await mozjpegDecoder(instantiate('@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm') as Parameters<typeof mozjpegDecoder>[0]);
  return { enc, dec };
}

/** A copy of `src` (size x size x 3 uint8) through a random chain of edits drawn from `rand`. */
export async function copyEdit(src: Uint8Array, size: number, rand: () => number, jpeg: JpegRoundTrip, opts: CopyEditOptions = {}): Promise<Uint8Array> {
  const E = COPY_EDITS;
  let img: Float32Array = Float32Array.from(src);
  img = geometric(img, size, rand, opts.cropArea ?? E.crop.area);
  if (rand() < E.letterbox.p) img = letterbox(img, size, rand);
  if (rand() < E.jitter.p) jitter(img, rand);
  if (rand() < E.grayscale.p) grayscale(img);
  if (rand() < E.blur.p) img = blur(img, size, uniform(rand, E.blur.sigma));
  if (rand() < E.rescale.p) img = rescale(img, size, uniform(rand, E.rescale.factor));
  if (rand() < E.caption.p) caption(img, size, rand);
  const out = Uint8Array.from(img, (v) => Math.min(255, Math.max(0, Math.round(v))));
  return rand() < E.jpeg.p ? jpeg.apply(out, size, Math.round(uniform(rand, E.jpeg.quality))) : out;
}
