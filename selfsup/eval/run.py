"""Evaluate a checkpoint end to end: load, extract (cached), kNN or linear probe (by preset:
``fast`` on cached features, ``moco`` / ``swav`` on augmented views, ``selfsup.eval.linear``);
``patches``: both probes on aggregated patch embeddings (BagSSL, METHODS.md 7.4)."""
from __future__ import annotations

import numpy as np
import torch

from selfsup.data.datasets import load_dataset
from selfsup.checkpoint import load_backbone, load_checkpoint
from selfsup.distributed import resolve_device
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, eval_image_size, finite
from selfsup.eval.features import check_pool, extract_features, file_hash
from selfsup.eval.knn import check_knn, knn_accuracy, knn_scores
from selfsup.eval.linear import augmented_linear_probe, check_probe, get_preset, linear_probe
from selfsup.eval.patches import aggregated_features, check_patches


def labelled(dataset, spec: str):
    if dataset.targets is not None:
        raise SelfSupError(f"{spec} is multi-label (voc07): score it with eval svm or eval lowshot, or use a "
                           f"single-label set")
    if len(dataset.labels) and (dataset.labels < 0).all():
        raise SelfSupError(f"{spec} has no labels (unlabeled data, for pretraining): evaluation needs labelled train "
                           f"and test sets, e.g. a folder of class subfolders or a 'path label' file list")
    if (dataset.labels < 0).any():
        raise SelfSupError(f"{spec} has unlabeled images: evaluation needs a label on every image (a labelled split, "
                           f"e.g. STL-10's ?split=train, or a label on every line of a file list)")
    return dataset


def class_map(train, test, train_spec: str, test_spec: str) -> torch.Tensor | None:
    """The training set's index of each test class, matched by name (datasets number their classes
    by position, e.g. the sorted subfolders of an image folder), or None when both list the same
    classes; test classes the training set lacks, by name or with no training image, are refused."""
    if list(test.classes) == list(train.classes):
        to_train = None
    else:
        index = {name: i for i, name in enumerate(train.classes)}
        unknown = [name for name in test.classes if name not in index]
        if unknown:
            n = len(unknown)
            raise SelfSupError(f"{n} class{'es' if n > 1 else ''} of {test_spec} {'are' if n > 1 else 'is'} not in "
                               f"{train_spec} (first: {unknown[0]!r}): test on classes the training data has, or "
                               f"add them to the training data")
        to_train = torch.tensor([index[name] for name in test.classes], dtype=torch.long)
    train_labels = np.asarray(train.labels)
    counts = np.bincount(train_labels[train_labels >= 0], minlength=len(train.classes))
    tested = np.unique(np.asarray(test.labels))
    tested = tested[tested >= 0]
    tested = tested if to_train is None else to_train.numpy()[tested]
    empty = [train.classes[i] for i in tested if counts[i] == 0]
    if empty:
        n = len(empty)
        raise SelfSupError(f"{n} class{'es' if n > 1 else ''} of {test_spec} {'have' if n > 1 else 'has'} no "
                           f"training image in {train_spec} (first: {empty[0]!r}): test on classes the training "
                           f"data has images of, or add images of them to the training data")
    return to_train


def pretraining_patch_size(ckpt: dict) -> int | None:
    """The fixed patch side a checkpoint was pretrained on (``views=patch:SIDE``), else None
    (multi-scale crops, or a checkpoint from elsewhere)."""
    from selfsup.data.views import parse_patch

    config = ckpt.get("config") or {}
    views = str((config.get(config.get("method") or "") or {}).get("views", ""))
    return parse_patch(views.partition(":")[2])[0] if views.startswith("patch:") else None


