#!/usr/bin/env bash
# The first run learns (issue 14): every method with its default settings, as a newcomer runs it.
# `selfsup pretrain METHOD --data TR --backbone B --epochs E` with no other setting, against the same command with
# `--epochs 0` (the method's own initial weights), scored by `selfsup eval knn` (its defaults: k 20, T 0.07) at the
# method's default tap on the 5,000 held-out images (500 per class, drawn with val_seed 0). Prints one markdown row per method:
# its tap, the pretraining time, kNN top-1 at 0 and at E epochs, the gain, and the gain the requirement asks.
# Usage: bash experiments/defaults_cifar10.sh OUT
#   BACKBONE=convnet EPOCHS=2 (default; all 13 methods), or
#   BACKBONE=resnet18 EPOCHS=1 METHODS="simclr jigclu swav"
set -euo pipefail
OUT=${1:?usage: $0 OUT}
BACKBONE=${BACKBONE:-convnet}
EPOCHS=${EPOCHS:-2}
METHODS=${METHODS:-simclr byol vicreg tcr spectral_contrastive moco_v2 jigclu swav deepcluster_v2 sela_v2 jigsaw jigsaw_pp colorization}
source "$(dirname "$0")/lib.sh"
COMMON="--backbone $BACKBONE progress=false"
need() {   # the gain in points that the requirement asks of a method
  case $1 in deepcluster_v2|sela_v2|jigsaw|jigsaw_pp|colorization) echo 3 ;; *) [ "$BACKBONE" = convnet ] && echo 5 || echo 3 ;; esac
}
knn() { $SELFSUP eval knn --checkpoint "$OUT/$1/last.pt" --train-data "$TR" --test-data "$VA" --json | tail -1; }
# The --epochs 0 weights are the seed's initialisation, the same for every method on one backbone: score them once
# per (backbone weights, tap, view size) and reuse the line.
knn0() {
  local key
  key=$($PYTHON -c "import hashlib, sys, torch
c = torch.load(sys.argv[1], weights_only=True); h = hashlib.sha1(repr((c['backbone'], c.get('cifar_stem'), c['backbone_options'], c['eval_tap'], c['image_size'])).encode())
for k, v in sorted(c['backbone_state'].items()): h.update(k.encode()); h.update(v.cpu().numpy().tobytes())
print(h.hexdigest()[:16])" "$OUT/$1/last.pt")
  [ -s "$OUT/knn0_$key.json" ] || knn "$1" > "$OUT/knn0_$key.json"
  cat "$OUT/knn0_$key.json"
}
echo "| method | backbone | tap | pretraining ($EPOCHS epochs) | kNN top-1, 0 epochs | kNN top-1, $EPOCHS epochs | gain | required |"
echo "|---|---|---|---|---|---|---|---|"
for m in $METHODS; do
  pretrain_once "${m}_0" "$m" 0
  pretrain_once "${m}_$EPOCHS" "$m" "$EPOCHS"
  $PYTHON - "$m" "$BACKBONE" "$(cat "$OUT/${m}_$EPOCHS/seconds") s" "$(knn0 "${m}_0")" "$(knn "${m}_$EPOCHS")" "$(need "$m")" <<'PY'
import json, sys
m, backbone, seconds, k0, k1, need = sys.argv[1:]
k0, k1 = json.loads(k0), json.loads(k1)
assert k0["tap"] == k1["tap"], (k0["tap"], k1["tap"])
gain = (k1["top1"] - k0["top1"]) * 100
ok = "yes" if gain >= float(need) else "**no**"
print(f"| {m} | {backbone} | {k1['tap']} | {seconds} | {k0['top1']*100:.1f} | {k1['top1']*100:.1f} | "
      f"{gain:+.1f} | +{need} ({ok}) |", flush=True)
PY
done
