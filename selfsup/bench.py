"""`selfsup bench`: the training-step throughput of every method beside the supervised step.

Each method trains through the engine exactly as ``selfsup pretrain`` does (its defaults, its
small-image recipe at 64 px or less, its views drawn on the fly, the optimiser and schedule), with
one backbone, batch and image size, on in-memory synthetic images (``synthetic:N``: no decode
cost, so the figure is the step, augmentation included). The first ``warmup`` steps are dropped;
the table gives the median images/s of the rest, the step time, and the step's cost as a multiple
of the supervised step (cross-entropy on a linear head: the floor every method pays).

Methods whose clustering needs more images than the run has (prototype counts above the image
count, a MoCo queue longer than the data) get smaller counts, listed under the table.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from selfsup.errors import SelfSupError

BENCH_METHODS = ("supervised", "simclr", "byol", "vicreg", "tcr", "spectral_contrastive", "moco_v2", "jigclu",
                 "swav", "deepcluster_v2", "sela_v2", "jigsaw", "jigsaw_pp", "colorization")


def _fits(method: str, cfg, images: int) -> dict[str, str]:
    """Overrides that let a clustering method run on ``images`` images (only where its count exceeds them)."""
    from omegaconf import OmegaConf

    changes = {}
    protos = OmegaConf.select(cfg, f"{method}.nmb_prototypes")
    if protos is not None:
        counts = list(protos) if OmegaConf.is_config(protos) else [protos]
        if max(counts) > images // 2:
            small = [min(c, images // 2) for c in counts]
            changes[f"{method}.nmb_prototypes"] = str(small if OmegaConf.is_config(protos) else small[0])
    queue = OmegaConf.select(cfg, f"{method}.queue_size")
    if queue is not None and queue > images:
        changes[f"{method}.queue_size"] = str(images - images % cfg.batch_size)
    return changes


def _bench_config(method: str, backbone: str, batch_size: int, size: int, steps: int, warmup: int, device: str,
                  folder: Path, extra: list[str] | None):
    """The config of a one-epoch ``pretrain`` of ``steps + warmup`` batches, and the counts changed to fit."""
    from selfsup.config import resolve_config
    from selfsup.data.datasets import load_dataset
    from selfsup.methods import get_method

    images = batch_size * (steps + warmup)
    items = {"method": method, "data": f"synthetic:{images}?classes=10&size={size}", "backbone": backbone,
             "batch_size": batch_size, "epochs": 1, "out": str(folder / method), "progress": False,
             "log_every": 1, "device": device}
    overrides = [f"{k}={v}" for k, v in items.items()] + list(extra or [])
    size_of = lambda spec: load_dataset(spec).image_size   # noqa: E731
    cls = get_method(method)
    changes = _fits(method, resolve_config(cls, overrides=overrides, image_size_of=size_of), images)
    cfg = resolve_config(cls, overrides=overrides + [f"{k}={v}" for k, v in changes.items()], image_size_of=size_of)
    return cfg, changes


def bench_method(method: str, backbone: str, batch_size: int, size: int, steps: int, warmup: int,
                 device: str, folder: Path, extra: list[str] | None = None) -> dict:
    """One short ``pretrain`` of ``method``: {"images_per_s", "step_ms", "changes"} (median after ``warmup``)."""
    from selfsup.engine.trainer import Trainer

    cfg, changes = _bench_config(method, backbone, batch_size, size, steps, warmup, device, folder, extra)
    Trainer(cfg).fit()
    rates = [json.loads(line)["images_per_s"] for line in (folder / method / "metrics.jsonl").read_text().splitlines()
             if '"images_per_s"' in line][warmup:]
    if not rates:
        raise SelfSupError(f"bench: {method} logged no timed step: use --steps 1 or more")
    rate = statistics.median(rates)
    return {"images_per_s": rate, "step_ms": 1000 * batch_size / rate, "changes": changes}


PARTS = ("data wait", "forward and loss", "backward", "optimizer", "logging and host syncs")


def profile_method(method: str, backbone: str, batch_size: int, size: int, steps: int, warmup: int,
                   device: str, folder: Path, extra: list[str] | None = None) -> dict:
    """The step of ``method`` split into its parts, in ms per step (mean after ``warmup``):

    - ``data + augmentation``: one batch read and augmented, timed on its own (the loader's
      thread does this while the previous step trains; ``data wait`` is what the step waits);
    - ``data wait``, ``forward and loss`` (of which ``backbone forward``), ``backward``,
      ``optimizer``, ``logging and host syncs``: timed inside the engine's loop
      (``Trainer.clock``), with ``log_every=1`` as ``selfsup bench``;
    - ``step``: their sum, and ``images_per_s`` from it."""
    from selfsup.engine.clock import StepClock
    from selfsup.engine.trainer import Trainer

    cfg, changes = _bench_config(method, backbone, batch_size, size, steps, warmup, device, folder, extra)
    trainer = Trainer(cfg)
    loader = trainer.loader
    indices = loader.batch_indices(0)
    t = time.perf_counter()
    for step in range(min(2, len(indices))):
        loader.load(0, step, indices[step])
    augment_s = (time.perf_counter() - t) / min(2, len(indices))
    clock = StepClock(trainer.device, warmup=warmup)
    trainer.clock = clock
    backbone_taps = trainer.backbone.forward_taps          # every backbone call goes through forward_taps

    def timed_taps(*args, **kwargs):
        with clock("backbone forward"):
            return backbone_taps(*args, **kwargs)

    trainer.backbone.forward_taps = timed_taps
    trainer.fit()
    n = clock.timed_steps
    if n < 1:
        raise SelfSupError(f"bench --profile: {method} ran no timed step: use --steps 1 or more")
    ms = {part: 1000 * clock.seconds.get(part, 0.0) / n for part in PARTS + ("backbone forward",)}
    step_ms = sum(ms[p] for p in PARTS)
    return {"data + augmentation": 1000 * augment_s, **ms, "step": step_ms,
            "images_per_s": 1000 * batch_size / step_ms, "changes": changes}


def bench(methods=BENCH_METHODS, backbone: str = "convnet", batch_size: int = 256, size: int = 32, steps: int = 5,
          warmup: int = 2, device: str = "cpu", extra: list[str] | None = None, log=print,
          profile: bool = False) -> dict[str, dict]:
    """{method: bench_method(...)} (or ``profile_method`` with ``profile``) for ``supervised`` and ``methods``."""
    from selfsup.methods import get_method

    if steps < 1 or warmup < 0 or batch_size < 2:
        raise SelfSupError("bench needs --steps 1 or more, --warmup 0 or more and --batch-size 2 or more")
    if size < 1:
        raise SelfSupError(f"--image-size {size}: give a side of 1 px or more, e.g. --image-size 32")
    methods = list(dict.fromkeys(["supervised"] + list(methods)))      # each once, the baseline first
    for m in methods:                                                  # every name before any timing
        get_method(m)
    run = profile_method if profile else bench_method
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            t = time.perf_counter()
            results[m] = run(m, backbone, batch_size, size, steps, warmup, device, Path(tmp), extra)
            log(f"bench {m}: {results[m]['images_per_s']:.0f} img/s ({time.perf_counter() - t:.0f} s)")
    return results


def table(results: dict[str, dict], backbone: str, batch_size: int, size: int, steps: int) -> str:
    """The markdown table: images/s, step time, and the step against the supervised step."""
    base = results["supervised"]["step_ms"]
    rows = [f"{backbone}, batch {batch_size}, {size} px, median of {steps} steps per method",
            "", "| method | images/s | step (ms) | step / supervised step |", "|---|---|---|---|"]
    for m, r in results.items():
        rows.append(f"| {m} | {r['images_per_s']:.0f} | {r['step_ms']:.0f} | {r['step_ms'] / base:.2f} |")
    notes = [f"{m}: {', '.join(f'{k}={v}' for k, v in r['changes'].items())}" for m, r in results.items() if r["changes"]]
    if notes:
        rows += ["", "Smaller counts for the synthetic set: " + "; ".join(notes)]
    return "\n".join(rows)


def profile_table(results: dict[str, dict], backbone: str, batch_size: int, size: int, steps: int) -> str:
    """The markdown table of ``bench --profile``: ms per step of each part, per method."""
    cols = ("data + augmentation",) + PARTS[:2] + ("backbone forward",) + PARTS[2:]
    rows = [f"{backbone}, batch {batch_size}, {size} px, ms per step (mean of {steps} steps after the warmup); "
            "data + augmentation runs in the loader's thread, beside the step, and data wait is what the step waits "
            "for it; backbone forward is part of forward and loss",
            "", "| method | " + " | ".join(cols) + " | step | images/s |", "|---" * (len(cols) + 3) + "|"]
    for m, r in results.items():
        rows.append(f"| {m} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + f" | {r['step']:.1f} | "
                    f"{r['images_per_s']:.0f} |")
    return "\n".join(rows)