def evaluation_settings(protocol: str, pool: str | None = None, image_size: int | None = None, device: str = "cpu",
                        batch_size: int = 256, k: int = 20, temperature: float = 0.07, epochs: int | None = None,
                        lr: float | None = None, probes: tuple[str, ...] = ("knn", "linear"),
                        preset: str | None = None, taps: tuple[str, ...] | None = None, cached: bool = False,
                        seed: int | None = None):
    """``evaluate``'s settings checked, each refused in one line before anything is read (a sweep checks
    its evals with it when the sweep file is read): (device, probe preset, epochs, lr, overrides of the
    preset, the probes used)."""
    device = resolve_device(device)
    if protocol not in ("knn", "linear", "patches"):
        raise SelfSupError(f"unknown evaluation {protocol!r}: use knn, linear or patches")
    used = probes if protocol == "patches" else (protocol,)
    for name in used:
        if name not in ("knn", "linear"):
            raise SelfSupError(f"unknown probe {name!r}: use knn or linear")
    if preset is not None and protocol != "linear":
        raise SelfSupError(f"--preset applies to eval linear only: drop --preset {preset}, or use eval linear")
    if (taps or cached) and protocol != "linear":
        raise SelfSupError("--taps and --cached apply to eval linear only (layer-wise probes): drop them, or use eval linear")
    if "linear" not in used and (epochs is not None or lr is not None):   # they were accepted and ignored
        raise SelfSupError("--probe-epochs and --lr set the linear probe, which this evaluation does not train: "
                           "drop them, or use eval linear (or --probe knn,linear with eval patches)")
    if protocol == "knn" and seed is not None:
        raise SelfSupError("--seed applies to eval linear, patches, cluster and lowshot: eval knn draws nothing at "
                           "random; drop --seed")
    probe = get_preset(preset or ("goyal" if taps else "fast"))
    if taps and not probe.layerwise:
        raise SelfSupError(f"--taps trains Goyal's layer-wise heads: use --preset goyal (or no --preset), or "
                           f"--tap NAME with --preset {probe.name}")
    if cached and not probe.layerwise:
        raise SelfSupError(f"--cached applies to the layer-wise preset goyal: preset {probe.name} "
                           f"{'trains on cached features already' if not probe.augment else 'trains on augmented views'}")
    overrides = {name: value for name, value in (("epochs", epochs), ("lr", lr))
                 if value is not None and value != getattr(probe, name)}
    epochs, lr = probe.epochs if epochs is None else epochs, probe.lr if lr is None else lr
    check_pool(pool or "avg")
    if protocol == "patches" and pool is not None:  # it never reached aggregated_features: refused, not ignored
        raise SelfSupError(f"--pool {pool} applies to eval knn and linear: eval patches embeds every patch by the "
                           f"tap's global average (BagSSL's patch embedding), then averages patches or pools "
                           f"windows itself: drop --pool")
    if probe.layerwise and pool is not None:        # likewise ignored: the layer-wise heads pool every tap their way
        raise SelfSupError("Goyal et al.'s layer-wise probes (--preset goyal, --taps) pool every tap with their fixed "
                           "windows: drop --pool")
    if "knn" in used:
        check_knn(k, temperature)
    if "linear" in used:
        check_probe(epochs, lr)
    at_least_one("--image-size", image_size, 224)
    at_least_one("--batch-size", batch_size, 256)
    return device, probe, epochs, lr, overrides, used


