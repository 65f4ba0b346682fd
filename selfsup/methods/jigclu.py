"""Jigsaw Clustering (Chen, Liu, Jia, CVPR 2021), METHODS.md section 1.

§3.1 Every image of the batch is split into m x m overlapping patches, each
patch augmented on its own; all n*m*m patches of the global batch are permuted
and stitched into n montages of m x m patches: one batch, the size of the
original, goes through the network.
§3.2 The backbone's last map is decoupled, without parameters, into one vector
per montage cell: bilinear upsampling to a multiple of m, then average pooling
to m x m. A clustering MLP (L2-normalised output) and a location FC follow.
§3.3 L = alpha * L_clu (eq. 1-2: the patches of one image form a cluster) +
beta * L_loc (eq. 3: cross-entropy over the m*m locations).

Ablations (§5) are configuration values: ``m``; ``overlap`` and
``overlap_mode`` (the code's or the paper's definition); ``aug_position``
(Table 7); ``branches`` (Table 9); ``input_format`` (Table 6: "montage",
"small" patches, or patches "scaled" up to the image size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed as dist
from selfsup.data.jigclu import JigCluViews, montage
from selfsup.errors import SelfSupError
from selfsup.losses import jigclu_clustering
from selfsup.methods.base import Method, MethodConfig

BRANCHES = ("both", "clustering", "location")
INPUT_FORMATS = ("montage", "small", "scaled")


@dataclass
class JigCluConfig(MethodConfig):
    m: int = 2                        # patches per side
    overlap: float = 0.3              # --cross-ratio of the official code
    overlap_mode: str = "code"        # "code": patches reach 0.3 past the midline; "paper": 0.3 shared band
    aug_position: str = "after"       # after | during | before the split (Table 7)
    branches: str = "both"            # both | clustering | location (Table 9)
    input_format: str = "montage"     # montage | small | scaled (Table 6)
    temperature: float = 0.3          # tau of eq. 1 (README command of the official code)
    official_loss_factor: bool = True  # multiply L_clu by tau / 0.07, as the official SupCluLoss does
    temperature_base: float = 0.07
    alpha: float = 1.0                # weight of L_clu (eq. 4)
    beta: float = 1.0                 # weight of L_loc (eq. 4)
    proj_hidden_dim: int = 0          # clustering MLP hidden width; 0: the backbone's width
    proj_dim: int = 128


def decouple(fmap: torch.Tensor, m: int) -> torch.Tensor:
    """§3.2: (n, C, h, w) -> (n, C, m, m), bilinear upsampling to the next multiple of m, then average pooling."""
    h, w = fmap.shape[-2:]
    size = (-(-h // m) * m, -(-w // m) * m)
    if (h, w) != size:
        fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(fmap, m)


class JigClu(Method):
    name = "jigclu"
    Config = JigCluConfig
    # METHODS.md 1.4: SGD, momentum 0.9, weight decay 1e-4 on every parameter, lr 0.03 at batch 256,
    # cosine stepped per epoch, 200 epochs.
    defaults = {"optim": {"name": "sgd", "lr": 0.03, "scale_lr": True, "weight_decay": 1e-4, "momentum": 0.9,
                          "exclude_bias_norm": False, "per_epoch": True}, "epochs": 200}

    def __init__(self, backbone, cfg: JigCluConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        for key, allowed in (("branches", BRANCHES), ("input_format", INPUT_FORMATS)):
            if getattr(cfg, key) not in allowed:
                raise SelfSupError(f"unknown jigclu.{key} {getattr(cfg, key)!r}: use one of {', '.join(allowed)}")
        if cfg.m < 2:
            raise SelfSupError(f"jigclu.m={cfg.m}: use 2 or more patches per side")
        if cfg.input_format == "montage":
            self._check_final_map(backbone, image_size, cfg.m)
        dim, hidden = backbone.out_dim, cfg.proj_hidden_dim or backbone.out_dim
        if cfg.branches in ("both", "clustering"):      # only the heads in use: DDP wants every parameter used
            self.fc_clu = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cfg.proj_dim))
        if cfg.branches in ("both", "location"):
            self.fc_loc = nn.Linear(dim, cfg.m * cfg.m)

    @staticmethod
    def _check_final_map(backbone, image_size: int, m: int) -> None:
        """The decouple module splits the montage's final map into m x m cells (§3.2): a map
        smaller than that would only be upsampled into identical cells."""
        was_training = backbone.training
        with torch.no_grad():
            h, w = backbone.eval().forward_map(torch.zeros(1, 3, image_size, image_size)).shape[-2:]
        backbone.train(was_training)
        if min(h, w) < m:
            smaller = f"jigclu.m={min(h, w)}, " if min(h, w) >= 2 else ""
            stride = getattr(backbone, "tap_strides", {}).get(backbone.default_tap)     # timm models: their own stem
            if stride:
                fix = f"use {smaller}{'or ' if smaller else ''}image_size {m * stride} or more (output stride {stride})"
            else:
                fix = f"use cifar_stem=true (the default on ResNets at 64 px or less), {smaller}or a larger image_size"
            raise SelfSupError(f"jigclu splits the final feature map into {m} x {m} cells, but this backbone gives "
                               f"{h} x {w} at {image_size} px: {fix}")

    def view_maker(self):
        c = self.cfg
        return JigCluViews(self.image_size, c.m, c.overlap, c.overlap_mode, c.aug_position)

    def patch_features(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of all patches of the global batch and their permutation.

        Returns f (m*m*N, C), where row k is the patch ``perm[k]`` of the
        position-major global patch list, and ``perm``."""
        m, mm = self.cfg.m, self.cfg.m * self.cfg.m
        n_local = len(patches) // mm
        if self.cfg.input_format != "montage":
            x = patches if self.cfg.input_format == "small" else F.interpolate(
                patches, scale_factor=m, mode="bilinear", align_corners=False)
            f = dist.gather_with_grad(self.backbone(x).view(mm, n_local, -1))     # ranks concatenated per position
            f = f.view(dist.world_size(), mm, n_local, -1).transpose(0, 1).reshape(mm * n_local * dist.world_size(), -1)
            return f, torch.arange(len(f), device=f.device)
        # montage across the global batch, permutation drawn on rank 0 (METHODS.md 1.1)
        all_patches = dist.gather(patches.view(mm, n_local, *patches.shape[1:]).transpose(0, 1).contiguous())
        n = len(all_patches)
        all_patches = all_patches.transpose(0, 1).reshape(mm * n, *patches.shape[1:])       # position-major, global
        perm = dist.broadcast(torch.randperm(mm * n, device=patches.device))
        x = montage(all_patches, perm, m, start=dist.rank() * n_local, count=n_local)
        q = dist.gather_with_grad(decouple(self.backbone.forward_map(x), m))                  # (N, C, m, m)
        return q.flatten(2).permute(2, 0, 1).reshape(mm * n, -1), perm                     # slot-major

    def forward(self, batch):
        c, mm = self.cfg, self.cfg.m * self.cfg.m
        f, perm = self.patch_features(batch.views[0])
        n = len(f) // mm
        image_ids, locations = perm % n, perm // n
        out = {}
        loss = f.new_zeros(())
        if c.branches in ("both", "clustering"):
            factor = c.temperature / c.temperature_base if c.official_loss_factor else 1.0
            out["loss_clu"] = jigclu_clustering(self.fc_clu(f), image_ids, c.temperature)
            loss = loss + c.alpha * factor * out["loss_clu"]
        if c.branches in ("both", "location"):
            logits = self.fc_loc(f)
            out["loss_loc"] = F.cross_entropy(logits, locations)
            out["loc_acc"] = (logits.argmax(1) == locations).float().mean().detach()
            loss = loss + c.beta * out["loss_loc"]
        out["loss"] = loss
        return out
