#!/usr/bin/env bash
# Jigsaw, Jigsaw++ and Colorization on the shared CIFAR-10 at one fixed CPU budget (the same epochs, batch and
# optimiser for each), against random weights, and Goyal et al.'s permutation-count axis for Jigsaw
# (|P| = 100, 701, 2000). The 4-layer convnet (fast on a CPU) is the tower / the L-only backbone; puzzles use
# the 32 px geometry (30 px crop, 10 px cells, 8 px tiles) and Goyal's head narrowed to 256 per tile.
# kNN (k=20, T=0.07) and linear probe on whole 32 px images (45,000 train / 5,000 val).
#   bash experiments/pretext_cifar10.sh [OUT_DIR]      (EPOCHS=4: about 30 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/pretext_cifar10}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
EPOCHS=${EPOCHS:-4}
COMMON="--backbone convnet --batch-size 256 cifar_stem=false progress=false log_every=50 optim.name=sgd optim.lr=0.1 \
optim.scale_lr=true optim.weight_decay=1e-4 optim.warmup_epochs=1"
JIG="head=goyal tile_dim=256"

echo "| run | pretraining time | kNN top-1 | linear top-1 |"
echo "|---|---|---|---|"
run random jigsaw 0 jigsaw.permutations=100
for P in 100 701 2000; do
  set_name=$P; [ "$P" = 701 ] && set_name=noroozi-701
  run "jigsaw_P$P" jigsaw "$EPOCHS" jigsaw.permutations=$set_name $(printf ' jigsaw.%s' $JIG)
done
run jigsaw_pp jigsaw_pp "$EPOCHS" $(printf ' jigsaw_pp.%s' $JIG)