def evaluate(protocol: str, checkpoint: str, train_spec: str, test_spec: str, tap: str | None = None,
             pool: str | None = None, image_size: int | None = None, device: str = "cpu", batch_size: int = 256,
             k: int = 20, temperature: float = 0.07, epochs: int | None = None, lr: float | None = None,
             cache: bool = True, progress: bool = False, patches: dict | None = None,
             probes: tuple[str, ...] = ("knn", "linear"), preset: str | None = None,
             taps: tuple[str, ...] | None = None, cached: bool = False, seed: int | None = None) -> dict:
    """Run ``protocol`` ("knn", "linear" or "patches") and return its metrics as a dict.

    The linear probe follows ``preset`` (fast, moco or swav; None: fast), with ``epochs``
    and ``lr`` (None: the preset's) overriding it; the result names the preset, the
    overrides and the settings used. Only ``eval linear`` takes a preset. ``seed``: the linear probe's draws (its
    head's initial weights, the order of its batches, an augmented preset's views).

    ``patches`` holds the options of ``aggregated_features`` (num_patches, patch_size,
    aggregate, window, stride, chunk, seed); patch_size "auto" (the default) means the
    checkpoint's pretraining patch side, or multi-scale crops for multi-scale models.
    The patches protocol runs each of ``probes`` on the aggregated features.

    ``taps`` (``eval linear --taps``) or the ``goyal`` preset run Goyal et al.'s layer-wise
    probes (``selfsup.eval.layerwise``, METHODS.md 6.2): a head per tap (None: every tap of
    the backbone), on augmented views, or on cached centre-view features with ``cached``.

    Test labels are matched to the training classes by name. Settings that would make
    the result meaningless (no neighbours, an untrained probe, ...) and an absent
    ``device`` (auto, cpu or cuda) are refused before anything runs (``evaluation_settings``)."""
    asked_tap = tap
    device, probe, epochs, lr, overrides, used = evaluation_settings(
        protocol, pool, image_size, device, batch_size, k, temperature, epochs, lr, probes, preset, taps, cached, seed)
    seed = seed or 0
    pool = pool or "avg"
    ckpt = load_checkpoint(checkpoint)
    opts = dict(patches or {})
    if protocol == "patches":
        if opts.get("patch_size", "auto") == "auto":
            opts["patch_size"] = pretraining_patch_size(ckpt)
        check_patches(opts.get("num_patches", 16), opts.get("patch_size"), opts.get("window"), opts.get("stride"),
                      opts.get("chunk", 2048))
    backbone = load_backbone(checkpoint, ckpt)
    tap = tap or ckpt.get("eval_tap") or backbone.default_tap      # the method's evaluation tap, else the last map
    train = labelled(load_dataset(train_spec), train_spec)
    test = labelled(load_dataset(test_spec), test_spec)
    to_train = class_map(train, test, train_spec, test_spec)
    image_size = eval_image_size(ckpt, image_size)        # default: the pretraining size
    key = file_hash(checkpoint) if cache else None
    info = {"checkpoint": str(checkpoint), "tap": tap, "image_size": image_size}
    if protocol == "linear":
        info.update(preset=probe.name, overrides=overrides, probe_epochs=epochs, lr=lr, pool=pool, seed=seed)
    if protocol == "linear" and probe.layerwise:
        from selfsup.eval.layerwise import layerwise_linear_probe

        if asked_tap and not taps:
            taps = (asked_tap,)
        taps = backbone.taps if not taps or tuple(taps) == ("all",) else taps
        result = layerwise_linear_probe(backbone, train, test, taps, not cached, epochs, lr,
                                        image_size, batch_size, device, key, to_train, seed=seed, progress=progress)
        return {"protocol": protocol, **result, "checkpoint": str(checkpoint), "overrides": overrides,
                "image_size": image_size, "n_train": len(train), "n_test": len(test)}
    if protocol == "linear" and probe.augment:
        result = augmented_linear_probe(backbone, train, test, probe, epochs, lr, tap, pool, image_size, batch_size,
                                        device, key, to_train, seed=seed, progress=progress)
        return {"protocol": protocol, **result, **info, "n_train": len(train), "n_test": len(test)}
    if protocol == "patches":
        if image_size is None:                # a foreign state dict: the images' own size, one for both sets
            sizes = [tuple(int(n) for n in d.images.shape[2:4]) for d in (train, test)]
            if sizes[0] != sizes[1]:
                raise SelfSupError(f"eval patches draws patches and windows in pixels, but the training images are "
                                   f"{sizes[0][0]}x{sizes[0][1]} and the test images {sizes[1][0]}x{sizes[1][1]}: "
                                   f"give --image-size SIZE to bring both sets to one size")
        # both sets at the evaluation size before patches and windows are drawn (as extract_features resizes)
        common = dict(tap=tap, input_size=image_size, image_size=image_size, device=device, cache_key=key,
                      progress=progress, **opts)
        xtr, ytr = aggregated_features(backbone, train, **common)
        xte, yte = aggregated_features(backbone, test, **common)
        yte = yte if to_train is None else to_train[yte]
        results = {p: _probe(p, xtr, ytr, xte, yte, k, temperature, epochs, lr, seed) for p in probes}
        return {"protocol": protocol, **results, **info, **opts, "feature_dim": xtr.shape[1],
                "n_train": len(ytr), "n_test": len(yte)}
    common = dict(tap=tap, pool=pool, image_size=image_size, batch_size=batch_size, device=device,
                  cache_key=key, progress=progress)
    xtr, ytr = extract_features(backbone, train, **common)
    xte, yte = extract_features(backbone, test, **common)
    yte = yte if to_train is None else to_train[yte]
    return {"protocol": protocol, **_probe(protocol, xtr, ytr, xte, yte, k, temperature, epochs, lr, seed), **info,
            "feature_dim": xtr.shape[1], "n_train": len(ytr), "n_test": len(yte)}


def _probe(name, xtr, ytr, xte, yte, k, temperature, epochs, lr, seed=0) -> dict:
    finite(xtr, "training features")
    finite(xte, "test features")
    if name == "knn":
        num_classes = int(max(ytr.max(), yte.max())) + 1
        return knn_accuracy(knn_scores(xtr, ytr, xte, k, temperature, num_classes), yte)
    return linear_probe(xtr, ytr, xte, yte, epochs=epochs, lr=lr, seed=seed)


__all__ = ["evaluate"]
