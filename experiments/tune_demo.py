"""Choose the demo's epoch budgets and settings without the Fashion-MNIST test images.

Pretrains one variant of a demo method (``selfsup.demo.DEMO_RUNS``' settings, then the
extra ``key=value`` settings given here) on the training split minus 500 images per class,
and scores kNN (the demo's k 20, T 0.07, at the checkpoint's evaluation tap) of those
5,000 held-out training images against the other 55,000. The test split is never read.
EPOCHS 0 scores the random initialisation. Prints one JSON line.

Usage: python experiments/tune_demo.py OUT NAME METHOD EPOCHS [key=value ...] [--data DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from selfsup.data.datasets import load_dataset
from selfsup.demo import checkpoint_features, find_fashion_mnist, pretrain
from selfsup.errors import script_main
from selfsup.eval.knn import knn_predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("method")
    ap.add_argument("epochs", type=int)
    ap.add_argument("settings", nargs="*", metavar="key=value")
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's)")
    args = ap.parse_args()
    root = find_fashion_mnist(args.data)
    spec = f"fashion-mnist:{root}?split=train&val_per_class=500"
    run = Path(args.out) / args.name
    seconds = pretrain(args.method, run, f"{spec}&part=train", args.epochs, "cpu", args.settings)
    if seconds is None:
        raise SystemExit(f"interrupted: {run / 'last.pt'} saved; run the same command again to resume")
    with torch.inference_mode():
        xb, yb, xq, yq = checkpoint_features(run / "last.pt", load_dataset(f"{spec}&part=train"),
                                   load_dataset(f"{spec}&part=val"), "cpu")
        top1 = (knn_predict(xb, yb, xq) == yq).float().mean().item()
    print(json.dumps({"name": args.name, "method": args.method, "epochs": args.epochs, "settings": args.settings,
                      "seconds": round(seconds), "tune_top1": round(top1 * 100, 2)}), flush=True)


if __name__ == "__main__":
    script_main(main)
