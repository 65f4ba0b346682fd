"""Clustering quality against the labels: NMI, ARI (scikit-learn) and the accuracy of the best
one-to-one matching of clusters to classes (the Hungarian algorithm, scipy's
``linear_sum_assignment``), the three numbers DeepCluster, SeLa and their successors report."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def hungarian_accuracy(labels, clusters) -> float:
    """The share of samples whose cluster maps to their class under the best one-to-one map
    (clusters beyond the number of classes map to nothing and count as errors)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    counts = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(counts, (c, y), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def cluster_scores(labels, clusters) -> dict[str, float]:
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters)),
            "accuracy": hungarian_accuracy(labels, clusters)}
