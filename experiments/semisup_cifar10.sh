#!/usr/bin/env bash
# Semi-supervised CIFAR-10 (issue 16; SwAV Table 1, JigClu Table 3 in small): fine-tune with 1% and 10% of the
# labels of TR (seeded per class: 45 and 450 images per class) from random weights and
# from the round-1 SimCLR, JigClu and SwAV convnet checkpoints of experiments/suite_cifar10.sh, with SwAV's
# recipes (swav-1pct: trunk lr 0.02; swav-10pct: 0.01 / head 0.2; steps x0.2 at 60% and 80%), about 1,000 steps
# each, top-1 on the 5,000 held-out images (VA). The paper's direction: pretraining helps most at 1%.
# The 1% runs take the 10% recipe's head lr 0.2: swav-1pct's head lr 5 diverges on this convnet at batch 64
# (loss 190 after 7 steps, every init at chance, 10.0%), so `finetune` now warns of a chance-level score.
#   bash experiments/semisup_cifar10.sh SUITE_OUT OUT      (SUITE_OUT holds random/, simclr/, jigclu/, swav/)
set -euo pipefail
SUITE=${1:?usage: $0 SUITE_OUT OUT}
OUT=${2:?usage: $0 SUITE_OUT OUT}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
top1() { $PYTHON -c "import json,sys; print(f'{json.loads(sys.stdin.read().strip().splitlines()[-1])[\"top1\"] * 100:.1f}')"; }
echo "| init | 1% labels (450 images) | 10% labels (4,500 images) |"
echo "|---|---|---|"
for r in random simclr jigclu swav; do
  one=$($SELFSUP finetune --init "$SUITE/$r/last.pt" --data "$TR&fraction=0.01" --test-data "$VA" --recipe swav-1pct \
        --epochs 150 --batch-size 64 --out "$OUT/${r}_1pct" --device cpu --json progress=false optim.head_lr=0.2 | top1)
  ten=$($SELFSUP finetune --init "$SUITE/$r/last.pt" --data "$TR&fraction=0.1" --test-data "$VA" --recipe swav-10pct \
        --epochs 60 --batch-size 256 --out "$OUT/${r}_10pct" --device cpu --json progress=false | top1)
  echo "| $r | $one | $ten |"
done
