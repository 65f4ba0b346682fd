"""kNN top-1 on a tuning split carved from the training part, so that defaults are chosen without the validation split.

The training part TR (``val_per_class=500&part=train``, 45,000 images) is split once more, with another seed: 500
images per class become the tuning queries and the other 40,000 the kNN bank. The validation split (500 per class
of the shared copy, drawn with val_seed 0) is never read. Same kNN as ``selfsup eval knn`` (k 20, T 0.07) at the checkpoint's
evaluation tap.

Usage: python experiments/tune_knn.py CHECKPOINT [CHECKPOINT ...] [--data TAR]
"""
from __future__ import annotations

import argparse
import json

import torch

from selfsup.checkpoint import load_checkpoint
from selfsup.data.datasets import load_dataset
from selfsup.data.subsets import holdout_split
from selfsup.errors import script_main
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_predict
from selfsup.eval.run import load_backbone

TUNE_SEED = 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="../shared/data/cifar10-train-jpg.tar")
    args = ap.parse_args()
    train_part = load_dataset(f"{args.data}?val_per_class=500&part=train")
    bank_idx, query_idx = holdout_split(train_part.labels, val_per_class=500, seed=TUNE_SEED)
    bank, query = train_part.subset(bank_idx), train_part.subset(query_idx)
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        backbone = load_backbone(path, ckpt)
        tap = ckpt.get("eval_tap") or backbone.default_tap
        size = (ckpt.get("config") or {}).get("image_size")
        xb, yb = extract_features(backbone, bank, tap=tap, image_size=size)
        xq, yq = extract_features(backbone, query, tap=tap, image_size=size)
        top1 = (knn_predict(xb, yb, xq) == yq).float().mean().item()
        print(json.dumps({"checkpoint": path, "tap": tap, "tune_top1": round(top1, 4)}), flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        script_main(main)
