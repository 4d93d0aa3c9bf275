#!/usr/bin/env bash
# The exact command that trains an independently trained baseline ViT (one fixed FFN width) into
# models/baseline-FFN-EPOCHSep with the shipped model's recipe (default 60 epochs, as the shipped MatViT).
# models/baseline-S (30 epochs) was trained before the schedule became 60 epochs; its command.txt has its command.
# --seed 1: a different initialisation (and data order) from the MatViT's seed 0, so the baseline is independent of
# it; with the same seed the attention and patch-embedding weights would start identical.
# Rerun it after any stop: it resumes. Needs ../shared/datasets (CIFAR-10).
# Usage: scripts/train-baseline.sh S|M|L [EPOCHS] [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
ffn="${1:?usage: scripts/train-baseline.sh S|M|L [EPOCHS] [extra flags]}"
shift
epochs=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then epochs="$1"; shift; fi
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out "models/baseline-$ffn-${epochs}ep" \
  --baseline "$ffn" --seed 1 --epochs "$epochs" "$@"
