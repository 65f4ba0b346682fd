"""What keeping glibc's freed memory (``selfsup.malloc``) gives on the CPU, side by side in one run.

Each case runs twice in fresh processes, with ``SELFSUP_KEEP_MEMORY=1`` (selfsup's default: freed blocks
reused) and ``=0`` (glibc's thresholds: large blocks mapped afresh and page-faulted in at every step), and
prints both rates and their ratio:
- a SimCLR training step on views already in memory: the convnet at 32 px (batch 256), ResNet-18 with the
  ImageNet stem at 32 px (batch 256) and at 224 px (batch 16);
- the SimCLR views at 224 px of a streamed batch (64 padded 500 x 375 images, uint8), the views alone.

    python benchmarks/malloc.py [--steps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from selfsup.errors import script_main

CASES = [("simclr step, convnet, 32 px, batch 256", "step", "convnet", 32, 256),
         ("simclr step, resnet18, 32 px, batch 256", "step", "resnet18", 32, 256),
         ("simclr step, resnet18, 224 px, batch 16", "step", "resnet18", 224, 16),
         ("simclr views, 224 px, 64 streamed 500x375 images", "views", "", 224, 64)]


def child(kind: str, backbone: str, size: int, batch: int, steps: int) -> None:
    """One case in this process (the thresholds are set, or not, on import by the environment)."""
    import torch

    from selfsup.data.loader import Batch
    from selfsup.data.views import ViewMaker, simclr_views
    from selfsup.malloc import keep_freed_memory
    from selfsup.methods import build_method

    kept = keep_freed_memory()
    torch.manual_seed(0)
    if kind == "step":
        method = build_method("simclr", backbone=backbone, image_size=size, cifar_stem=False)
        method = method.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
        views = [torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last) for _ in range(2)]
        labels = torch.zeros(batch, dtype=torch.long)

        def run():
            loss = method(Batch(views, labels, labels))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        maker = ViewMaker(simclr_views(size))
        images = torch.randint(0, 256, (batch, 3, 375, 500), dtype=torch.uint8)
        sizes = torch.tensor([[375, 500]] * batch)
        g = torch.Generator().manual_seed(0)

        def run():
            maker(images, g, sizes=sizes)
    for _ in range(2):
        run()
    t = time.perf_counter()
    for _ in range(steps):
        run()
    print(json.dumps({"kept": kept, "images_per_s": steps * batch / (time.perf_counter() - t)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, backbone, size, batch = args.child
        return child(kind, backbone, int(size), int(batch), args.steps)
    import torch

    print(f"glibc's freed memory kept (selfsup) against returned (glibc's defaults), {torch.get_num_threads()} "
          f"threads, {args.steps} steps after 2")
    print("| case | kept (img/s) | glibc defaults (img/s) | ratio |\n|---|---|---|---|")
    for name, kind, backbone, size, batch in CASES:
        rates = {}
        for keep in ("1", "0"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", kind,
                                  backbone or "-", str(size), str(batch)],
                                 env={**os.environ, "SELFSUP_KEEP_MEMORY": keep}, capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r["kept"] == (keep == "1"), r
            rates[keep] = r["images_per_s"]
        print(f"| {name} | {rates['1']:.1f} | {rates['0']:.1f} | {rates['1'] / rates['0']:.2f}x |", flush=True)


if __name__ == "__main__":
    script_main(main)
