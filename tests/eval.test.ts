import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { decodeImage } from '../src/data/images.ts';
import type { LabelledPixels } from '../src/data/labelled.ts';
import { iterateImageSource } from '../src/data/sources.ts';
import { type Calibration, BudgetError, CalibrationError, defaultCalibration, loadCalibration, parseCalibration, pickEncoder } from '../src/encoder/budget.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG } from '../src/encoder/config.ts';
import { ExactSearch, bruteForceTopK, mergeRows, recallAtK, selectRows } from '../src/index/exact-search.ts';
import { editImage, loadEdits, parseEdits } from '../src/eval/copies.ts';
import { REGION_PENALTIES } from '../src/eval/task-copies.ts';
import { labelCounts, meanAveragePrecision, oneNnAccuracy, paretoFrontier } from '../src/eval/metrics.ts';
import { SEARCH_EF_TOLERANCE, chooseSearchEf } from '../src/eval/hnsw.ts';
import { evaluateRecallCost } from '../src/eval/recall-cost.ts';
import type { RecallCostResult } from '../src/eval/result.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { randomModel } from './helpers/model.ts';

// The bundled demo gallery: the 10,000 CIFAR-10 test images, one folder per class.
const CIFAR_TEST = path.resolve(import.meta.dirname, '../datasets/cifar10-test.tar.gz');
const EDITS_FILE = path.resolve(import.meta.dirname, '../scripts/copies-edits.json');

/** 160 images spread over all ten classes (every 62nd of the class-sorted archive), split into 120 + 40. */
async function cifarSample(): Promise<{ db: LabelledPixels; queries: LabelledPixels }> {
  const items: { pixels: Uint8Array; label: string; name: string }[] = [];
  let i = 0;
  for await (const item of iterateImageSource(CIFAR_TEST)) {
    if (i++ % 62 !== 0 || items.length >= 160) continue;
    items.push({ pixels: (await decodeImage(item.bytes, 32)).pixels, label: item.label!, name: item.path });
  }
  const classes = [...new Set(items.map((x) => x.label))].sort();
  const make = (xs: typeof items): LabelledPixels => {
    const pixels = new Uint8Array(xs.length * 32 * 32 * 3);
    xs.forEach((x, j) => pixels.set(x.pixels, j * 32 * 32 * 3));
    return { size: 32, pixels, labels: Int32Array.from(xs, (x) => classes.indexOf(x.label)), classes, names: xs.map((x) => x.name) };
  };
  // every 4th image is a query: both halves cover every class
  return { db: make(items.filter((_, j) => j % 4 !== 3)), queries: make(items.filter((_, j) => j % 4 === 3)) };
}

let dir: string;
let modelPath: string;
let comparePath: string;
let result: RecallCostResult;
const MNM = ['S,M', 'S,XL', 'M,L'];

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-eval-'));
  modelPath = path.join(dir, 'models/matvit-tiny/model.safetensors');
  fs.mkdirSync(path.dirname(modelPath), { recursive: true });
  saveModel(modelPath, TINY_CONFIG, (await randomModel(TINY_CONFIG, 3)).tensors, { trained_granularities: 'S,M,L,XL', 'train.step': '7' });
  // The compared model: another MatViT (another seed, as a retrained version would be) beside the first.
  comparePath = path.join(dir, 'models/matvit-tiny-v2/model.safetensors');
  fs.mkdirSync(path.dirname(comparePath), { recursive: true });
  saveModel(comparePath, TINY_CONFIG, (await randomModel(TINY_CONFIG, 5)).tensors, { trained_granularities: 'S,M,L,XL', 'train.step': '9' });
  const baseline = path.join(dir, 'models/baseline-S/model.safetensors');
  fs.mkdirSync(path.dirname(baseline), { recursive: true });
  saveModel(baseline, TINY_CONFIG, (await randomModel(TINY_CONFIG, 4)).tensors, { trained_granularities: 'S', 'train.step': '5' });
  const { db, queries } = await cifarSample();
  result = await evaluateRecallCost({
    modelPath,
    compare: comparePath,
    db,
    queries,
    mixnmatch: MNM,
    mixnmatchQueries: 25, // fewer than the 40 queries: exercises the subset path
    selfQueries: 50, // of the 120 stored images
    tasks: ['recall', 'self', 'copies', 'own'],
    latencyRuns: 3,
    hnsw: { efs: [10, 32] },
    copies: {
      edits: { seed: 7, originals: 8, edits: [{ name: 'identical', ops: [] }, { name: 'jpeg', ops: [{ op: 'jpeg', quality: 30 }] }, { name: 'crop-flip', ops: [{ op: 'crop', fraction: [0.7, 0.9] }, { op: 'flip', axis: 'horizontal' }] }] },
    },
    outDir: path.join(dir, 'report'),
    writeCalibration: true,
    progress: false,
    seed: 1,
  });
});

