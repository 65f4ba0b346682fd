"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020), METHODS.md 5.

§3.1 Each crop's feature z (projection head, L2-normalised) is scored against K
trainable prototypes C (rows L2-normalised at every iteration). For each
assignment crop (the two global crops), codes q are computed online with the
Sinkhorn-Knopp algorithm (eq. 3-5: an equipartition of the batch over the
prototypes, entropy weight epsilon), without gradient; every other crop
predicts them through softmax(z^T C / tau) (eq. 2), and the swapped losses are
averaged (eq. 6).
§3.2 Multi-crop: 2 global crops plus V small local crops; crops of one size go
through the backbone together.
§4 / App. A Small batches: a queue of the last embeddings of the assignment
crops (re-scored with the current prototypes) enlarges the set Sinkhorn
equipartitions; it starts at ``epoch_queue_starts`` and is used once full.
Prototypes receive no update for about the first epoch (§4; the code's
``freeze_prototypes_niters``: 313 iterations at batch 4096 and 5005 at 256, one ImageNet
epoch each): ``freeze_prototypes_epochs`` x the run's iterations per epoch, or
``freeze_prototypes_niters`` when set.

Per epoch, the number of prototypes in use and the entropy of the assignments
are logged; a warning names the remedies when they collapse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from selfsup import distributed as dist
from selfsup.losses import sinkhorn, swav
from selfsup.methods.base import to_device
from selfsup.methods.prototypes import (SMALL_IMAGE_VIEWS, PrototypeConfig, PrototypeMethod, PrototypeUsage,
                                       normalize_rows_, prototype_scores)


@dataclass
class SwAVConfig(PrototypeConfig):
    nmb_prototypes: int = 3000        # K
    epsilon: float = 0.05             # entropy weight of eq. 3
    sinkhorn_iterations: int = 3
    log_space: Optional[bool] = None  # Sinkhorn in log space; default: when epsilon < 0.03 or half precision
    freeze_prototypes_epochs: float = 1.0        # no prototype update for this long (SwAV: about one epoch)
    freeze_prototypes_niters: Optional[int] = None   # or this many iterations (313 at batch 4096), when set
    queue_length: int = 0             # in total over processes; trimmed to a multiple of the global batch
    epoch_queue_starts: int = 15


def frozen_steps(cfg, steps_per_epoch: int) -> int:
    """Iterations without prototype updates: ``freeze_prototypes_niters`` when set, else
    ``freeze_prototypes_epochs`` epochs of this run."""
    if cfg.freeze_prototypes_niters is not None:
        return cfg.freeze_prototypes_niters
    return round(cfg.freeze_prototypes_epochs * steps_per_epoch)


def queue_note(cfg, epochs: int, steps_per_epoch: int, global_batch: int) -> str | None:
    """A line saying that the queue will never be used, when it starts (``epoch_queue_starts``) but the run ends
    before it is full and one step has used it: ``queue_length`` trimmed to a multiple of the global batch takes
    that many batches to fill, and is used from the next step. None when it is used, off, or never started
    (``epoch_queue_starts >= epochs``: said when the config is resolved)."""
    length = cfg.queue_length - cfg.queue_length % global_batch
    if length <= 0 or cfg.epoch_queue_starts >= epochs:
        return None
    fill = length // global_batch
    left = (epochs - cfg.epoch_queue_starts) * steps_per_epoch
    if left > fill:
        return None
    trimmed = f" ({length} once trimmed to a multiple of the global batch)" if length != cfg.queue_length else ""
    queued = epochs - cfg.epoch_queue_starts
    return (f"swav.queue_length={cfg.queue_length} is never used: the queue{trimmed} starts at epoch "
            f"swav.epoch_queue_starts={cfg.epoch_queue_starts} and needs {fill + 1} steps of {global_batch} images "
            f"({fill} to fill, then one that uses it), but the run has {left} steps from then ({queued} "
            f"epoch{'s' if queued != 1 else ''} of {steps_per_epoch}); lower swav.epoch_queue_starts or "
            f"swav.queue_length, or train longer")


