// Writing an evaluation's report folder: results.json (everything), results.csv (one row per query encoder),
// summary.md (markdown tables) and recall-vs-cost.svg.
import fs from 'node:fs';
import path from 'node:path';
import { formatSeconds } from '../progress.ts';
import { writeFileAtomic } from '../durable-file.ts';
import { pickEncoder } from '../encoder/budget.ts';
import { toCalibration } from './calibration.ts';
import { cascadeMarkdown } from './cascade.ts';
import { recallCostSpec, renderSvg } from './plot.ts';
import { type EncoderResult, type Metrics, type ModelReport, type RecallCostResult, modelsOf } from './result.ts';

export async function writeReport(r: RecallCostResult, outDir: string): Promise<Record<string, string>> {
  fs.mkdirSync(outDir, { recursive: true });
  const files = {
    json: path.join(outDir, 'results.json'),
    csv: path.join(outDir, 'results.csv'),
    summary: path.join(outDir, 'summary.md'),
    plot: path.join(outDir, 'recall-vs-cost.svg'),
  };
  writeFileAtomic(files.json, JSON.stringify({ ...r, files: undefined, calibrationFile: undefined }, null, 2) + '\n');
  writeFileAtomic(files.csv, toCsv(r));
  writeFileAtomic(files.summary, toMarkdown(r));
  if (r.encoders.some((e) => e.common)) writeFileAtomic(files.plot, await renderSvg(recallCostSpec(r)));
  else fs.rmSync(files.plot, { force: true });
  return files;
}

const METRIC_KEYS: (keyof Omit<Metrics, 'queries'>)[] = ['recall1', 'recall10', 'accuracy', 'map10', 'top1LabelAgreement'];
const METRIC_CSV = ['recall1', 'recall10', 'accuracy_1nn', 'map10', 'top1_label_agreement'];

/**
 * One row per query encoder (and model, with --compare). Metrics on the queries it ran on (all, or the Mix'n'Match
 * subset), then on the common set, then self-retrieval, copies and same-encoder search.
 */
export function toCsv(r: RecallCostResult): string {
  const edits = r.copies ? ['all', ...r.copies.edits.map((e) => e.name)] : [];
  const header = [
    'model', 'family', 'id', 'spec', 'flops', 'flops_rel', 'params', 'encode_ms', 'queries', ...METRIC_CSV,
    'common_queries', ...METRIC_CSV.map((m) => `common_${m}`), 'on_common_frontier', 'on_frontier',
    ...edits.map((e) => `copies_recall1_${e}`), ...edits.map((e) => `copies_recall10_${e}`), 'own_accuracy_1nn', 'own_map10',
    'self_queries', 'self_recall1', 'self_recall10',
  ];
  const lines = [header.map(csvCell).join(',')];
  for (const model of modelsOf(r)) {
    for (const e of model.encoders) {
      const m = e.all ?? e.common;
      lines.push([
        model.label, e.family, e.id, e.spec, e.flops, round(e.flopsRel), e.params, e.encodeMs === null ? '' : round(e.encodeMs),
        m?.queries ?? '', ...METRIC_KEYS.map((k) => (m ? round(m[k]) : '')),
        e.common?.queries ?? '', ...METRIC_KEYS.map((k) => (e.common ? round(e.common[k]) : '')), e.onCommonFrontier ? 1 : 0, e.onFrontier ? 1 : 0,
        ...edits.map((x) => (e.copies ? round(e.copies[x].recall1) : '')), ...edits.map((x) => (e.copies ? round(e.copies[x].recall10) : '')),
        e.own ? round(e.own.accuracy) : '', e.own ? round(e.own.map10) : '',
        e.self?.queries ?? '', e.self ? round(e.self.recall1) : '', e.self ? round(e.self.recall10) : '',
      ].map(csvCell).join(','));
    }
  }
  return lines.join('\n') + '\n';
}

const round = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(6)) : '');
function csvCell(v: unknown): string {
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

const f3 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(3));
const f4 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(4));
const FAMILY = { uniform: 'uniform', mixnmatch: "Mix'n'Match", baseline: 'baseline' } as const;

