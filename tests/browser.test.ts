// The page in a real browser: playwright-core drives Debian's chromium against the real app on a temporary store
// (a small random-weight model and a few dozen CIFAR-10 test images). It uploads an image, changes the query cost,
// checks the results grid, adds an image to the index, and shows an error; the screenshot goes to test-output/.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { type Browser, chromium } from 'playwright-core';
import sharp from 'sharp';
import { IMAGE_FORMATS } from '../src/data/formats.ts';
import { iterateImageSource } from '../src/data/sources.ts';
import { saveModel } from '../src/encoder/checkpoint.ts';
import { DEFAULT_CONFIG, countFlops, parseSubmodel } from '../src/encoder/config.ts';
import { contentHash } from '../src/index/store.ts';
import { buildApp } from '../src/server/app.ts';
import { type OpenedServer, DEMO_GALLERY, openServer } from '../src/server/server.ts';
import type { EmbeddedStore } from '../src/store/embedded.ts';
import { randomModel } from './helpers/model.ts';
import { pngChunk } from './helpers/png.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-quic'];
const OUTPUT = path.resolve(import.meta.dirname, '../test-output');
const PER_CLASS = 3;

let tmp: string;
let opened: OpenedServer;
let server: Server;
let browser: Browser;
let base: string;
const gallery: { label: string; bytes: Buffer }[] = [];

