#!/usr/bin/env bash
# Knowledge transfer by clustering (CC+, Noroozi et al. 2018; issue 17) on CIFAR-10 at round-1 budgets, from the
# convnet checkpoints of experiments/suite_cifar10.sh (JigClu 8 epochs is the SSL teacher). Every student trains
# STUDENT_EPOCHS epochs (default 8) on TR; kNN (k 20, T 0.07) and the linear probe score VA, which no run has seen.
# Rows: random init; the teacher; the same convnet trained directly with JigClu for the teacher's plus the
# student's epochs (the same total budget); CC+ students from the JigClu teacher (k = 100, 500, 2000), from a
# random-network teacher (student lr 0.001) and from HOG bag of words; the distillation baseline (--objective
# regress); random ResNet-18 weights and a ResNet-18 student (ImageNet stem at 32 px) of the JigClu teacher's
# k = 2000 labels; and a ResNet-18 teacher at about the JigClu teacher's budget (SimCLR, 2 epochs, ImageNet stem: JigClu needs a final map of at
# least 2 x 2, which the ImageNet stem leaves only from 64 px) with its convnet student (k = 2000).
#   bash experiments/ccplus_cifar10.sh SUITE_OUT OUT
set -euo pipefail
SUITE=${1:?usage: $0 SUITE_OUT OUT}
OUT=${2:?usage: $0 SUITE_OUT OUT}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
E=${STUDENT_EPOCHS:-8}
COMMON="--backbone convnet --batch-size 256 cifar_stem=false progress=false log_every=50"
row() {    # row NAME CHECKPOINT SECONDS: one markdown row with kNN and linear top-1 on VA
  local knn lin
  knn=$($SELFSUP eval knn --checkpoint "$2" --train-data "$TR" --test-data "$VA" --json | tail -1)
  lin=$($SELFSUP eval linear --checkpoint "$2" --train-data "$TR" --test-data "$VA" --json | tail -1)
  $PYTHON -c "import json,sys; k=json.loads(sys.argv[1]); l=json.loads(sys.argv[2]); print(f'| {sys.argv[3]} | {sys.argv[4]} | {k[\"top1\"]*100:.1f} | {l[\"top1\"]*100:.1f} |')" \
    "$knn" "$lin" "$1" "$3"
}
cc() {     # cc NAME TEACHER STUDENT K [transfer args...]: a CC+ (or distillation) run into OUT/NAME, then its row
  local name=$1 teacher=$2 student=$3 k=$4; shift 4
  if [ ! -f "$OUT/$name/seconds" ]; then
    local t0
    t0=$(date +%s)
    $SELFSUP transfer --teacher "$teacher" --student "$student" --cluster-data "$TR" --clusters "$k" --epochs "$E" \
      --batch-size 256 --out "$OUT/$name" --device cpu "$@" cifar_stem=false progress=false log_every=50 >/dev/null
    echo $(( $(date +%s) - t0 )) > "$OUT/$name/seconds"
  fi
  row "$name" "$OUT/$name/student/last.pt" "$(cat "$OUT/$name/seconds") s"
}
mkdir -p "$OUT"
T="$SUITE/jigclu/last.pt"
echo "| run | time | kNN top-1 | linear top-1 |"
echo "|---|---|---|---|"
row "random init" "$SUITE/random/last.pt" "0 s"
row "teacher: JigClu, 8 epochs" "$T" "$(cat "$SUITE/jigclu/seconds") s"
pretrain_once jigclu_direct jigclu $((8 + E))
row "JigClu directly, $((8 + E)) epochs" "$OUT/jigclu_direct/last.pt" "$(cat "$OUT/jigclu_direct/seconds") s"
for K in 2000 500 100; do cc "cc_jigclu_k$K" "$T" convnet "$K"; done
cc cc_random_k2000 random:convnet convnet 2000
cc cc_hog_k2000 hog convnet 2000
cc distill_jigclu "$T" convnet 2000 --objective regress
pretrain_once random_r18 simclr 0 --backbone resnet18
row "random ResNet-18" "$OUT/random_r18/last.pt" "0 s"
cc cc_jigclu_k2000_resnet18 "$T" resnet18 2000
pretrain_once simclr_r18 simclr 2 --backbone resnet18 optim.lr=1.0 optim.scale_lr=false optim.warmup_epochs=1 \
  simclr.temperature=0.2 simclr.proj_hidden_dim=512
row "teacher: SimCLR ResNet-18, 2 epochs" "$OUT/simclr_r18/last.pt" "$(cat "$OUT/simclr_r18/seconds") s"
cc cc_simclr_r18_k2000 "$OUT/simclr_r18/last.pt" convnet 2000
