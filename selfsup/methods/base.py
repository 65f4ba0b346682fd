"""The small interface through which the engine knows a method.

A method is an ``nn.Module`` that owns the backbone and its pretraining heads.
Before building the backbone the engine asks ``backbone_options(cfg, backbone_name)``
(e.g. an L-only input for Colorization); checkpoints record the answer. Before building
the method it calls ``fit_dataset(cfg, dataset)`` (the supervised method reads its number
of classes there). Then it calls, in order:

- ``view_maker()`` once: a callable (uint8 batch, torch.Generator) -> list of views, or
  (views, targets) for pretext targets drawn with them (``Batch.targets``: Jigsaw's labels);
- ``on_epoch_start(epoch, loader)`` before every epoch (queues, k-means refreshes);
- ``forward(batch)`` every step: returns a dict with the scalar ``loss`` and any
  other scalars to log (the engine calls it through DDP when distributed);
- ``on_after_backward(step)`` between backward and the optimiser step (e.g. to
  drop the gradients of frozen prototypes);
- ``on_step_end(step, total_steps)`` after the optimiser step (e.g. EMA targets);
- ``on_epoch_end(epoch)`` after every epoch: a dict of per-epoch scalars to log
  (e.g. prototype usage), or None. Every process calls it (collectives allowed).

Each method declares ``Config``, a dataclass of its hyperparameters with the
paper's defaults, and ``defaults``, the training settings (optimiser, lr, batch
size, ...) its paper recommends, which the user's config overrides. A method may add
``small_image_defaults``: settings for images of 64 px or less (a CIFAR recipe of the
method's official code or of a peer library), between ``defaults`` and the user's.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from selfsup.data.loader import Batch
from selfsup.data.views import ViewMaker, view_recipe
from selfsup.errors import SelfSupError
from selfsup.models import Backbone, projection_mlp


@dataclass
class MethodConfig:
    """Base class of the per-method configuration dataclasses."""


class Method(nn.Module):
    name: str = ""
    Config: type = MethodConfig
    defaults: dict[str, Any] = {}
    small_image_defaults: dict[str, Any] = {}    # over ``defaults`` for images of SMALL_IMAGE px or less
    sync_bn: bool = True          # False: never SyncBatchNorm under DDP (MoCo shuffles BN across processes instead)
    eval_stages_back: int = 0     # the default evaluation tap: this many stages before the backbone's last map
    auto_bf16_on_cpu: bool = True  # False: precision=auto stays fp32 on a CPU (a method measured to lose by bf16)

    def __init__(self, backbone: Backbone, cfg: Any, image_size: int):
        super().__init__()
        self.backbone, self.cfg, self.image_size = backbone, cfg, image_size

    @classmethod
    def backbone_options(cls, cfg: Any, backbone_name: str) -> dict[str, Any]:
        """Options of ``build_backbone`` this method needs (kept by evaluation too)."""
        return {}

    @classmethod
    def fit_dataset(cls, cfg: Any, dataset) -> Any:
        """The method's config completed from the training set, before the method is built (the
        supervised method takes its number of classes from the labels); others return it as is."""
        return cfg

    def evaluation_tap(self) -> str:
        """The tap the method's paper evaluates at, which checkpoints record and ``selfsup eval``
        uses when no ``--tap`` is given: the last map, or ``eval_stages_back`` stages before it
        (Goyal et al. 2019: pretext features peak mid-network, res4 of ResNet-50)."""
        taps = list(self.backbone.taps)
        return taps[max(0, taps.index(self.backbone.default_tap) - self.eval_stages_back)]

    def view_maker(self) -> Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]]:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def run_notes(self, epochs: int, steps_per_epoch: int, global_batch: int) -> list[str]:
        """Lines the Trainer prints on stderr before training: settings this run's length leaves without
        effect (SwAV: a queue that never fills). Notes, not errors: a short run of a long recipe is legitimate."""
        return []

    def on_epoch_start(self, epoch: int, loader) -> None:
        pass

    def on_after_backward(self, step: int) -> None:
        pass

    def on_step_end(self, step: int, total_steps: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> dict[str, float] | None:
        return None


def to_device(state, device: torch.device):
    """``state`` (a nest of dicts and lists) with every tensor moved to ``device``: a method's
    extra state loads on the CPU and must follow the module to its device on resume."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: to_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_device(v, device) for v in state)
    return state


