"""`selfsup demo`: methods of the founding papers on real data (Fashion-MNIST), every
evaluation protocol, and pictures, in minutes on a CPU.

SimCLR, JigClu and SwAV pretrain the small convnet on the 60,000 training images,
each for a fixed epoch budget (``DEMO_RUNS``). Their frozen features, and those of the
same convnet at its random initialisation, then go through every protocol on the
10,000 test images, all on the same features (the checkpoint's evaluation tap,
average-pooled):

- kNN (k=20, T=0.07, cosine) and the linear probe (30 epochs, standardised features);
- linear SVMs of Goyal et al. 2019 (METHODS.md 6.1: one-vs-rest, cost by 3-fold CV) on
  ``SVM_PER_CLASS`` training images per class, scored as test mAP;
- the low-shot curve (METHODS.md 6.3, Places style): SVMs on k labelled images per
  class, k = 1 .. 96, test top-1 averaged over ``LOWSHOT_SAMPLES`` draws.

The run directory receives the checkpoints, results.json and report.md with the loss
curves, the accuracy bars, the low-shot curve and a nearest-neighbour retrieval grid
(random weights against the best method).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import SelfSupError

DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"

COMMON = ["backbone=convnet", "log_every=5"]
# Each method's epochs and settings, chosen with experiments/tune_demo.py (kNN of 5,000 held-out training
# images against the other 55,000; the test images are never read; README "The demo's settings"). Short
# runs on Fashion-MNIST gain most from more, smaller steps: batch 64 (SimCLR) and 32 (JigClu) instead of 256.
# SimCLR's views are BagSSL's fixed-scale patches: 16 x 16 px of the 28 px images at random positions, not
# resized (evaluated on the whole 28 px image): an epoch takes about 0.6 of the time at 28 px, so it runs 8
# epochs; JigClu and SwAV run two (0.5 and 0.7 points below three on the tuning split).
DEMO_RUNS: dict[str, tuple[int, list[str]]] = {
    # LARS at lr 2.0 (not scaled), 16 px patches with BYOL's colour augmentation, T 0.2, a 512-wide projector
    "simclr": (8, ["batch_size=64", "optim.name=lars", "optim.lr=2.0", "optim.weight_decay=1e-6",
                   "optim.warmup_epochs=0.5", "optim.scale_lr=false", "simclr.views=patch:16", "simclr.view_size=16",
                   "simclr.temperature=0.2", "simclr.proj_hidden_dim=512"]),
    "jigclu": (2, ["batch_size=32"]),          # the method's defaults otherwise (lr 0.03 per 256 images)
    "swav": (2, ["batch_size=256"]),           # the method's small-image recipe
}
KNN_K, KNN_T, LINEAR_EPOCHS = 20, 0.07, 30
LOWSHOT_KS, LOWSHOT_SAMPLES = (1, 2, 4, 8, 16, 32, 64, 96), 3
SVM_PER_CLASS, SVM_COSTS = 200, "0.1,1,10,100"
QUERIES, NEIGHBOURS = 6, 8


def find_fashion_mnist(data: str | None) -> str:
    candidates = [data] if data else [DEBIAN_PATH, str(Path.home() / ".cache/selfsup/debian" / DEBIAN_PATH.lstrip("/"))]
    for path in candidates:
        if path and Path(path).is_dir() and any(Path(path).glob("train-images-idx3-ubyte*")):
            return str(Path(path).resolve())      # one spelling: a rerun from elsewhere reuses the same runs
    raise SelfSupError("Fashion-MNIST not found: run `make demo` (it installs Debian's dataset-fashion-mnist) "
                       "or pass --data DIR holding the IDX files")


def check_methods(methods) -> list[str]:
    methods = [m for m in methods if m]                # "--methods=" names none
    unknown = [m for m in methods if m not in DEMO_RUNS]
    if unknown or not methods:
        raise SelfSupError(f"the demo has no recipe for {', '.join(unknown) or 'an empty list'}: choose among "
                           f"{', '.join(DEMO_RUNS)} (e.g. --methods simclr,jigclu)")
    return methods


def svm_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> np.ndarray:
    """``per_class`` random training rows of every class (all of a smaller class), sorted."""
    g = np.random.default_rng(seed)
    y = labels.numpy()
    rows = [g.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(rows))


def score_features(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor) -> dict:
    """Every protocol on one pair of feature arrays: kNN, linear, SVM mAP and the low-shot top-1 per k."""
    from selfsup.eval.knn import knn_scores, topk_accuracy
    from selfsup.eval.linear import linear_probe
    from selfsup.eval.lowshot import lowshot_benchmark
    from selfsup.eval.svm import svm_benchmark

    classes = int(max(ytr.max(), yte.max())) + 1
    out = {"knn": topk_accuracy(knn_scores(xtr, ytr, xte, KNN_K, KNN_T, classes), yte)["top1"],
           "linear": linear_probe(xtr, ytr, xte, yte, epochs=LINEAR_EPOCHS)["top1"]}
    one_hot = np.eye(classes, dtype=np.int8)              # one-vs-rest targets of the SVMs
    Ytr, Yte = one_hot[ytr.numpy()], one_hot[yte.numpy()]
    rows = svm_subset(ytr, SVM_PER_CLASS)
    out["svm_map"] = svm_benchmark(xtr.numpy()[rows], Ytr[rows], xte.numpy(), Yte, SVM_COSTS)["map"]
    low = lowshot_benchmark(xtr.numpy(), Ytr, xte.numpy(), Yte, LOWSHOT_KS, LOWSHOT_SAMPLES, SVM_COSTS,
                            style="places")
    out["lowshot"] = {int(k): r["top1"]["mean"] for k, r in low["ks"].items()}
    return out


def checkpoint_features(checkpoint: Path, train, test, device: str):
    """Features (cached) and labels of ``train`` and ``test`` at the checkpoint's evaluation tap, average-pooled."""
    from selfsup.checkpoint import load_backbone, load_checkpoint
    from selfsup.eval.checks import eval_image_size
    from selfsup.eval.features import extract_features, file_hash

    ckpt = load_checkpoint(checkpoint)
    backbone = load_backbone(checkpoint, ckpt)
    tap = ckpt.get("eval_tap") or backbone.default_tap
    common = dict(tap=tap, image_size=eval_image_size(ckpt), device=device,
                  cache_key=file_hash(checkpoint))
    xtr, ytr = extract_features(backbone, train, **common)
    xte, yte = extract_features(backbone, test, **common)
    return xtr, ytr, xte, yte


