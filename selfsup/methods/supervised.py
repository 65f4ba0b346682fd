"""Supervised training: the baseline of every comparison in the seeds.

Goyal et al. 2019 compare every self-supervised model to the same network trained
with labels, and SwAV and JigClu report their semi-supervised results against
supervised training on the same 1% / 10% of the labels. This method is that
baseline, on the same engine (DDP, mixed precision, exact resume, the same
checkpoint format, so every ``selfsup eval`` protocol applies to it).

One view per image: RandomResizedCrop (``scale_min``, 1) and a horizontal flip,
the standard ImageNet training augmentation (He et al. 2016), without colour
changes. The head is linear on the backbone's pooled features (``head=linear``,
as every torchvision classifier) or an MLP with one hidden layer (``head=mlp``:
Linear-BN-ReLU-Linear). The loss is the cross-entropy with the image's label
(optionally label-smoothed). The labels are the dataset's: a class folder, a
``filelist`` with any integer labels (pseudo-labels of a clustering are labels
too), or a per-class ``fraction=`` of them for the 1% and 10% settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewMaker, ViewSpec
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig

HEADS = ("linear", "mlp")


@dataclass
class SupervisedConfig(MethodConfig):
    head: str = "linear"               # linear | mlp (Linear-BN-ReLU-Linear)
    hidden_dim: int = 2048             # the MLP head's hidden width
    num_classes: Optional[int] = None  # None: from the dataset's labels (largest label + 1)
    scale_min: float = 0.08            # RandomResizedCrop scale (scale_min, 1), with flip
    label_smoothing: float = 0.0


def classifier_head(in_dim: int, num_classes: int, head: str = "linear", hidden_dim: int = 2048) -> nn.Module:
    """A linear classifier, or an MLP with one hidden layer (Linear-BN-ReLU-Linear)."""
    if head not in HEADS:
        raise SelfSupError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    if head == "linear":
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, num_classes))


def dataset_classes(labels) -> int:
    """The number of classes of a labelled set: its largest label + 1 (labels may skip values, e.g.
    pseudo-labels with an empty cluster). Unlabeled images (-1) are refused in one line."""
    labels = np.asarray(labels)
    if len(labels) == 0 or (labels < 0).any():
        missing = int((labels < 0).sum()) if len(labels) else 0
        raise SelfSupError(f"supervised training needs a label for every image, and {missing} of {len(labels)} have "
                           "none: use a labelled set (class folders, a filelist with labels, cifar10, ...)")
    return int(labels.max()) + 1


class Supervised(Method):
    name = "supervised"
    Config = SupervisedConfig
    # The ResNet ImageNet recipe (He et al. 2016; Goyal et al.'s supervised baseline): SGD, momentum 0.9,
    # lr 0.1 per 256 images, weight decay 1e-4, 90 epochs (steps at 30 and 60 there; cosine here [A]).
    defaults = {"optim": {"name": "sgd", "lr": 0.1, "scale_lr": True, "weight_decay": 1e-4, "momentum": 0.9,
                          "warmup_epochs": 0, "exclude_bias_norm": False}, "epochs": 90}

    @classmethod
    def fit_dataset(cls, cfg: SupervisedConfig, dataset) -> SupervisedConfig:
        needed = dataset_classes(dataset.labels)
        if cfg.num_classes is None:
            cfg.num_classes = needed
        elif cfg.num_classes < needed:
            raise SelfSupError(f"supervised.num_classes={cfg.num_classes} but the labels go up to {needed - 1}: "
                               f"set supervised.num_classes={needed} or drop it")
        return cfg

    def __init__(self, backbone, cfg: SupervisedConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        if cfg.num_classes is None or cfg.num_classes < 1:
            raise SelfSupError("supervised.num_classes is not set: give a labelled dataset, or supervised.num_classes=K")
        if not 0 < cfg.scale_min <= 1:
            raise SelfSupError(f"supervised.scale_min={cfg.scale_min} must be in (0, 1]: e.g. 0.08")
        self.head = classifier_head(backbone.out_dim, cfg.num_classes, cfg.head, cfg.hidden_dim)

    def view_maker(self):
        return ViewMaker([ViewSpec(self.image_size, scale=(self.cfg.scale_min, 1.0), jitter_prob=0.0, gray_prob=0.0)])

    def forward(self, batch):
        logits = self.head(self.backbone(batch.views[0]))
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.cfg.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(1) == batch.labels).float().mean()
        return {"loss": loss, "train_top1": acc}
