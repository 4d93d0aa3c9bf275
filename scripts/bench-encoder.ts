// npm run bench:encoder [-- --model models/matvit-cifar10/model.safetensors --runs 50 --quick --threads 2]
// Median batch-1 latency and batch-64 throughput of each granularity, on onnxruntime-node (sliced ONNX exports)
// and on the tfjs reference forward, with achieved GFLOP/s; ratios are against XL in the same run.
// Pause any background job first (kill -STOP <pid>): the machine has two cores and the figures are wall time.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { initTf, tf } from '../src/encoder/backend.ts';
import { DEFAULT_MODEL_PATH, loadModel } from '../src/encoder/checkpoint.ts';
import { GRANULARITIES, parseSubmodel } from '../src/encoder/config.ts';
import { forward, fromTensorMap } from '../src/encoder/matvit.ts';
import { Encoder } from '../src/encoder/runtime.ts';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: DEFAULT_MODEL_PATH },
    runs: { type: 'string', default: '50' },
    threads: { type: 'string', default: '1' },
    quick: { type: 'boolean', default: false },
    'skip-tfjs': { type: 'boolean', default: false },
  },
});
const runs = args.quick ? 5 : Number(args.runs);
const threads = Number(args.threads);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
async function timeIt(fn: () => Promise<unknown> | unknown, n: number): Promise<number> {
  for (let i = 0; i < Math.max(2, n / 10); i++) await fn(); // warm-up
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

const ckpt = loadModel(args.model);
const c = ckpt.config;
const encoder = new Encoder(ckpt, args.model, { threads });
const px = (n: number) => Float32Array.from({ length: n * 3 * c.imageSize * c.imageSize }, (_, i) => ((i * 2654435761) % 1000) / 1000);
const one = px(1);
const batch = px(64);

interface Row { runtime: string; ffn: string; mflops: number; b1ms: number; b64ms: number }
const rows: Row[] = [];
for (const g of GRANULARITIES) {
  const info = await encoder.info(g);
  const b1ms = await timeIt(() => encoder.encodeBatch(one, 1, g), runs);
  const b64ms = await timeIt(() => encoder.encodeBatch(batch, 64, g), Math.max(3, Math.round(runs / 5)));
  rows.push({ runtime: `onnxruntime (${threads} thread${threads > 1 ? 's' : ''})`, ffn: g, mflops: info.flops / 1e6, b1ms, b64ms });
}
await encoder.close();

if (!args['skip-tfjs']) {
  const backend = await initTf();
  const params = fromTensorMap(ckpt.params);
  const x1 = tf.tensor(one, [1, 3, c.imageSize, c.imageSize]).transpose([0, 2, 3, 1]);
  const x64 = tf.tensor(batch, [64, 3, c.imageSize, c.imageSize]).transpose([0, 2, 3, 1]);
  for (const g of GRANULARITIES) {
    const sub = parseSubmodel(g, c);
    const run = (x: tf.Tensor) => tf.tidy(() => forward(params, x, sub, c).embedding).dataSync();
    const b1ms = await timeIt(() => run(x1), Math.max(5, Math.round(runs / 5)));
    const b64ms = await timeIt(() => run(x64), 3);
    rows.push({ runtime: `tfjs (${backend})`, ffn: g, mflops: rows.find((r) => r.ffn === g)!.mflops, b1ms, b64ms });
  }
}

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
console.log(`# bench-encoder: ${args.model}\n# ${os.cpus().length} cores, ${cpu}, node ${process.version}; medians of ${runs} runs\n`);
console.log('| runtime | FFN | MFLOP/img | batch-1 ms | batch-1 / XL | batch-64 img/s | batch-64 GFLOP/s |');
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  const xl = rows.find((x) => x.runtime === r.runtime && x.ffn === 'XL')!;
  console.log(`| ${r.runtime} | ${r.ffn} | ${r.mflops.toFixed(1)} | ${r.b1ms.toFixed(3)} | ${(r.b1ms / xl.b1ms).toFixed(2)} | ${(64000 / r.b64ms).toFixed(0)} | ${((64 * r.mflops) / r.b64ms).toFixed(1)} |`);
}