def nearest_training_images(xtr: torch.Tensor, xte: torch.Tensor, queries: np.ndarray, k: int) -> torch.Tensor:
    """The indices (queries x k) of each query's k nearest training images by cosine similarity."""
    a = torch.nn.functional.normalize(xtr, dim=1)
    q = torch.nn.functional.normalize(xte[torch.as_tensor(queries)], dim=1)
    return (q @ a.T).topk(k, dim=1).indices


def query_images(labels: torch.Tensor, count: int) -> np.ndarray:
    """One test image of each of the first ``count`` classes (the first of its class)."""
    y = labels.numpy()
    return np.array([int(np.flatnonzero(y == c)[0]) for c in np.unique(y)[:count]])


def pretrain(method: str, run_dir: Path, train_spec: str, epochs: int, device: str,
             extra: list[str] | None = None) -> float | None:
    """Train (or resume, or reuse a finished) run of ``method``; returns its seconds of pretraining (of every
    process that trained it, when it was interrupted and resumed), or None when it was interrupted (SIGTERM /
    SIGINT: its checkpoint is saved, and a rerun resumes it). A run in ``run_dir`` of other settings (data,
    epochs, ...) is refused in one line."""
    from omegaconf import OmegaConf

    from selfsup.checkpoint import load_checkpoint, write_text_atomic
    from selfsup.config import check_config, resolve_config
    from selfsup.data.datasets import load_dataset
    from selfsup.engine.rundir import config_changes, refuse_changes
    from selfsup.engine.trainer import Trainer
    from selfsup.methods import get_method

    settings = COMMON + DEMO_RUNS.get(method, (0, []))[1] + (extra or []) + [f"out={run_dir}"]
    flags = {"method": method, "data": train_spec, "epochs": epochs, "device": device}
    # as `selfsup pretrain` resolves it: the method's defaults, its small-image values, then the settings
    cfg = resolve_config(get_method(method), None, flags, settings,
                         image_size_of=lambda spec: load_dataset(spec).image_size)
    check_config(cfg)
    timing, partial = run_dir / "seconds", run_dir / "seconds.partial"
    cfg.resume = (run_dir / "last.pt").exists()
    if cfg.resume:                    # a run of other settings (data, epochs, ...) is neither reused nor continued
        ckpt = load_checkpoint(run_dir / "last.pt")
        refuse_changes(config_changes(ckpt.get("config") or {}, OmegaConf.to_container(cfg)), False,
                       f"the demo's run in {run_dir}", f"remove {run_dir} to train it again with these, or choose "
                       f"another --out")
        if timing.exists() and ckpt.get("epoch") == cfg.epochs and not ckpt.get("step_in_epoch"):
            return float(timing.read_text())
    before = float(partial.read_text()) if cfg.resume and partial.exists() else 0.0   # of interrupted processes
    t0 = time.perf_counter()
    status = Trainer(cfg).fit()
    seconds = before + time.perf_counter() - t0
    if status != "done":
        if (run_dir / "last.pt").exists():          # what a rerun resumes: its seconds count too
            write_text_atomic(partial, f"{seconds:.1f}\n")
        return None
    write_text_atomic(timing, f"{seconds:.1f}\n")
    partial.unlink(missing_ok=True)
    return seconds


