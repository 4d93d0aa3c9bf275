// The own task: each uniform granularity and every independently trained baseline encodes both the database and the
// queries and searches its own space: the comparison the paper makes between the two families, apart from
// cross-encoder search.
import { ExactSearch } from '../index/exact-search.ts';
import { type ModelContext, type Subset, lap, withEncoder } from './context.ts';
import { encodeImages } from './encoding.ts';
import { meanAveragePrecision, oneNnAccuracy } from './metrics.ts';

export async function ownTask(ctx: ModelContext): Promise<void> {
  const { run } = ctx;
  const { db, qs } = run;
  const since = performance.now();
  const own = [...ctx.uniform, ...ctx.baselines];
  run.progress.start(own.length * (db.rows.length + qs.rows.length));
  for (const ref of own) {
    run.progress.stage = `own ${ref.id}`;
    const found = await withEncoder(ctx, ref, async (enc) => {
      const encode = (set: Subset) => encodeImages(enc, ref.spec, set.data.pixels, set.data.size, set.rows, { batch: run.settings.batch, onBatch: run.progress.tick });
      const dbOwn = ref.family === 'uniform' && ref.spec === 'XL' ? ctx.dbEmb : await encode(db);
      const ownSearch = await ExactSearch.create(dbOwn, db.rows.length, ref.ckpt.config.width, { k: 10, threads: run.settings.threads });
      try {
        return await ownSearch.search(await encode(qs), qs.rows.length);
      } finally {
        await ownSearch.release();
      }
    });
    const k = Math.min(10, found.k);
    ctx.results.get(ref.id)!.own = { accuracy: oneNnAccuracy(found, db.labels, run.qLabels), map10: meanAveragePrecision(found, db.labels, run.qLabels, k, run.relevant) };
  }
  lap(run, 'own', since);
}
