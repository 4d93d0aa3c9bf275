// npx tsx scripts/bench-onnx-ab.ts A.onnx B.onnx [--threads 2] [--batch 64] [--rounds 8] [--runs 40]
// Throughput of two exports of the same network, interleaved in one process (A, B, A, B, ...) so that both see the
// same background load: how to measure a change to the ONNX graph on this noisy VM. Make the files with
// `matvit extract --ffn XL --out A.onnx` at each revision. Pause any background job first (kill -STOP <pid>).
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { median } from '../src/eval/metrics.ts';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    threads: { type: 'string', default: '2' },
    batch: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '8' },
    runs: { type: 'string', default: '40' },
    size: { type: 'string', default: '32' }, // the model's input side
  },
});
if (positionals.length !== 2) {
  console.error('usage: bench-onnx-ab.ts A.onnx B.onnx [--threads 2] [--batch 64] [--rounds 8] [--runs 40]');
  process.exit(2);
}
const [threads, n, rounds, runs, size] = [args.threads, args.batch, args.rounds, args.runs, args.size].map(Number);
const options = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };
const sessions = await Promise.all(positionals.map((f) => ort.InferenceSession.create(f, options)));
const pixels = new ort.Tensor('float32', Float32Array.from({ length: n * 3 * size * size }, (_, i) => ((i * 2654435761) % 1000) / 1000), [n, 3, size, size]);

const rates: number[][] = sessions.map(() => []);
for (let r = 0; r < rounds; r++) {
  for (const [i, s] of sessions.entries()) {
    for (let w = 0; w < 3; w++) await s.run({ pixels }); // warm-up
    const t0 = performance.now();
    for (let k = 0; k < runs; k++) await s.run({ pixels });
    rates[i].push((runs * n * 1000) / (performance.now() - t0));
  }
}
console.log(`# ${rounds} alternations of ${runs} batches of ${n}, ${threads} onnxruntime thread(s); images/s`);
for (const [i, f] of positionals.entries()) console.log(`${'AB'[i]} ${f}: ${rates[i].map((x) => x.toFixed(0)).join(' ')}  median ${median(rates[i]).toFixed(0)}`);
console.log(`B / A (medians): ${(median(rates[1]) / median(rates[0])).toFixed(3)}`);
