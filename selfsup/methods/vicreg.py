"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022).

Two views (BYOL augmentations, §4.1) go through the backbone and a 3-layer
expander (8192-8192-8192, the last Linear without bias). The loss (eq. 6)
weighs invariance (mean squared error between the two embeddings), variance (a
hinge keeping every dimension's standard deviation over the batch at 1) and
covariance (off-diagonal covariances pushed to 0); variance and covariance use
the global batch. No negatives, no momentum encoder, no stop-gradient.
BagSSL (METHODS.md 7) trains it on fixed-scale patches: ``views=patch:14``.
"""
from __future__ import annotations

from dataclasses import dataclass

from selfsup.losses import vicreg
from selfsup.methods.base import JointEmbeddingConfig, JointEmbeddingMethod


@dataclass
class VICRegConfig(JointEmbeddingConfig):
    sim_weight: float = 25.0        # lambda
    var_weight: float = 25.0        # mu
    cov_weight: float = 1.0         # nu
    proj_hidden_dim: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    proj_last_bias: bool = False
    views: str = "byol"
    joint_pass: bool = False        # the official code forwards each view separately (per-view BN statistics)


class VICReg(JointEmbeddingMethod):
    name = "vicreg"
    Config = VICRegConfig
    # Official recipe: LARS (biases and norms excluded), lr = 0.2 x batch / 256, weight decay 1e-6,
    # 10 warmup epochs, cosine.
    defaults = {"optim": {"name": "lars", "lr": 0.2, "scale_lr": True, "weight_decay": 1e-6, "warmup_epochs": 10}}

    def pair_loss(self, z_a, z_b):
        cfg = self.cfg
        return vicreg(z_a.float(), z_b.float(), cfg.sim_weight, cfg.var_weight, cfg.cov_weight)