before(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`chromium is missing at ${CHROMIUM}: install it with \`apt-get update && apt-get install -y chromium\` (.ci/run does), or set CHROMIUM_PATH`);
  }
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-browser-'));
  const { tensors } = await randomModel(DEFAULT_CONFIG, 4);
  const modelFile = path.join(tmp, 'model.safetensors');
  saveModel(modelFile, DEFAULT_CONFIG, tensors);
  const counts = new Map<string, number>();
  for await (const item of iterateImageSource(DEMO_GALLERY)) {
    if ((counts.get(item.label!) ?? 0) >= PER_CLASS) continue;
    counts.set(item.label!, (counts.get(item.label!) ?? 0) + 1);
    const file = path.join(tmp, 'gallery', item.label!, path.basename(item.path));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, item.bytes);
    gallery.push({ label: item.label!, bytes: item.bytes });
    if (gallery.length === 10 * PER_CLASS) break;
  }
  opened = await openServer({ store: path.join(tmp, 'store'), model: modelFile, gallery: path.join(tmp, 'gallery'), progress: false });
  server = buildApp(opened.service).listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (server ? server.close(r) : r(null)));
  await opened?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('upload an image with auto cost, move the cost slider, get a grid of results, add an image, see an error', async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  await page.goto(base + '/');

  // The cost control: 'auto' by default, the slider (off while auto is on) over S..XL by FLOPs, shown with their
  // FLOPs and measured encode times.
  assert.equal(await page.locator('#auto').isChecked(), true);
  const slider = page.locator('#cost-slider');
  assert.equal(await slider.isDisabled(), true);
  await page.waitForFunction(() => (document.getElementById('cost-slider') as HTMLInputElement).max === '3');
  await page.waitForFunction(() => /images indexed/.test(document.getElementById('stats')!.textContent ?? ''));

  // Upload with auto: this model has no calibrated cascade, so auto answers with the most accurate encoder (XL),
  // and the result line says why; with XL the query image itself comes first.
  const query = gallery[7];
  await page.setInputFiles('#file', { name: 'query.jpg', mimeType: 'image/jpeg', buffer: query.bytes });
  await page.waitForFunction(() => document.getElementById('status')!.dataset.ffn === 'XL' && document.querySelectorAll('#results li').length === 12);
  assert.equal(await page.locator('#results li').first().locator('.label').innerText(), query.label);
  assert.match(await page.locator('#status').innerText(), /12 results · encoder XL \(auto: no calibrated cascade, the most accurate encoder\): .*MFLOPs \(100% of XL\), encode .* ms, search .* ms/);

  // Turn auto off: the slider takes over at the most accurate end; move it to S with the keyboard and the search
  // runs again with S; the readout names the encoder and its cost.
  await page.locator('#auto').uncheck();
  assert.equal(await slider.isDisabled(), false);
  assert.equal(await slider.inputValue(), '3');
  assert.match(await page.locator('#choice').innerText(), /^XL · .*MFLOPs \(100% of XL\) · .* ms/);
  await slider.focus();
  for (let i = 0; i < 3; i++) await page.keyboard.press('ArrowLeft'); // XL -> L -> M -> S, each one searches
  await page.waitForFunction(() => document.getElementById('status')!.dataset.ffn === 'S');
  assert.equal(await slider.inputValue(), '0');
  const sShare = Math.round((100 * countFlops(DEFAULT_CONFIG, parseSubmodel('S', DEFAULT_CONFIG))) / countFlops(DEFAULT_CONFIG, parseSubmodel('XL', DEFAULT_CONFIG)));
  assert.equal(await slider.getAttribute('aria-valuetext'), `S: ${sShare}% of XL's FLOPs`);
  assert.match(await page.locator('#status').innerText(), new RegExp(`encoder S: .*\\(${sShare}% of XL\\)`));
  assert.match(await page.locator('#choice').innerText(), new RegExp(`^S · .*\\(${sShare}% of XL\\)`));
  const cells = page.locator('#results li');
  assert.equal(await cells.count(), 12);
  for (const cell of await cells.all()) {
    assert.match(await cell.locator('.score').innerText(), /^-?[01]\.\d{3}$/);
    assert.ok((await cell.locator('.label').innerText()).length > 0);
  }
  // Every thumbnail actually loaded.
  await page.waitForFunction(() => [...document.querySelectorAll<HTMLImageElement>('#results img')].every((i) => i.complete && i.naturalWidth > 0));
  // Each is the 32x32 image itself (no enlarged copy on the server), drawn large and crisp by the page: pixelated
  // scaling repeats each source pixel, so a row of the drawn image changes colour at most 32 times (smooth scaling
  // would change it at nearly every screen pixel).
  const img = page.locator('#results img').first();
  const shown = await img.evaluate((i: HTMLImageElement) => ({ natural: [i.naturalWidth, i.naturalHeight], width: i.clientWidth, rendering: getComputedStyle(i).imageRendering }));
  assert.deepEqual(shown.natural, [32, 32]);
  assert.equal(shown.rendering, 'pixelated');
  assert.ok(shown.width >= 96, `drawn ${shown.width} px wide`);
  const { data, info } = await sharp(await img.screenshot()).raw().toBuffer({ resolveWithObject: true });
  const row = (info.height >> 1) * info.width * info.channels;
  let changes = 0;
  for (let x = 1; x < info.width; x++) {
    const at = row + x * info.channels;
    if (data.compare(data, at - info.channels, at, at, at + info.channels) !== 0) changes++;
  }
  assert.ok(changes <= 32, `${changes} colour changes across a ${info.width} px row: not drawn crisply`);
  fs.mkdirSync(OUTPUT, { recursive: true });
  await page.screenshot({ path: path.join(OUTPUT, 'browser-search.png'), fullPage: true });

  // A filter: only the query's label (PER_CLASS images of it in the gallery), then a malformed one, named, then none.
  await page.fill('#where', ` label=${query.label} ; after=2000-01-01`);
  await page.locator('#where').press('Enter');
  await page.waitForFunction(() => /\(filtered\)/.test(document.getElementById('status')!.textContent ?? '') && !document.getElementById('results')!.hasAttribute('aria-busy'));
  assert.equal(await cells.count(), PER_CLASS);
  for (const cell of await cells.all()) assert.equal(await cell.locator('.label').innerText(), query.label);
  await page.screenshot({ path: path.join(OUTPUT, 'browser-filter.png'), fullPage: true });
  await page.fill('#where', 'colour=red');
  await page.locator('#where').press('Enter');
  await page.locator('#error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#error').innerText(), /where: unknown filter "colour".*400 bad_request/);
  await page.fill('#where', '');
  await page.locator('#where').press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('#results li').length === 12);

  // A new image can be added to the index from the page.
  const before = await opened.store.count();
  const png = await sharp({ create: { width: 48, height: 48, channels: 3, background: { r: 20, g: 160, b: 200 } } }).png().toBuffer();
  await page.setInputFiles('#file', { name: 'teal.png', mimeType: 'image/png', buffer: png });
  await page.waitForFunction(() => document.querySelectorAll('#results li').length === 12 && !document.getElementById('results')!.hasAttribute('aria-busy'));
  await page.click('#add');
  await page.waitForFunction(() => /Added teal\.png to the index as image \d+/.test(document.getElementById('status')!.textContent ?? ''));
  assert.equal(await opened.store.count(), before + 1);

  // A file that is not an image shows the server's message.
  await page.setInputFiles('#file', { name: 'notes.jpg', mimeType: 'image/jpeg', buffer: Buffer.from('these are notes, not a picture') });
  await page.locator('#error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#error').innerText(), /notes\.jpg: not-image.*415 unsupported_media_type/);
  assert.equal(await cells.count(), 0);
  await page.screenshot({ path: path.join(OUTPUT, 'browser-error.png') });

  assert.deepEqual(pageErrors, [], 'no script errors on the page');
  await page.close();
});

