#!/usr/bin/env bash
# The shape of BagSSL Table 1 on the shared CIFAR-10 at one fixed CPU budget: SimCLR and VICReg, each trained
# on fixed-scale 14 x 14 patches (views=patch:14) and on multi-scale crops (RandomResizedCrop(0.08, 1), BYOL
# colour augmentation: views=byol), the same epochs at the same batch; then each evaluated with the central
# view (the whole 32 x 32 image) and with the mean embedding of 1 and 16 patches at the pretraining scale.
# kNN (k=20, T=0.07) and linear probe, fitted on EVAL_FRACTION of the 45,000 training images (patch
# features of all 45,000 cost 16 x 45,000 forward passes per model), scored on the 5,000-image
# validation split (500 per class). Convnet, projector 1024 -> 128 (the paper: ResNet-34, 4096 -> 128).
#   bash experiments/bagssl_cifar10.sh [OUT_DIR]      (EPOCHS=2, EVAL_FRACTION=0.1: about 20 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/bagssl_cifar10}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
EVAL_TR="$TR&fraction=${EVAL_FRACTION:-0.1}"
EPOCHS=${EPOCHS:-2}
COMMON="--backbone convnet --batch-size 256 cifar_stem=false progress=false log_every=50 optim.name=lars optim.lr=0.3 \
optim.scale_lr=false optim.weight_decay=1e-4 optim.warmup_epochs=1"

row() {  # NAME: central, 1-patch and 16-patch kNN / linear top-1
  local name=$1 ck="$OUT/$1/last.pt" knn lin p1 p16
  knn=$($SELFSUP eval knn --checkpoint "$ck" --train-data "$EVAL_TR" --test-data "$VA" --json | tail -1)
  lin=$($SELFSUP eval linear --checkpoint "$ck" --train-data "$EVAL_TR" --test-data "$VA" --json | tail -1)
  p1=$($SELFSUP eval patches --num-patches 1 --checkpoint "$ck" --train-data "$EVAL_TR" --test-data "$VA" --json | tail -1)
  p16=$($SELFSUP eval patches --num-patches 16 --checkpoint "$ck" --train-data "$EVAL_TR" --test-data "$VA" --json | tail -1)
  $PYTHON - "$name" "$(cat "$OUT/$name/seconds") s" "$knn" "$lin" "$p1" "$p16" <<'PY'
import json, sys
name, secs, knn, lin, p1, p16 = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:])
pct = lambda r: f"{r['top1'] * 100:.1f}"
print(f"| {name} | {secs} | {pct(knn)} / {pct(lin)} | {pct(p1['knn'])} / {pct(p1['linear'])} | "
      f"{pct(p16['knn'])} / {pct(p16['linear'])} |")
PY
}

echo "| run | pretraining time | central kNN / linear | 1 patch kNN / linear | 16 patches kNN / linear |"
echo "|---|---|---|---|---|"
pretrain_once random simclr 0 simclr.views=patch:14
row random
for method in simclr vicreg; do
  case $method in
    simclr) head="simclr.temperature=0.1 simclr.proj_hidden_dim=1024 simclr.proj_dim=128" ;;
    vicreg) head="vicreg.proj_hidden_dim=1024 vicreg.proj_dim=128 vicreg.proj_layers=2" ;;
  esac
  pretrain_once "${method}_patch14" "$method" "$EPOCHS" $head "$method.views=patch:14"
  row "${method}_patch14"
  pretrain_once "${method}_multiscale" "$method" "$EPOCHS" $head "$method.views=byol"
  row "${method}_multiscale"
done

# Fig. 3a and Fig. 4 for the patch-trained SimCLR model
$SELFSUP viz convergence --checkpoint "$OUT/simclr_patch14/last.pt" --data "$VA" --out "$OUT/convergence.png" --max-images 512
$SELFSUP viz heatmap --checkpoint "$OUT/simclr_patch14/last.pt" --data "$VA" --out "$OUT/heatmap.png" --stride 2
$SELFSUP viz patch-knn --checkpoint "$OUT/simclr_patch14/last.pt" --data "$VA" --out "$OUT/patch_knn.png"
