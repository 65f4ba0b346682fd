"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020).

Two views of every image, drawn from the SimCLR augmentation family (random
resized crop, flip, strong colour distortion, grayscale, blur), go through the
backbone f and the projection MLP g; NT-Xent (eq. 1) pulls the two projections
of an image together against the 2(N-1) views of the other images of the
global batch (gathered across processes, with gradients).
"""
from __future__ import annotations

from dataclasses import dataclass

from selfsup.data.views import ViewMaker, view_recipe
from selfsup.losses import nt_xent
from selfsup.methods.base import Method, MethodConfig, forward_views
from selfsup.models import projection_mlp


@dataclass
class SimCLRConfig(MethodConfig):
    temperature: float = 0.1        # tau of eq. 1 (0.1 with the large-batch LARS recipe)
    proj_hidden_dim: int = 2048     # g: Linear-BN-ReLU-Linear
    proj_dim: int = 128
    views: str = "simclr"           # view recipe (selfsup.data.views.VIEW_RECIPES), e.g. multicrop:2x32+4x16


class SimCLR(Method):
    name = "simclr"
    Config = SimCLRConfig
    # SimCLR App. B.6: LARS, lr = 0.3 x batch / 256, weight decay 1e-6, 10 warmup epochs, cosine.
    defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10,
                          "scale_lr": True}}

    def __init__(self, backbone, cfg: SimCLRConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.projector = projection_mlp(backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim)

    def view_maker(self):
        return ViewMaker(view_recipe(self.cfg.views, self.image_size))

    def forward(self, batch):
        # views of one size in one backbone pass (batch-norm statistics over the 2N views, as SimCLR)
        z = self.projector(forward_views(self.backbone, batch.views)).chunk(len(batch.views))
        if len(z) == 2:
            return {"loss": nt_xent(z[0], z[1], self.cfg.temperature)}
        pairs = [(0, 1)] + [(g, v) for g in (0, 1) for v in range(2, len(z))]
        return {"loss": sum(nt_xent(z[a], z[b], self.cfg.temperature) for a, b in pairs) / len(pairs)}
