#!/usr/bin/env bash
# The exact command that trains an independently trained baseline ViT (one fixed FFN width) into
# models/baseline-FFN with the shipped model's recipe. Rerun it after any stop: it resumes.
# --seed 1: a different initialisation (and data order) from the MatViT's seed 0, so the baseline is independent of
# it; with the same seed the attention and patch-embedding weights would start identical.
# Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-baseline.sh S|M|L [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
ffn="${1:?usage: scripts/train-baseline.sh S|M|L [extra flags]}"
shift
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out "models/baseline-$ffn" \
  --baseline "$ffn" --seed 1 --epochs 30 "$@"
