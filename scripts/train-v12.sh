#!/usr/bin/env bash
# MatViT v12: v10's recipe with S keeping 3 of 4 heads instead of 2 (--attn-heads S=3), the same init (v9), epochs,
# weights and sampling, so that the two runs measure what the third head buys S's quality (and costs XL's). S=3 is
# 0.386 of XL's FLOPs (S=2 0.283, whole heads 0.488) and runs at 2.14x XL's images/s in onnxruntime (S=2 2.75x).
# Outcome (27 min): S's recall@10 0.588 (v10 0.465), M 0.766, L 0.860; validation top-1 S 74.6, M 77.4, L 77.1,
# XL 77.7%. Server S/XL 1.33 in a noisy run (v4 1.24). Weights kept: the next nested-heads candidate.
# Rerun it after any stop: it resumes. Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-v12.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out models/matvit-cifar10-v12 \
  --objective consistency --init models/matvit-cifar10-v9/model.safetensors --attn-heads S=3 --epochs 3 --lr 3e-4 \
  --warmup-epochs 0.25 --cos-weight 3 --nce-weight 0.5 --xl-pull 3 --xl-pull-widths L --student-probs 0.45,0.15,0.3,0.1 \
  --copy-crop-area 0.1,1 "$@"
