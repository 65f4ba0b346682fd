#!/usr/bin/env bash
# SwAV, DeepCluster-v2 and SeLa-v2 on the shared CIFAR-10 at one fixed CPU budget (the same epochs of the
# same multi-crop views, 2 x 32 + 4 x 16, convnet, batch 256), against random weights: kNN (k=20, T=0.07)
# and linear probe on a 500-per-class validation split, plus the per-epoch prototype-usage curves.
# Each method's CIFAR config (configs/*_cifar10.yaml) with the convnet backbone.
#   bash experiments/swav_cifar10.sh [OUT_DIR]      (default EPOCHS=4; EPOCHS=2: about 15 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/swav_cifar10}
source "$(dirname "$0")/lib.sh"      # SELFSUP, PYTHON, the CIFAR-10 tar (DATA) and its TR / VA splits
EPOCHS=${EPOCHS:-4}
FREEZE=${FREEZE:-50}   # prototypes frozen for the first FREEZE iterations (the configs' one epoch is most of a CPU budget)
COMMON="--backbone convnet --batch-size 256 cifar_stem=false progress=false log_every=50"

echo "| run | pretraining time | kNN top-1 | linear top-1 |"
echo "|---|---|---|---|"
run random swav 0
run swav swav "$EPOCHS" --config configs/swav_cifar10.yaml swav.freeze_prototypes_niters=$FREEZE
run deepcluster_v2 deepcluster_v2 "$EPOCHS" --config configs/deepcluster_v2_cifar10.yaml
run sela_v2 sela_v2 "$EPOCHS" --config configs/sela_v2_cifar10.yaml sela_v2.freeze_prototypes_niters=$FREEZE

# prototype usage per epoch (metrics.jsonl records with "epoch_end": true)
$PYTHON - "$OUT" <<'PY'
import sys
from pathlib import Path
from selfsup.report import curves, read_metrics
out = Path(sys.argv[1])
for name, key in [("swav", "prototypes_used"), ("deepcluster_v2", "head0_prototypes_used"), ("sela_v2", "head0_prototypes_used")]:
    records = read_metrics(out / name / "metrics.jsonl", epoch_end=True)
    print(name, "per epoch:", "; ".join(", ".join(f"{k} {v:.2f}" for k, v in r.items() if k not in ("epoch", "epoch_end")) for r in records))
    curves(records, [key], out / f"{name}_prototypes_used.png", f"{name}: prototypes in use per epoch")
PY
