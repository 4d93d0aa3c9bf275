// Writing an evaluation's report folder: results.json (everything), results.csv (one row per query encoder),
// summary.md (markdown tables) and recall-vs-cost.svg.
import fs from 'node:fs';
import path from 'node:path';
import { formatSeconds } from '../progress.ts';
import { writeFileAtomic } from '../encoder/safetensors.ts';
import { pickEncoder } from '../encoder/budget.ts';
import { toCalibration } from './calibration.ts';
import { cascadeMarkdown } from './cascade.ts';
import { recallCostSpec, renderSvg } from './plot.ts';
import type { EncoderResult, Metrics, RecallCostResult } from './recall-cost.ts';

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

/** One row per query encoder. Metrics on the queries it ran on (all, or the Mix'n'Match subset), then on the common set. */
export function toCsv(r: RecallCostResult): string {
  const edits = r.copies ? ['all', ...r.copies.edits.map((e) => e.name)] : [];
  const header = [
    'family', 'id', 'spec', 'flops', 'flops_rel', 'params', 'encode_ms', 'queries', ...METRIC_CSV,
    'common_queries', ...METRIC_CSV.map((m) => `common_${m}`), 'on_common_frontier', 'on_frontier',
    ...edits.map((e) => `copies_recall1_${e}`), ...edits.map((e) => `copies_recall10_${e}`), 'own_accuracy_1nn', 'own_map10',
  ];
  const lines = [header.map(csvCell).join(',')];
  for (const e of r.encoders) {
    const m = e.all ?? e.common;
    lines.push([
      e.family, e.id, e.spec, e.flops, round(e.flopsRel), e.params, e.encodeMs === null ? '' : round(e.encodeMs),
      m?.queries ?? '', ...METRIC_KEYS.map((k) => (m ? round(m[k]) : '')),
      e.common?.queries ?? '', ...METRIC_KEYS.map((k) => (e.common ? round(e.common[k]) : '')), e.onCommonFrontier ? 1 : 0, e.onFrontier ? 1 : 0,
      ...edits.map((x) => (e.copies ? round(e.copies[x].recall1) : '')), ...edits.map((x) => (e.copies ? round(e.copies[x].recall10) : '')),
      e.own ? round(e.own.accuracy) : '', e.own ? round(e.own.map10) : '',
    ].map(csvCell).join(','));
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
  const xlDatabase = r.tasks.some((t) => t !== 'own'); // recall and copies search the XL database; own does not
  out.push(xlDatabase ? '# Recall vs cost: query encoders against an XL-encoded database' : '# Same-encoder search: each encoder against a database it encoded', '');
  out.push(`- Model: \`${r.modelId}\` (${r.modelPath})`);
  out.push(`- Database: ${d.dbSize} images of \`${d.db}\`, ${xlDatabase ? 'encoded once with XL' : 'encoded by each encoder'}; queries: ${d.queryCount} images of \`${d.queries}\`${d.limit !== null ? ` (--limit ${d.limit}: seeded samples)` : ''}`);
  out.push(`- Tasks: ${r.tasks.join(', ')}; seed ${r.seed}; ${r.environment.cpus} cores (${r.environment.cpu}), Node ${r.environment.node}, ${r.environment.threads} onnxruntime thread(s) for bulk work`);
  out.push(`- Run time: ${formatSeconds(r.timings.total)} (${Object.entries(r.timings).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(', ')})`);
  out.push(`- Created ${r.createdAt}`, '');
  if (r.notes.length) out.push('Notes:', '', ...r.notes.map((n) => `- ${n}`), '');

  const rows = r.encoders.filter((e) => e.all || e.common);
  if (rows.length) {
    out.push('## Query encoders', '');
    out.push(
      'Recall@k: share of the top k of exact search with the XL query that the encoder\'s top k also holds. 1-NN accuracy: the top result has the query\'s class. ' +
        'mAP@10: mean over queries of (1 / min(10, R)) Σ P@i · rel_i with class labels, R the class\'s database count. Label agreement: the top result has the same class as XL\'s top result. ' +
        'Encode ms: median batch-1 encode time on onnxruntime with 1 thread. Baselines are independently trained ViTs queried against the MatViT XL database.',
      '',
    );
    const subset = r.mixnmatchSubset;
    const head = ['family', 'encoder', 'MFLOPs', '× XL', 'params', 'encode ms', 'queries', 'R@1', 'R@10', '1-NN acc', 'mAP@10', 'label agr.'];
    if (subset) head.push(`1-NN acc (${d.commonQueries} common)`);
    head.push(subset ? 'frontier (★ all queries, ☆ subset only)' : 'frontier');
    out.push(`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`);
    for (const e of rows) {
      const m = (e.all ?? e.common)!;
      const cells = [FAMILY[e.family], `\`${e.id}\``, (e.flops / 1e6).toFixed(1), e.flopsRel.toFixed(3), (e.params / 1e6).toFixed(3) + 'M', f3(e.encodeMs), String(m.queries), f4(m.recall1), f4(m.recall10), f4(m.accuracy), f4(m.map10), f4(m.top1LabelAgreement)];
      if (subset) cells.push(f4(e.common?.accuracy));
      cells.push(e.onFrontier ? '★' : e.onCommonFrontier ? '☆' : '');
      out.push(`| ${cells.join(' | ')} |`);
    }
    out.push('');
  }

  const front = r.frontier.map((id) => r.encoders.find((e) => e.id === id)!) as EncoderResult[];
  if (front.length) {
    out.push('## Pareto frontier (the calibration of `src/encoder/budget.ts`)', '');
    out.push(
      r.mixnmatchSubset
        ? `Best 1-NN accuracy for each cost (FLOPs) on all ${d.queryCount} queries, among the uniform granularities and the Mix'n'Match lists on the frontier of the ${d.commonQueries}-query subset (★ or ☆ in the table above), which were re-measured on every query. The plot shows the subset.`
        : `Best 1-NN accuracy for each cost (FLOPs), on all ${d.queryCount} queries.`,
      '',
    );
    out.push('| encoder | × XL FLOPs | encode ms | 1-NN acc | R@10 |', '| --- | ---: | ---: | ---: | ---: |');
    for (const e of front) out.push(`| \`${e.id}\` | ${e.flopsRel.toFixed(3)} | ${f3(e.encodeMs)} | ${f4(e.all!.accuracy)} | ${f4(e.all!.recall10)} |`);
    out.push('', '![recall vs cost](recall-vs-cost.svg)', '');
    const cal = toCalibration(r);
    out.push('What `pickEncoder(calibration, { budget })` chooses:', '', '| budget (× XL FLOPs) | encoder | × XL FLOPs | 1-NN acc | fits |', '| ---: | --- | ---: | ---: | --- |');
    for (const budget of [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1]) {
      const c = pickEncoder(cal, { budget });
      out.push(`| ${budget} | \`${c.spec}\` | ${c.entry.flopsRel.toFixed(3)} | ${f4(c.entry.accuracy)} | ${c.fits ? 'yes' : 'no: cheapest'} |`);
    }
    out.push('');
  }
  if (r.cascade) out.push(...cascadeMarkdown(r.cascade));

  if (r.hnsw) {
    const h = r.hnsw;
    out.push('## HNSW sweep', '');
    out.push(`hnswlib-node, 'ip' space over the L2-normalised XL database (${h.dbSize} vectors), M ${h.params.M}, efConstruction ${h.params.efConstruction}; built in ${h.buildSeconds.toFixed(1)} s. Recall@10 against exact search with the same query vectors, and against exact search with the XL query.`, '');
    out.push('| query encoder | ef | queries | recall@10 (vs exact, same query) | recall@10 (vs exact XL) | median ms/query |', '| --- | ---: | ---: | ---: | ---: | ---: |');
    for (const x of h.rows) out.push(`| ${x.encoder} | ${x.ef} | ${x.queries} | ${f4(x.recall10)} | ${f4(x.recall10VsXl)} | ${x.medianMs.toFixed(4)} |`);
    out.push('');
  }

  const own = r.encoders.filter((e) => e.own);
  if (own.length) {
    out.push('## Same-encoder search (database and queries from one encoder)', '');
    out.push(`Each encoder encodes the ${d.dbSize} database images and the ${d.queryCount} queries itself: the paper's comparison of the MatViT's granularities with independently trained models, apart from searching the XL database.`, '');
    out.push('| family | encoder | × XL FLOPs | 1-NN acc | mAP@10 |', '| --- | --- | ---: | ---: | ---: |');
    for (const e of own) out.push(`| ${FAMILY[e.family]} | \`${e.id}\` | ${e.flopsRel.toFixed(3)} | ${f4(e.own!.accuracy)} | ${f4(e.own!.map10)} |`);
    out.push('');
  }

  if (r.copies) {
    const cp = r.copies;
    const names = ['all', ...cp.edits.map((e) => e.name)];
    out.push('## Near-duplicate copies (recall@1 of the original)', '');
    out.push(`${cp.originals} held-out originals × ${cp.edits.length} edits = ${cp.copies} copies (seed ${cp.seed}), searched against a database of the ${cp.originals} originals and ${cp.dbSize - cp.originals} distractors, all encoded with XL. Edits: ${cp.edits.map((e) => `\`${e.name}\` (${e.ops.map((o) => JSON.stringify(o)).join(' → ') || 'unchanged'})`).join('; ')}.`, '');
    out.push(`| encoder | × XL FLOPs | ${names.join(' | ')} |`, `| --- | ---: | ${names.map(() => '---:').join(' | ')} |`);
    for (const e of r.encoders.filter((x) => x.copies)) out.push(`| \`${e.id}\` | ${e.flopsRel.toFixed(3)} | ${names.map((n) => f3(e.copies![n].recall1)).join(' | ')} |`);
    out.push('');
  }
  return out.join('\n');
}