class SwAV(PrototypeMethod):
    name = "swav"
    Config = SwAVConfig
    # Official batch-4096 recipe: LARC (every parameter), lr 4.8, final lr 0.0048, warmup 0.3 -> 4.8 over
    # 10 epochs, weight decay 1e-6, per-iteration cosine (METHODS.md 5.7).
    # Per 256 images (scale_lr): lr 0.3, final 0.0003, warmup from 0.01875, i.e. 4.8 / 0.0048 / 0.3 at 4096.
    defaults = {"optim": {"name": "larc", "lr": 0.3, "scale_lr": True, "weight_decay": 1e-6, "warmup_epochs": 10,
                          "warmup_start_lr": 0.01875, "min_lr": 0.0003, "exclude_bias_norm": False}}
    # 64 px or less: the official CIFAR advice (views, and prototypes an order of magnitude above the classes);
    # epsilon 0.03, the official README's remedy for codes stuck near uniform; two global crops and lr 0.6 -> 0.0006
    # at batch 256, solo-learn's CIFAR recipe (the official batch-256 values, issue #37). With the 4 local crops of
    # the advice and the batch-4096 lr, a 2-epoch CIFAR run learned 2 points (README, "The first run learns").
    # Biases and norm parameters outside LARC's adaptation and weight decay, as solo-learn's SwAV (its trust 0.02
    # and clipping are not taken: they kept the codes near uniform): ResNet-18's one epoch +1.9 on the tuning split.
    small_image_defaults = {"swav": {**SMALL_IMAGE_VIEWS, "nmb_prototypes": 100, "epsilon": 0.03, "crops": "global"},
                            "optim": {"lr": 0.6, "min_lr": 0.0006, "exclude_bias_norm": True}}

    def __init__(self, backbone, cfg: SwAVConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.nmb_prototypes, bias=False)
        self.queue: torch.Tensor | None = None      # (assignment crops, local length, proj_dim)
        self.queue_full = False                     # once full, always full: spares a device sync per step
        self.usage = PrototypeUsage(cfg.nmb_prototypes, "")
        self.freeze_steps = cfg.freeze_prototypes_niters or 0    # in epochs: set once the run's length is known

    # the queue is per process and is not a buffer, so DDP does not broadcast it from rank 0
    def get_extra_state(self):
        return {"queue": self.queue, "usage": self.usage.state(), "freeze_steps": self.freeze_steps}

    def set_extra_state(self, state):
        device = self.prototypes.weight.device
        self.queue, self.queue_full = to_device(state["queue"], device), False
        self.usage.load(state["usage"], device)
        self.freeze_steps = state["freeze_steps"]

    def run_notes(self, epochs: int, steps_per_epoch: int, global_batch: int) -> list[str]:
        """A queue that will never be used (``queue_note``)."""
        note = queue_note(self.cfg, epochs, steps_per_epoch, global_batch)
        return [note] if note else []

    def on_epoch_start(self, epoch: int, loader) -> None:
        cfg = self.cfg
        self.freeze_steps = frozen_steps(cfg, len(loader))
        length = cfg.queue_length - cfg.queue_length % loader.global_batch
        if self.queue is None and length > 0 and epoch >= cfg.epoch_queue_starts:
            self.queue = torch.zeros(len(cfg.crops_for_assign), length // dist.world_size(), cfg.proj_dim,
                                     device=self.prototypes.weight.device)

    def forward(self, batch):
        cfg, b = self.cfg, len(batch.indices)
        normalize_rows_(self.prototypes.weight)
        z = self.embed(batch.views)
        scores = list(prototype_scores(self.prototypes, z).split(b))
        codes = {}
        with torch.no_grad():
            for j, crop in enumerate(cfg.crops_for_assign):
                s = scores[crop].detach()
                if self.queue is not None:
                    if self.queue_full or bool((self.queue[j, -1] != 0).any()):   # used only once full
                        self.queue_full = True
                        s = torch.cat([self.queue[j].to(s.dtype) @ self.prototypes.weight.T.to(s.dtype), s])
                    self.queue[j, b:] = self.queue[j, :-b].clone()
                    self.queue[j, :b] = z[crop * b:(crop + 1) * b].detach()
                codes[crop] = sinkhorn(s, cfg.epsilon, cfg.sinkhorn_iterations, cfg.log_space)[-b:]
                self.usage.update(codes[crop])
        return {"loss": swav(scores, codes, cfg.temperature)}

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_steps:
            self.prototypes.weight.grad = None

    def on_epoch_end(self, epoch: int):
        return self.usage.summary()
