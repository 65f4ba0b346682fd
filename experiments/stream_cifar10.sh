#!/usr/bin/env bash
# Does the streaming path train as well as the in-memory one (issue 18)? The same command twice on the shared
# CIFAR-10 tar: decoded once into memory (`stream=0`, the default for it) and read image by image from the tar
# (`stream=1`: PIL decode in DataLoader workers, crops drawn on each image's true size). Everything else is the
# newcomer's default path (`selfsup pretrain METHOD --data TR --backbone convnet --epochs E`); both checkpoints are
# scored by `selfsup eval knn` (its defaults) on the same in-memory splits, the 5,000 held-out images.
# Prints one markdown row per path: the pretraining time and kNN top-1.
# Usage: bash experiments/stream_cifar10.sh OUT      (METHOD=simclr EPOCHS=3 by default)
set -euo pipefail
OUT=${1:?usage: $0 OUT}
METHOD=${METHOD:-simclr}
EPOCHS=${EPOCHS:-3}
source "$(dirname "$0")/lib.sh"
echo "| $METHOD, convnet, $EPOCHS epochs | pretraining | kNN top-1 |"
echo "|---|---|---|"
for s in 0 1; do
  run="$OUT/${METHOD}_stream$s"
  if [ ! -f "$run/seconds" ]; then      # written once the run has finished
    rm -rf "$run"
    t0=$(date +%s)
    $SELFSUP pretrain "$METHOD" --data "$TR&stream=$s" --backbone convnet --epochs "$EPOCHS" --out "$run" \
      progress=false >/dev/null
    echo $(( $(date +%s) - t0 )) > "$run/seconds"
  fi
  knn=$($SELFSUP eval knn --checkpoint "$run/last.pt" --train-data "$TR" --test-data "$VA" --json | tail -1)
  $PYTHON -c "import json,sys; k=json.loads(sys.argv[1]); print(f'| stream={sys.argv[2]} | {sys.argv[3]} s | {k[\"top1\"]*100:.1f} |')" \
    "$knn" "$s" "$(cat "$run/seconds")"
done
