// The near-duplicate (copies) task: edited copies of held-out images are the queries; the database is every XL
// database image (as distractors) plus the originals, all encoded with XL. A hit is the copy's original, per edit.
// The copies are made once per run (makeCopySet) and searched with every model's encoders. With a region grid, the
// uniform widths' copies are also searched in a database that holds each image's region vectors (src/data/regions.ts)
// beside its whole-image one; the region penalty is chosen on half of the originals and reported on the other half.
import { DEFAULT_REGION_GRID, doubleSize, regionViews } from '../data/regions.ts';
import { ExactSearch, type TopK } from '../index/exact-search.ts';
import { mergeRegionTopK } from '../index/region-merge.ts';
import { Encoder } from '../encoder/runtime.ts';
import { mixSeed } from '../train/rng.ts';
import { type EvalRun, type ModelContext, encodeAndSearch, lap, sampleSorted } from './context.ts';
import { type Copies, type EditsFile, copiesRecall, makeCopies } from './copies.ts';
import { encodeImages } from './encoding.ts';
import type { RecallCostResult, RegionCopiesReport } from './result.ts';

/** Region penalties swept on the calibration half (cosine similarity units). */
export const REGION_PENALTIES = [0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2];
const REGION_K = 20; // region results per query: an image's regions may take several of the first places

export interface CopySet {
  edits: EditsFile['edits'];
  seed: number;
  originalImages: Int32Array; // image indices into the query pixels
  made: Copies;
}

/** Every edit of a seeded sample of `originals` queries (the file's count when not given). */
export async function makeCopySet(run: EvalRun, editsFile: EditsFile, originals?: number): Promise<CopySet> {
  const since = performance.now();
  const { qs } = run;
  const nq = qs.rows.length;
  const n = Math.min(nq, originals ?? editsFile.originals);
  const seed = mixSeed(editsFile.seed, run.settings.seed);
  const positions = sampleSorted(nq, n, mixSeed(seed, 4)); // positions in qs.rows
  const originalImages = Int32Array.from(positions, (p) => qs.rows[p]);
  run.progress.start(n * editsFile.edits.length, 'making copies');
  let madeSoFar = 0;
  const made = await makeCopies(qs.data.pixels, qs.data.size, originalImages, editsFile.edits, seed, (done) => {
    run.progress.tick(done - madeSoFar);
    madeSoFar = done;
  });
  lap(run, 'makeCopies', since);
  return { edits: editsFile.edits, seed, originalImages, made };
}

export async function copiesTask(ctx: ModelContext, set: CopySet, regionGrid = DEFAULT_REGION_GRID): Promise<void> {
  const { run } = ctx;
  const { made } = set;
  const since = performance.now();
  const nDb = run.db.rows.length;
  const nOriginals = set.originalImages.length;
  const dim = ctx.ckpt.config.width;
  const frontierIds = new Set(ctx.frontier.filter((r) => r.family === 'mixnmatch').map((r) => r.id));
  const refs = [...ctx.uniform, ...ctx.baselines, ...ctx.mnm.filter((m) => frontierIds.has(m.id))];
  run.progress.start(made.count * refs.length + nOriginals, `copies (${ctx.label})`);
  // Database: every database image (as distractors) plus the originals, all encoded with XL.
  const enc = new Encoder(ctx.ckpt, ctx.modelPath, { threads: run.settings.threads });
  const origEmb = await encodeImages(enc, 'XL', run.qs.data.pixels, run.qs.data.size, set.originalImages, { batch: run.settings.batch, onBatch: run.progress.tick }).finally(() => enc.close());
  const copyDb = new Float32Array((nDb + nOriginals) * dim);
  copyDb.set(ctx.dbEmb);
  copyDb.set(origEmb, nDb * dim);
  const copySearch = await ExactSearch.create(copyDb, nDb + nOriginals, dim, { k: 10, threads: run.settings.threads });
  const target = Int32Array.from(made.original, (o) => nDb + o);
  const names = set.edits.map((e) => e.name);
  const allCopies = Int32Array.from({ length: made.count }, (_, i) => i);
  const uniformEmb = new Map<string, Float32Array>(); // the copies as each uniform width encodes them
  try {
    for (const ref of refs) {
      run.progress.stage = `copies ${ref.id}`;
      const { found, emb } = await encodeAndSearch(ctx, ref, made.pixels, allCopies, copySearch);
      ctx.results.get(ref.id)!.copies = copiesRecall(found, target, made.edit, names);
      if (ref.family === 'uniform') uniformEmb.set(ref.id, emb);
    }
    lap(run, 'copies', since);
    if (regionGrid > 0) await regionCopies(ctx, set, { target, names }, copySearch, uniformEmb, regionGrid);
  } finally {
    await copySearch.release();
  }
}

/**
 * The copies searched by each uniform width in a database of whole-image and region vectors (every distractor's and
 * every original's, encoded with XL), merged per image with mergeRegionTopK. The penalty is the one that maximises
 * XL's worst edit on the copies of even-numbered originals; the report holds the odd-numbered ones' results.
 */