after(() => dir && fs.rmSync(dir, { recursive: true, force: true }));


test('exact search (onnxruntime MatMul + TopK) equals brute force, across chunks', async () => {
  const rand = mulberry32(5);
  const dim = 16;
  const rows = 300;
  const db = Float32Array.from({ length: rows * dim }, () => rand() - 0.5);
  const q = Float32Array.from({ length: 21 * dim }, () => rand() - 0.5);
  const es = await ExactSearch.create(db, rows, dim, { k: 10, chunk: 8 });
  const got = await es.search(q, 21);
  await es.release();
  const want = bruteForceTopK(db, rows, dim, q, 21, 10);
  assert.deepEqual(got.indices, want.indices);
  for (let i = 0; i < want.scores.length; i++) assert.ok(Math.abs(got.scores[i] - want.scores[i]) < 1e-5);
});

test('metrics on a hand-made case; the Pareto frontier keeps strictly better points', () => {
  const found = { n: 2, k: 3, indices: Int32Array.from([0, 1, 2, 3, 4, 5]), scores: new Float32Array(6) };
  const truth = { n: 2, k: 3, indices: Int32Array.from([0, 2, 9, 5, 6, 7]), scores: new Float32Array(6) };
  assert.equal(recallAtK(found, truth, 1), 0.5);
  assert.equal(recallAtK(found, truth, 3), 3 / 6);
  const dbLabels = [1, 0, 1, 2, 2, 0, 0, 0, 0, 0];
  assert.equal(oneNnAccuracy(found, dbLabels, [1, 2]), 1);
  // query 0: relevant at ranks 1 and 3 -> (1 + 2/3) / min(3, 2); query 1: rank 1, 2 -> (1 + 1) / min(3, 2)
  assert.ok(Math.abs(meanAveragePrecision(found, dbLabels, [1, 2], 3, labelCounts(dbLabels)) - ((1 + 2 / 3) / 2 + 1) / 2) < 1e-12);
  const pts = [{ c: 1, q: 0.5 }, { c: 2, q: 0.4 }, { c: 2, q: 0.6 }, { c: 3, q: 0.6 }, { c: 4, q: 0.7 }];
  assert.deepEqual(paretoFrontier(pts, (p) => p.c, (p) => p.q), [pts[0], pts[2], pts[4]]);
});

test('mergeRows puts the rows of a partition back in place, and refuses gaps and overlaps', () => {
  const n = 7;
  const k = 3;
  const whole = { n, k, indices: Int32Array.from({ length: n * k }, (_, i) => i * 5), scores: Float32Array.from({ length: n * k }, (_, i) => 1 - i / 100) };
  const a = Int32Array.from([0, 3, 4]);
  const b = Int32Array.from([1, 2, 5, 6]);
  assert.deepEqual(mergeRows([{ topk: selectRows(whole, b), rows: b }, { topk: selectRows(whole, a), rows: a }], n), whole);
  assert.throws(() => mergeRows([{ topk: selectRows(whole, a), rows: a }], n), /row 1 is in no part/);
  assert.throws(() => mergeRows([{ topk: selectRows(whole, a), rows: a }, { topk: selectRows(whole, a), rows: a }], n), /given twice/);
});

