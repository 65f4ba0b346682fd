"""The engine's CPU speed options, each against the defaults, side by side in one run (issue 20: keep only
what pays on this CPU).

Each case is one short ``pretrain`` through the engine (``selfsup.bench.bench_method``: synthetic in-memory
images, views made on the fly in the loader's thread, the method's defaults at 32 px, batch 256) in a fresh
process, so that nothing one case sets (threads, compiled code, glibc's memory) reaches the next:

- ``defaults``: the engine as it ships;
- ``channels_last=false``: contiguous (NCHW) activations instead of channels-last;
- ``compile=true``: ``torch.compile`` of the backbone (inductor; the compile itself is in the warmup steps);
- ``loader_threads=1`` / ``loader_threads=2``: the intra-op threads of the loader's thread that makes the views
  (0 leaves torch's count, which is also the step's: on two cores both threads then ask for both).

ResNets run with the ImageNet stem (as ``benchmarks/peer.py``), JigClu with the CIFAR stem it needs at 32 px.

The per-step host syncs are not a case here: the engine syncs only on its log steps (``log_every``, 10 by
default), and ``selfsup bench --profile`` times them (0.3 ms of a 271 ms SimCLR step on the convnet).

Each row prints images/s (median of the timed steps) and its ratio to ``defaults``; cases run in turn,
``--rounds`` times, and the table gives the median of the rounds.

    python benchmarks/speed_options.py [--methods simclr,swav,jigclu] [--backbones convnet,resnet18]
        [--steps 10] [--warmup 3] [--rounds 1] [--cases defaults,channels_last=false,...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from selfsup.errors import script_main

CASES = ("defaults", "channels_last=false", "compile=true", "loader_threads=1", "loader_threads=2")


def case_overrides(case: str, method: str, backbone: str) -> list[str]:
    """The settings of one case: the ResNets with their ImageNet stem, as the peer's tables, except for JigClu,
    whose 2 x 2 cells need the larger final map of the CIFAR stem (the default at 32 px)."""
    items = [] if case == "defaults" else [case]
    if backbone.startswith("resnet") and method != "jigclu":
        items.append("cifar_stem=false")
    return items


def child(job: str) -> None:
    """One case in this process: print {"images_per_s": ...} as JSON."""
    import torch

    from selfsup.bench import bench_method

    args = json.loads(job)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_method(args["method"], args["backbone"], args["batch"], 32, args["steps"], args["warmup"],
                              "cpu", Path(tmp), args["overrides"] + ["progress=false"])
    print("RESULT " + json.dumps({"images_per_s": result["images_per_s"]}), flush=True)


def run_case(method: str, backbone: str, case: str, args) -> float | str:
    job = json.dumps({"method": method, "backbone": backbone, "batch": args.batch_size, "steps": args.steps,
                      "warmup": args.warmup, "overrides": case_overrides(case, method, backbone)})
    proc = subprocess.run([sys.executable, __file__, "_child", job], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed: {last[:120]}"
    return json.loads(lines[-1][len("RESULT "):])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="simclr,swav,jigclu")
    parser.add_argument("--backbones", default="convnet,resnet18")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="times every case runs (the table: their median)")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if "defaults" not in cases:
        cases.insert(0, "defaults")
    rows = []
    for backbone in [b for b in args.backbones.split(",") if b]:
        for method in [m for m in args.methods.split(",") if m]:
            rates: dict[str, list] = {c: [] for c in cases}
            for _ in range(args.rounds):
                for case in cases:
                    rates[case].append(run_case(method, backbone, case, args))
            base = [r for r in rates["defaults"] if isinstance(r, float)]
            base_rate = statistics.median(base) if base else None
            for case in cases:
                ok = [r for r in rates[case] if isinstance(r, float)]
                rate = statistics.median(ok) if ok else None
                ratio = f"{rate / base_rate:.2f}x" if rate and base_rate else "-"
                shown = f"{rate:.0f}" if rate else rates[case][0]
                rows.append(f"| {method} | {backbone} | {case} | {shown} | {ratio} |")
                print(rows[-1], flush=True)
    print(f"\nimages/s, batch {args.batch_size}, 32 px, {args.steps} timed steps after {args.warmup}, median of "
          f"{args.rounds} round(s); ratio to the defaults\n")
    print("| method | backbone | case | images/s | vs defaults |\n|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        script_main(child, sys.argv[2])
    else:
        script_main(main)
