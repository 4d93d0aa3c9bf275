#!/usr/bin/env bash
# The exact command that trained MatViT v4, the shipped model (models/matvit-cifar10): v3 (models/matvit-cifar10-v3)
# fine-tuned for 5 more epochs, aimed at the targets v3 missed (reports/cifar10-v3):
# L's recall@10 of XL's neighbours (0.841 of 0.90), M's 1-NN gap to XL (-0.54 of 0.5 points) and the 50%-side crop
# copy (0.124 of 0.60 at XL). So: the wider students are sampled more (S/M/L/XL 0.2/0.3/0.35/0.15), the embedding
# agreement weighs more (--cos-weight 3), and the copy view's crops reach down to 10% of the area (v3: 25%, exactly the
# area of the evaluation's crop-50, so it was the rarest crop seen). It shipped because the evaluation (README) puts
# it above v3 (M within 0.25 points of XL, L's recall 0.851, crop-50 0.162). Rerun it after any stop: it resumes.
# Needs ../shared/datasets (CIFAR-10). Usage: scripts/train-v4.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx src/cli.ts train --data ../shared/datasets/cifar10/train.tar.gz --out models/matvit-cifar10 \
  --objective consistency --init models/matvit-cifar10-v3/model.safetensors --epochs 5 --lr 3e-4 --warmup-epochs 0.25 \
  --cos-weight 3 --nce-weight 0.5 --student-probs 0.2,0.3,0.35,0.15 --copy-crop-area 0.1,1 "$@"
