"""TCR: total coding rate with invariance (BagSSL §3 and App. C, after NMCE; METHODS.md 7.3).

Two views (BYOL augmentations) go through the backbone and a projector; the
projections are L2-normalised. The loss expands the coding rate
R(Z) = 1/2 logdet(I + d/(B eps) Z^T Z) of each view's batch (so the embeddings
spread over the sphere) and pulls the two views of an image together with
weight lambda (30 on CIFAR, 1920 on ImageNet-100).
"""
from __future__ import annotations

from dataclasses import dataclass

from selfsup.losses import tcr
from selfsup.methods.base import JointEmbeddingConfig, JointEmbeddingMethod


@dataclass
class TCRConfig(JointEmbeddingConfig):
    eps: float = 0.2
    lam: float = 30.0
    proj_hidden_dim: int = 4096     # BagSSL CIFAR projector: Linear-BN-ReLU-Linear 4096 -> 128
    proj_dim: int = 128
    views: str = "byol"


class TCR(JointEmbeddingMethod):
    name = "tcr"
    Config = TCRConfig
    # BagSSL App. C (CIFAR): LARS, lr 0.3 (absolute), weight decay 1e-4, 10 warmup epochs, cosine.
    defaults = {"optim": {"name": "lars", "lr": 0.3, "scale_lr": False, "weight_decay": 1e-4, "warmup_epochs": 10}}

    def pair_loss(self, z_a, z_b):
        return tcr(z_a.float(), z_b.float(), self.cfg.eps, self.cfg.lam)
