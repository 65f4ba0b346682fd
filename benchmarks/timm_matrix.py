"""Which methods run on which timm backbones: one training step of every method on each model.

Each cell is one ``selfsup pretrain`` run through the engine (resolved config with the method's
defaults, its small-image defaults at 32 px, checkpoint written) of one step: 16 synthetic
32 px images, batch 16, one epoch, on the CPU, with ``--backbone timm:MODEL``. A cell reads
"runs" (with the step's loss), or the one-line error the method gives for that backbone. The
distill student regresses a convnet teacher's features (a checkpoint written first). Prints a
markdown table, method x model.

    OMP_NUM_THREADS=1 python benchmarks/timm_matrix.py [--models resnet10t,vit_small_patch16_224] [--size 32]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from selfsup.config import resolve_config
from selfsup.data.datasets import load_dataset
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError, script_main
from selfsup.methods import get_method

METHODS = ("simclr", "byol", "vicreg", "tcr", "spectral_contrastive", "moco_v2", "jigclu", "swav", "deepcluster_v2",
           "sela_v2", "jigsaw", "jigsaw_pp", "colorization", "supervised", "distill")
MODELS = ("resnet10t", "mobilenetv3_small_050", "vit_small_patch16_224")
# only what 16 images need (prototype counts below the image count, a queue shorter than the data)
SMALL = {"deepcluster_v2": {"deepcluster_v2.nmb_prototypes": "[8,8,8]"},
         "sela_v2": {"sela_v2.nmb_prototypes": "[8,8,8]"},
         "swav": {"swav.nmb_prototypes": 8}, "moco_v2": {"moco_v2.queue_size": 32}}


def one_step(method: str, backbone: str, data: str, out: Path, teacher: str | None) -> str:
    items = {"method": method, "data": data, "backbone": backbone, "batch_size": 16, "epochs": 1, "out": str(out),
             "progress": False, "log_every": 1, "device": "cpu", **SMALL.get(method, {})}
    if method == "distill":
        items["distill.teacher"] = teacher
    cfg = resolve_config(get_method(method), overrides=[f"{k}={v}" for k, v in items.items()],
                         image_size_of=lambda spec: load_dataset(spec).image_size)
    try:
        trainer = Trainer(cfg)
        t = time.perf_counter()
        trainer.fit()
    except SelfSupError as exc:
        return f"refused: {exc}"
    except Exception as exc:                          # a bug, not a refusal: shown in the table as such
        return f"CRASH {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    seconds = time.perf_counter() - t
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    loss = losses[-1] if losses else math.nan
    return f"runs (loss {loss:.3g}, {seconds:.1f} s)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="timm model names, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    models, methods = args.models.split(","), args.methods.split(",")
    data = f"synthetic:16?classes=4&size={args.size}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = None
        if "distill" in methods:                     # a convnet teacher, as `selfsup transfer` would give
            overrides = ["method=simclr", f"data={data}", "backbone=convnet", "batch_size=16", "epochs=0",
                         f"out={tmp / 'teacher'}", "progress=false", "device=cpu"]
            Trainer(resolve_config(get_method("simclr"), overrides=overrides)).fit()
            teacher = str(tmp / "teacher" / "last.pt")
        cells = {}
        for model in models:
            for method in methods:
                cells[method, model] = one_step(method, f"timm:{model}", data, tmp / f"{model}-{method}", teacher)
                print(f"{method} x {model}: {cells[method, model]}", flush=True)
    print(f"\none step at {args.size} px, batch 16, CPU\n")
    print("| method | " + " | ".join(f"timm:{m}" for m in models) + " |")
    print("|---|" + "---|" * len(models))
    for method in methods:
        print(f"| {method} | " + " | ".join(cells[method, m].replace("|", "/") for m in models) + " |")


if __name__ == "__main__":
    script_main(main)
