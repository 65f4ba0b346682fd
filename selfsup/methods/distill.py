"""Feature regression: the knowledge-distillation baseline of CC+ (Noroozi et al. 2018, §5, METHODS.md 4.7).

Instead of classifying the teacher's cluster indices, the student regresses the teacher's features:
one RandomResizedCrop + flip view per image goes through the frozen teacher (a checkpoint's
backbone, eval mode) at its tap, pooled as CC+'s features (``pool="max"``, about 9.6k dimensions),
and through the student backbone and a linear map to the same size; the loss is the mean squared
error between the two (the paper regresses conv4-5 features and reports the student at 58.5 VOC
mAP against the teacher's 69.8). The teacher's weights are part of the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewMaker, ViewSpec
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.models.pooling import cc_max_pool


@dataclass
class DistillConfig(MethodConfig):
    teacher: str = ""                # the teacher's checkpoint (selfsup or a torchvision ResNet state dict)
    tap: str = ""                    # the teacher's tap ("": its evaluation tap)
    pool: str = "max"                # teacher features: max (CC+'s, about 9.6k dims) or avg (global average)
    scale_min: float = 0.08          # RandomResizedCrop scale (scale_min, 1), with flip


class Distill(Method):
    name = "distill"
    Config = DistillConfig
    # [A] as the CC+ student (METHODS.md 4.5): SGD momentum 0.9, lr 0.01 per 256 images, weight decay 5e-4
    defaults = {"optim": {"name": "sgd", "lr": 0.01, "scale_lr": True, "weight_decay": 5e-4, "momentum": 0.9}}

    def __init__(self, backbone, cfg: DistillConfig, image_size: int):
        from selfsup.checkpoint import load_backbone, load_checkpoint

        super().__init__(backbone, cfg, image_size)
        if not cfg.teacher:
            raise SelfSupError("distill needs a teacher: set distill.teacher=CHECKPOINT")
        if cfg.pool not in ("max", "avg"):
            raise SelfSupError(f"unknown distill.pool {cfg.pool!r}: use max or avg")
        ckpt = load_checkpoint(cfg.teacher)
        self.teacher = load_backbone(cfg.teacher, ckpt)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.tap = cfg.tap or ckpt.get("eval_tap") or self.teacher.default_tap
        self.teacher.check_taps([self.tap])
        with torch.no_grad():
            dim = self._target(torch.zeros(2, 3, image_size, image_size)).shape[1]
        self.regressor = nn.Linear(backbone.out_dim, dim)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()                  # the teacher's batch norm keeps its statistics
        return self

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.teacher.forward_taps(x, (self.tap,))[self.tap].float()
        return cc_max_pool(fmap) if self.cfg.pool == "max" else torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    def view_maker(self):
        return ViewMaker([ViewSpec(self.image_size, scale=(self.cfg.scale_min, 1.0), jitter_prob=0.0, gray_prob=0.0)])

    def forward(self, batch):
        x = batch.views[0]
        return {"loss": F.mse_loss(self.regressor(self.backbone(x)).float(), self._target(x))}
