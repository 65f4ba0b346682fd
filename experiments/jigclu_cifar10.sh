#!/usr/bin/env bash
# JigClu on the shared CIFAR-10 at a fixed CPU budget: JigClu against SimCLR given the same
# wall-clock time and random weights, plus the paper's augmentation-position (Table 7) and
# branch (Table 9) ablations. kNN (k=20, T=0.07) and linear probe on a 500-per-class validation split.
#   bash experiments/jigclu_cifar10.sh [OUT_DIR]      (about 40 minutes on 2 CPU cores)
# Epochs are set so that every run takes about the same time on this machine (convnet, 32 px, batch 256):
# SimCLR forwards two views per image, JigClu one montage per image.
set -euo pipefail
OUT=${1:-runs/jigclu_cifar10}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
JIG_EPOCHS=${JIG_EPOCHS:-8}
SIM_EPOCHS=${SIM_EPOCHS:-4}
COMMON="--backbone convnet --batch-size 256 progress=false log_every=50"

echo "| run | pretraining time | kNN top-1 | linear top-1 |"
echo "|---|---|---|---|"
run random simclr 0
run simclr simclr "$SIM_EPOCHS" optim.lr=1.0 optim.scale_lr=false optim.warmup_epochs=1 simclr.temperature=0.2 simclr.proj_hidden_dim=512
run jigclu jigclu "$JIG_EPOCHS"
[ "${ABLATIONS:-1}" = 1 ] || exit 0     # ABLATIONS=0: the first three rows only
run jigclu_aug_before jigclu "$JIG_EPOCHS" jigclu.aug_position=before
run jigclu_aug_during jigclu "$JIG_EPOCHS" jigclu.aug_position=during
run jigclu_clustering_only jigclu "$JIG_EPOCHS" jigclu.branches=clustering
run jigclu_location_only jigclu "$JIG_EPOCHS" jigclu.branches=location
