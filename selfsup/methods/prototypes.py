"""What SwAV, DeepCluster-v2 and SeLa-v2 share (METHODS.md 5.1, 5.2, 5.8).

- ``PrototypeConfig``: the projection head, the temperature and the multi-crop
  views, with the official defaults (2 x 224 + 6 x 96 at ImageNet size);
- ``PrototypeMethod``: backbone -> projection MLP -> L2-normalised z, crops of one
  resolution through the backbone together; prototype heads normalised in place;
- ``PrototypeUsage``: the collapse guardrail. Over an epoch it counts how many
  samples each prototype wins and the entropy of the soft codes, and warns when
  the assignments collapse onto a few prototypes, or when every code is uniform
  (the loss then sits at ln K).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from selfsup import distributed as dist
from selfsup.data.views import ViewMaker, multicrop_views
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig, forward_views
from selfsup.models import projection_mlp


@dataclass
class PrototypeConfig(MethodConfig):
    proj_hidden_dim: int = 2048       # --hidden_mlp
    proj_dim: int = 128               # --feat_dim
    temperature: float = 0.1          # tau of eq. 2
    crops_for_assign: list[int] = field(default_factory=lambda: [0, 1])
    crops: str = ""                   # e.g. 2x224+6x96; "": 2 x image size + 6 x (96/224 of it), 2 + 4 x half at <= 64 px;
                                      # "global": 2 x image size, no local crops
    # None: the official value for the crops (METHODS.md 5.2, views.default_global_scale):
    # (0.14, 1) with 6 or more local crops (2x224+6x96), (0.08, 1) with fewer (2x224, 2x160+4x96)
    global_scale: Optional[tuple[float, float]] = None
    local_scale: tuple[float, float] = (0.05, 0.14)
    color_strength: float = 1.0       # jitter (0.8s, 0.8s, 0.8s, 0.2s); the CIFAR advice is s = 0.5
    blur_prob: float = 0.5


# 64 px or less: the official advice for CIFAR (facebookresearch/swav issues #23, #37; configs/swav_cifar10.yaml):
# colour distortion of strength 0.5 and no blur, as SimCLR's CIFAR-10 command.
SMALL_IMAGE_VIEWS = {"color_strength": 0.5, "blur_prob": 0.0}


class PrototypeMethod(Method):
    """Backbone, projection head and the multi-crop views; subclasses add prototypes."""

    def __init__(self, backbone, cfg: PrototypeConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.projector = projection_mlp(backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.specs = multicrop_views(image_size, cfg.crops, cfg.global_scale, cfg.local_scale,
                                     cfg.color_strength, cfg.blur_prob)
        bad = [c for c in cfg.crops_for_assign if not 0 <= c < len(self.specs)]
        if bad or not cfg.crops_for_assign:
            n = len(self.specs)
            raise SelfSupError(f"{self.name}.crops_for_assign={list(cfg.crops_for_assign)} must name crops 0..{n - 1} "
                               f"of the {n} crops of {self.name}.crops={cfg.crops or 'the default'}: set "
                               f"{self.name}.crops_for_assign={[c for c in range(min(2, n))]} or give "
                               f"{self.name}.crops two global crops, e.g. 2x{image_size}")

    def view_maker(self):
        return ViewMaker(self.specs)

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """L2-normalised projections z of every crop, in crop order ((V*B) x proj_dim), in float32."""
        return F.normalize(self.projector(forward_views(self.backbone, views)).float(), dim=1)


def prototype_scores(head: torch.nn.Linear, z: torch.Tensor) -> torch.Tensor:
    """The scores z C^T of every row of z against every prototype, in float32 even under autocast. Every
    method here divides them by a small number before exponentiating (the temperature 0.1 of the loss,
    Sinkhorn's epsilon of 0.03 to 0.05): bf16 keeps 8 significant bits, so a score near 1 is rounded by up to
    0.002 (half its spacing of 0.004 there), which epsilon 0.03 turns into up to 0.065 in a code's logit (the
    official code's fp16 rounds 8 times finer). The product is small (batch x 128 x K): keeping it exact is free."""
    with torch.autocast(z.device.type, enabled=False):
        return F.linear(z.float(), head.weight.float())


@torch.no_grad()
def normalize_rows_(weight: torch.Tensor) -> None:
    """L2-normalise every prototype (row) in place (done at every iteration, METHODS.md 5.1)."""
    weight.copy_(F.normalize(weight, dim=1))


class PrototypeUsage:
    """Per-epoch prototype usage of one head: counts of hard assignments, soft-code entropy."""

    # the remedies a collapse warning names (README, 'When clustering collapses'): SwAV's by default
    REMEDIES = "lower epsilon (e.g. epsilon=0.03), start the queue later, or freeze the prototypes longer"

    def __init__(self, k: int, name: str, remedies: str = REMEDIES):
        self.k, self.name, self.device = k, name, torch.device("cpu")   # device: where collectives run
        self.remedies = remedies
        self.reset()

    def reset(self) -> None:
        self.counts: torch.Tensor | None = None     # on the device of the codes: no host sync per step
        self.code_entropy_sum: torch.Tensor | float = 0.0
        self.samples = 0

    def state(self) -> dict:
        """The counts so far (saved in checkpoints, so a mid-epoch resume counts the whole epoch)."""
        return {"counts": self.counts, "code_entropy_sum": self.code_entropy_sum, "samples": self.samples}

    def load(self, state: dict, device: torch.device) -> None:
        self.reset()
        self.device = device
        self.counts = None if state["counts"] is None else state["counts"].to(device)
        entropy = state["code_entropy_sum"]
        self.code_entropy_sum = entropy.to(device) if isinstance(entropy, torch.Tensor) else entropy
        self.samples = state["samples"]

    @torch.no_grad()
    def update(self, codes: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """Count hard assignments: ``labels``, or else the argmax of ``codes`` (B x K soft codes,
        whose entropy is also accumulated)."""
        if codes is not None:
            codes = codes.float()
            labels = codes.argmax(dim=1) if labels is None else labels
            self.code_entropy_sum = self.code_entropy_sum - (codes * torch.log(codes.clamp_min(1e-12))).sum()
        self.device = labels.device
        counts = torch.bincount(labels, minlength=self.k).double()
        self.counts = counts if self.counts is None else self.counts + counts
        self.samples += len(labels)

    def summary(self) -> dict[str, float]:
        """All-reduced statistics of the epoch (every process must call it); warns on collapse."""
        counts = self.counts.cpu() if self.counts is not None else torch.zeros(self.k, dtype=torch.float64)
        totals = torch.cat([counts, torch.tensor([float(self.code_entropy_sum), self.samples], dtype=torch.float64)])
        totals = dist.all_reduce_sum(totals.to(self.device)).cpu()
        counts, entropy_sum, n = totals[:-2], float(totals[-2]), float(totals[-1])
        self.reset()
        if n == 0:
            return {}
        p = counts[counts > 0] / n
        out = {f"{self.name}prototypes_used": float((counts > 0).sum()),
               f"{self.name}assignment_entropy": max(0.0, float(-(p * p.log()).sum()))}    # no -0.0
        max_entropy = math.log(min(self.k, n))
        if entropy_sum > 0:
            out[f"{self.name}code_entropy"] = entropy_sum / n
        if not dist.is_main():
            return out
        if self.k == 1:      # refused by the method checks (METHOD_CHECKS); a method built around them still hears it
            warnings.warn(f"{self.name or 'prototype '}assignments: one prototype takes every sample, so the loss is 0 "
                          f"and nothing is learnt: use 2 prototypes or more, about 10x the classes")
        else:                # every sample in one of several (n >= 2): entropy 0 < half of ln min(K, n) > 0
            if out[f"{self.name}assignment_entropy"] < 0.5 * max_entropy:
                warnings.warn(
                    f"{self.name or 'prototype '}assignments collapsed: {int(out[f'{self.name}prototypes_used'])} of "
                    f"{self.k} prototypes used, entropy {out[f'{self.name}assignment_entropy']:.2f} of at most "
                    f"{max_entropy:.2f} nats: {self.remedies} (README, 'When clustering collapses')")
            elif out.get(f"{self.name}code_entropy", 0.0) > 0.9 * math.log(self.k):
                warnings.warn(
                    f"{self.name or 'prototype '}codes are almost uniform (mean entropy "
                    f"{out[f'{self.name}code_entropy']:.2f} of ln K = {math.log(self.k):.2f}): the loss sits near ln K; "
                    f"lower epsilon (e.g. epsilon=0.03) or use a shorter queue (README, 'When clustering collapses')")
        return out
