"""Weighted k-nearest-neighbour classifier on frozen features.

The protocol of Wu et al. 2018 (NPID), as solo-learn's WeightedKNNClassifier:
L2-normalised features, cosine similarity, the k most similar training samples
each vote for their class with weight exp(sim / T).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.eval.checks import at_least_one, positive


def check_knn(k: int, temperature: float) -> None:
    """Refuse a kNN that cannot vote: fewer than one neighbour, or a temperature not above 0."""
    at_least_one("--k", k, 20)
    positive("--temperature", temperature, 0.07)


@torch.no_grad()
def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
               k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
               chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test x C): sum over the k nearest neighbours of exp(cos / T)."""
    check_knn(k, temperature)
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train))
    out = []
    for start in range(0, len(test), chunk):
        sim = test[start:start + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(len(top_idx), num_classes, device=sim.device)
        scores.scatter_add_(1, train_labels[top_idx], weights)
        out.append(scores)
    return torch.cat(out)


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Predicted labels (N_test) of the weighted cosine kNN (NPID / solo-learn protocol).

    >>> pred = knn_predict(torch.randn(100, 16), torch.randint(0, 3, (100,)), torch.randn(5, 16))
    """
    return knn_scores(train_feats, train_labels, test_feats, k, temperature).argmax(1)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Top-k accuracies of class scores; a class scored -inf is never a hit, whatever its rank."""
    out = {}
    for k in ks:
        if k <= scores.shape[1]:
            top = scores.topk(k, dim=1)
            hit = ((top.indices == labels[:, None]) & (top.values > float("-inf"))).any(1)
            out[f"top{k}"] = hit.float().mean().item()
    return out


def knn_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 of kNN class scores (``knn_scores``): a class no neighbour voted for is not a hit,
    even where it ties into the top 5."""
    return topk_accuracy(scores.masked_fill(scores == 0, float("-inf")), labels)