async function regionCopies(
  ctx: ModelContext,
  set: CopySet,
  { target, names }: { target: Int32Array; names: string[] }, // as copiesTask scores the copies
  wholeSearch: ExactSearch,
  copyEmb: Map<string, Float32Array>,
  grid: number,
): Promise<void> {
  const { run } = ctx;
  const { made } = set;
  const since = performance.now();
  const size = run.db.data.size;
  const dim = ctx.ckpt.config.width;
  const perRegion = grid * grid;
  const nDb = run.db.rows.length;
  const nImages = nDb + set.originalImages.length; // the copies database's rows: distractors, then originals
  run.progress.start(nImages * perRegion, `region vectors (${ctx.label})`);
  const regionEmb = new Float32Array(nImages * perRegion * dim);
  const enc = new Encoder(ctx.ckpt, ctx.modelPath, { threads: run.settings.threads });
  try {
    const opts = { grid, batch: run.settings.batch, onBatch: run.progress.tick };
    await encodeRegions(enc, run.db.data.pixels, size, run.db.rows, regionEmb.subarray(0, nDb * perRegion * dim), opts);
    await encodeRegions(enc, run.qs.data.pixels, size, set.originalImages, regionEmb.subarray(nDb * perRegion * dim), opts);
  } finally {
    await enc.close();
  }
  lap(run, 'encodeRegions', since);
  const searchSince = performance.now();
  const regionSearch = await ExactSearch.create(regionEmb, nImages * perRegion, dim, { k: REGION_K, threads: run.settings.threads });
  const imageOf = (row: number) => Math.floor(row / perRegion);
  const calibration = Int32Array.from({ length: made.count }, (_, i) => i).filter((i) => made.original[i] % 2 === 0);
  const heldOut = Int32Array.from({ length: made.count }, (_, i) => i).filter((i) => made.original[i] % 2 === 1);
  try {
    const searched = new Map<string, { whole: TopK; regions: TopK }>();
    for (const [id, emb] of copyEmb) {
      searched.set(id, { whole: await wholeSearch.search(emb, made.count), regions: await regionSearch.search(emb, made.count) });
    }
    const xl = searched.get('XL');
    if (!xl) return;
    const sweep: RegionCopiesReport['sweep'] = REGION_PENALTIES.map((penalty) => {
      const r = copiesRecall(mergeRegionTopK(xl.whole, xl.regions, imageOf, penalty), target, made.edit, names, calibration);
      const perEdit = names.map((n) => ({ edit: n, recall1: r[n].recall1 }));
      const worst = perEdit.reduce((a, b) => (b.recall1 < a.recall1 ? b : a));
      return { penalty, worstEdit: worst.edit, worst: worst.recall1, mean: perEdit.reduce((a, b) => a + b.recall1, 0) / perEdit.length };
    });
    const chosen = sweep.reduce((a, b) => (b.worst > a.worst || (b.worst === a.worst && b.mean > a.mean) ? b : a));
    for (const [id, { whole, regions }] of searched) {
      ctx.results.get(id)!.copiesRegions = {
        whole: copiesRecall(whole, target, made.edit, names, heldOut),
        regions: copiesRecall(mergeRegionTopK(whole, regions, imageOf, chosen.penalty), target, made.edit, names, heldOut),
      };
    }
    ctx.regionCopies = { grid, dbVectors: nImages * perRegion, penalty: chosen.penalty, calibrationCopies: calibration.length, heldOutCopies: heldOut.length, sweep };
  } finally {
    await regionSearch.release();
    lap(run, 'regionCopies', searchSince);
  }
}

/** Writes into `out` the XL embeddings of the grid x grid regions of each image `indices` of `pixels`, image by image, region by region. */
async function encodeRegions(enc: Encoder, pixels: Uint8Array, size: number, indices: ArrayLike<number>, out: Float32Array, opts: { grid: number; batch: number; onBatch: (n: number) => void }): Promise<void> {
  const { grid, batch, onBatch } = opts;
  const per = size * size * 3;
  const perRegion = grid * grid;
  const chunk = Math.max(1, Math.floor(4096 / perRegion)); // images whose regions are held at once
  if (out.length !== indices.length * perRegion * enc.dim) throw new RangeError(`room for ${out.length / enc.dim} region vectors, not ${indices.length * perRegion}`);
  for (let start = 0; start < indices.length; start += chunk) {
    const n = Math.min(chunk, indices.length - start);
    const views = new Uint8Array(n * perRegion * per);
    for (let i = 0; i < n; i++) {
      const img = indices[start + i];
      views.set(regionViews(await doubleSize(pixels.subarray(img * per, (img + 1) * per), size), size, grid), i * perRegion * per);
    }
    const emb = await encodeImages(enc, 'XL', views, size, Int32Array.from({ length: n * perRegion }, (_, i) => i), { batch, onBatch });
    out.set(emb, start * perRegion * enc.dim);
  }
}

/** The report's description of the copy set. */
export const describeCopies = (set: CopySet, dbSize: number): NonNullable<RecallCostResult['copies']> => ({
  seed: set.seed, originals: set.originalImages.length, copies: set.made.count, dbSize: dbSize + set.originalImages.length, edits: set.edits,
});
