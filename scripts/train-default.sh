#!/usr/bin/env bash
# The exact command that trains MatViT v1 (models/matvit-cifar10-v1, the shipped model until v2). Rerun it after any stop: it resumes
# from the run directory's checkpoint. Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-default.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out models/matvit-cifar10-v1 --epochs 60 "$@"
