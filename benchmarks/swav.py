"""SwAV costs, measured side by side in one run.

1. Sinkhorn-Knopp on B x K scores (default 4096 x 3000, 3 iterations; the paper
   reports 35 ms on its GPU), linear and log space, and its share of a SwAV
   training step at that batch. A step at batch B is estimated from the
   per-image cost of a step at a small batch (convolutions scale linearly with
   the batch); target: Sinkhorn <= 2% of the step.
2. Multi-crop: the step with 2 x 224 + 6 x 96 crops against 2 x 224 on the same
   backbone, next to the ratio of their pixels (the paper claims a small
   increase in cost for a large gain).

    python benchmarks/swav.py [--backbone resnet50] [--batch-size 8] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import time

import torch

from selfsup.data.loader import Batch
from selfsup.data.views import parse_crops
from selfsup.errors import script_main
from selfsup.losses import sinkhorn
from selfsup.methods import build_method
from throughput import interleaved


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_sinkhorn(b: int, k: int, iterations: int, log_space: bool, device, repeats: int = 5) -> float:
    scores = torch.nn.functional.normalize(torch.randn(b, 128, device=device), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(k, 128, device=device), dim=1).T
    sinkhorn(scores, 0.05, iterations, log_space)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        sinkhorn(scores, 0.05, iterations, log_space)
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def swav_step(crops: str, args, device):
    size = parse_crops(crops)[0][1]
    method = build_method("swav", backbone=args.backbone, image_size=size, crops=crops,
                          freeze_prototypes_niters=0).to(device).to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, device=device)
    views = [v.contiguous(memory_format=torch.channels_last)
             for v in method.view_maker()(images, torch.Generator(device=device).manual_seed(0))]
    batch = Batch(views, torch.zeros(args.batch_size, dtype=torch.long), torch.arange(args.batch_size))
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss = method(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
    return step


def pixels(crops: str) -> int:
    return sum(n * s * s for n, s in parse_crops(crops))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8, help="images per timed training step")
    parser.add_argument("--sinkhorn-batch", type=int, default=4096)
    parser.add_argument("--prototypes", type=int, default=3000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    b, k = args.sinkhorn_batch, args.prototypes
    lin = time_sinkhorn(b, k, args.iterations, False, device)
    log = time_sinkhorn(b, k, args.iterations, True, device)
    print(f"device {device}, {torch.get_num_threads()} threads")
    print(f"Sinkhorn {b} x {k}, {args.iterations} iterations: linear {lin * 1000:.1f} ms, log space {log * 1000:.1f} ms "
          f"(paper: 35 ms on its GPU)")

    multi, plain = "2x224+6x96", "2x224"
    t = interleaved({multi: swav_step(multi, args, device), plain: swav_step(plain, args, device)}, args.steps,
                    rounds=3, warmup=1)
    per_image = t[multi] / args.batch_size
    step_at_b = per_image * b
    print(f"SwAV step, {args.backbone}, batch {args.batch_size}: {multi} {t[multi] * 1000:.0f} ms, "
          f"{plain} {t[plain] * 1000:.0f} ms")
    print(f"step at batch {b} (per-image cost x {b}): {step_at_b:.1f} s; Sinkhorn share "
          f"{100 * 2 * lin / step_at_b:.3f}% for the 2 assignment crops (target <= 2%)")
    print(f"multi-crop / 2x224 step = {t[multi] / t[plain]:.3f}; pixels ratio = {pixels(multi) / pixels(plain):.3f}")


if __name__ == "__main__":
    script_main(main)
