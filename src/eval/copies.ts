// The near-duplicate task's copies: seeded edited copies (JPEG re-compression, crops, flips, small rotations, colour
// changes, blur, down-then-up scaling, padding to another aspect ratio, a caption bar) of held-out images, made with
// sharp from the decoded pixels and decoded back through the one image preprocessing (decodeImage), so a copy reaches
// the encoder exactly as an uploaded file would. The edits are data: scripts/copies-edits.json.
import fs from 'node:fs';
import sharp, { type Sharp } from 'sharp';
import { z } from 'zod';
import { decodeImage } from '../data/images.ts';
import { mixSeed, mulberry32 } from '../train/rng.ts';
import type { TopK } from '../index/exact-search.ts';
import { type TargetRecall, targetRecall } from './metrics.ts';

/** A fixed value, or a [min, max] range drawn uniformly for each copy. */
const Param = z.union([z.number(), z.tuple([z.number(), z.number()]).refine(([a, b]) => a <= b, 'range must be [min, max]')]);

const HexColour = z.string().regex(/^#[0-9a-f]{6}$/i, 'a colour is #rrggbb');

const Op = z.discriminatedUnion('op', [
  z.object({ op: z.literal('jpeg'), quality: Param }), // 1..100
  z.object({ op: z.literal('crop'), fraction: Param }), // side of the kept square region, as a fraction; random position
  z.object({ op: z.literal('flip'), axis: z.enum(['horizontal', 'vertical']).default('horizontal') }),
  z.object({ op: z.literal('rotate'), degrees: Param, background: z.string().default('#000000') }), // then centre crop to the original size
  z.object({ op: z.literal('modulate'), brightness: Param.optional(), saturation: Param.optional(), hue: Param.optional() }), // multipliers; hue in degrees
  z.object({ op: z.literal('blur'), sigma: Param }), // Gaussian sigma in pixels, >= 0.3
  z.object({ op: z.literal('grayscale') }),
  z.object({ op: z.literal('contrast'), factor: Param }), // pixel values scaled about mid-grey
  z.object({ op: z.literal('scale'), factor: Param }), // down to this fraction of the side, then back up
  // the image centred on a canvas of another aspect ratio (width / height), its height `fill` of the canvas's
  z.object({ op: z.literal('pad'), aspect: Param, fill: Param, background: z.string().default('#000000') }),
  // a bar across the image (a share `height` of it) holding glyph-like marks, as a caption or watermark strip
  z.object({ op: z.literal('caption'), height: Param, position: z.enum(['top', 'bottom']).default('bottom'), background: HexColour.default('#000000'), ink: HexColour.default('#ffffff') }),
]);

export const EditsFile = z.object({
  description: z.string().optional(),
  seed: z.number().int(),
  originals: z.number().int().positive(), // how many held-out images get copies
  edits: z
    .array(z.object({ name: z.string().min(1).refine((n) => n !== 'all', '"all" is reserved for the total'), ops: z.array(Op) }))
    .min(1)
    .refine((es) => new Set(es.map((e) => e.name)).size === es.length, 'edit names must be unique'),
});
export type EditsFile = z.infer<typeof EditsFile>;
export type Edit = EditsFile['edits'][number];
export type EditOp = z.infer<typeof Op>;

export function loadEdits(file: string): EditsFile {
  const parsed = EditsFile.safeParse(JSON.parse(fs.readFileSync(file, 'utf8')));
  if (!parsed.success) throw new Error(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

export function parseEdits(value: unknown): EditsFile {
  return EditsFile.parse(value);
}

interface Raw {
  data: Buffer;
  width: number;
  height: number;
  encoded?: Buffer; // the file bytes when the last op produced a file (JPEG), passed as is to decodeImage
}

const fromRaw = (r: Raw) => sharp(r.data, { raw: { width: r.width, height: r.height, channels: 3 } });
async function toRaw(img: Sharp): Promise<Raw> {
  const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
  const n = info.width * info.height;
  const ch = info.channels;
  if (ch === 3) return { data, width: info.width, height: info.height };
  // grey (1), grey + alpha (2) or RGBA (4): keep the colour channels, expanding grey to RGB
  const rgb = Buffer.alloc(n * 3);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) rgb[3 * i + c] = data[i * ch + (ch < 3 ? 0 : c)];
  return { data: rgb, width: info.width, height: info.height };
}

async function applyOp(r: Raw, op: EditOp, draw: (p: z.infer<typeof Param>) => number, rand: () => number): Promise<Raw> {
  switch (op.op) {
    case 'jpeg': {
      const quality = Math.max(1, Math.min(100, Math.round(draw(op.quality))));
      const encoded = await fromRaw(r).jpeg({ quality, chromaSubsampling: '4:2:0' }).toBuffer();
      return { ...(await toRaw(sharp(encoded))), encoded };
    }
    case 'crop': {
      const f = Math.min(1, Math.max(0.05, draw(op.fraction)));
      const w = Math.max(1, Math.round(r.width * f));
      const h = Math.max(1, Math.round(r.height * f));
      const left = Math.floor(rand() * (r.width - w + 1));
      const top = Math.floor(rand() * (r.height - h + 1));
      return toRaw(fromRaw(r).extract({ left, top, width: w, height: h }));
    }
    case 'flip':
      return toRaw(op.axis === 'horizontal' ? fromRaw(r).flop() : fromRaw(r).flip());
    case 'rotate': {
      const rotated = await toRaw(fromRaw(r).rotate(draw(op.degrees), { background: op.background }));
      const left = Math.floor((rotated.width - r.width) / 2);
      const top = Math.floor((rotated.height - r.height) / 2);
      return toRaw(fromRaw(rotated).extract({ left, top, width: r.width, height: r.height }));
    }
    case 'modulate': {
      const m: { brightness?: number; saturation?: number; hue?: number } = {};
      if (op.brightness !== undefined) m.brightness = Math.max(0, draw(op.brightness));
      if (op.saturation !== undefined) m.saturation = Math.max(0, draw(op.saturation));
      if (op.hue !== undefined) m.hue = Math.round(draw(op.hue));
      return toRaw(fromRaw(r).modulate(m));
    }
    case 'blur':
      return toRaw(fromRaw(r).blur(Math.max(0.3, draw(op.sigma))));
    case 'grayscale':
      return toRaw(fromRaw(r).grayscale());
    case 'contrast': {
      const f = Math.max(0, draw(op.factor));
      return toRaw(fromRaw(r).linear(f, 128 * (1 - f)));
    }
    case 'scale': {
      const f = Math.min(1, Math.max(0.05, draw(op.factor)));
      const small = await toRaw(fromRaw(r).resize(Math.max(1, Math.round(r.width * f)), Math.max(1, Math.round(r.height * f)), { fit: 'fill' }));
      return toRaw(fromRaw(small).resize(r.width, r.height, { fit: 'fill' }));
    }
    case 'pad': {
      const fill = Math.min(1, Math.max(0.1, draw(op.fill)));
      const height = Math.ceil(r.height / fill);
      const width = Math.max(r.width, Math.round(height * Math.max(0.1, draw(op.aspect))));
      const left = Math.floor((width - r.width) / 2);
      const top = Math.floor((height - r.height) / 2);
      return toRaw(fromRaw(r).extend({ left, right: width - r.width - left, top, bottom: height - r.height - top, background: op.background }));
    }
    case 'caption': {
      const h = Math.max(1, Math.round(r.height * Math.min(1, Math.max(0, draw(op.height)))));
      const bar = captionBar(r.width, h, hexColour(op.background), hexColour(op.ink), rand);
      const top = op.position === 'top' ? 0 : r.height - h;
      return toRaw(fromRaw(r).composite([{ input: bar, raw: { width: r.width, height: h, channels: 3 }, left: 0, top }]));
    }
  }
}

/** A width x height RGB bar of `background` with a line of glyph-like ink marks (1-2 px strokes, gaps of 1 px). */
function captionBar(width: number, height: number, background: number[], ink: number[], rand: () => number): Buffer {
  const bar = Buffer.alloc(width * height * 3);
  for (let i = 0; i < width * height; i++) bar.set(background, i * 3);
  const y0 = Math.floor(height / 4);
  const y1 = Math.max(y0 + 1, Math.ceil((3 * height) / 4));
  for (let x = 1; x < width - 1; ) {
    const stroke = 1 + Math.floor(rand() * 2);
    const top = y0 + Math.floor(rand() * Math.max(1, (y1 - y0) / 2)); // letters of varying height
    for (let dx = 0; dx < stroke && x + dx < width - 1; dx++) for (let y = top; y < y1; y++) bar.set(ink, (y * width + x + dx) * 3);
    x += stroke + 1 + (rand() < 0.2 ? 2 : 0); // now and then a space between words
  }
  return bar;
}

function hexColour(c: string): number[] {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(c);
  if (!m) throw new Error(`colour "${c}" is not #rrggbb`);
  return [1, 2, 3].map((i) => parseInt(m[i], 16));
}

/** One edited copy of a size x size x 3 image, decoded back to size x size x 3 by decodeImage. */
export async function editImage(pixels: Uint8Array, size: number, edit: Edit, seed: number): Promise<Uint8Array> {
  const rand = mulberry32(seed);
  const draw = (p: z.infer<typeof Param>) => (typeof p === 'number' ? p : p[0] + rand() * (p[1] - p[0]));
  let r: Raw = { data: Buffer.from(pixels.buffer, pixels.byteOffset, pixels.length), width: size, height: size };
  for (const op of edit.ops) r = await applyOp({ data: r.data, width: r.width, height: r.height }, op, draw, rand);
  const file = r.encoded ?? (await fromRaw(r).png({ compressionLevel: 1 }).toBuffer());
  return (await decodeImage(file, size)).pixels;
}

export interface Copies {
  count: number;
  pixels: Uint8Array; // count x size x size x 3; copy i = original (i / edits) with edit (i % edits)
  original: Int32Array; // position of the copy's original in the originals list
  edit: Int32Array; // index into edits
}

/** Every edit of every original (`originals`: image indices into `pixels`); deterministic in `seed`. */
export async function makeCopies(pixels: Uint8Array, size: number, originals: ArrayLike<number>, edits: Edit[], seed: number, onProgress?: (done: number) => void): Promise<Copies> {
  const E = edits.length;
  const count = originals.length * E;
  const per = size * size * 3;
  const out: Copies = { count, pixels: new Uint8Array(count * per), original: new Int32Array(count), edit: new Int32Array(count) };
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const o = Math.floor(i / E);
      const e = i % E;
      const img = originals[o];
      const copy = await editImage(pixels.subarray(img * per, (img + 1) * per), size, edits[e], mixSeed(seed, img, e));
      out.pixels.set(copy, i * per);
      out.original[i] = o;
      out.edit[i] = e;
      if (++done % 256 === 0 || done === count) onProgress?.(done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, count) }, worker));
  return out;
}

/**
 * Recall of the original per edit (and 'all'): `target[i]` is the database row of copy i's original. Over the copies
 * `rows` when given (a subset of 0..found.n-1), else over every copy.
 */
export function copiesRecall(found: TopK, target: Int32Array, editOf: Int32Array, editNames: string[], rows?: Int32Array): Record<string, TargetRecall> {
  const over = rows ?? Int32Array.from({ length: found.n }, (_, q) => q);
  const out: Record<string, TargetRecall> = {};
  editNames.forEach((name, e) => (out[name] = targetRecall(found, target, over.filter((q) => editOf[q] === e))));
  out.all = targetRecall(found, target, over);
  return out;
}
