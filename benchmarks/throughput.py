"""Training throughput: a supervised step against a SimCLR step, side by side.

Same backbone, batch and image size; views are already in memory, so this
measures the model step (forward, loss, backward, optimiser) only.
Target: SimCLR views/s >= 0.9 x supervised images/s (projector + loss <= 10%).

    python benchmarks/throughput.py [--backbone resnet18] [--batch-size 256] [--size 32] [--steps 6]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from selfsup.data.loader import Batch
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--cifar-stem", action="store_true")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    b, s = args.batch_size, args.size
    cl = torch.channels_last

    backbone = build_backbone(args.backbone, cifar_stem=args.cifar_stem).to(memory_format=cl)
    head = torch.nn.Linear(backbone.out_dim, 10)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randn(b, 3, s, s).contiguous(memory_format=cl)
    y = torch.randint(0, 10, (b,))

    def supervised():
        loss = F.cross_entropy(head(backbone(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    method = build_method("simclr", backbone=args.backbone, cifar_stem=args.cifar_stem, image_size=s).to(memory_format=cl)
    mopt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    half = b // 2                      # SimCLR: b views = b/2 images x 2 views, same tensor sizes as supervised
    batch = Batch([x[:half], x[half:]], y[:half], torch.arange(half))

    def simclr():
        loss = method(batch)["loss"]
        mopt.zero_grad(set_to_none=True)
        loss.backward()
        mopt.step()

    t = interleaved({"supervised": supervised, "simclr": simclr}, args.steps)
    t_sup, t_sim = t["supervised"], t["simclr"]
    sup_rate, sim_rate = b / t_sup, b / t_sim
    print(f"backbone {args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, {b} images of {s}px per step, "
          f"{torch.get_num_threads()} threads, 3 rounds of {args.steps} steps each, median")
    print(f"supervised step : {t_sup * 1000:8.1f} ms  {sup_rate:8.1f} images/s")
    print(f"SimCLR step     : {t_sim * 1000:8.1f} ms  {sim_rate:8.1f} views/s")
    print(f"ratio SimCLR views/s / supervised images/s = {sim_rate / sup_rate:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
