"""Training-step cost of each method against a plain supervised step, side by side.

Same backbone, batch of B images and image size; views are prepared in memory
beforehand (JigClu's montage is built inside its step, so it is counted), so
this measures forward, loss, backward and optimiser only. Targets:
- SimCLR (2B views) views/s >= 0.9 x supervised images/s: projector + loss + gather <= 10%;
- JigClu step <= 1.15 x the supervised step, and <= 0.6 x SimCLR's two-view step
  (JigClu forwards one batch of B montages).

    python benchmarks/throughput.py [--backbone resnet18] [--batch-size 256] [--size 32] [--steps 3]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from selfsup.data.loader import Batch
from selfsup.errors import script_main
from selfsup.methods import build_method
from selfsup.models import build_backbone


def interleaved(steps_by_name: dict, steps: int, rounds: int = 3, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each function, timed in alternating rounds so that
    drifts of the machine (clock, other load) hit all of them alike."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - t) / steps)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def method_step(name: str, args, images: torch.Tensor):
    method = build_method(name, backbone=args.backbone, cifar_stem=args.cifar_stem, image_size=args.size)
    method = method.to(memory_format=torch.channels_last)
    views = [v.contiguous(memory_format=torch.channels_last) for v in method.view_maker()(images, torch.Generator().manual_seed(0))]
    batch = Batch(views, torch.zeros(len(images), dtype=torch.long), torch.arange(len(images)))
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = method(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--cifar-stem", action="store_true")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default="simclr,jigclu")
    args = parser.parse_args()
    torch.manual_seed(0)
    b, s = args.batch_size, args.size
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)

    backbone = build_backbone(args.backbone, cifar_stem=args.cifar_stem).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(backbone.out_dim, 10)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randn(b, 3, s, s).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,))

    def supervised():
        loss = F.cross_entropy(head(backbone(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = {"supervised": supervised}
    for name in args.methods.split(","):
        steps[name] = method_step(name, args, images)
    t = interleaved(steps, args.steps)
    views = {"supervised": 1, "simclr": 2, "jigclu": 1}
    print(f"backbone {args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, batch of {b} images of {s}px, "
          f"{torch.get_num_threads()} threads, 3 rounds of {args.steps} steps each, median")
    for name, sec in t.items():
        rate = views.get(name, 1) * b / sec
        print(f"{name:<11} step {sec * 1000:8.1f} ms  {rate:8.1f} {'views' if name != 'supervised' else 'images'}/s"
              f"  {sec / t['supervised']:.3f} x supervised step")
    if "simclr" in t:
        print(f"SimCLR views/s / supervised images/s = {2 * t['supervised'] / t['simclr']:.3f} (target >= 0.90)")
    if "jigclu" in t:
        print(f"JigClu step / supervised step = {t['jigclu'] / t['supervised']:.3f} (target <= 1.15)")
    if "jigclu" in t and "simclr" in t:
        print(f"JigClu step / SimCLR step = {t['jigclu'] / t['simclr']:.3f} (target <= 0.60)")


if __name__ == "__main__":
    script_main(main)
