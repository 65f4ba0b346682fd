"""Throughput of `selfsup eval patches` against plain feature extraction, side by side.

Same backbone (eval mode, no gradients), same images in memory, same network
input size and the same number of images or patches per backbone pass. Plain extraction embeds each image once (images/s); patch
aggregation crops N fixed-scale patches per image, resizes each to the input
size and embeds it (patches/s), then averages them, or slides a window (local
aggregation). The ideal is patches/s = images/s: cropping, resizing and
averaging cost nothing beside the backbone.

    python benchmarks/patches.py [--backbone convnet] [--images 2048] [--size 32] [--patch 14] [--num-patches 16]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from selfsup.errors import script_main
from selfsup.eval.features import extract_features
from selfsup.eval.patches import aggregated_features, grid_boxes
from selfsup.models import build_backbone

from throughput import interleaved


class InMemory:
    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8).numpy()
        self.labels = np.zeros(n, dtype=np.int64)
        self.fingerprint = f"bench-{n}-{size}"

    def __len__(self):
        return len(self.images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--num-patches", type=int, default=16)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=2048, help="images or patches per backbone pass, for both")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone).eval()
    plain_data = InMemory(args.images, args.size)
    patch_data = InMemory(args.images // args.num_patches, args.size)     # the same number of forward passes
    grid = len(grid_boxes(args.size, args.size, args.window, args.stride)[0])
    local_data = InMemory(max(1, args.images // grid), args.size)
    t = interleaved({
        "plain": lambda: extract_features(backbone, plain_data, batch_size=args.chunk),
        "global": lambda: aggregated_features(backbone, patch_data, num_patches=args.num_patches, patch_size=args.patch,
                                             chunk=args.chunk),
        "local": lambda: aggregated_features(backbone, local_data, aggregate="local", window=args.window, stride=args.stride,
                                            chunk=args.chunk),
    }, steps=1, rounds=3, warmup=1)
    plain = len(plain_data) / t["plain"]
    glob = len(patch_data) * args.num_patches / t["global"]
    local = len(local_data) * grid / t["local"]
    print(f"backbone {args.backbone}, {args.size} px input, {torch.get_num_threads()} threads")
    print(f"plain feature extraction: {plain:8.0f} images/s")
    print(f"eval patches, global ({args.num_patches} x {args.patch} px): {glob:8.0f} patches/s  "
          f"ratio {glob / plain:.3f}  ({glob / args.num_patches:.0f} images/s)")
    print(f"eval patches, local ({grid} windows of {args.window} px): {local:8.0f} patches/s  "
          f"ratio {local / plain:.3f}  ({local / grid:.0f} images/s)")


if __name__ == "__main__":
    script_main(main)
