// The near-duplicate (copies) task: edited copies of held-out images are the queries; the database is every XL
// database image (as distractors) plus the originals, all encoded with XL. A hit is the copy's original, per edit.
// The copies are made once per run (makeCopySet) and searched with every model's encoders.
import { ExactSearch } from '../index/exact-search.ts';
import { Encoder } from '../encoder/runtime.ts';
import { mixSeed } from '../train/rng.ts';
import { type EvalRun, type ModelContext, encodeAndSearch, lap, sampleSorted } from './context.ts';
import { type Copies, type EditsFile, copiesRecall, makeCopies } from './copies.ts';
import { encodeImages } from './encoding.ts';
import type { RecallCostResult } from './result.ts';

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

export async function copiesTask(ctx: ModelContext, set: CopySet): Promise<void> {
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
  try {
    for (const ref of refs) {
      run.progress.stage = `copies ${ref.id}`;
      const { found } = await encodeAndSearch(ctx, ref, made.pixels, allCopies, copySearch);
      ctx.results.get(ref.id)!.copies = copiesRecall(found, target, made.edit, names);
    }
  } finally {
    await copySearch.release();
  }
  lap(run, 'copies', since);
}

/** The report's description of the copy set. */
export const describeCopies = (set: CopySet, dbSize: number): NonNullable<RecallCostResult['copies']> => ({
  seed: set.seed, originals: set.originalImages.length, copies: set.made.count, dbSize: dbSize + set.originalImages.length, edits: set.edits,
});