test('recall-vs-cost on a tiny model: XL against itself is exact, every metric in [0, 1]', () => {
  const xl = result.encoders.find((e) => e.id === 'XL')!;
  assert.equal(xl.all!.recall1, 1);
  assert.equal(xl.all!.recall10, 1);
  assert.equal(xl.all!.top1LabelAgreement, 1);
  assert.equal(xl.common!.recall1, 1);
  assert.equal(xl.common!.recall10, 1);
  // 4 uniform + 3 Mix'n'Match + the baseline found beside the model
  assert.deepEqual(result.encoders.map((e) => e.id).sort(), ['L', 'M', 'S', 'XL', 'baseline-S', ...MNM].sort());
  assert.equal(result.encoders.find((e) => e.id === 'baseline-S')!.family, 'baseline');
  assert.ok(result.mixnmatchSubset);
  assert.equal(result.dataset.dbSize, 120);
  assert.equal(result.dataset.queryCount, 40);
  for (const e of result.encoders) {
    assert.ok(e.common, `${e.id} has no metrics`);
    assert.equal(e.common!.queries, 25);
    assert.equal(e.all?.queries ?? 40, 40);
    for (const m of [e.all, e.common]) {
      if (!m) continue;
      for (const k of ['recall1', 'recall10', 'accuracy', 'map10', 'top1LabelAgreement'] as const) assert.ok(m[k] >= 0 && m[k] <= 1, `${e.id} ${k} = ${m[k]}`);
    }
    assert.ok(e.flopsRel > 0 && e.flopsRel <= 1);
    assert.ok(e.encodeMs! > 0);
  }
  for (const h of result.hnsw!.rows) assert.ok(h.recall10 >= 0 && h.recall10 <= 1 && h.recall10VsXl <= 1);
  assert.deepEqual(result.hnsw!.rows.map((h) => `${h.encoder}@${h.ef}`), ['XL@10', 'XL@32', 'L@10', 'L@32', 'M@10', 'M@32', 'S@10', 'S@32']);
  // every width's search beam follows the rule on its own rows, and is what the calibration hands to the server
  assert.deepEqual(Object.keys(result.hnsw!.searchEf!).sort(), ['L', 'M', 'S', 'XL']);
  assert.deepEqual(loadCalibration(modelPath).search!.ef, result.hnsw!.searchEf);
  for (const [spec, ef] of Object.entries(result.hnsw!.searchEf!)) {
    const rows = result.hnsw!.rows.filter((h) => h.encoder === spec);
    const best = Math.max(...rows.map((h) => h.recall10VsXl));
    assert.equal(ef, rows.find((h) => h.recall10VsXl >= best - SEARCH_EF_TOLERANCE)!.ef, spec);
  }
});

test('chooseSearchEf: the narrowest swept beam within the tolerance of the encoder\'s best recall of XL\'s neighbours', () => {
  const row = (encoder: string, ef: number, recall10VsXl: number) => ({ encoder, ef, queries: 1, recall10: 1, recall10VsXl, medianMs: 0, meanMs: 0 });
  const rows = [row('XL', 64, 0.9926), row('XL', 128, 0.9988), row('XL', 256, 0.9999), row('S', 256, 0.6868), row('S', 32, 0.6798), row('S', 64, 0.6851)];
  assert.deepEqual(chooseSearchEf(rows, 0.002), { XL: 128, S: 64 });
  assert.deepEqual(chooseSearchEf(rows, 0.01), { XL: 64, S: 32 });
  assert.deepEqual(chooseSearchEf(rows, 0), { XL: 256, S: 256 });
});

