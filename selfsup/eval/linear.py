"""Linear probe on frozen, cached features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.eval.checks import at_least_one, positive
from selfsup.eval.knn import topk_accuracy


def check_probe(epochs: int, lr: float) -> None:
    """Refuse a probe that would not train: fewer than one epoch, or a learning rate not above 0."""
    at_least_one("--probe-epochs", epochs, 100)
    positive("--lr", lr, 0.1)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Train a linear classifier on frozen features and report test top-1 / top-5.

    Features are standardised with the training set's mean and std (a BatchNorm
    without affine parameters, frozen after fitting, as in Goyal et al. 2019's
    linear heads); SGD with momentum 0.9 and a cosine schedule per iteration.
    """
    check_probe(epochs, lr)
    g = torch.Generator().manual_seed(seed)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    head = torch.nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=g)
        for start in range(0, len(xtr), batch_size):
            idx = order[start:start + batch_size]
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        scores = head(xte)
    return topk_accuracy(scores, test_labels)
