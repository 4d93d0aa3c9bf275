// The self-retrieval task: a seeded sample of the stored (database) images, encoded by each query encoder, searched
// in the XL database. A hit is the image's own XL entry at rank 1 (recall@1) or in the top 10: a query for an image
// that is in the index should find it, whatever the query cost.
import { mixSeed } from '../train/rng.ts';
import { type ModelContext, encodeAndSearch, lap, sampleSorted } from './context.ts';
import { targetRecall } from './metrics.ts';

/** Stored images used as self-retrieval queries (a seeded sample of the database; all of it when smaller). */
export const DEFAULT_SELF_QUERIES = 1000;

/** Database positions (rows of the XL database) the self task queries with: the same for every model of a run. */
export function selfQueries(ctx: ModelContext, count = DEFAULT_SELF_QUERIES): Int32Array {
  const n = ctx.run.db.rows.length;
  return sampleSorted(n, Math.min(n, count), mixSeed(ctx.run.settings.seed, 7));
}

export async function selfTask(ctx: ModelContext, count = DEFAULT_SELF_QUERIES): Promise<void> {
  const { run } = ctx;
  const since = performance.now();
  const positions = selfQueries(ctx, count);
  const images = Int32Array.from(positions, (p) => run.db.rows[p]);
  const refs = [...ctx.uniform, ...ctx.baselines, ...ctx.mnm];
  run.progress.start(refs.length * positions.length);
  for (const ref of refs) {
    run.progress.stage = `self ${ref.id}`;
    const { found } = await encodeAndSearch(ctx, ref, run.db.data.pixels, images);
    ctx.results.get(ref.id)!.self = targetRecall(found, positions);
  }
  lap(run, 'self', since);
}
