"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020).

Two views of every image, drawn from the SimCLR augmentation family (random
resized crop, flip, strong colour distortion, grayscale, blur), go through the
backbone f and the projection MLP g; NT-Xent (eq. 1) pulls the two projections
of an image together against the 2(N-1) views of the other images of the
global batch (gathered across processes, with gradients). With more views
(multi-crop, or BagSSL's n fixed-scale patches) the loss is averaged over pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

from selfsup.losses import nt_xent
from selfsup.methods.base import JointEmbeddingConfig, JointEmbeddingMethod


@dataclass
class SimCLRConfig(JointEmbeddingConfig):
    temperature: float = 0.1        # tau of eq. 1 (0.1 with the large-batch LARS recipe)
    proj_hidden_dim: int = 2048     # g: Linear-BN-ReLU-Linear
    proj_dim: int = 128
    views: str = "simclr"           # view recipe (selfsup.data.views.VIEW_RECIPES), e.g. multicrop:2x32+4x16 or patch:14


class SimCLR(JointEmbeddingMethod):
    name = "simclr"
    Config = SimCLRConfig
    # SimCLR App. B.6: LARS, lr = 0.3 x batch / 256, weight decay 1e-6, 10 warmup epochs, cosine.
    defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10,
                          "scale_lr": True}}

    def pair_loss(self, z_a, z_b):
        return nt_xent(z_a, z_b, self.cfg.temperature)