def run_demo(out: str = "runs/demo", data: str | None = None, epochs: int | None = None, device: str = "auto",
             methods=None) -> dict | None:
    """Pretrain ``methods`` (default: all of ``DEMO_RUNS``), score them and random weights with
    every protocol, write the report; returns ``results[name]`` (knn, linear, svm_map, lowshot,
    pretrain_s, eval_s), or None when a pretraining was interrupted (nothing is scored; a rerun
    resumes it). ``epochs`` overrides every method's budget. A rerun reuses finished runs."""
    from selfsup.data.datasets import load_dataset
    from selfsup.distributed import resolve_device

    methods = check_methods(DEMO_RUNS if methods is None else methods)
    if epochs is not None and epochs < 1:
        raise SelfSupError(f"--epochs {epochs}: the demo pretrains every method for at least one epoch (random "
                           f"weights are its baseline already): give 1 or more, or leave each method's budget")
    root = find_fashion_mnist(data)
    train_spec, test_spec = f"fashion-mnist:{root}?split=train", f"fashion-mnist:{root}?split=test"
    out = Path(out)
    eval_device = str(resolve_device(device))
    t_start = time.perf_counter()
    runs: dict[str, float] = {}
    budgets: dict[str, int] = {}
    for name in ["random"] + methods:
        # random weights: the initialisation every method starts from (same seed), saved by a 0-epoch run
        method = "simclr" if name == "random" else name
        n = budgets[name] = 0 if name == "random" else DEMO_RUNS[name][0] if epochs is None else epochs
        label = "random initialisation" if name == "random" else f"{name} pretraining, {n} epochs"
        print(f"[demo] {label} -> {out / name}", flush=True)
        runs[name] = pretrain(method, out / name, train_spec, n, device)
        if runs[name] is None:
            print(f"[demo] interrupted: {out / name / 'last.pt'} saved; run the same command again to resume",
                  flush=True)
            return None

    train, test = load_dataset(train_spec), load_dataset(test_spec)
    results, feats = {}, {}
    for name in runs:
        print(f"[demo] evaluating {name}: kNN, linear, SVM, low-shot", flush=True)
        t0 = time.perf_counter()
        xtr, ytr, xte, yte = checkpoint_features(out / name / "last.pt", train, test, eval_device)
        results[name] = {**score_features(xtr, ytr, xte, yte), "pretrain_s": runs[name]}
        results[name]["eval_s"] = time.perf_counter() - t0
        feats[name] = (xtr, xte)
        print(f"[demo] {name}: kNN {results[name]['knn'] * 100:.1f}  linear {results[name]['linear'] * 100:.1f}  "
              f"SVM mAP {results[name]['svm_map'] * 100:.1f}  low-shot(1) {results[name]['lowshot'].get(1, 0) * 100:.1f}",
              flush=True)
    total = time.perf_counter() - t_start
    best = max(methods, key=lambda m: results[m]["knn"])
    write_report(out, results, {m: budgets[m] for m in methods}, best, feats, train, test, yte, total)
    print(f"[demo] report: {out / 'report.md'} ({total / 60:.1f} min)")
    return results