test('self-retrieval: XL finds every stored image it encodes as its own entry; every query encoder is measured', () => {
  assert.deepEqual(result.self, { seed: result.self!.seed, queries: 50 });
  for (const model of [result, result.compare!]) {
    const xl = model.encoders.find((e) => e.id === 'XL')!.self!;
    assert.equal(xl.queries, 50);
    assert.equal(xl.recall1, 1, `${model.label}: XL self-retrieval`);
    for (const e of model.encoders) {
      assert.ok(e.self, `${model.label} ${e.id} has no self-retrieval`);
      assert.ok(e.self.recall1 >= 0 && e.self.recall1 <= e.self.recall10 && e.self.recall10 <= 1, `${e.id}: ${JSON.stringify(e.self)}`);
    }
  }
  // the baseline embeds in its own space: its queries do not find their own XL entries the way XL's do
  assert.ok(result.encoders.find((e) => e.id === 'baseline-S')!.self!.recall1 < 1);
});

test('--compare: both models measured on the same data, every measure, in one report and one table', () => {
  const cmp = result.compare!;
  assert.ok(cmp, 'the compared model is in the result');
  assert.deepEqual([result.label, cmp.label], ['matvit-tiny', 'matvit-tiny-v2']);
  assert.equal(cmp.modelId, 'matvit-tiny-v2/model.safetensors@9');
  assert.deepEqual(cmp.encoders.map((e) => e.id).sort(), result.encoders.map((e) => e.id).sort());
  for (const e of cmp.encoders) {
    assert.ok(e.common && e.self && (e.family !== 'uniform' || (e.own && e.copies)), `${e.id} of the compared model misses a measure`);
    if (e.family === 'uniform' && e.spec === 'XL') assert.equal(e.all!.recall10, 1);
  }
  // different weights give different results: the compare run measured the second model, not the first again
  const acc = (r: { encoders: typeof cmp.encoders }) => r.encoders.map((e) => e.common!.accuracy + e.self!.recall1);
  assert.notDeepEqual(acc(cmp), acc(result));
  assert.ok(cmp.frontier.length >= 1 && cmp.hnsw!.rows.length === 8);
  const md = fs.readFileSync(result.files!.summary, 'utf8');
  const encoderTable = md.slice(md.indexOf('## Query encoders'), md.indexOf('## Pareto frontier'));
  assert.match(encoderTable, /\| `matvit-tiny` \| uniform \| `XL` \|/);
  assert.match(encoderTable, /\| `matvit-tiny-v2` \| uniform \| `XL` \|/);
  const headline = md.slice(md.indexOf('## Headline figures'), md.indexOf('## Query encoders'));
  for (const w of ['S', 'M', 'L', 'XL']) for (const m of ['matvit-tiny', 'matvit-tiny-v2']) assert.match(headline, new RegExp(`\\| \`${m}\` \\| \`${w}\` \\|`));
  const csv = fs.readFileSync(result.files!.csv, 'utf8').trim().split('\n');
  assert.equal(csv.length, 1 + result.encoders.length + cmp.encoders.length);
  assert.equal(csv.filter((l) => l.startsWith('matvit-tiny-v2,')).length, cmp.encoders.length);
});

test('copies task: recall per edit, the unedited copy found by XL', () => {
  assert.equal(result.copies!.copies, 8 * 3);
  const xl = result.encoders.find((e) => e.id === 'XL')!.copies!;
  assert.deepEqual(Object.keys(xl).sort(), ['all', 'crop-flip', 'identical', 'jpeg']);
  assert.ok(xl.identical.recall1 >= 0.875, `XL finds the unedited original (${xl.identical.recall1})`);
  for (const e of result.encoders.filter((x) => x.copies)) for (const r of Object.values(e.copies!)) assert.ok(r.recall1 >= 0 && r.recall1 <= r.recall10 && r.recall10 <= 1);
  // the summary's headline: the mean over edit types and the hardest edit, per width
  const worst = Object.entries(xl).filter(([n]) => n !== 'all').sort((a, b) => a[1].recall1 - b[1].recall1)[0];
  const md = fs.readFileSync(result.files!.summary, 'utf8');
  assert.match(md, new RegExp(`\\| \`matvit-tiny\` \\| \`XL\` \\| 1\\.000 \\| 1\\.0000 \\| 1\\.0000 \\|[^\\n]*\\| ${worst[0]} \\(${worst[1].recall1.toFixed(3)}\\) \\|`));
});

