"""Spectral contrastive learning (HaoChen, Wei, Gaidon, Ma, NeurIPS 2021; BagSSL Prop. 3.1).

Two views through the backbone and a projector; the loss rewards the inner
product of the two views of an image and penalises the squared inner product
of views of different images (METHODS.md 7.3, lambda = 1). As in HaoChen et
al.'s official code, projections longer than sqrt(mu) are scaled back onto the
sphere of radius sqrt(mu) before the loss (``mu``; 0 switches this off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfsup.losses import spectral_contrastive
from selfsup.methods.base import JointEmbeddingConfig, JointEmbeddingMethod


@dataclass
class SpectralContrastiveConfig(JointEmbeddingConfig):
    mu: float = 1.0
    proj_hidden_dim: int = 4096
    proj_dim: int = 128
    views: str = "byol"


def clip_norm(z: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rows with an L2 norm above ``max_norm`` rescaled to that norm; the others unchanged."""
    norm = z.norm(dim=1, keepdim=True)
    return torch.where(norm > max_norm, z * (max_norm / norm.clamp(min=1e-12)), z)


class SpectralContrastive(JointEmbeddingMethod):
    name = "spectral_contrastive"
    Config = SpectralContrastiveConfig
    defaults = {"optim": {"name": "lars", "lr": 0.3, "scale_lr": False, "weight_decay": 1e-4, "warmup_epochs": 10}}

    def pair_loss(self, z_a, z_b):
        z_a, z_b = z_a.float(), z_b.float()
        if self.cfg.mu > 0:
            z_a, z_b = clip_norm(z_a, math.sqrt(self.cfg.mu)), clip_norm(z_b, math.sqrt(self.cfg.mu))
        return spectral_contrastive(z_a, z_b)
