// The `auto` query: the policy (which encoders run), the cascade's escalation rule, its calibration on synthetic
// results with a known answer, and the cascade run end to end on a real store, encoder and search service.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import { EncodeBatcher } from '../src/encoder/batcher.ts';
import { type Calibration, defaultCalibration } from '../src/encoder/budget.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { TINY_CONFIG } from '../src/encoder/config.ts';
import { type CascadeCalibration, type CascadeRule, LOAD_EF, autoLadder, planQuery, shouldEscalate } from '../src/encoder/policy.ts';
import { Encoder } from '../src/encoder/runtime.ts';
import { evaluateCascade } from '../src/eval/cascade.ts';
import type { TopK } from '../src/index/exact-search.ts';
import * as indexer from '../src/index/indexer.ts';
import * as search from '../src/index/search.ts';
import { openStore } from '../src/store/open.ts';
import type { StoreBackend } from '../src/store/types.ts';
import { SearchResponse } from '../src/server/schemas.ts';
import { LoadController } from '../src/server/load-controller.ts';
import { SearchService } from '../src/server/service.ts';
import { mulberry32 } from '../src/train/rng.ts';
import { randomModel } from './helpers/model.ts';

const rule = (minMargin: number, minAgreement: number, agreementK = 4): CascadeRule => ({ first: 'S', then: 'XL', minMargin, minAgreement, agreementK });
const hits = (scores: number[], labels: (string | null)[]) => scores.map((score, i) => ({ score, label: labels[i] }));

describe('the escalation rule', () => {
  test('escalates exactly when the margin is below its threshold or the label agreement below its own', () => {
    const labels = ['cat', 'cat', 'dog', 'cat', 'dog'];
    // margin 0.25 (exact in binary), agreement over the first 4: 3/4
    const h = hits([1, 0.75, 0.5, 0.25, 0], labels);
    assert.equal(shouldEscalate(rule(0.25, 0), h).escalate, false, 'a margin equal to the threshold is not below it');
    assert.equal(shouldEscalate(rule(0.2500001, 0), h).escalate, true);
    assert.equal(shouldEscalate(rule(0, 0.75), h).escalate, false, 'an agreement equal to the threshold is not below it');
    assert.equal(shouldEscalate(rule(0, 0.76), h).escalate, true);
    assert.match(shouldEscalate(rule(0, 0.76), h).why, /label agreement 0\.75 < 0\.76/);
    assert.match(shouldEscalate(rule(0.3, 0), h).why, /margin 0\.2500 < 0\.3000/);
    assert.deepEqual(shouldEscalate(rule(0, 1, 2), h), { escalate: false, margin: 0.25, agreement: 1, why: 'confident' }, 'agreementK counts');
  });

  test('without labels only the margin counts; one result has no margin; none escalates', () => {
    const unlabelled = hits([1, 0.95, 0.5], [null, null, null]);
    assert.equal(shouldEscalate(rule(0.04, 1), unlabelled).escalate, false);
    assert.equal(shouldEscalate(rule(0.06, 1), unlabelled).escalate, true);
    assert.equal(shouldEscalate(rule(2, 1), hits([0.9], ['cat'])).escalate, false, 'a single result: margin infinite, agreement 1');
    assert.equal(shouldEscalate(rule(0, 0), []).escalate, true);
  });
});