test('copies with region vectors: the penalty is the sweep\'s best for XL\'s worst edit, reported on the other originals', () => {
  const rc = result.regionCopies!;
  assert.equal(rc.grid, 3);
  assert.equal(rc.dbVectors, (result.dataset.dbSize + 8) * 9); // every distractor's and original's regions
  assert.deepEqual(rc.sweep.map((p) => p.penalty), REGION_PENALTIES);
  const best = Math.max(...rc.sweep.map((p) => p.worst));
  const chosen = rc.sweep.find((p) => p.penalty === rc.penalty)!;
  assert.equal(chosen.worst, best);
  assert.ok(rc.sweep.filter((p) => p.worst === best).every((p) => p.mean <= chosen.mean));
  assert.equal(rc.calibrationCopies + rc.heldOutCopies, 8 * 3);
  const uniform = result.encoders.filter((e) => e.family === 'uniform');
  for (const e of uniform) {
    for (const db of ['whole', 'regions'] as const) assert.equal(e.copiesRegions![db].all.queries, rc.heldOutCopies, `${e.id} ${db}`);
  }
  assert.ok(result.encoders.filter((e) => e.family !== 'uniform').every((e) => !e.copiesRegions), 'only the uniform widths search the region database');
  // An unedited copy's whole-image similarity is 1: no region (less a penalty) can beat it.
  assert.equal(uniform.find((e) => e.id === 'XL')!.copiesRegions!.regions.identical.recall1, 1);
  const md = fs.readFileSync(result.files!.summary, 'utf8');
  // the headline's last two columns: XL's mean over edits and worst edit with region vectors
  const withRegions = Object.entries(uniform.find((e) => e.id === 'XL')!.copiesRegions!.regions).filter(([n]) => n !== 'all');
  const mean = withRegions.reduce((sum, [, r]) => sum + r.recall1, 0) / withRegions.length;
  const worst = withRegions.reduce((a, b) => (b[1].recall1 < a[1].recall1 ? b : a));
  assert.match(md, new RegExp(`\\| \`matvit-tiny\` \\| \`XL\` \\|[^\\n]*\\| ${mean.toFixed(4)} \\| ${worst[0]} \\(${worst[1].recall1.toFixed(3)}\\) \\|\\n`));
  assert.match(md, new RegExp(`### With region vectors in the database[\\s\\S]*penalty of ${rc.penalty}\\.[\\s\\S]*\\| \`matvit-tiny\` \\| \`XL\` \\| regions \\|`));
});

