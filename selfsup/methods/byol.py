"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

§3.1 An online network (backbone, projector g, predictor q) predicts the target
network's projection of the other view; the target network is an exponential
moving average of the online backbone and projector and receives no gradient.
The loss (eq. 2) is 2 - 2 cos(q(z_1), sg(z'_2)), symmetrised over the two views
(eq. 3). §3.2 The target momentum tau follows a cosine from ``base_momentum``
to 1 over training. BagSSL trains it on fixed-scale patches: ``views=patch:14``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.data.views import ViewMaker, view_recipe
from selfsup.losses import byol
from selfsup.methods.base import Method, MethodConfig, cosine_momentum, ema_update_, embed_views, momentum_copy, view_pairs
from selfsup.models import projection_mlp


@dataclass
class BYOLConfig(MethodConfig):
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    base_momentum: float = 0.99     # tau_base (METHODS.md 7.3, as solo-learn; the BYOL paper uses 0.996 on ImageNet)
    views: str = "byol"
    joint_pass: bool = False        # the official code runs each view separately (per-view BN statistics)


class BYOL(Method):
    name = "byol"
    Config = BYOLConfig
    # BYOL App. C: LARS (biases and norms excluded), lr = 0.2 x batch / 256, weight decay 1.5e-6,
    # 10 warmup epochs, cosine.
    defaults = {"optim": {"name": "lars", "lr": 0.2, "scale_lr": True, "weight_decay": 1.5e-6, "warmup_epochs": 10}}
    # 64 px or less: solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml: LARS, lr 1.0 at batch 256,
    # weight decay 1e-5). The ImageNet lr learns little in a short CIFAR run (README, "The first run learns").
    small_image_defaults = {"optim": {"lr": 1.0, "weight_decay": 1e-5}}

    def __init__(self, backbone, cfg: BYOLConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.projector = projection_mlp(backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = projection_mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target = momentum_copy(nn.ModuleDict({"backbone": backbone, "projector": self.projector}))
        self.momentum = cfg.base_momentum           # of the last update, for the log

    def view_maker(self):
        return ViewMaker(view_recipe(self.cfg.views, self.image_size))

    def forward(self, batch):
        joint = self.cfg.joint_pass
        z = embed_views(self.backbone, self.projector, batch.views, joint)
        p = self.predictor(torch.cat(z)).chunk(len(z)) if joint else [self.predictor(v) for v in z]
        with torch.no_grad():
            target = embed_views(self.target["backbone"], self.target["projector"], batch.views, joint)
        pairs = view_pairs(batch.views)
        loss = sum(byol(p[a], target[b]) + byol(p[b], target[a]) for a, b in pairs) / len(pairs)   # eq. 3
        return {"loss": loss, "momentum": torch.tensor(self.momentum)}

    def on_step_end(self, step: int, total_steps: int) -> None:
        # tau is a function of the step alone, so a resumed run continues the schedule exactly
        self.momentum = cosine_momentum(self.cfg.base_momentum, step, total_steps)
        ema_update_(self.target["backbone"], self.backbone, self.momentum)
        ema_update_(self.target["projector"], self.projector, self.momentum)
