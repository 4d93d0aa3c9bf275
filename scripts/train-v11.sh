#!/usr/bin/env bash
# MatViT v11: v10 (S with 2 of 4 heads) trained on, S sampled most, to see how much of S's quality comes back. After
# v10's 3 epochs S's cosine to XL was 0.852, 0.875, 0.880 by epoch and its recall@10 of XL's neighbours 0.465 (v9's
# S with all heads: 0.689), while its server throughput met issue 14's targets (README).
# Outcome: stopped after 1 of 8 epochs (16 min): S's recall@10 0.493 (cosine 0.896), but M 0.743, L 0.841 and XL's
# validation top-1 75.6% all fell (v10: 0.761, 0.857, 76.9%). Log and command kept; weights and state not.
# Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-v11.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out models/matvit-cifar10-v11 \
  --objective consistency --init models/matvit-cifar10-v10/model.safetensors --attn-heads S=2 --epochs 8 --lr 3e-4 \
  --warmup-epochs 0.25 --cos-weight 3 --nce-weight 0.5 --xl-pull 3 --xl-pull-widths L --student-probs 0.6,0.1,0.2,0.1 \
  --copy-crop-area 0.1,1 "$@"
