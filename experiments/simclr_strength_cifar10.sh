#!/usr/bin/env bash
# SimCLR's colour strength alone, at the budget of the peer comparison (METHODS.md 7.5, fidelity issue item 14):
# ResNet-18 (ImageNet stem, 32 px), batch 256, SGD lr 0.12 constant (momentum 0.9, wd 5e-4 on every parameter),
# temperature 0.2, projector 512-512-128, 6 epochs (about 900 s on 2 CPU cores); crop (0.08, 1), no blur at 32 px;
# strength 1.0 (the old recipe) against 0.5 (the new default at 64 px or less). kNN k=200, T=0.1 on the 5,000
# held-out images. Usage: bash experiments/simclr_strength_cifar10.sh OUT   (EPOCHS=6 by default)
set -euo pipefail
OUT=${1:?usage: $0 OUT}
EPOCHS=${EPOCHS:-6}
source "$(dirname "$0")/lib.sh"
COMMON="--backbone resnet18 --batch-size 256 progress=false optim.name=sgd optim.lr=0.12 optim.min_lr=0.12
        optim.scale_lr=false optim.weight_decay=5e-4 optim.warmup_epochs=0 optim.exclude_bias_norm=false
        simclr.temperature=0.2 simclr.proj_hidden_dim=512 simclr.proj_dim=128"
knn() { $SELFSUP eval knn --checkpoint "$OUT/$1/last.pt" --train-data "$TR" --test-data "$VA" --k 200 --temperature 0.1 --json | tail -1 \
        | $PYTHON -c "import json,sys; print(f'| $1 | $2 | {json.load(sys.stdin)[\"top1\"]*100:.1f} |')"; }
echo "| run | pretraining | kNN top-1 (k 200, T 0.1) |"
echo "|---|---|---|"
pretrain_once random simclr 0
knn random "-"
for s in 1.0 0.5; do
  pretrain_once "strength_$s" simclr "$EPOCHS" simclr.views=simclr:$s
  knn "strength_$s" "$(cat "$OUT/strength_$s/seconds") s, $EPOCHS epochs"
done
