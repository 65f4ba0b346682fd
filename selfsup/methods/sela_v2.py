"""SeLa-v2 (Caron et al. 2020, App. A; METHODS.md 5.9).

DeepCluster-v2 with the assignment step of SeLa (Asano et al. 2020): at the
start of every epoch, for each of the 3 heads, the memory-bank embeddings are
scored against that head's current prototypes and the Sinkhorn-Knopp algorithm
equipartitions the whole dataset over the K prototypes (eq. 3-5 with N samples
instead of a batch, iterated until the marginals converge); the codes are
rounded to hard labels by argmax. The prototypes are trained by SGD as in
SwAV (normalised at every step, frozen for the first epoch,
``freeze_prototypes_epochs``, or ``freeze_prototypes_niters`` iterations), not set to centroids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from selfsup.losses import sinkhorn
from selfsup.methods.deepcluster_v2 import DeepClusterV2, DeepClusterV2Config
from selfsup.methods.prototypes import SMALL_IMAGE_VIEWS, normalize_rows_, prototype_scores
from selfsup.methods.swav import frozen_steps


@dataclass
class SeLaV2Config(DeepClusterV2Config):
    epsilon: float = 0.05             # SeLa's lambda = 1 / epsilon (lambda 25 <-> epsilon 0.04)
    sinkhorn_iterations: int = 100    # over the whole dataset: iterate to convergence
    log_space: Optional[bool] = None
    freeze_prototypes_epochs: float = 1.0            # as SwAV (about one epoch)
    freeze_prototypes_niters: Optional[int] = None   # or this many iterations, when set


class SeLaV2(DeepClusterV2):
    name = "sela_v2"
    Config = SeLaV2Config
    trainable_prototypes = True
    collapse_remedies = ("lower epsilon (e.g. epsilon=0.03), freeze the prototypes longer, or use fewer prototypes "
                         "(about 10x the classes)")
    small_image_defaults = {"sela_v2": SMALL_IMAGE_VIEWS}            # 64 px or less: SwAV's CIFAR advice

    @torch.no_grad()
    def head_labels(self, h: int, bank: torch.Tensor, g: torch.Generator):
        """Sinkhorn over the whole bank against head h's current prototypes, rounded to hard labels."""
        cfg, head = self.cfg, self.heads[h]
        normalize_rows_(head.weight)
        codes = sinkhorn(prototype_scores(head, bank), cfg.epsilon, cfg.sinkhorn_iterations, cfg.log_space)
        return codes.argmax(dim=1), codes

    def __init__(self, backbone, cfg: SeLaV2Config, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.freeze_steps = cfg.freeze_prototypes_niters or 0    # in epochs: set once the run's length is known

    def get_extra_state(self):
        return {**super().get_extra_state(), "freeze_steps": self.freeze_steps}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.freeze_steps = state["freeze_steps"]

    def on_epoch_start(self, epoch: int, loader) -> None:
        self.freeze_steps = frozen_steps(self.cfg, len(loader))
        super().on_epoch_start(epoch, loader)

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_steps:
            for head in self.heads:
                head.weight.grad = None
