"""``selfsup eval cluster``: k-means on a checkpoint's frozen features, scored against the labels."""
from __future__ import annotations

import time

import numpy as np
import torch.nn.functional as F

from selfsup.checkpoint import load_backbone, load_checkpoint
from selfsup.cluster.metrics import cluster_scores
from selfsup.data.datasets import load_dataset
from selfsup.distributed import resolve_device
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, eval_image_size, finite
from selfsup.eval.features import extract_features, file_hash
from selfsup.kmeans import kmeans, pca_whiten


def evaluate_clustering(checkpoint: str, data_spec: str, clusters: int | None = None, tap: str | None = None,
                        pool: str = "avg", iterations: int = 20, spherical: bool = False, pca: int | None = None,
                        seed: int = 0, backend: str = "auto", image_size: int | None = None, device: str = "cpu",
                        batch_size: int = 256, cache: bool = True, progress: bool = False) -> dict:
    """k-means with ``clusters`` centroids (default: the number of classes) on the features of
    ``data_spec`` at ``tap`` (default: the checkpoint's evaluation tap), optionally L2-normalised
    (``spherical``) and PCA-whitened to ``pca`` dimensions first (DeepCluster's preprocessing);
    NMI, ARI and Hungarian accuracy against the labels."""
    device = resolve_device(device)
    at_least_one("--clusters", clusters, 10)
    at_least_one("--pca", pca, 256)
    at_least_one("--image-size", image_size, 224)
    if iterations < 0:
        raise SelfSupError(f"--iterations must be at least 0, got {iterations}: use e.g. --iterations 20")
    ckpt = load_checkpoint(checkpoint)
    backbone = load_backbone(checkpoint, ckpt)
    tap = tap or ckpt.get("eval_tap") or backbone.default_tap
    data = load_dataset(data_spec)
    labels = np.asarray(data.labels)
    if data.targets is not None or (labels < 0).any():
        raise SelfSupError(f"{data_spec} has no single label per image: eval cluster scores clusters against "
                           f"labels, so give a labelled single-label set")
    k = len(np.unique(labels)) if clusters is None else clusters
    if not 1 <= k <= len(labels):
        raise SelfSupError(f"--clusters {k} must be between 1 and the {len(labels)} images")
    size = eval_image_size(ckpt, image_size)
    feats, _ = extract_features(backbone, data, tap=tap, pool=pool, image_size=size, batch_size=batch_size,
                                device=device, cache_key=file_hash(checkpoint) if cache else None, progress=progress)
    x = finite(feats.float(), "features")
    if pca is not None:
        x = pca_whiten(x, pca)     # whitened rows, L2-normalised (DeepCluster); refuses pca > min(N - 1, dim) and
                                   # directions of numerically zero variance (duplicates), so pca is the dimension used
    elif spherical:
        x = F.normalize(x, dim=1)
    t = time.perf_counter()
    try:
        _, assignment = kmeans(x.to(device), k, iterations, spherical=spherical, seed=seed, backend=backend)
    except ValueError as exc:
        raise SelfSupError(str(exc)) from None
    seconds = time.perf_counter() - t
    return {"protocol": "cluster", "checkpoint": str(checkpoint), "tap": tap, "clusters": k, "iterations": iterations,
            "spherical": spherical, "pca": pca, "image_size": size, "n": len(labels), "feature_dim": int(x.shape[1]),
            "kmeans_s": round(seconds, 3), **cluster_scores(labels, assignment.cpu().numpy())}