test('every edit of scripts/copies-edits.json keeps a valid image, deterministic in its seed', async () => {
  const edits = loadEdits(EDITS_FILE);
  const names = edits.edits.map((e) => e.name);
  for (const n of ['identical', 'jpeg-q10', 'jpeg-q30', 'crop-50', 'crop-75', 'rotate-10', 'grayscale', 'colour-jitter', 'blur', 'scale-down-up', 'pad-aspect', 'caption-bar']) assert.ok(names.includes(n), `${n} is listed`);
  let original: Uint8Array | undefined;
  for await (const item of iterateImageSource(CIFAR_TEST)) {
    original = (await decodeImage(item.bytes, 32)).pixels;
    break;
  }
  const img = original!;
  for (const edit of edits.edits) {
    const copy = await editImage(img, 32, edit, 11);
    assert.equal(copy.length, 32 * 32 * 3, edit.name);
    assert.deepEqual(await editImage(img, 32, edit, 11), copy, `${edit.name} is deterministic for a seed`);
    const mean = copy.reduce((a, b) => a + b, 0) / copy.length;
    const sd = Math.sqrt(copy.reduce((a, b) => a + (b - mean) ** 2, 0) / copy.length);
    assert.ok(sd > 5, `${edit.name} left an image (standard deviation ${sd.toFixed(1)})`);
    if (edit.name === 'identical') assert.deepEqual(copy, img);
    else assert.notDeepEqual(copy, img, `${edit.name} changes the image`);
  }
  const byName = (n: string) => edits.edits.find((e) => e.name === n)!;
  const px = (a: Uint8Array, x: number, y: number) => Array.from(a.subarray((y * 32 + x) * 3, (y * 32 + x) * 3 + 3));
  // the caption bar covers the bottom row with its background and ink only
  const captioned = await editImage(img, 32, byName('caption-bar'), 11);
  const bottom = Array.from({ length: 32 }, (_, x) => px(captioned, x, 31).join(','));
  assert.ok(bottom.every((c) => c === '0,0,0' || c === '255,255,255'), bottom.join(' '));
  // padding survives decodeImage's centre crop to a square: the corners are the black border
  const padded = await editImage(img, 32, byName('pad-aspect'), 11);
  for (const [x, y] of [[0, 0], [31, 0], [0, 31], [31, 31]]) assert.ok(Math.max(...px(padded, x, y)) < 16, `corner ${x},${y}: ${px(padded, x, y)}`);
  const gray = await editImage(img, 32, byName('grayscale'), 11);
  for (let i = 0; i < gray.length; i += 3) assert.ok(gray[i] === gray[i + 1] && gray[i] === gray[i + 2]);
  assert.notDeepEqual(await editImage(img, 32, byName('colour-jitter'), 12), await editImage(img, 32, byName('colour-jitter'), 11), 'ranges are drawn per seed');
  assert.throws(() => parseEdits({ seed: 1, originals: 1, edits: [{ name: 'bar', ops: [{ op: 'caption', height: 0.2, ink: 'white' }] }] }), /#rrggbb/);
  assert.throws(() => parseEdits({ seed: 1, originals: 1, edits: [{ name: 'x', ops: [{ op: 'sepia' }] }] }));
});

test('own task: each granularity and baseline searches a database it encoded; for XL that is the XL database', () => {
  const byId = new Map(result.encoders.map((e) => [e.id, e]));
  assert.deepEqual(result.encoders.filter((e) => e.own).map((e) => e.id).sort(), ['L', 'M', 'S', 'XL', 'baseline-S']);
  assert.equal(byId.get('XL')!.own!.accuracy, byId.get('XL')!.all!.accuracy);
  assert.equal(byId.get('XL')!.own!.map10, byId.get('XL')!.all!.map10);
  for (const e of result.encoders.filter((x) => x.own)) assert.ok(e.own!.accuracy >= 0 && e.own!.accuracy <= 1 && e.own!.map10 >= 0 && e.own!.map10 <= 1);
  assert.match(fs.readFileSync(path.join(dir, 'report/summary.md'), 'utf8'), /## Same-encoder search[\s\S]*\| baseline \| `baseline-S` \|/);
});

test('the frontier is monotone and becomes the calibration that pickEncoder reads', () => {
  const front = result.frontier.map((id) => result.encoders.find((e) => e.id === id)!);
  assert.ok(front.length >= 1);
  assert.ok(front.every((e) => e.family !== 'baseline'));
  for (let i = 1; i < front.length; i++) {
    assert.ok(front[i].flops > front[i - 1].flops);
    assert.ok(front[i].all!.accuracy > front[i - 1].all!.accuracy);
  }
  // Mix'n'Match ran on a subset: the lists on that subset's frontier were re-measured on every query, and the
  // frontier compares all encoders measured on every query; nothing off it beats it at lower or equal cost
  for (const e of result.encoders.filter((x) => x.family === 'mixnmatch')) assert.equal(e.all !== null, e.onCommonFrontier, e.id);
  assert.ok(result.encoders.some((e) => e.family === 'mixnmatch' && e.all), 'the fixture re-measures at least one list');
  for (const e of result.encoders.filter((x) => x.family !== 'baseline' && x.all)) {
    assert.equal(e.all!.queries, 40);
    const cover = front.filter((f) => f.flops <= e.flops);
    assert.ok(cover.length && Math.max(...cover.map((f) => f.all!.accuracy)) >= e.all!.accuracy, `${e.id} is not dominated`);
  }
  const cal = loadCalibration(modelPath, { modelId: result.modelId });
  assert.equal(cal.source, 'measured');
  assert.equal(cal.modelId, 'matvit-tiny/model.safetensors@7');
  assert.equal(cal.stale, false);
  assert.deepEqual(cal.frontier.map((e) => e.spec), result.frontier);
  // the recall task also calibrates the `auto` cascade (src/eval/cascade.ts) and saves it beside the frontier
  assert.deepEqual(cal.cascade, result.cascade!.rule);
  assert.ok(['S', 'M', 'L'].includes(cal.cascade!.first) && cal.cascade!.then === 'XL');
  for (const budget of [0.3, 0.6, 0.75, 0.9, 1]) {
    const choice = pickEncoder(cal, { budget });
    const fitting = cal.frontier.filter((e) => e.flopsRel <= budget);
    if (fitting.length) {
      assert.ok(choice.fits && choice.entry.flopsRel <= budget, `${budget}: ${choice.reason}`);
      assert.equal(choice.entry.accuracy, Math.max(...fitting.map((e) => e.accuracy!)));
    } else {
      assert.equal(choice.fits, false);
      assert.equal(choice.spec, cal.frontier[0].spec);
      assert.match(choice.reason, /nothing fits/);
    }
  }
  assert.equal(pickEncoder(cal).spec, front[front.length - 1].spec);
});

test('report files: results.json, one CSV row per encoder, summary.md, SVG plot', () => {
  const files = result.files!;
  for (const f of Object.values(files)) assert.ok(fs.statSync(f).size > 0, f);
  const csv = fs.readFileSync(files.csv, 'utf8').trim().split('\n');
  assert.equal(csv.length, 1 + result.encoders.length + result.compare!.encoders.length);
  const rows = csv.slice(1).filter((l) => l.startsWith('matvit-tiny,'));
  const ids = rows.map((l) => l.match(/^[^,]*,[^,]*,("(?:[^"]|"")*"|[^,]*)/)![1].replace(/^"|"$/g, ''));
  assert.deepEqual(ids.sort(), result.encoders.map((e) => e.id).sort());
  assert.match(fs.readFileSync(files.plot, 'utf8'), /^<svg[^>]*>/);
  const md = fs.readFileSync(files.summary, 'utf8');
  assert.match(md, /\| `matvit-tiny` \| uniform \| `XL` \|/);
  assert.match(md, /seeded subset of 25 of the 40 queries/);
  assert.equal(JSON.parse(fs.readFileSync(files.json, 'utf8')).encoders.length, result.encoders.length);
});

test('deterministic in the seed: a second run gives the same retrieval metrics', async () => {
  const { db, queries } = await cifarSample();
  const again = await evaluateRecallCost({ modelPath, db, queries, tasks: ['recall'], mixnmatch: MNM, mixnmatchQueries: 25, latencyRuns: 0, hnsw: false, progress: false, seed: 1 });
  const strip = (r: RecallCostResult) => r.encoders.map((e) => ({ id: e.id, all: e.all, common: e.common }));
  assert.deepEqual(strip(again), strip(result));
  assert.deepEqual(again.frontier, result.frontier);
});

test('pickEncoder: budget, latency, the S fallback, bad arguments, and no calibration file', () => {
  const entry = (spec: string, flopsRel: number, accuracy: number, encodeMs: number) => ({ spec, family: 'uniform' as const, flops: flopsRel * 100, flopsRel, params: 1, encodeMs, accuracy, recall10: null });
  const cal: Calibration = { version: 1, source: 'measured', modelId: 'm@1', createdAt: null, metric: 'acc', xlFlops: 100, frontier: [entry('S', 0.45, 0.7, 0.5), entry('S,S,M,M,L,XL', 0.6, 0.75, 0.7), entry('L', 0.7, 0.78, 0.8), entry('XL', 1, 0.8, 1.2)] };
  assert.equal(pickEncoder(cal, { budget: 0.65 }).spec, 'S,S,M,M,L,XL');
  assert.equal(pickEncoder(cal, { budget: 0.7 }).spec, 'L'); // exactly at the budget
  assert.equal(pickEncoder(cal, { maxEncodeMs: 0.75 }).spec, 'S,S,M,M,L,XL');
  assert.equal(pickEncoder(cal, { budget: 1, maxEncodeMs: 1 }).spec, 'L');
  const none = pickEncoder(cal, { budget: 0.2 });
  assert.deepEqual([none.spec, none.fits], ['S', false]);
  assert.match(none.reason, /nothing fits budget 0\.200.*falling back to S/);
  assert.equal(pickEncoder(cal, { maxEncodeMs: 0.1 }).spec, 'S');
  for (const bad of [0, -0.5, 1.5, NaN]) assert.throws(() => pickEncoder(cal, { budget: bad }), BudgetError);
  assert.throws(() => pickEncoder(cal, { maxEncodeMs: 0 }), BudgetError);

  const missing = loadCalibration(path.join(os.tmpdir(), 'no-such-model-dir', 'model.safetensors'));
  assert.equal(missing.source, 'default');
  assert.deepEqual(missing.frontier.map((e) => e.spec), ['S', 'M', 'L', 'XL']);
  assert.equal(pickEncoder(missing, { budget: 0.6 }).spec, 'M');
  assert.equal(pickEncoder(missing).spec, 'XL');
  assert.equal(pickEncoder(defaultCalibration(), { budget: 0.01 }).spec, 'S');

  // A hand-edited cascade fails when the file is read, not on the first auto query.
  const rule = { first: 'M', then: 'XL', minMargin: 0.01, minAgreement: 0.3, agreementK: 10, target: 't', calibrationQueries: 10, heldOut: { queries: 10, accuracy: 0.7, xlAccuracy: 0.7, recall10: 0.5, flopsRel: 0.6, escalated: 0.1 } };
  const withCascade = (cascade: unknown) => JSON.stringify({ ...defaultCalibration(), source: 'measured', cascade });
  assert.equal(parseCalibration(withCascade(rule)).cascade?.first, 'M');
  for (const bad of [{ ...rule, minMargin: 'x' }, { ...rule, agreementK: 0 }, { ...rule, heldOut: {} }, { ...rule, then: undefined }, 'M>XL']) {
    assert.throws(() => parseCalibration(withCascade(bad), 'calibration.json'), (err: Error) => err instanceof CalibrationError && /calibration.json: bad cascade/.test(err.message));
  }
  const withSearch = (search: unknown) => JSON.stringify({ ...defaultCalibration(), source: 'measured', search });
  assert.equal(parseCalibration(withSearch({ ef: { S: 64 }, tolerance: 0.002, dbSize: 10, M: 16, efConstruction: 128 })).search?.ef.S, 64);
  for (const bad of [{ ef: { S: 0 } }, { ef: { S: 6.5 } }, { ef: 'S' }, null]) {
    assert.throws(() => parseCalibration(withSearch(bad), 'calibration.json'), /calibration.json: bad search ef/);
  }
});
