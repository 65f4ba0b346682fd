"""The small interface through which the engine knows a method.

A method is an ``nn.Module`` that owns the backbone and its pretraining heads.
The engine calls, in order:

- ``view_maker()`` once: a callable (uint8 batch, torch.Generator) -> list of views;
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
size, ...) its paper recommends, which the user's config overrides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from selfsup.data.loader import Batch
from selfsup.models import Backbone


@dataclass
class MethodConfig:
    """Base class of the per-method configuration dataclasses."""


class Method(nn.Module):
    name: str = ""
    Config: type = MethodConfig
    defaults: dict[str, Any] = {}

    def __init__(self, backbone: Backbone, cfg: Any, image_size: int):
        super().__init__()
        self.backbone, self.cfg, self.image_size = backbone, cfg, image_size

    def view_maker(self) -> Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]]:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, loader) -> None:
        pass

    def on_after_backward(self, step: int) -> None:
        pass

    def on_step_end(self, step: int, total_steps: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> dict[str, float] | None:
        return None


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
