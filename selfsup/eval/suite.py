"""Goyal et al. 2019's frozen-feature suite on a checkpoint: VOC07 linear SVMs per tap
(``eval svm``, METHODS.md 6.1) and low-shot SVMs (``eval lowshot``, 6.3).

Every tap is extracted in one pass over each dataset with Goyal's fixed average pooling
(``pool="goyal"``, about 9k dims, cached per tap), then handed to ``svm_benchmark`` /
``lowshot_benchmark``, which L2-normalise, fit and score. Multi-label sets (``voc07:``)
give their 1 / 0 / -1 targets; single-label sets are one-vs-rest, with the test classes
matched to the training classes by name.
"""
from __future__ import annotations

import numpy as np

from selfsup.checkpoint import load_backbone, load_checkpoint
from selfsup.data.datasets import label_matrix, load_dataset
from selfsup.distributed import resolve_device
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, eval_image_size
from selfsup.eval.features import extract_tap_features, file_hash
from selfsup.eval.lowshot import KS, lowshot_benchmark
from selfsup.eval.svm import check_jobs, check_solver, parse_costs, svm_benchmark


def default_svm_taps(backbone) -> tuple[str, ...]:
    """Goyal's VOC07 taps: every stage's map (conv1, res2 .. res5 on a ResNet), not the pools."""
    return tuple(t for t in backbone.taps if not t.startswith("pool"))


def targets_of(train, test, train_spec: str, test_spec: str) -> tuple[np.ndarray, np.ndarray]:
    """The training and test target matrices (1 present, 0 absent, -1 difficult) in the
    training set's class order."""
    if (train.targets is None) != (test.targets is None):
        raise SelfSupError(f"{train_spec} and {test_spec} must both be multi-label (voc07:) or both single-label")
    if train.targets is not None:
        if list(train.classes) != list(test.classes):
            raise SelfSupError(f"{test_spec} lists other classes than {train_spec}: use the same VOC class files")
        return label_matrix(train), label_matrix(test)
    from selfsup.eval.run import class_map, labelled

    labelled(train, train_spec)
    labelled(test, test_spec)
    to_train = class_map(train, test, train_spec, test_spec)
    ytr = label_matrix(train)
    labels = np.asarray(test.labels, dtype=np.int64)
    labels = labels if to_train is None else to_train.numpy()[labels]
    yte = np.zeros((len(labels), len(train.classes)), dtype=np.int8)
    yte[np.arange(len(labels)), labels] = 1
    return ytr, yte


def _features(checkpoint, train_spec, test_spec, taps, image_size, device, batch_size, cache, progress, default):
    device = resolve_device(device)
    at_least_one("--image-size", image_size, 224)
    ckpt = load_checkpoint(checkpoint)
    image_size = eval_image_size(ckpt, image_size)        # default: the pretraining size
    backbone = load_backbone(checkpoint, ckpt)
    taps = default(backbone) if not taps or tuple(taps) == ("all",) else tuple(taps)
    taps = backbone.check_taps(list(taps))
    train, test = load_dataset(train_spec), load_dataset(test_spec)
    ytr, yte = targets_of(train, test, train_spec, test_spec)
    key = file_hash(checkpoint) if cache else None
    common = dict(pool="goyal", image_size=image_size, batch_size=batch_size, device=device, cache_key=key,
                  progress=progress)
    xtr, _ = extract_tap_features(backbone, train, taps, **common)
    xte, _ = extract_tap_features(backbone, test, taps, **common)
    info = {"checkpoint": str(checkpoint), "taps": list(taps), "n_train": len(train), "n_test": len(test),
            "classes": list(train.classes), "multi_label": train.targets is not None, "image_size": image_size,
            "device": str(device)}
    return taps, xtr, xte, ytr, yte, info


def check_svm_settings(costs: str = "goyal", n_jobs: int | None = -1, solver: str = "sklearn",
                       image_size: int | None = None, device: str = "cpu", batch_size: int = 256) -> list[float]:
    """The costs of ``evaluate_svm``'s settings, each refused in one line before anything is read (a sweep
    checks its svm evals with it when the sweep file is read)."""
    check_jobs(n_jobs)
    check_solver(solver)
    resolve_device(device)
    at_least_one("--image-size", image_size, 224)
    at_least_one("--batch-size", batch_size, 256)
    return parse_costs(costs)