export function toMarkdown(r: RecallCostResult): string {
  const out: string[] = [];
  const d = r.dataset;
  const models = modelsOf(r);
  const compared = models.length > 1;
  // With --compare every table gets a model column, its rows of both models side by side.
  const modelCell = (m: ModelReport) => (compared ? [`\`${m.label}\``] : []);
  const modelHead = compared ? ['model'] : [];
  const rowsOf = <T>(pick: (m: ModelReport) => T[]) => models.flatMap((m) => pick(m).map((x) => ({ m, x })));
  const xlDatabase = r.tasks.some((t) => t !== 'own'); // recall, self and copies search the XL database; own does not
  out.push(xlDatabase ? '# Recall vs cost: query encoders against an XL-encoded database' : '# Same-encoder search: each encoder against a database it encoded', '');
  if (compared) out.push(`- Models: ${models.map((m, i) => `\`${m.label}\` = \`${m.modelId}\` (${m.modelPath})${i ? ', compared (--compare)' : ''}`).join('; ')}. Each model's query encoders search the database encoded with its own XL.`);
  else out.push(`- Model: \`${r.modelId}\` (${r.modelPath})`);
  out.push(`- Database: ${d.dbSize} images of \`${d.db}\`, ${xlDatabase ? 'encoded once with XL' : 'encoded by each encoder'}; queries: ${d.queryCount} images of \`${d.queries}\`${d.limit !== null ? ` (--limit ${d.limit}: seeded samples)` : ''}`);
  out.push(`- Tasks: ${r.tasks.join(', ')}; seed ${r.seed}; ${r.environment.cpus} cores (${r.environment.cpu}), Node ${r.environment.node}, ${r.environment.threads} onnxruntime thread(s) for bulk work`);
  out.push(`- Run time: ${formatSeconds(r.timings.total)} (${Object.entries(r.timings).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(', ')})`);
  out.push(`- Created ${r.createdAt}`, '');
  if (r.notes.length) out.push('Notes:', '', ...r.notes.map((n) => `- ${n}`), '');

  out.push(...headline(r));

  const rows = rowsOf((m) => m.encoders.filter((e) => e.all || e.common));
  if (rows.length) {
    const self = rows.some(({ x }) => x.self);
    out.push('## Query encoders', '');
    out.push(
      'Recall@k: share of the top k of exact search with the XL query that the encoder\'s top k also holds. 1-NN accuracy: the top result has the query\'s class. ' +
        'mAP@10: mean over queries of (1 / min(10, R)) Σ P@i · rel_i with class labels, R the class\'s database count. Label agreement: the top result has the same class as XL\'s top result. ' +
        (self ? `Self R@1: share of ${r.self?.queries ?? ''} stored images, encoded by the query encoder, whose top result is their own XL entry. ` : '') +
        'Encode ms: median batch-1 encode time on onnxruntime with 1 thread. Baselines are independently trained ViTs queried against the MatViT XL database.',
      '',
    );
    const subset = r.mixnmatchSubset;
    const head = [...modelHead, 'family', 'encoder', 'MFLOPs', '× XL', 'params', 'encode ms', 'queries', 'R@1', 'R@10', '1-NN acc', 'mAP@10', 'label agr.'];
    if (self) head.push('self R@1');
    if (subset) head.push(`1-NN acc (${d.commonQueries} common)`);
    head.push(subset ? 'frontier (★ all queries, ☆ subset only)' : 'frontier');
    const textColumns = modelHead.length + 2;
    out.push(`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i < textColumns ? '---' : '---:')).join(' | ')} |`);
    for (const { m: model, x: e } of rows) {
      const m = (e.all ?? e.common)!;
      const cells = [...modelCell(model), FAMILY[e.family], `\`${e.id}\``, (e.flops / 1e6).toFixed(1), e.flopsRel.toFixed(3), (e.params / 1e6).toFixed(3) + 'M', f3(e.encodeMs), String(m.queries), f4(m.recall1), f4(m.recall10), f4(m.accuracy), f4(m.map10), f4(m.top1LabelAgreement)];
      if (self) cells.push(f4(e.self?.recall1));
      if (subset) cells.push(f4(e.common?.accuracy));
      cells.push(e.onFrontier ? '★' : e.onCommonFrontier ? '☆' : '');
      out.push(`| ${cells.join(' | ')} |`);
    }
    out.push('');
  } else if (rowsOf((m) => m.encoders.filter((e) => e.self)).length) {
    out.push('## Self-retrieval', '');
    out.push(`${r.self?.queries} stored images, encoded by each query encoder, searched in the XL database: R@1, their own entry is the top result; R@10, it is in the top 10.`, '');
    out.push(`| ${[...modelHead, 'family', 'encoder', '× XL FLOPs', 'R@1', 'R@10'].join(' | ')} |`, `| ${[...modelHead.map(() => '---'), '---', '---', '---:', '---:', '---:'].join(' | ')} |`);
    for (const { m, x: e } of rowsOf((mm) => mm.encoders.filter((x) => x.self))) out.push(`| ${[...modelCell(m), FAMILY[e.family], `\`${e.id}\``, e.flopsRel.toFixed(3), f4(e.self!.recall1), f4(e.self!.recall10)].join(' | ')} |`);
    out.push('');
  }

  for (const model of models) {
    const front = model.frontier.map((id) => model.encoders.find((e) => e.id === id)!) as EncoderResult[];
    if (!front.length) continue;
    out.push(`## Pareto frontier${compared ? ` of \`${model.label}\`` : ''}${model === r ? ' (the calibration of `src/encoder/budget.ts`)' : ''}`, '');
    out.push(
      r.mixnmatchSubset
        ? `Best 1-NN accuracy for each cost (FLOPs) on all ${d.queryCount} queries, among the uniform granularities and the Mix'n'Match lists on the frontier of the ${d.commonQueries}-query subset (★ or ☆ in the table above), which were re-measured on every query. The plot shows the subset.`
        : `Best 1-NN accuracy for each cost (FLOPs), on all ${d.queryCount} queries.`,
      '',
    );
    out.push('| encoder | × XL FLOPs | encode ms | 1-NN acc | R@10 |', '| --- | ---: | ---: | ---: | ---: |');
    for (const e of front) out.push(`| \`${e.id}\` | ${e.flopsRel.toFixed(3)} | ${f3(e.encodeMs)} | ${f4(e.all!.accuracy)} | ${f4(e.all!.recall10)} |`);
    out.push('');
    if (model === r) out.push('![recall vs cost](recall-vs-cost.svg)', '');
    const cal = toCalibration({ ...r, ...model });
    out.push('What `pickEncoder(calibration, { budget })` chooses:', '', '| budget (× XL FLOPs) | encoder | × XL FLOPs | 1-NN acc | fits |', '| ---: | --- | ---: | ---: | --- |');
    for (const budget of [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1]) {
      const c = pickEncoder(cal, { budget });
      out.push(`| ${budget} | \`${c.spec}\` | ${c.entry.flopsRel.toFixed(3)} | ${f4(c.entry.accuracy)} | ${c.fits ? 'yes' : 'no: cheapest'} |`);
    }
    out.push('');
  }
  for (const m of modelsOf(r)) if (m.cascade) out.push(...cascadeMarkdown(m.cascade, r.compare ? m.label : undefined));

  const sweeps = models.filter((m) => m.hnsw);
  if (sweeps.length) {
    const h = sweeps[0].hnsw!;
    out.push('## HNSW sweep', '');
    out.push(`hnswlib-node, 'ip' space over the L2-normalised XL database (${h.dbSize} vectors), M ${h.params.M}, efConstruction ${h.params.efConstruction}; built in ${sweeps.map((m) => `${m.hnsw!.buildSeconds.toFixed(1)} s`).join(' and ')}. Recall@10 against exact search with the same query vectors, and against exact search with the XL query.`, '');
    out.push(`| ${[...modelHead, 'query encoder', 'ef', 'queries', 'recall@10 (vs exact, same query)', 'recall@10 (vs exact XL)', 'median ms/query'].join(' | ')} |`, `| ${[...modelHead.map(() => '---'), '---', '---:', '---:', '---:', '---:', '---:'].join(' | ')} |`);
    for (const m of sweeps) for (const x of m.hnsw!.rows) out.push(`| ${[...modelCell(m), x.encoder, x.ef, x.queries, f4(x.recall10), f4(x.recall10VsXl), x.medianMs.toFixed(4)].join(' | ')} |`);
    out.push('');
    for (const m of sweeps.filter((s) => s.hnsw!.searchEf)) {
      const chosen = Object.entries(m.hnsw!.searchEf!).map(([spec, ef]) => `${spec} ${ef}`).join(', ');
      out.push(`- Search beam per encoder${r.compare ? ` (${m.label})` : ''}, the smallest ef within ${m.hnsw!.searchEfTolerance} of the encoder's best recall@10 of XL's neighbours (calibration.json; the server and \`matvit search\` use it unless a query names its ef): ${chosen}.`);
    }
    out.push('');
  }

  const own = rowsOf((m) => m.encoders.filter((e) => e.own));
  if (own.length) {
    out.push('## Same-encoder search (database and queries from one encoder)', '');
    out.push(`Each encoder encodes the ${d.dbSize} database images and the ${d.queryCount} queries itself: the paper's comparison of the MatViT's granularities with independently trained models, apart from searching the XL database.`, '');
    out.push(`| ${[...modelHead, 'family', 'encoder', '× XL FLOPs', '1-NN acc', 'mAP@10'].join(' | ')} |`, `| ${[...modelHead.map(() => '---'), '---', '---', '---:', '---:', '---:'].join(' | ')} |`);
    for (const { m, x: e } of own) out.push(`| ${[...modelCell(m), FAMILY[e.family], `\`${e.id}\``, e.flopsRel.toFixed(3), f4(e.own!.accuracy), f4(e.own!.map10)].join(' | ')} |`);
    out.push('');
  }

  if (r.copies) {
    const cp = r.copies;
    const names = ['all', ...cp.edits.map((e) => e.name)];
    out.push('## Near-duplicate copies (recall@1 of the original)', '');
    out.push(`${cp.originals} held-out originals × ${cp.edits.length} edits = ${cp.copies} copies (seed ${cp.seed}), searched against a database of the ${cp.originals} originals and ${cp.dbSize - cp.originals} distractors, all encoded with XL. Edits: ${cp.edits.map((e) => `\`${e.name}\` (${e.ops.map((o) => JSON.stringify(o)).join(' → ') || 'unchanged'})`).join('; ')}.`, '');
    out.push(`| ${[...modelHead, 'encoder', '× XL FLOPs', ...names].join(' | ')} |`, `| ${[...modelHead.map(() => '---'), '---', '---:', ...names.map(() => '---:')].join(' | ')} |`);
    for (const { m, x: e } of rowsOf((mm) => mm.encoders.filter((x) => x.copies))) out.push(`| ${[...modelCell(m), `\`${e.id}\``, e.flopsRel.toFixed(3), ...names.map((n) => f3(e.copies![n].recall1))].join(' | ')} |`);
    out.push('');
    const regional = models.filter((m) => m.regionCopies);
    if (regional.length) {
      out.push('### With region vectors in the database', '');
      for (const m of regional) {
        const rc = m.regionCopies!;
        out.push(
          `${compared ? `\`${m.label}\`: ` : ''}each image also has ${rc.grid} x ${rc.grid} region vectors (half-side squares, src/data/regions.ts; ${rc.dbVectors} in all), encoded with XL; an image scores the better of its whole-image similarity and its best region's less a penalty of ${rc.penalty}. ` +
            `The penalty maximises XL's worst edit on the ${rc.calibrationCopies} copies of even-numbered originals (${rc.sweep.map((p) => `${p.penalty}: worst ${p.worstEdit} ${f3(p.worst)}, mean ${f3(p.mean)}`).join('; ')}); ` +
            `the table holds the other ${rc.heldOutCopies} copies, against the database without region vectors (whole) and with them (regions).`,
          '',
        );
      }
      out.push(`| ${[...modelHead, 'encoder', 'database', ...names].join(' | ')} |`, `| ${[...modelHead.map(() => '---'), '---', '---', ...names.map(() => '---:')].join(' | ')} |`);
      for (const { m, x: e } of rowsOf((mm) => mm.encoders.filter((x) => x.copiesRegions))) {
        for (const db of ['whole', 'regions'] as const) out.push(`| ${[...modelCell(m), `\`${e.id}\``, db, ...names.map((n) => f3(e.copiesRegions![db][n].recall1))].join(' | ')} |`);
      }
      out.push('');
    }
  }
  return out.join('\n');
}

/** Mean recall@1 over edit types (each edit weighs the same), and the edit with the lowest recall@1. */
function copiesSummary(copies: EncoderResult['copies']): { mean: number; worst: { edit: string; recall1: number } } | null {
  const edits = Object.entries(copies ?? {}).filter(([name]) => name !== 'all');
  if (!edits.length) return null;
  const worst = edits.reduce((a, b) => (b[1].recall1 < a[1].recall1 ? b : a));
  return { mean: edits.reduce((sum, [, x]) => sum + x.recall1, 0) / edits.length, worst: { edit: worst[0], recall1: worst[1].recall1 } };
}

/**
 * The figures that say whether a cheap query lands where XL does, per uniform width (and model): recall@10 of XL's
 * neighbours, self-retrieval, 1-NN accuracy against XL's, the copies' mean recall@1 over edits and the worst edit
 * (also with region vectors, when the run has them); then the best 1-NN accuracy within 60% of XL's FLOPs.
 */
export function headline(r: RecallCostResult): string[] {
  const models = modelsOf(r);
  const compared = models.length > 1;
  const widths = [...new Set(models.flatMap((m) => m.encoders.filter((e) => e.family === 'uniform').map((e) => e.id)))];
  const rows = widths.flatMap((w) => models.map((m) => ({ m, e: m.encoders.find((x) => x.family === 'uniform' && x.id === w), xl: m.encoders.find((x) => x.family === 'uniform' && x.spec === 'XL') })));
  if (!rows.some(({ e }) => e && (e.all || e.self || e.copies))) return [];
  const regional = models.some((m) => m.regionCopies);
  const out = ['## Headline figures', ''];
  out.push(
    'Per uniform width: recall@10 of the neighbours XL\'s query finds; self-retrieval R@1 (a stored image, encoded by the query encoder, finds its own XL entry first); ' +
      '1-NN accuracy and its difference from XL\'s in points; the copies\' mean recall@1 over edit types and the hardest edit' +
      (regional ? ', over every copy and, with region vectors in the database, over the held-out half\'s (below)' : '') + '.' + (compared ? ' The models\' rows stand side by side.' : ''),
    '',
  );
  const copiesHead = ['copies R@1, mean over edits', 'worst edit (R@1)', ...(regional ? ['with region vectors: mean', 'worst edit'] : [])];
  out.push(`| ${[...(compared ? ['model'] : []), 'width', '× XL FLOPs', 'R@10 of XL\'s neighbours', 'self R@1', '1-NN acc', 'vs XL (points)', ...copiesHead].join(' | ')} |`);
  out.push(`| ${[...(compared ? ['---'] : []), '---', '---:', '---:', '---:', '---:', '---:', ...copiesHead.map((h) => (h.startsWith('worst') ? '---' : '---:'))].join(' | ')} |`);
  const copiesCells = (c: EncoderResult['copies'] | undefined) => {
    const summary = copiesSummary(c ?? null);
    return [f4(summary?.mean), summary ? `${summary.worst.edit} (${f3(summary.worst.recall1)})` : '–'];
  };
  for (const { m, e, xl } of rows) {
    if (!e) continue;
    const vsXl = e.all && xl?.all ? ((e.all.accuracy - xl.all.accuracy) * 100).toFixed(2) : '–';
    const copies = [...copiesCells(e.copies), ...(regional ? copiesCells(e.copiesRegions?.regions) : [])];
    out.push(`| ${[...(compared ? [`\`${m.label}\``] : []), `\`${e.id}\``, e.flopsRel.toFixed(3), f4(e.all?.recall10), f4(e.self?.recall1), f4(e.all?.accuracy), vsXl, ...copies].join(' | ')} |`);
  }
  out.push('');
  for (const m of models) {
    const xl = m.encoders.find((x) => x.family === 'uniform' && x.spec === 'XL')?.all;
    const cheap = m.encoders.filter((e) => e.family !== 'baseline' && e.all && e.flopsRel <= 0.6).sort((a, b) => b.all!.accuracy - a.all!.accuracy || a.flops - b.flops)[0];
    if (xl && cheap) out.push(`- ${compared ? `\`${m.label}\`: ` : ''}best 1-NN accuracy with at least 40% fewer FLOPs than XL (among the encoders measured on every query): \`${cheap.id}\` at ${cheap.flopsRel.toFixed(3)} × XL, ${f4(cheap.all!.accuracy)} (${((cheap.all!.accuracy - xl.accuracy) * 100).toFixed(2)} points against XL)`);
  }
  if (out[out.length - 1] !== '') out.push('');
  return out;
}
