"""MoCo v2 (Chen, Fan, Girshick, He 2020; He et al., CVPR 2020): the two-batch
baseline JigClu compares against.

A query encoder (backbone + 2-layer MLP head, no batch norm) embeds one view; a
key encoder, the momentum average of the query encoder (m = 0.999, §3.2),
embeds the other. InfoNCE (eq. 1, temperature 0.2) takes the key of the same
image as the positive and a queue of the last K keys (of the global batch) as
negatives. Under torch.distributed the key batch is shuffled across processes
before the key encoder and unshuffled after (shuffling BN, §3.3); a single
process has one batch-norm batch and no shuffle, as in solo-learn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed as dist
from selfsup.data.views import ViewMaker, view_recipe
from selfsup.errors import SelfSupError
from selfsup.losses import moco
from selfsup.methods.base import Method, MethodConfig, ema_update_, momentum_copy
from selfsup.models import projection_mlp


@dataclass
class MoCoV2Config(MethodConfig):
    queue_size: int = 65536          # K, keys of the global batch
    momentum: float = 0.999          # m of the key encoder
    temperature: float = 0.2
    proj_dim: int = 128              # head: Linear(d, d)-ReLU-Linear(d, 128)
    views: str = "mocov2"
    seed: int = 0                    # of the initial (random, normalised) queue


class MoCoV2(Method):
    name = "moco_v2"
    Config = MoCoV2Config
    sync_bn = False     # per-process BN with the shuffle of §3.3: SyncBatchNorm would undo it
    # MoCo v2: SGD (momentum 0.9), lr 0.03 x batch / 256, weight decay 1e-4, cosine, 200 epochs.
    defaults = {"optim": {"name": "sgd", "lr": 0.03, "scale_lr": True, "weight_decay": 1e-4, "warmup_epochs": 0,
                          "exclude_bias_norm": False}}

    def __init__(self, backbone, cfg: MoCoV2Config, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.projector = projection_mlp(backbone.out_dim, backbone.out_dim, cfg.proj_dim, batch_norm=False)
        self.key_encoder = momentum_copy(nn.ModuleDict({"backbone": backbone, "projector": self.projector}))
        g = torch.Generator().manual_seed(cfg.seed)                # the same queue on every process
        self.queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim, generator=g), dim=1)
        self.queue_ptr = 0

    # the queue is identical on every process but large: kept out of the buffers DDP broadcasts each step
    def get_extra_state(self):
        return {"queue": self.queue, "queue_ptr": self.queue_ptr}

    def set_extra_state(self, state):
        self.queue, self.queue_ptr = state["queue"].to(next(self.projector.parameters()).device), state["queue_ptr"]

    def view_maker(self):
        return ViewMaker(view_recipe(self.cfg.views, self.image_size))

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Key-encoder embeddings of ``x``, with the batch shuffled across processes (§3.3)."""
        encode = lambda v: self.key_encoder["projector"](self.key_encoder["backbone"](v))  # noqa: E731
        if dist.world_size() == 1:
            return encode(x)
        b, r = len(x), dist.rank()
        x_all = dist.gather(x)
        perm = dist.broadcast(torch.randperm(len(x_all), device=x.device))
        k_all = dist.gather(encode(x_all[perm[r * b:(r + 1) * b]]))
        return k_all[torch.argsort(perm)][r * b:(r + 1) * b]

    def forward(self, batch):
        if len(batch.views) != 2:
            raise SelfSupError(f"moco_v2 takes two views, the recipe {self.cfg.views!r} gives {len(batch.views)}: use mocov2 or patch:SIDE")
        q = self.projector(self.backbone(batch.views[0]))
        ema_update_(self.key_encoder["backbone"], self.backbone, self.cfg.momentum)       # before the keys, as MoCo
        ema_update_(self.key_encoder["projector"], self.projector, self.cfg.momentum)
        k = self.keys(batch.views[1])
        self.queue = self.queue.to(q.device)
        loss = moco(q.float(), k.float(), self.queue, self.cfg.temperature)
        self._enqueue(F.normalize(dist.gather(k.float()), dim=1))
        return {"loss": loss}

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[idx] = keys
        self.queue_ptr = (self.queue_ptr + len(keys)) % len(self.queue)
