// The worker thread of OffThreadEncoder (offthread.ts): one onnxruntime session fed with NCHW batches. It exists
// because onnxruntime-node runs a session synchronously on the calling thread; run here, encoding no longer stops
// the indexing thread (decode callbacks, SQLite, HNSW inserts, thumbnails) for the length of every batch.
// Plain JavaScript on purpose: a worker does not inherit the tsx loader that bin/matvit.js registers in-process.
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const { onnx, sessionOptions, imageSize, channels } = workerData;
const session = await ort.InferenceSession.create(onnx, sessionOptions);

// Batches run one after another (the next one may arrive while one runs); `ms` is each run's own time.
const queue = [];
let running = false;
parentPort.on('message', (msg) => {
  queue.push(msg);
  if (!running) void drain();
});

async function drain() {
  running = true;
  while (queue.length > 0) {
    const { id, pixels, n } = queue.shift();
    try {
      const t0 = performance.now();
      const out = await session.run({ pixels: new ort.Tensor('float32', pixels, [n, channels, imageSize, imageSize]) });
      const embedding = out.embedding.data;
      parentPort.postMessage({ id, embedding, ms: performance.now() - t0 }, [embedding.buffer]);
    } catch (err) {
      parentPort.postMessage({ id, error: String(err?.message ?? err) });
    }
  }
  running = false;
}
parentPort.postMessage({ ready: true });