def forward_views(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Backbone features of every view, in view order (concatenated along the batch).

    Consecutive views of one resolution go through the backbone together, in one
    pass (as SwAV's multi-crop forward), so batch norm sees all crops of a size."""
    out, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(out)


def embed_views(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor], joint: bool) -> list[torch.Tensor]:
    """head(backbone(view)) of every view. ``joint``: views of one size in one pass, so batch
    norm sees all of them (SimCLR's code); otherwise one pass per view, so its statistics are
    per view (the official BYOL and VICReg code)."""
    if joint:
        return list(head(forward_views(backbone, views)).chunk(len(views)))
    return [head(backbone(v)) for v in views]


def view_pairs(views: list[torch.Tensor]) -> list[tuple[int, int]]:
    """The pairs of views a two-view loss is averaged over.

    Views of one size (two views, or n fixed-scale patches): every pair i < j.
    Multi-crop (sizes differ): the two global views together, and each global view
    with every other view (SwAV §3.2)."""
    n = len(views)
    if all(v.shape[-2:] == views[0].shape[-2:] for v in views):
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [(0, 1)] + [(g, v) for g in (0, 1) for v in range(2, n)]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` (a BYOL target, a MoCo key encoder): no gradient reaches it."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), 1 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule (Grill et al. 2020, §3.2): tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


@dataclass
class JointEmbeddingConfig(MethodConfig):
    """Fields shared by the two-view joint-embedding methods (projector and views)."""

    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2               # Linear layers of the projector (BN + ReLU between)
    proj_last_bias: bool = True
    proj_last_bn: bool = False         # a BatchNorm (scale, no shift) after the last Linear: the official SimCLR code
    views: str = "simclr"              # view recipe, e.g. byol, multicrop:2x32+4x16, patch:14 (BagSSL)
    joint_pass: bool = True            # all views of a size in one pass (SimCLR); False: one pass per view (VICReg)
    crop_inside: bool = False          # crops never read a pixel outside their box (as PIL's crop-then-resize)
    crop_min_scale: float | None = None  # the smallest area of the image-size crops (lightly's min_scale); None: the recipe's
    view_size: int | None = None       # the side of the image-size views (None: the image size); see view_maker


class JointEmbeddingMethod(Method):
    """Backbone f and projector g on every view; a loss on the projections of each
    pair of views of an image (``view_pairs``), averaged over the pairs.
    Subclasses define ``pair_loss(z_a, z_b)``."""

    Config = JointEmbeddingConfig

    def __init__(self, backbone, cfg, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.projector = projection_mlp(backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim,
                                        num_layers=cfg.proj_layers, last_bias=cfg.proj_last_bias,
                                        last_bn=cfg.proj_last_bn)

    def view_maker(self):
        cfg = self.cfg
        specs = view_recipe(cfg.views, self.image_size)
        for key in ("crop_min_scale", "view_size"):      # they change the crops of the image size, and only those
            if getattr(cfg, key) is None:
                continue
            if not any(s.size == self.image_size and (s.patch is None or key == "view_size") for s in specs):
                raise SelfSupError(f"{self.name}.{key}={getattr(cfg, key)} applies to the random-resized crops of the "
                                   f"image size ({self.image_size} px), and {self.name}.views={cfg.views} has none: "
                                   f"drop {key}" + (f", or give the crops (e.g. 2x{self.image_size}+4x16)"
                                                    if cfg.views.startswith("multicrop") else ""))
            if key == "crop_min_scale" and any(s.patch is not None for s in specs):
                raise SelfSupError(f"{self.name}.crop_min_scale={cfg.crop_min_scale} does not apply to fixed-size "
                                   f"patches ({self.name}.views={cfg.views}): drop it, or set the patch side")
        if cfg.crop_min_scale is not None:
            if not 0 < cfg.crop_min_scale <= 1:
                raise SelfSupError(f"{self.name}.crop_min_scale={cfg.crop_min_scale} is not an area fraction: "
                                   "give a number in (0, 1], e.g. 0.2")
            specs = [replace(s, scale=(cfg.crop_min_scale, s.scale[1])) if s.size == self.image_size else s
                     for s in specs]
        if cfg.view_size is not None:
            # Training views smaller than the evaluation images: the convolutions' work falls as
            # (view_size / image_size)^2, and a network trained on random-resized crops does best when tested
            # at a higher resolution than it trained at (FixRes, Touvron et al. 2019: the crops magnify objects
            # that the test image shows whole). Only the image-size views change; multi-crop's local crops keep
            # their size.
            if not (isinstance(cfg.view_size, int) and cfg.view_size >= 1):
                raise SelfSupError(f"{self.name}.view_size={cfg.view_size} is not a side in pixels: give a positive "
                                   f"whole number, e.g. {max(1, self.image_size // 2)}, or null for the image size")
            specs = [replace(s, size=cfg.view_size) if s.size == self.image_size else s for s in specs]
        return ViewMaker([replace(s, inside=True) for s in specs] if cfg.crop_inside else specs)

    def pair_loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch):
        z = embed_views(self.backbone, self.projector, batch.views, self.cfg.joint_pass)
        pairs = view_pairs(batch.views)
        return {"loss": sum(self.pair_loss(z[a], z[b]) for a, b in pairs) / len(pairs)}
