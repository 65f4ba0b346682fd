"""Barlow Twins (Zbontar et al., ICML 2021) as a method of your own: the example of docs/add_a_method.md."""
from dataclasses import dataclass

from selfsup.data.views import ViewMaker, view_recipe
from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.base import forward_views
from selfsup.models import projection_mlp


@dataclass
class BarlowTwinsConfig(MethodConfig):
    proj_dim: int = 2048      # projector width (8192 in the paper)
    lambd: float = 5e-3       # weight of the off-diagonal terms (eq. 1)
    views: str = "byol"       # the paper uses BYOL's augmentations


@register_method
class BarlowTwins(Method):
    name = "barlow_twins"
    Config = BarlowTwinsConfig
    defaults = {"optim": {"name": "lars", "lr": 0.2, "weight_decay": 1.5e-6, "warmup_epochs": 10, "scale_lr": True}}

    def __init__(self, backbone, cfg, image_size):
        super().__init__(backbone, cfg, image_size)
        self.projector = projection_mlp(backbone.out_dim, cfg.proj_dim, cfg.proj_dim, num_layers=3)

    def view_maker(self):                      # hook 1: how a uint8 batch becomes views
        return ViewMaker(view_recipe(self.cfg.views, self.image_size))

    def forward(self, batch):                  # hook 2: the loss of one step (eq. 1)
        z_a, z_b = self.projector(forward_views(self.backbone, batch.views)).chunk(2)
        z_a, z_b = [(z - z.mean(0)) / z.std(0, correction=0).clamp_min(1e-6) for z in (z_a, z_b)]
        c = z_a.T @ z_b / len(z_a)             # the cross-correlation matrix C
        on_diag = (1 - c.diagonal()).pow(2).sum()
        off_diag = c.pow(2).sum() - c.diagonal().pow(2).sum()
        return {"loss": on_diag + self.cfg.lambd * off_diag, "on_diag": on_diag.detach()}
