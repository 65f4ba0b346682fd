#!/usr/bin/env bash
# Jigsaw, Jigsaw++ and Colorization on the shared CIFAR-10 at one fixed CPU budget (the same epochs, batch and
# optimiser for each), against random weights (RGB, and L-only for Colorization), with Goyal et al.'s
# permutation-count axis for Jigsaw (|P| = 100, 701, 2000) and one colour ablation. The 4-layer convnet is the
# tower / the L-only backbone; puzzles use the 32 px geometry (30 px crop, 10 px cells, 8 px tiles) and Goyal's
# head narrowed to 256 per tile. Evaluation on whole 32 px images (45,000 train / 5,000 val), layer by layer
# as Goyal et al.: conv2 and conv3 average-pooled to about 9k dims, conv4 (the default) globally pooled;
# kNN (k=20, T=0.07) and linear probe top-1 at each.
#   bash experiments/pretext_cifar10.sh [OUT_DIR]      (EPOCHS=6: about 40 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/pretext_cifar10}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
EPOCHS=${EPOCHS:-6}
COMMON="--backbone convnet --batch-size 256 cifar_stem=false progress=false log_every=50 optim.name=sgd optim.lr=0.1 \
optim.scale_lr=true optim.weight_decay=1e-4 optim.warmup_epochs=1"

probe() {  # CHECKPOINT PROTOCOL TAP POOL -> top-1 in %
  $SELFSUP eval "$2" --checkpoint "$1" --train-data "$TR" --test-data "$VA" --tap "$3" --pool "$4" --json | tail -1 |
    $PYTHON -c "import json,sys; print(f'{json.loads(sys.stdin.read())[\"top1\"] * 100:.1f}')"
}

row() {  # NAME: pretraining time, then kNN / linear at conv2 (9k), conv3 (9k), conv4 (global pool)
  local name=$1 ck="$OUT/$1/last.pt" line
  line="| $name | $(cat "$OUT/$name/seconds") s"
  for tp in "conv2 9k" "conv3 9k" "conv4 avg"; do
    set -- $tp
    line="$line | $(probe "$ck" knn "$1" "$2") / $(probe "$ck" linear "$1" "$2")"
  done
  echo "$line |"
}

echo "| run | pretraining time | conv2 (9k) kNN / linear | conv3 (9k) kNN / linear | conv4 (avg) kNN / linear |"
echo "|---|---|---|---|---|"
JIG="head=goyal tile_dim=256"
pretrain_once random jigsaw 0 jigsaw.permutations=100
row random
WHICH=${WHICH:-"jigsaw jigsaw_pp colorization"}     # e.g. WHICH=jigsaw_pp: that row and random only
if [[ " $WHICH " == *" jigsaw "* ]]; then
for P in 100 701 2000; do
  set_name=$P; [ "$P" = 701 ] && set_name=noroozi-701
  pretrain_once "jigsaw_P$P" jigsaw "$EPOCHS" jigsaw.permutations=$set_name $(printf ' jigsaw.%s' $JIG)
  row "jigsaw_P$P"
done
pretrain_once jigsaw_P100_colour jigsaw "$EPOCHS" jigsaw.permutations=100 jigsaw.gray_prob=0 jigsaw.projection_prob=0 \
  $(printf ' jigsaw.%s' $JIG)
row jigsaw_P100_colour
fi
if [[ " $WHICH " == *" jigsaw_pp "* ]]; then
pretrain_once jigsaw_pp jigsaw_pp "$EPOCHS" $(printf ' jigsaw_pp.%s' $JIG)
row jigsaw_pp
fi
[[ " $WHICH " == *" colorization "* ]] || exit 0
pretrain_once random_L colorization 0
row random_L
pretrain_once colorization colorization "$EPOCHS"
row colorization
$SELFSUP viz colorize --checkpoint "$OUT/colorization/last.pt" --data "$VA" --out "$OUT/colorize.png" --index 0 --max-images 10
