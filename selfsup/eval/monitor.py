"""Watch a run learn: the kNN top-1 of the backbone on a small labelled subset, during pretraining.

``monitor.knn=SPEC`` names a labelled set; a seeded, class-balanced subset of
``monitor.images`` of its images is split in halves, the kNN memory and the
queries, and every ``monitor.every`` epochs both go through the frozen backbone
(eval mode, no gradients, no feature cache: the weights change) at its
evaluation tap. About 2,000 forward passes an epoch: a fraction of a percent
of a CIFAR-10 epoch of two-view training. The number tracks learning; report
figures with ``selfsup eval`` on a held-out split.
"""
from __future__ import annotations

import numpy as np

from selfsup.data.datasets import load_dataset
from selfsup.data.subsets import fraction_per_class, holdout_split
from selfsup.errors import SelfSupError
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_scores, topk_accuracy


class KnnMonitor:
    """Call it with the backbone after an epoch: {"monitor_knn_top1": top-1} every ``every`` epochs."""

    def __init__(self, spec: str, images: int = 2000, every: int = 1, k: int = 20, temperature: float = 0.07,
                 seed: int = 0):
        if images < 2 or every < 1:
            raise SelfSupError(f"monitor.images={images} and monitor.every={every}: use at least 2 images and 1 epoch")
        data = load_dataset(spec)
        if (data.labels < 0).any():
            raise SelfSupError(f"monitor.knn={spec} has unlabeled images: give a labelled split, e.g. ?part=val")
        data = data.subset(fraction_per_class(data.labels, min(1.0, images / len(data)), seed))
        memory, queries = holdout_split(data.labels, val_fraction=0.5, seed=seed)
        self.memory, self.queries = data.subset(memory), data.subset(queries)
        if getattr(data, "streaming", False):              # decoded once (resize, centre crop), kept in memory
            self.memory, self.queries = self.memory.to_memory(), self.queries.to_memory()
        for part in (self.memory, self.queries):          # small: held in memory for the whole run
            part.images = np.ascontiguousarray(np.asarray(part.images))
        self.every, self.k, self.temperature = every, k, temperature
        self.num_classes = len(data.classes)

    def __call__(self, backbone, epoch: int, tap: str, image_size: int, device) -> dict[str, float]:
        if (epoch + 1) % self.every:
            return {}
        common = dict(tap=tap, image_size=image_size, device=device)
        xm, ym = extract_features(backbone, self.memory, **common)
        xq, yq = extract_features(backbone, self.queries, **common)
        scores = knn_scores(xm, ym, xq, self.k, self.temperature, self.num_classes)
        return {"monitor_knn_top1": topk_accuracy(scores, yq, ks=(1,))["top1"]}
