"""Evaluate a checkpoint end to end: load, extract (cached), kNN or linear probe."""
from __future__ import annotations

from selfsup.data.datasets import load_dataset
from selfsup.engine.checkpoint import load_backbone, load_checkpoint
from selfsup.errors import SelfSupError
from selfsup.eval.features import extract_features, file_hash
from selfsup.eval.knn import knn_scores, topk_accuracy
from selfsup.eval.linear import linear_probe


def labelled(dataset, spec: str):
    if (dataset.labels < 0).any():
        raise SelfSupError(f"{spec} has unlabeled images: evaluation needs labels (use a labelled split, e.g. ?split=train)")
    return dataset


def evaluate(protocol: str, checkpoint: str, train_spec: str, test_spec: str, tap: str | None = None,
             pool: str = "avg", image_size: int | None = None, device: str = "cpu", batch_size: int = 256,
             k: int = 20, temperature: float = 0.07, epochs: int = 100, lr: float = 0.1,
             cache: bool = True, progress: bool = False) -> dict:
    """Run ``protocol`` ("knn" or "linear") and return its metrics as a dict."""
    if protocol not in ("knn", "linear"):
        raise SelfSupError(f"unknown evaluation {protocol!r}: use knn or linear")
    ckpt = load_checkpoint(checkpoint)
    backbone = load_backbone(checkpoint, ckpt)
    train = labelled(load_dataset(train_spec), train_spec)
    test = labelled(load_dataset(test_spec), test_spec)
    image_size = image_size or (ckpt.get("config") or {}).get("image_size")   # the pretraining view size
    key = file_hash(checkpoint) if cache else None
    common = dict(tap=tap, pool=pool, image_size=image_size, batch_size=batch_size, device=device,
                  cache_key=key, progress=progress)
    xtr, ytr = extract_features(backbone, train, **common)
    xte, yte = extract_features(backbone, test, **common)
    if protocol == "knn":
        num_classes = int(max(ytr.max(), yte.max())) + 1
        result = topk_accuracy(knn_scores(xtr, ytr, xte, k, temperature, num_classes), yte)
    else:
        result = linear_probe(xtr, ytr, xte, yte, epochs=epochs, lr=lr)
    return {"protocol": protocol, **result, "checkpoint": str(checkpoint), "tap": tap or backbone.taps[-1],
            "feature_dim": xtr.shape[1], "n_train": len(ytr), "n_test": len(yte)}


__all__ = ["evaluate"]
