#!/usr/bin/env bash
# The exact command that trains MatViT v2 (models/matvit-cifar10-v2, the shipped model until v3): the 60-epoch v1 model fine-tuned with the
# consistency objective (XL on labels; a sampled student width distilled from XL on the same view and paired with
# XL across a copy view by InfoNCE; src/train/step-graph.ts). Fine-tuned rather than trained from scratch: the
# objective runs at about a quarter of the sampled step's images/s (scripts/bench-train.ts), and the v1 weights already hold 3 h 40 min of
# training. Rerun it after any stop: it resumes. Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-v2.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out models/matvit-cifar10-v2 \
  --objective consistency --init models/matvit-cifar10-v1/model.safetensors --epochs 12 --lr 5e-4 --warmup-epochs 0.5 "$@"
