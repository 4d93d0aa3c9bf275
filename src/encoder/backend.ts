// Chooses the TensorFlow.js backend once per process: tfjs-node-gpu, then tfjs-node (both optional native
// accelerators, never required), then the WASM backend (SIMD; the normal case here), then plain JS.
import * as tf from '@tensorflow/tfjs';
import { createRequire } from 'node:module';
import { logger } from '../log.ts';

const require = createRequire(import.meta.url);
let chosen: Promise<string> | undefined;

async function tryNative(pkg: string): Promise<boolean> {
  try {
    require.resolve(pkg);
  } catch {
    return false; // not installed: expected on most machines
  }
  try {
    await import(pkg);
    return await tf.setBackend('tensorflow');
  } catch (err) {
    logger.warn({ pkg, err: String(err) }, 'optional tfjs accelerator is installed but failed to load');
    return false;
  }
}

async function choose(preferred?: string): Promise<string> {
  if (preferred === 'cpu') {
    await tf.setBackend('cpu');
  } else if (!(preferred !== 'wasm' && ((await tryNative('@tensorflow/tfjs-node-gpu')) || (await tryNative('@tensorflow/tfjs-node'))))) {
    let wasmOk = false;
    try {
      await import('@tensorflow/tfjs-backend-wasm');
      wasmOk = await tf.setBackend('wasm');
    } catch (err) {
      logger.warn({ err: String(err) }, 'tfjs wasm backend failed to initialise');
    }
    if (!wasmOk) await tf.setBackend('cpu');
  }
  await tf.ready();
  logger.info({ backend: tf.getBackend() }, 'tfjs backend chosen');
  return tf.getBackend();
}

/** Initialises tfjs once; `MATVIT_TF_BACKEND=wasm|cpu` forces a backend (the parity test pins wasm). */
export function initTf(preferred = process.env.MATVIT_TF_BACKEND): Promise<string> {
  chosen ??= choose(preferred);
  return chosen;
}

export { tf };
