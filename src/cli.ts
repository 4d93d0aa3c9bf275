// The `matvit` command line. Each command parses its flags, calls one service, and prints; known errors become a
// one-line message and a non-zero exit code (2 for bad usage or input, 1 for anything else).
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { ConfigError } from './encoder/config.ts';
import { CheckpointError } from './encoder/safetensors.ts';
import { logger } from './log.ts';
import { NotFoundError, UsageError } from './errors.ts';
import { EXIT, registerIndexCommands } from './index/commands.ts';
import { registerServeCommand } from './server/command.ts';

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('not an integer');
  return n;
};
const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError('not a number');
  return n;
};

const program = new Command('matvit').description('Image search with elastic query cost on MatViT encoders').showHelpAfterError();

program
  .command('train')
  .description('train a MatViT (all granularities on shared weights) or a fixed-width baseline; resumes from --out')
  .requiredOption('--data <source>', 'training images: folder of class folders, .tar.gz, or IDX images file')
  .requiredOption('--out <dir>', 'run directory (checkpoint, metrics.jsonl, model.safetensors)')
  .option('--model <size>', 'default | tiny', 'default')
  .option('--epochs <n>', 'epochs', int)
  .option('--batch-size <n>', 'images per step', int)
  .option('--lr <x>', 'peak learning rate', num)
  .option('--warmup-epochs <x>', 'linear warm-up length', num)
  .option('--weight-decay <x>', 'AdamW weight decay', num)
  .option('--objective <kind>', 'sample (one granularity per step) | sum (all four per step) | consistency (XL + a student width on a copy view)')
  .option('--probs <list>', 'sampling probabilities of S,M,L,XL', (v) => v.split(',').map(num))
  .option('--init <ckpt>', 'start from this model\'s weights (fine-tuning) instead of a fresh initialisation')
  .option('--attn-heads <list>', 'nest attention heads too: the heads each granularity keeps, e.g. S=2 or S=2,M=3 (default: every granularity keeps all)')
  .option('--student-probs <list>', 'consistency: sampling probabilities of the student width S,M,L,XL (default 0.35,0.2,0.2,0.25)', (v) => v.split(',').map(num))
  .option('--kd-weight <x>', 'consistency: weight of the KL divergence to XL\'s softened logits (default 1)', num)
  .option('--kd-temp <x>', 'consistency: distillation temperature (default 2)', num)
  .option('--cos-weight <x>', 'consistency: weight of 1 - cosine to XL\'s embedding (default 1)', num)
  .option('--nce-weight <x>', 'consistency: weight of the cross-width InfoNCE between the two views (default 1)', num)
  .option('--nce-temp <x>', 'consistency: InfoNCE temperature (default 0.1)', num)
  .option('--rank-weight <x>', 'consistency: weight of the KL between XL\'s and the student\'s similarity distributions over the batch\'s XL embeddings (default 0: off)', num)
  .option('--rank-temp <x>', 'consistency: temperature of those similarity distributions (default 0.05)', num)
  .option('--rank-bank <n>', 'consistency: also rank over the XL embeddings of this many recent training images (default 0: the batch alone)', int)
  .option('--xl-pull <x>', 'consistency: weight of 1 - cosine of XL\'s embedding to the student\'s, the student held fixed (default 0: off)', num)
  .option('--xl-pull-widths <list>', 'consistency: the student widths XL is pulled toward, e.g. L or M,L (default L)', (v) => v.split(',').map((g) => g.trim().toUpperCase()))
  .option('--copy-crop-area <min,max>', 'consistency: area fraction range of the copy view\'s random crop (default 0.25,1)', (v) => v.split(',').map(num))
  .option('--baseline <ffn>', 'train an ordinary ViT with this one FFN width (S|M|L|XL)')
  .option('--val-size <n>', 'held-out validation images', int)
  .option('--limit <n>', 'use only the first N images', int)
  .option('--seed <n>', 'random seed', int)
  .option('--threads <n>', 'onnxruntime threads', int)
  .option('--checkpoint-minutes <x>', 'minutes between checkpoints', num)
  .option('--max-steps <n>', 'stop after this step (resumable)', int)
  .option('--log-every <n>', 'steps between metrics.jsonl lines', int)
  .action(async (opts) => {
    const { train } = await import('./train/trainer.ts');
    const { TrainOptions } = await import('./train/trainer.ts');
    const parsed = TrainOptions.safeParse(Object.fromEntries(Object.entries({ ...opts, data: path.resolve(opts.data), out: path.resolve(opts.out), init: opts.init && path.resolve(opts.init), baseline: opts.baseline?.toUpperCase() }).filter(([, v]) => v !== undefined)));
    if (!parsed.success) throw new UsageError(parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; '));
    const r = await train(parsed.data);
    console.log(JSON.stringify(r));
    if (!r.finished && r.step < (parsed.data.maxSteps ?? Infinity)) process.exitCode = 130; // stopped by a signal
  });

program
  .command('extract')
  .description('export a submodel as a standalone ONNX file with physically sliced FFN weights')
  .option('--model <ckpt>', 'model checkpoint (default: the shipped model)')
  .requiredOption('--ffn <spec>', "S | M | L | XL | a per-layer list such as 'S,S,M,M,L,XL'")
  .requiredOption('--out <file>', 'output .onnx file')
  .action(async (opts) => {
    const { extractToFile } = await import('./encoder/extract.ts');
    const r = extractToFile(opts.model, opts.ffn, opts.out);
    console.log(JSON.stringify(r));
  });

program
  .command('adapt')
  .description("fit query adapters: per narrower submodel, an affine map of its embedding toward XL's (written beside the model)")
  .option('--model <ckpt>', 'model checkpoint (default: the shipped model)')
  .requiredOption('--data <source>', 'images like the database\'s, usually the training set: folder of class folders, .tar.gz, or IDX images file')
  .option('--ffn <specs>', "submodels to fit, separated by ';' (e.g. 'S;M;L;S,S,M,M,L,XL'; default M and L, as shipped: README)", 'M;L')
  .option('--lambda <x>', 'ridge penalty on the map\'s weights', num, 1e-3)
  .option('--held-out <x>', 'share of the images held out for the before/after figures', num, 0.1)
  .option('--limit <n>', 'use only the first N images', int)
  .option('--threads <n>', 'onnxruntime threads', int)
  .action(async (opts) => {
    const { adaptModel } = await import('./encoder/adapt.ts');
    const r = await adaptModel({ model: opts.model && path.resolve(opts.model), data: path.resolve(opts.data), specs: String(opts.ffn).split(';').filter(Boolean), lambda: opts.lambda, heldOut: opts.heldOut, limit: opts.limit, threads: opts.threads });
    console.log(JSON.stringify(r));
  });

registerIndexCommands(program);
registerServeCommand(program);

export async function main(argv = process.argv): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const { StoreError, StoreLockedError } = await import('./index/store.ts');
    if (err instanceof StoreLockedError) {
      process.stderr.write(`matvit: ${err.message}\n`);
      process.exitCode = EXIT.storeBusy;
      return;
    }
    const { QueueError } = await import('./queue/connection.ts');
    const known = err instanceof StoreError || err instanceof QueueError || err instanceof UsageError || err instanceof NotFoundError || err instanceof ConfigError || err instanceof CheckpointError || ['ImageDecodeError', 'SourceReadError'].includes((err as Error)?.name);
    if (known) {
      process.stderr.write(`matvit: ${(err as Error).message}\n`);
      process.exitCode = 2;
    } else {
      logger.error({ err }, 'unexpected error');
      process.stderr.write(`matvit: ${(err as Error)?.message ?? err}\n`);
      process.exitCode = 1;
    }
  }
}

await main();
