#!/usr/bin/env bash
# The benchmark suite of Goyal et al. 2019 (issue 15) on the round-1 convnet checkpoints, at round-1 budgets:
# random weights, SimCLR (4 epochs, jigclu_cifar10.sh's settings), JigClu (8 epochs), SwAV (2 epochs,
# swav_cifar10.sh's settings), Jigsaw with |P| = 100, 701 and 2000 and Colorization (6 epochs,
# pretext_cifar10.sh's settings; its random baseline is the L-only network). Scored on a VOC07-layout set of
# CIFAR-10 mosaics (2 x 2 tiles of 32 px: trainval mosaics from TR, the pretraining images; test mosaics from
# VA, which no run has seen) at 64 px, so each tile keeps the pretraining scale:
#   - eval svm: VOC07 SVM mAP at every tap (conv1 .. conv4, Goyal pooling);
#   - eval lowshot: k = 1, 4, 16, 96 positives per class (5 samples), at conv3 and conv4;
#   - eval linear --taps: the layer-wise linear table on the single-label split (TR -> VA) at 32 px.
#   bash experiments/suite_cifar10.sh OUT      (finished runs in OUT are reused)
# The SVM fits are what costs: liblinear's dual solver on these ~9k-dim features of random weights took 17 s
# at C = 1, 119 s at C = 10 and 268 s at C = 100 (max_iter reached) for ONE class on the full trainval set, so
# Goyal's 26 costs (up to 100) or VISSL's 11 (up to 1000) take hours per checkpoint on a 2-core CPU. Knobs:
# COSTS (goyal | vissl | a comma list), SVM_TAPS and LOWSHOT_TAPS (comma lists; default every tap / conv3,conv4),
# PARTS (which evaluations to run: a comma list of linear, svm, lowshot; default all three).
set -euo pipefail
OUT=${1:?usage: $0 OUT}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
COMMON="--backbone convnet --batch-size 256 cifar_stem=false progress=false log_every=50"
PRETEXT="optim.name=sgd optim.lr=0.1 optim.scale_lr=true optim.weight_decay=1e-4 optim.warmup_epochs=1"
JIG="head=goyal tile_dim=256"
mkdir -p "$OUT"
[ -d "$OUT/mosaics" ] || $PYTHON -m selfsup.data.mosaic "$TR" "$OUT/mosaics" --test-data "$VA"
MTR="voc07:$OUT/mosaics?split=trainval"
MTE="voc07:$OUT/mosaics?split=test"

pretrain_once random simclr 0
pretrain_once simclr simclr 4 optim.lr=1.0 optim.scale_lr=false optim.warmup_epochs=1 simclr.temperature=0.2 \
  simclr.proj_hidden_dim=512
pretrain_once jigclu jigclu 8
pretrain_once swav swav 2 --config configs/swav_cifar10.yaml swav.freeze_prototypes_niters=50
for P in 100 701 2000; do
  set_name=$P; [ "$P" = 701 ] && set_name=noroozi-701
  pretrain_once "jigsaw_P$P" jigsaw 6 $PRETEXT jigsaw.permutations=$set_name $(printf ' jigsaw.%s' $JIG)
done
pretrain_once random_L colorization 0
pretrain_once colorization colorization 6 $PRETEXT
RUNS="random simclr jigclu swav jigsaw_P100 jigsaw_P701 jigsaw_P2000 random_L colorization"
PARTS=",${PARTS:-linear,svm,lowshot},"

if [[ $PARTS == *,linear,* ]]; then
echo "## Layer-wise linear top-1 (Goyal's heads, cached features; TR -> VA, 32 px)"
for r in $RUNS; do
  echo "### $r ($(cat "$OUT/$r/seconds") s of pretraining)"
  $SELFSUP eval linear --checkpoint "$OUT/$r/last.pt" --train-data "$TR" --test-data "$VA" --taps all --cached
done
fi
if [[ $PARTS == *,svm,* ]]; then
echo "## VOC07 SVM mAP per tap (CIFAR-10 mosaics, 64 px; costs ${COSTS:-goyal})"
for r in $RUNS; do
  echo "### $r"
  $SELFSUP eval svm --checkpoint "$OUT/$r/last.pt" --train-data "$MTR" --test-data "$MTE" --image-size 64 \
    --costs "${COSTS:-goyal}" ${SVM_TAPS:+--taps "$SVM_TAPS"}
done
fi
if [[ $PARTS == *,lowshot,* ]]; then
echo "## Low-shot SVM mAP (k positives per class, 5 samples; costs ${COSTS:-goyal})"
for r in $RUNS; do
  echo "### $r"
  $SELFSUP eval lowshot --checkpoint "$OUT/$r/last.pt" --train-data "$MTR" --test-data "$MTE" --image-size 64 \
    --shots 1,4,16,96 --taps "${LOWSHOT_TAPS:-conv3,conv4}" --costs "${COSTS:-goyal}"
done
fi
