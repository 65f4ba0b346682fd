"""Evaluate a checkpoint end to end: load, extract (cached), kNN or linear probe;
``patches``: both probes on aggregated patch embeddings (BagSSL, METHODS.md 7.4)."""
from __future__ import annotations

from selfsup.data.datasets import load_dataset
from selfsup.checkpoint import load_backbone, load_checkpoint
from selfsup.errors import SelfSupError
from selfsup.eval.features import extract_features, file_hash
from selfsup.eval.knn import knn_scores, topk_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.patches import aggregated_features


def labelled(dataset, spec: str):
    if (dataset.labels < 0).any():
        raise SelfSupError(f"{spec} has unlabeled images: evaluation needs labels (use a labelled split, e.g. ?split=train)")
    return dataset


def pretraining_patch_size(ckpt: dict) -> int | None:
    """The fixed patch side a checkpoint was pretrained on (``views=patch:SIDE``), else None
    (multi-scale crops, or a checkpoint from elsewhere)."""
    from selfsup.data.views import parse_patch

    config = ckpt.get("config") or {}
    views = str((config.get(config.get("method") or "") or {}).get("views", ""))
    return parse_patch(views.partition(":")[2])[0] if views.startswith("patch:") else None


def evaluate(protocol: str, checkpoint: str, train_spec: str, test_spec: str, tap: str | None = None,
             pool: str = "avg", image_size: int | None = None, device: str = "cpu", batch_size: int = 256,
             k: int = 20, temperature: float = 0.07, epochs: int = 100, lr: float = 0.1,
             cache: bool = True, progress: bool = False, patches: dict | None = None,
             probes: tuple[str, ...] = ("knn", "linear")) -> dict:
    """Run ``protocol`` ("knn", "linear" or "patches") and return its metrics as a dict.

    ``patches`` holds the options of ``aggregated_features`` (num_patches, patch_size,
    aggregate, window, stride, chunk, seed); patch_size "auto" (the default) means the
    checkpoint's pretraining patch side, or multi-scale crops for multi-scale models.
    The patches protocol runs each of ``probes`` on the aggregated features."""
    if protocol not in ("knn", "linear", "patches"):
        raise SelfSupError(f"unknown evaluation {protocol!r}: use knn, linear or patches")
    ckpt = load_checkpoint(checkpoint)
    backbone = load_backbone(checkpoint, ckpt)
    train = labelled(load_dataset(train_spec), train_spec)
    test = labelled(load_dataset(test_spec), test_spec)
    image_size = image_size or (ckpt.get("config") or {}).get("image_size")   # the pretraining view size
    key = file_hash(checkpoint) if cache else None
    info = {"checkpoint": str(checkpoint), "tap": tap or backbone.taps[-1]}
    if protocol == "patches":
        opts = dict(patches or {})
        if opts.get("patch_size", "auto") == "auto":
            opts["patch_size"] = pretraining_patch_size(ckpt)
        common = dict(tap=tap, input_size=image_size, device=device, cache_key=key, progress=progress, **opts)
        xtr, ytr = aggregated_features(backbone, train, **common)
        xte, yte = aggregated_features(backbone, test, **common)
        results = {p: _probe(p, xtr, ytr, xte, yte, k, temperature, epochs, lr) for p in probes}
        return {"protocol": protocol, **results, **info, **opts, "feature_dim": xtr.shape[1],
                "n_train": len(ytr), "n_test": len(yte)}
    common = dict(tap=tap, pool=pool, image_size=image_size, batch_size=batch_size, device=device,
                  cache_key=key, progress=progress)
    xtr, ytr = extract_features(backbone, train, **common)
    xte, yte = extract_features(backbone, test, **common)
    return {"protocol": protocol, **_probe(protocol, xtr, ytr, xte, yte, k, temperature, epochs, lr), **info,
            "feature_dim": xtr.shape[1], "n_train": len(ytr), "n_test": len(yte)}


def _probe(name, xtr, ytr, xte, yte, k, temperature, epochs, lr) -> dict:
    if name == "knn":
        num_classes = int(max(ytr.max(), yte.max())) + 1
        return topk_accuracy(knn_scores(xtr, ytr, xte, k, temperature, num_classes), yte)
    if name == "linear":
        return linear_probe(xtr, ytr, xte, yte, epochs=epochs, lr=lr)
    raise SelfSupError(f"unknown probe {name!r}: use knn or linear")


__all__ = ["evaluate"]