describe('the query policy', () => {
  const cascade: CascadeCalibration = {
    ...rule(0.05, 0.6, 10),
    target: 'test',
    calibrationQueries: 10,
    heldOut: { queries: 10, accuracy: 0.7, xlAccuracy: 0.7, recall10: 0.9, flopsRel: 0.6, escalated: 0.2 },
  };
  const cal: Calibration = { ...defaultCalibration(TINY_CONFIG, 'm@1'), cascade };

  test('a named encoder, a budget, the default, and auto with and without a usable cascade', () => {
    assert.deepEqual(planQuery({ ffn: 'M' }, cal), { chosenBy: 'ffn', spec: 'M' });
    assert.deepEqual(planQuery({}, cal, 'L'), { chosenBy: 'default', spec: 'L' });
    const budget = planQuery({ budget: 0.999 }, cal);
    assert.equal(budget.chosenBy, 'budget');
    const auto = planQuery({ ffn: 'auto' }, cal);
    assert.equal(auto.chosenBy, 'cascade');
    assert.equal(auto.spec, 'S');
    assert.deepEqual(auto.chosenBy === 'cascade' && auto.rule, { first: 'S', then: 'XL', minMargin: 0.05, minAgreement: 0.6, agreementK: 10 });
    assert.equal(planQuery({}, cal, 'AUTO').chosenBy, 'cascade', 'auto as the default, in any case');
    const none = planQuery({ ffn: 'auto' }, defaultCalibration(TINY_CONFIG));
    assert.deepEqual([none.chosenBy, none.spec], ['ffn', 'XL']);
    assert.match(none.reason!, /no cascade/);
    const stale = planQuery({ ffn: 'auto' }, { ...cal, stale: true });
    assert.match(stale.reason!, /another checkpoint/);
  });
});

describe('calibrating the cascade', () => {
  // Synthetic results with a known answer: XL's top result is always right; the cheap encoder's is wrong exactly
  // when its first two scores are within 0.05 (a quarter of the queries), and its labels carry no signal.
  const n = 2000;
  const k = 10;
  const rand = mulberry32(5);
  const queryLabels = Int32Array.from({ length: n }, (_, q) => q % 5);
  const dbLabels = Int32Array.from({ length: 5 * 100 }, (_, i) => i % 5); // item i has label i % 5
  const uncertain = Uint8Array.from({ length: n }, () => (rand() < 0.25 ? 1 : 0));
  const topk = (make: (q: number, i: number) => [number, number]): TopK => {
    const t: TopK = { n, k, indices: new Int32Array(n * k), scores: new Float32Array(n * k) };
    for (let q = 0; q < n; q++) for (let i = 0; i < k; i++) [t.indices[q * k + i], t.scores[q * k + i]] = make(q, i);
    return t;
  };
  // item 5j + label: right label; + 1: wrong
  const xl = topk((q, i) => [5 * (i + 1) + queryLabels[q], 0.9 - 0.01 * i]);
  const cheap = topk((q, i) => {
    const right = i === 0 ? !uncertain[q] : i % 2 === 0;
    const gap = uncertain[q] ? 0.01 + 0.03 * rand() : 0.07 + 0.1 * rand();
    return [5 * (i + 1) + ((queryLabels[q] + (right ? 0 : 1)) % 5), i === 0 ? 0.9 : 0.9 - gap - 0.001 * i];
  });

  test('chooses the rule that escalates the uncertain queries, and its held-out half reaches XL\'s accuracy', () => {
    const ev = evaluateCascade({ cheap: [{ spec: 'S', flopsRel: 0.5, topk: cheap }], wide: { spec: 'XL', flopsRel: 1, topk: xl }, dbLabels, queryLabels, seed: 3 });
    const r = ev.rule;
    assert.deepEqual([r.first, r.then], ['S', 'XL']);
    assert.ok(r.minMargin > 0.04 && r.minMargin < 0.17, `margin threshold ${r.minMargin} is above every uncertain query's`);
    assert.equal(r.heldOut.xlAccuracy, 1);
    assert.equal(r.heldOut.accuracy, 1, 'every uncertain query escalated');
    assert.equal(r.calibrationQueries + r.heldOut.queries, n);
    assert.ok(r.heldOut.flopsRel < 0.5 + 0.35, `held-out cost ${r.heldOut.flopsRel}`);
    // The served rule (shouldEscalate) with the calibrated thresholds escalates every uncertain query.
    let escalated = 0;
    for (let q = 0; q < n; q++) {
      const h = Array.from({ length: k }, (_, i) => ({ score: cheap.scores[q * k + i], label: dbLabels[cheap.indices[q * k + i]] }));
      const e = shouldEscalate(r, h).escalate;
      if (e) escalated++;
      if (uncertain[q]) assert.ok(e, `uncertain query ${q} escalates`);
    }
    // The cheapest rule escalates little beyond the uncertain quarter (the thresholds are 1/40 quantiles).
    assert.ok(escalated / n < 0.25 + 0.05, `${escalated} of ${n} escalated`);
    // The series sweeps the margin threshold: from the cheap encoder alone to always escalating.
    const costs = ev.series.map((p) => p.flopsRel);
    assert.ok(Math.min(...costs) === 0.5 && Math.max(...costs) === 1.5);
    assert.ok(ev.series.every((p, i) => i === 0 || p.flopsRel >= ev.series[i - 1].flopsRel));
    assert.equal(JSON.parse(JSON.stringify(r)).minMargin, r.minMargin, 'the rule survives calibration.json');
  });

  test('a rule must meet the target by a standard error: a cheap encoder as accurate as XL on average but not on the same queries is not run alone', () => {
    // Each encoder is right on an independent 70% of the queries and the margins carry no signal, so the cascade
    // gains accuracy only by escalating. For this seed the cheap encoder alone is within the tolerance of XL's
    // accuracy on the calibration half, which a rule with no allowance for noise takes.
    const coin = mulberry32(11);
    const right = (p: number) => Uint8Array.from({ length: n }, () => (coin() < p ? 1 : 0));
    const [xlRight, cheapRight] = [right(0.7), right(0.7)];
    const answer = (ok: Uint8Array) => topk((q, i) => [5 * (i + 1) + ((queryLabels[q] + (i > 0 || ok[q] ? 0 : 1)) % 5), 0.9 - (i === 0 ? 0 : 0.01 + 0.1 * coin())]);
    const input = { cheap: [{ spec: 'S', flopsRel: 0.5, topk: answer(cheapRight) }], wide: { spec: 'XL', flopsRel: 1, topk: answer(xlRight) }, dbLabels, queryLabels, seed: 1 };
    const naive = evaluateCascade({ ...input, confidenceSe: 0 }).rule;
    assert.equal(naive.heldOut.escalated, 0, 'without the allowance the cheap encoder alone passes');
    const careful = evaluateCascade(input).rule;
    assert.ok(careful.heldOut.escalated > 0.3, `with it, the rule escalates ${careful.heldOut.escalated} of the queries`);
    assert.match(careful.target, /by 1 standard error of the paired difference/);
  });
});

