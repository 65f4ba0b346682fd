# Shared by the experiment scripts (sourced after OUT is set; the functions also need COMMON).
# The command and the data: the shared CIFAR-10 tar (or DATA), split into 45,000 training images (TR)
# and a 500-per-class validation set (VA).
SELFSUP=${SELFSUP:-selfsup}
PYTHON=${PYTHON:-python3}
T=${DATA:-../shared/data/cifar10-train-jpg.tar}
TR="$T?val_per_class=500&part=train"
VA="$T?val_per_class=500&part=val"
# `pretrain_once NAME METHOD EPOCHS [pretrain args...]` pretrains into $OUT/NAME (skipped when a finished run
# with the same epochs is there) and records its wall-clock seconds in $OUT/NAME/seconds.
# `run NAME METHOD EPOCHS [pretrain args...]` pretrains once, then prints one markdown row with the
# pretraining time and kNN / linear top-1 on the validation split.
pretrain_once() {
  local name=$1 method=$2 epochs=$3; shift 3
  # a run counts as finished once its seconds are written (a killed run leaves last.pt of an earlier epoch)
  if [ ! -f "$OUT/$name/seconds" ] || [ "$epochs" != "$(grep -m1 '^epochs:' "$OUT/$name/config.yaml" | cut -d' ' -f2)" ]; then
    rm -rf "${OUT:?}/$name"
    local t0
    t0=$(date +%s)
    $SELFSUP pretrain "$method" --data "$TR" $COMMON --epochs "$epochs" --out "$OUT/$name" "$@" >/dev/null
    echo $(( $(date +%s) - t0 )) > "$OUT/$name/seconds"
  fi
}

run() {
  local name=$1
  pretrain_once "$@"
  local knn lin
  knn=$($SELFSUP eval knn --checkpoint "$OUT/$name/last.pt" --train-data "$TR" --test-data "$VA" --json | tail -1)
  lin=$($SELFSUP eval linear --checkpoint "$OUT/$name/last.pt" --train-data "$TR" --test-data "$VA" --json | tail -1)
  $PYTHON -c "import json,sys; k=json.loads(sys.argv[1]); l=json.loads(sys.argv[2]); print(f'| {sys.argv[3]} | {sys.argv[4]} | {k[\"top1\"]*100:.1f} | {l[\"top1\"]*100:.1f} |')" \
    "$knn" "$lin" "$name" "$(cat "$OUT/$name/seconds" 2>/dev/null || echo 0) s"
}