def results_table(results: dict) -> str:
    ks = sorted({k for r in results.values() for k in r["lowshot"]})
    shown = [k for k in ks if k in (1, 4, 16, 96)] or ks
    head = ["weights", "pretraining", "evaluation", "kNN", "linear", "SVM mAP"] + [f"low-shot {k}/class" for k in shown]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    random_knn = results["random"]["knn"]
    for name, r in results.items():
        gain = "" if name == "random" else f" ({(r['knn'] - random_knn) * 100:+.1f})"
        cells = [name, f"{r['pretrain_s']:.0f} s", f"{r['eval_s']:.0f} s", f"{r['knn'] * 100:.1f}{gain}",
                 f"{r['linear'] * 100:.1f}",
                 f"{r['svm_map'] * 100:.1f}"] + [f"{r['lowshot'][k] * 100:.1f}" for k in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict, budgets: dict[str, int], best: str, feats: dict, train, test, yte,
                 total: float) -> None:
    from selfsup.checkpoint import write_text_atomic
    from selfsup.report.plots import accuracy_bars, loss_curves, read_metrics, series_plot
    from selfsup.report.viz import retrieval_png

    methods = list(budgets)

    loss_curves({m: read_metrics(out / m / "metrics.jsonl") for m in methods}, out / "loss.png")
    accuracy_bars({name: {"kNN": r["knn"], "linear": r["linear"], "SVM mAP": r["svm_map"],
                          "low-shot 1/class": r["lowshot"].get(1, 0.0)} for name, r in results.items()},
                  out / "accuracy.png", "Fashion-MNIST test: methods against random weights", ylabel="%")
    series_plot({name: [(k, 100 * v) for k, v in r["lowshot"].items()] for name, r in results.items()},
                "labelled training images per class", "test top-1 (%)", out / "lowshot.png")
    queries = query_images(yte, QUERIES)
    grids = {name: nearest_training_images(feats[name][0], feats[name][1], queries, NEIGHBOURS)
             for name in ("random", best)}
    retrieval_png(test, train, queries, grids, out / "retrieval.png")
    table = results_table(results)
    budget = ", ".join(f"{m} {n}" for m, n in budgets.items())
    report = f"""# selfsup demo: {', '.join(methods)} on Fashion-MNIST

Backbone `convnet` (4 conv blocks), pretrained on the 60,000 training images (epochs: {budget}),
then frozen; every protocol runs on the same features (the method's evaluation tap, average-pooled) and
scores the 10,000 test images: kNN (k={KNN_K}, T={KNN_T}, cosine; the gain over random weights in
brackets), a linear probe ({LINEAR_EPOCHS} epochs on standardised features), linear SVMs (Goyal et al.
2019: one-vs-rest, cost by 3-fold CV over {SVM_COSTS}, on {SVM_PER_CLASS} training images per class; test
mAP) and the low-shot SVMs (k labelled images per class, top-1, mean of {LOWSHOT_SAMPLES} draws; cost
chosen on the test set, as Goyal et al.'s code). All figures are percentages.

{table}

The whole demo took {total / 60:.1f} min; the pretraining and evaluation columns are each run's wall-clock
times (evaluation: feature extraction and the four protocols).

## Low-shot: few labels are where self-supervision shows

![low-shot](lowshot.png)

## Accuracy

![accuracy](accuracy.png)

## Nearest training images of test queries: random weights, then {best}

![retrieval](retrieval.png)

## Training loss

![loss](loss.png)
"""
    write_text_atomic(out / "report.md", report)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    print("\n" + table + "\n")


__all__ = ["checkpoint_features", "find_fashion_mnist", "pretrain", "results_table", "run_demo", "score_features"]
