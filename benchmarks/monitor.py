"""Cost of the kNN monitor (`monitor.knn=SPEC`) against the training epoch it follows, side by side.

The same backbone and size: one SimCLR training step on a batch of B images (views in memory),
extrapolated to an epoch of N images, against one monitor call (2,000 images: features of both
halves and the kNN). Target: under 5% of an epoch.

    python benchmarks/monitor.py [--backbone convnet] [--size 32] [--epoch-images 45000] [--images 2000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from selfsup.data.loader import Batch
from selfsup.errors import script_main
from selfsup.eval.monitor import KnnMonitor
from selfsup.methods import build_method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="convnet")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epoch-images", type=int, default=45000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("SELFSUP_CACHE", tempfile.mkdtemp())
    torch.manual_seed(0)
    method = build_method("simclr", backbone=args.backbone, image_size=args.size, cifar_stem=False)
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)
    batch = Batch(method.view_maker()(images, torch.Generator().manual_seed(0)), torch.zeros(args.batch_size),
                  torch.arange(args.batch_size))

    def step():
        loss = method(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    monitor = KnnMonitor(f"synthetic:{args.images}?classes=10&size={args.size}", images=args.images)
    step()
    monitor(method.backbone, 0, method.evaluation_tap(), args.size, "cpu")          # warm-up
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    epoch = (time.perf_counter() - t) / args.steps * args.epoch_images / args.batch_size
    t = time.perf_counter()
    monitor(method.backbone, 0, method.evaluation_tap(), args.size, "cpu")
    cost = time.perf_counter() - t
    print(f"{args.backbone} at {args.size} px: training epoch of {args.epoch_images} images {epoch:.1f} s (extrapolated "
          f"from {args.steps} steps of {args.batch_size}); monitor on {args.images} images {cost:.2f} s; "
          f"ratio {cost / epoch:.4f} ({100 * cost / epoch:.2f}% of an epoch)")


if __name__ == "__main__":
    script_main(main)