def evaluate_svm(checkpoint: str, train_spec: str, test_spec: str, taps=None, costs: str = "goyal",
                 image_size: int | None = None, device: str = "cpu", batch_size: int = 256, cache: bool = True,
                 n_jobs: int | None = -1, solver: str = "sklearn", progress: bool = False) -> dict:
    """VOC07 SVMs (METHODS.md 6.1) on every tap of ``taps`` (None: ``default_svm_taps``):
    per tap the test mAP, the per-class results and the timings (with the share in CV)."""
    costs = check_svm_settings(costs, n_jobs, solver, image_size, device, batch_size)
    taps, xtr, xte, ytr, yte, info = _features(checkpoint, train_spec, test_spec, taps, image_size, device,
                                               batch_size, cache, progress, default_svm_taps)
    per_tap = {}
    for tap in taps:
        result = svm_benchmark(xtr[tap].numpy(), ytr, xte[tap].numpy(), yte, costs, n_jobs=n_jobs, solver=solver,
                               device=info["device"] if solver == "torch" else None, class_names=info["classes"])
        result["feature_dim"] = int(xtr[tap].shape[1])
        per_tap[tap] = result
    return {"protocol": "svm", **info, "costs": costs, "solver": solver, "per_tap": per_tap}


def evaluate_lowshot(checkpoint: str, train_spec: str, test_spec: str, taps=None, ks=KS, num_samples: int = 5,
                     costs: str = "goyal", image_size: int | None = None, device: str = "cpu", batch_size: int = 256,
                     cache: bool = True, n_jobs: int | None = -1, seed: int = 0, progress: bool = False) -> dict:
    """Low-shot SVMs (METHODS.md 6.3) on every tap of ``taps`` (None: the last two stages, res4
    and res5 on a ResNet, as VISSL's low-shot config): VOC-style sampling (k positives and
    19k negatives per class) on multi-label sets, k images per class on single-label ones."""
    costs = parse_costs(costs)
    check_jobs(n_jobs)
    taps, xtr, xte, ytr, yte, info = _features(checkpoint, train_spec, test_spec, taps, image_size, device,
                                               batch_size, cache, progress, lambda b: default_svm_taps(b)[-2:])
    style = "voc" if info["multi_label"] else "places"
    per_tap = {tap: lowshot_benchmark(xtr[tap].numpy(), ytr, xte[tap].numpy(), yte, ks, num_samples, costs, style,
                                      n_jobs=n_jobs, seed=seed, class_names=info["classes"]) for tap in taps}
    return {"protocol": "lowshot", **info, "style": style, "costs": costs, "num_samples": num_samples,
            "per_tap": per_tap}


def format_svm(result: dict) -> str:
    """One markdown table: test mAP per tap, with its time and the share spent in CV."""
    lines = ["| tap | dims | VOC07 SVM mAP (%) | seconds | in CV |", "|---|---|---|---|---|"]
    for tap, r in result["per_tap"].items():
        t = r["timings"]
        lines.append(f"| {tap} | {r['feature_dim']} | {r['map'] * 100:.1f} | {t['total_s']:.0f} | "
                     f"{t['cv_s'] / max(t['total_s'], 1e-9):.0%} |")
    return "\n".join(lines)


def format_lowshot(result: dict) -> str:
    """One markdown table: low-shot mAP (mean +- std over the samples) per tap and k, then the
    k values skipped (larger than the smallest class) with the reason; the cost is chosen on
    the test set, as Goyal's code does."""
    taps = list(result["per_tap"])
    ks = list(next(iter(result["per_tap"].values()))["ks"]) if taps else []
    places = result["style"] == "places"
    metric = "mAP / top-1 (%)" if places else "mAP (%)"
    lines = ["| k | " + " | ".join(f"{tap} {metric}" for tap in taps) + " |", "|---" * (len(taps) + 1) + "|"]
    for k in ks:
        cells = []
        for tap in taps:
            r = result["per_tap"][tap]["ks"][k]
            cell = f"{r['mean'] * 100:.1f} +- {r['std'] * 100:.1f}"
            cells.append(cell + (f" / {r['top1']['mean'] * 100:.1f}" if places else ""))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    skipped = next(iter(result["per_tap"].values()))["skipped"] if taps else []     # the same at every tap
    if skipped:
        lines.append("\n" + "\n".join(s["note"] for s in skipped))
    lines.append(f"\n{result['num_samples']} samples per k; the cost of each k is chosen on the test set "
                 f"(Goyal et al.'s protocol, not cross-validation).")
    return "\n".join(lines)


__all__ = ["evaluate_lowshot", "evaluate_svm", "format_lowshot", "format_svm"]
