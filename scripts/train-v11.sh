#!/usr/bin/env bash
# MatViT v11: v10 (S with 2 of 4 heads) trained on, S sampled most, to see how much of S's quality comes back. After
# v10's 3 epochs S's cosine to XL was 0.852, 0.875, 0.880 by epoch and its recall@10 of XL's neighbours 0.465 (v9's
# S with all heads: 0.689), while its server throughput met issue 14's targets (README). Started 2026-12-04; a long
# run over sessions: rerun it after any stop and it resumes from models/matvit-cifar10-v11/train-state.safetensors.
# Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-v11.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out models/matvit-cifar10-v11 \
  --objective consistency --init models/matvit-cifar10-v10/model.safetensors --attn-heads S=2 --epochs 8 --lr 3e-4 \
  --warmup-epochs 0.25 --cos-weight 3 --nce-weight 0.5 --xl-pull 3 --xl-pull-widths L --student-probs 0.6,0.1,0.2,0.1 \
  --copy-crop-area 0.1,1 "$@"
