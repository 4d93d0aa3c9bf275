// Training end to end on a tiny model: the loss falls, and a run killed with SIGKILL and rerun ends with exactly
// the weights of an uninterrupted run. The data are textures the test generates (tests/helpers/datasets.ts);
// where ../shared holds Fashion-MNIST, the learning test also runs on it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { loadModel } from '../src/encoder/checkpoint.ts';
import { METRICS_FILE, STATE_FILE, TrainOptions, train } from '../src/train/trainer.ts';
import { writeTextureIdx } from './helpers/datasets.ts';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'matvit-train-'));
const data = writeTextureIdx(tmp(), 1200);
const FMNIST = path.resolve(import.meta.dirname, '../../shared/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz'); // optional
const common = { data, model: 'tiny' as const, limit: 600, valSize: 100, batchSize: 32, warmupEpochs: 0.2, lr: 3e-3, threads: 1 };
const steps = (dir: string) => fs.readFileSync(path.join(dir, METRICS_FILE), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'step');

for (const [name, source] of [['generated textures', data], ['Fashion-MNIST (../shared)', FMNIST]]) {
  const skip = !fs.existsSync(source) && 'optional larger variant: needs ../shared/datasets beside the project';
  test(`a tiny MatViT learns ${name}: the loss falls within a few dozen steps`, { skip }, async () => {
    const out = tmp();
    const r = await train({ ...common, data: source, limit: 1200, out, epochs: 4, logEvery: 1 } as never);
  assert.equal(r.finished, true);
    const losses = steps(out).map((m) => m.loss);
    const first = losses.slice(0, 5).reduce((a, b) => a + b) / 5;
    const last = losses.slice(-5).reduce((a, b) => a + b) / 5;
    assert.ok(last < first - 0.25, `mean loss ${first.toFixed(3)} -> ${last.toFixed(3)}`);
    assert.ok(r.val.XL > 0.3 && r.val.S > 0.3, `validation top-1 above chance: ${JSON.stringify(r.val)}`);
    const model = loadModel(path.join(out, 'model.safetensors'));
    assert.equal(model.metadata.trained_granularities, 'S,M,L,XL');
  });
}

function runCli(args: string[]) {
  return spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'train', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NODE_ENV: 'test' } });
}

test('kill -9 mid-run, rerun the same command: it resumes and ends with the uninterrupted run\'s weights', async () => {
  const args = (out: string) => ['--data', data, '--out', out, '--model', 'tiny', '--limit', '600', '--val-size', '100', '--batch-size', '32', '--epochs', '3', '--lr', '0.003', '--warmup-epochs', '0.2', '--threads', '1', '--checkpoint-minutes', '0.0001', '--log-every', '1'];
  const straight = tmp();
  await train({ ...common, out: straight, epochs: 3, checkpointMinutes: 0.0001, logEvery: 1 } as never);

  const killed = tmp();
  const child = runCli(args(killed));
  // wait until a checkpoint past step 5 exists, then SIGKILL (no chance to clean up)
  await new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      const f = path.join(killed, STATE_FILE);
      if (fs.existsSync(f) && Number(loadModel(f).metadata['train.step']) >= 5) {
        clearInterval(timer);
        child.kill('SIGKILL');
        resolve();
      }
    }, 100);
    child.on('exit', () => { clearInterval(timer); reject(new Error('training ended before it could be killed')); });
  }).catch((e) => { throw e; });
  await new Promise((r) => child.once('exit', r));
  const stepAtKill = Number(loadModel(path.join(killed, STATE_FILE)).metadata['train.step']);
  assert.ok(stepAtKill >= 5 && stepAtKill < 45, `killed at step ${stepAtKill}`);

  const rerun = runCli(args(killed));
  let stderr = '';
  rerun.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise((r) => rerun.once('exit', r));
  assert.equal(code, 0, stderr);

  const a = loadModel(path.join(straight, 'model.safetensors')).params;
  const b = loadModel(path.join(killed, 'model.safetensors')).params;
  for (const k of Object.keys(a)) assert.deepEqual(b[k].data, a[k].data, `${k} differs after resume`);
  const logged = steps(killed).map((m) => m.step);
  assert.deepEqual(logged, [...logged].sort((x, y) => x - y));
  assert.equal(new Set(logged).size, logged.length, 'no step logged twice after the resume');
});

test('with a ranking bank, a run stopped and resumed ends with the uninterrupted run\'s weights: the bank is part of the state', async () => {
  const o = { ...common, limit: 300, epochs: 2, objective: 'consistency' as const, rankWeight: 1, rankBank: 48 }; // 48 slots: the ring wraps every 1.5 steps
  const straight = tmp();
  await train({ ...o, out: straight } as never);
  const resumed = tmp();
  const first = await train({ ...o, out: resumed, maxSteps: 5 } as never);
  assert.equal(first.finished, false);
  const state = loadModel(path.join(resumed, STATE_FILE)).metadata;
  assert.equal(state['train.rank_bank_pushed'], String(5 * 32), 'the bank has taken every step\'s XL embeddings');
  assert.equal((await train({ ...o, out: resumed } as never)).finished, true);
  const a = loadModel(path.join(straight, 'model.safetensors')).params;
  const b = loadModel(path.join(resumed, 'model.safetensors')).params;
  for (const k of Object.keys(a)) assert.deepEqual(b[k].data, a[k].data, `${k} differs after resume`);
  assert.ok(steps(straight).every((m) => m.terms.rank > 0), 'every step reports the ranking term');
});

test('--baseline S trains one fixed width; its other widths are refused at extraction and serving', async () => {
  const out = tmp();
  const r = await train({ ...common, out, epochs: 1, baseline: 'S' } as never);
  assert.deepEqual(Object.keys(r.val), ['S']);
  const file = path.join(out, 'model.safetensors');
  assert.equal(loadModel(file).metadata.trained_granularities, 'S');
  const { extractToFile } = await import('../src/encoder/extract.ts');
  assert.ok(extractToFile(file, 'S', path.join(out, 's.onnx')).bytes > 0);
  assert.throws(() => extractToFile(file, 'XL', path.join(out, 'xl.onnx')), /baseline trained only at S/);
});

test('options that would do nothing are refused: consistency terms without --objective consistency, a consistency baseline', () => {
  const base = { data: 'd', out: 'o' };
  assert.equal(TrainOptions.safeParse({ ...base, objective: 'consistency', kdWeight: 2 }).success, true);
  const messages = (o: object) => {
    const r = TrainOptions.safeParse({ ...base, ...o });
    return r.success ? [] : r.error.issues.map((i) => i.message);
  };
  assert.match(messages({ kdWeight: 2, studentProbs: [1, 1, 1, 1] }).join(), /--kd-weight, --student-probs only apply to --objective consistency/);
  assert.match(messages({ objective: 'sum', nceTemp: 0.2 }).join(), /--nce-temp only apply/);
  assert.match(messages({ copyCropArea: [0.1, 1] }).join(), /--copy-crop-area only apply/);
  assert.match(messages({ objective: 'consistency', copyCropArea: [0.5, 0.2] }).join(), /min above max/);
  assert.match(messages({ objective: 'consistency', baseline: 'S' }).join(), /cannot be combined with --objective consistency/);
  assert.match(messages({ objective: 'consistency', rankBank: 256 }).join(), /--rank-bank only applies with a --rank-weight above 0/);
  assert.match(messages({ objective: 'consistency', xlPullWidths: ['L'] }).join(), /--xl-pull-widths only applies with an --xl-pull above 0/);
  assert.match(messages({ xlPull: 1 }).join(), /--xl-pull only apply to --objective consistency/);
});