test('no script runs from an uploaded file on the app\'s origin', async () => {
  const page = await browser.newPage();
  const dialogs: string[] = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await page.goto(base + '/');
  await page.locator('#auto').waitFor();

  // The picker offers the accepted formats, the one list the server and `matvit index` use.
  await page.waitForFunction(() => document.getElementById('formats')!.textContent !== '');
  assert.equal(await page.locator('#formats').innerText(), 'JPEG, PNG, WebP, GIF, TIFF or AVIF');
  assert.equal(await page.locator('#file').getAttribute('accept'), IMAGE_FORMATS.flatMap((f) => [f.contentType, ...f.extensions]).join(','));

  // An SVG with a script, picked anyway: the server refuses it and the page says why.
  const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><script>alert("svg ran in " + document.domain)</script></svg>');
  await page.setInputFiles('#file', { name: 'x.svg', mimeType: 'image/svg+xml', buffer: svg });
  await page.locator('#error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#error').innerText(), /x\.svg: not-image.*SVG is not accepted.*415 unsupported_media_type/);

  // An SVG kept by an older version of the store, opened directly: a download, never a document.
  const { id } = (opened.store as EmbeddedStore).handle.store.insertImageWithEmbedding(
    { source: 'upload:old.svg', contentHash: contentHash(svg), width: 32, height: 32, format: 'svg', original: svg },
    'an-older-model@1',
    new Float32Array(8).fill(1),
  );
  const download = page.waitForEvent('download');
  await page.goto(`${base}/api/images/${id}`).catch((err: Error) => assert.match(err.message, /download/i));
  assert.equal((await download).suggestedFilename(), `image-${id}.bin`);

  // A real PNG carrying HTML and script in a text chunk (a polyglot): accepted, and shown as an image only.
  const png = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toBuffer();
  const html = Buffer.from('<html><body><script>alert("png ran in " + document.domain)</script></body></html>');
  const polyglot = Buffer.concat([png.subarray(0, 33), pngChunk('tEXt', Buffer.concat([Buffer.from('Comment\0'), html])), png.subarray(33)]);
  const added = await fetch(`${base}/api/images`, { method: 'POST', body: formOf('poly.png', polyglot) });
  assert.equal(added.status, 201);
  const polyId = ((await added.json()) as { images: { id: number }[] }).images[0].id;
  for (const url of [`/api/images/${polyId}`, `/api/images/${polyId}/thumb`]) {
    const res = await page.goto(base + url);
    assert.equal(res!.headers()['content-type'], 'image/png', 'a small PNG is its own thumbnail');
    assert.equal(await page.evaluate(() => document.contentType), res!.headers()['content-type'], 'rendered as an image document');
    assert.equal(await page.evaluate(() => document.scripts.length), 0);
  }
  assert.deepEqual(dialogs, [], 'no script ran');
  await page.close();
});

function formOf(name: string, bytes: Buffer): FormData {
  const f = new FormData();
  f.append('images', new Blob([new Uint8Array(bytes)]), name);
  return f;
}
