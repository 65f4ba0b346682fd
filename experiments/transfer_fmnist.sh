#!/usr/bin/env bash
# Full transfer (issue 16; JigClu Table 5 / SwAV Table 3 in small): the CIFAR-10 convnet checkpoints of
# experiments/suite_cifar10.sh (random weights, SimCLR 4 epochs, JigClu 8, SwAV 2) fine-tuned end to end on
# another labelled set, Fashion-MNIST (28 px grayscale, shown to the 32 px RGB networks as 32 px, 3 channels).
# Training: a seeded 10% of each class of its training split minus a 500-per-class holdout (5,500 images),
# swav-10pct (trunk lr 0.01, head lr 0.2, steps x0.2 at 60% and 80% of the run), 20 epochs of batch 256;
# top-1 on the 5,000 held-out images, which no run has seen.
#   bash experiments/transfer_fmnist.sh SUITE_OUT OUT [FASHION_MNIST_DIR]
set -euo pipefail
SUITE=${1:?usage: $0 SUITE_OUT OUT [FASHION_MNIST_DIR]}
OUT=${2:?usage: $0 SUITE_OUT OUT [FASHION_MNIST_DIR]}
FM="fashion-mnist:${3:-/usr/share/datasets/fashion-mnist}?split=train&val_per_class=500"
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON
top1() { $PYTHON -c "import json,sys; print(f'{json.loads(sys.stdin.read().strip().splitlines()[-1])[\"top1\"] * 100:.1f}')"; }
echo "| init (CIFAR-10) | Fashion-MNIST top-1, 10% labels, full fine-tuning | seconds |"
echo "|---|---|---|"
for r in random simclr jigclu swav; do
  t0=$(date +%s)
  acc=$($SELFSUP finetune --init "$SUITE/$r/last.pt" --data "$FM&part=train&fraction=0.1" --test-data "$FM&part=val" \
        --recipe swav-10pct --epochs 20 --batch-size 256 --out "$OUT/$r" --device cpu --json progress=false | top1)
  echo "| $r | $acc | $(( $(date +%s) - t0 )) |"
done