describe('the cascade on a real store', () => {
  let tmp: string;
  let encoder: Encoder;
  let store: StoreBackend;
  const images: Uint8Array[] = [];

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-cascade-'));
    const modelPath = path.join(tmp, 'model.safetensors');
    saveModel(modelPath, TINY_CONFIG, (await randomModel(TINY_CONFIG, 11)).tensors, { 'train.step': '3' });
    encoder = Encoder.load(modelPath);
    store = await openStore(path.join(tmp, 'store'), { modelId: encoder.modelId, dim: encoder.dim, config: encoder.config }, { writer: true });
    const s = TINY_CONFIG.imageSize;
    const items = [];
    for (let i = 0; i < 24; i++) {
      const px = Uint8Array.from({ length: s * s * 3 }, (_, j) => (j * (i + 3) * 7 + i * 31) & 255);
      images.push(px);
      items.push({ name: `i${i}.png`, label: `c${i % 3}`, bytes: await sharp(px, { raw: { width: s, height: s, channels: 3 } }).png().toBuffer() });
    }
    await indexer.indexBuffers(store, encoder, items);
  });

  after(async () => {
    await store?.close();
    await encoder?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const encode = (px: Uint8Array, spec: string) => encoder.encode([px], spec).then((e) => e[0]);

  test('runs the wide encoder exactly when the rule escalates, and then answers with its results', async () => {
    const q = images[4];
    const bySpec = async (ffn: string) => (await search.searchByPixels(store, encode, q, { k: 5, ffn })).results.map((r) => r.id);
    const always = await search.searchByPixels(store, encode, q, { k: 5, cascade: rule(3, 0) });
    assert.deepEqual(always.cost.tried, ['S', 'XL']);
    assert.equal(always.cost.ffn, 'XL');
    assert.deepEqual(always.results.map((r) => r.id), await bySpec('XL'));
    const never = await search.searchByPixels(store, encode, q, { k: 5, cascade: rule(0, 0) });
    assert.deepEqual(never.cost.tried, ['S']);
    assert.deepEqual(never.results.map((r) => r.id), await bySpec('S'));
    assert.ok(always.cost.flops > never.cost.flops);
    // The verdict follows the rule on the first results: a threshold just above their margin escalates, at it not.
    const margin = never.cost.escalation!.margin;
    assert.deepEqual((await search.searchByPixels(store, encode, q, { k: 5, cascade: rule(margin + 1e-6, 0) })).cost.tried, ['S', 'XL']);
    assert.deepEqual((await search.searchByPixels(store, encode, q, { k: 5, cascade: rule(margin, 0) })).cost.tried, ['S']);
  });

  test('the search service answers ffn=auto with the calibrated cascade and says which encoders ran', async () => {
    const base = defaultCalibration(TINY_CONFIG, encoder.modelId);
    const cascade: CascadeCalibration = { ...rule(3, 0, 10), target: 't', calibrationQueries: 1, heldOut: { queries: 1, accuracy: 1, xlAccuracy: 1, recall10: 1, flopsRel: 1.5, escalated: 1 } };
    const service = new SearchService({ store, encoder, batcher: new EncodeBatcher(encoder), calibration: { ...base, cascade }, search, indexer, defaultFfn: 'auto' });
    const s = TINY_CONFIG.imageSize;
    const upload = { name: 'q.png', bytes: await sharp(images[7], { raw: { width: s, height: s, channels: 3 } }).png().toBuffer() };
    const r = SearchResponse.parse(await service.search({ k: 3 }, upload));
    assert.deepEqual([r.encoder.chosenBy, r.encoder.spec, r.encoder.tried, r.encoder.escalated], ['cascade', 'XL', ['S', 'XL'], true]);
    assert.equal(r.cost.ffn, 'XL');
    assert.ok(r.cost.flopsRel > 1, 'both encodings are paid for');
    const fixed = SearchResponse.parse(await service.search({ k: 3, ffn: 'M' }, upload));
    assert.deepEqual([fixed.encoder.chosenBy, fixed.encoder.spec, fixed.encoder.tried], ['ffn', 'M', undefined]);
  });

  test('a named or budgeted uniform encoder searches with its calibrated beam; a stale calibration, a cascade and a stored id keep the index\'s', async () => {
    const base = defaultCalibration(TINY_CONFIG, encoder.modelId);
    const beams = { ef: { S: 24, XL: 96 }, tolerance: 0.002, dbSize: 100, M: 16, efConstruction: 128 };
    const cascade: CascadeCalibration = { ...rule(0, 0, 10), target: 't', calibrationQueries: 1, heldOut: { queries: 1, accuracy: 1, xlAccuracy: 1, recall10: 1, flopsRel: 0.6, escalated: 0 } };
    const calibration = { ...base, cascade, search: beams };
    const service = new SearchService({ store, encoder, batcher: new EncodeBatcher(encoder), calibration, search, indexer, defaultFfn: 'auto' });
    const s = TINY_CONFIG.imageSize;
    const upload = { name: 'q.png', bytes: await sharp(images[3], { raw: { width: s, height: s, channels: 3 } }).png().toBuffer() };
    const ef = async (p: object) => SearchResponse.parse(await service.search({ k: 3, ...p }, upload)).query.ef;
    assert.equal(await ef({ ffn: 'S' }), 24);
    assert.equal(await ef({ ffn: 's' }), 24, 'the spec as the user wrote it');
    assert.equal(await ef({ ffn: 'XL' }), 96);
    assert.equal(await ef({ ffn: 'M' }), undefined, 'a width the sweep did not measure keeps the index beam');
    assert.equal(await ef({ ffn: 'S', ef: 200 }), 200, 'a query that names its beam keeps it');
    assert.equal(await ef({ budget: 0.5 }), 24, 'a budget that picks S');
    assert.equal(await ef({}), undefined, 'auto: the cascade searches with the index beam');
    const id = (await store.nearest(new Float32Array(encoder.dim).fill(1), 1))[0].id;
    assert.equal(SearchResponse.parse(await service.search({ k: 3, ffn: 'S', id })).query.ef, undefined, 'a stored image runs no encoder');
    assert.deepEqual(planQuery({ ffn: 'S' }, { ...calibration, stale: true }), { chosenBy: 'ffn', spec: 'S' }, 'a calibration of another checkpoint says nothing about this one');
  });

  test('under load the controller steps auto queries down the ladder, answering every one, and back up when it drains', async () => {
    const base = defaultCalibration(TINY_CONFIG, encoder.modelId);
    const cascade: CascadeCalibration = { ...rule(0, 0, 10), target: 't', calibrationQueries: 1, heldOut: { queries: 1, accuracy: 1, xlAccuracy: 1, recall10: 1, flopsRel: 0.99, escalated: 0.3 } };
    const calibration = { ...base, cascade };
    const ladder = autoLadder(calibration);
    assert.deepEqual(ladder, ['S→XL', 'L', 'M', 'S'], 'uncalibrated accuracies: the cheaper uniform encoders, widest first');
    let now = 0;
    // A target far above this machine's real search times, so the real latencies it records are always calm.
    const load = new LoadController({ sloMs: 10_000, steps: ladder.length - 1, now: () => now });
    const service = new SearchService({ store, encoder, batcher: new EncodeBatcher(encoder), calibration, search, indexer, load });
    const s = TINY_CONFIG.imageSize;
    const upload = { name: 'q.png', bytes: await sharp(images[9], { raw: { width: s, height: s, channels: 3 } }).png().toBuffer() };
    const auto = async () => SearchResponse.parse(await service.search({ k: 3, ffn: 'auto' }, upload)).encoder;
    assert.equal((await auto()).chosenBy, 'cascade');
    for (let i = 0; i < 3; i++) {
      load.update(100_000); // a simulated queue of 100,000 images (at 1 ms each)
      now += 300;
    }
    assert.equal(load.step, 3);
    const cheap = await auto();
    assert.deepEqual([cheap.chosenBy, cheap.spec], ['load', 'S'], 'answered, by the cheapest encoder');
    assert.match(cheap.reason!, /3 steps below S→XL, searched with ef 64/);
    const underLoad = await service.search({ k: 3, ffn: 'auto' }, upload);
    assert.equal(underLoad.query.ef, LOAD_EF, 'a stepped-down query searches with the narrower beam');
    assert.equal((await service.search({ k: 3, ffn: 'auto', ef: 200 }, upload)).query.ef, 200, 'unless it names its own');
    assert.equal((await service.search({ k: 3, ffn: 'XL' }, upload)).encoder.spec, 'XL', 'a named encoder is never stepped down');
    const stats = (await service.stats()).server;
    assert.equal(stats.load!.step, 3);
    assert.deepEqual(stats.load!.ladder, ladder);
    assert.equal(stats.encoderMix.S, 4, 'the cascade that did not escalate and the three stepped-down queries');
    for (let i = 0; i < 3; i++) {
      now += 2000;
      await auto(); // the queue is empty: calm
    }
    now += 2000;
    assert.equal((await auto()).chosenBy, 'cascade', 'back to the normal plan');
  });
});
