"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016), METHODS.md section 2.

§3 An image is cut into a 3 x 3 grid of tiles, each taken at a random offset
inside its cell (a gap between tiles, so edges do not give the answer away), each
colour channel shifted on its own (no chromatic-aberration shortcut), a share of
the puzzles in grayscale. Tiles are normalised with the data statistics (the code
subtracts a mean); ``tile_norm=tile`` standardises each tile by its own mean and
std instead (Jigsaw++), as the backbone's input stage (``TileNorm``), so that a
checkpoint's whole images are standardised the same way in evaluation. The tiles are
shuffled by one of |P| permutations chosen for maximal average Hamming distance
(Alg. 1, ``selfsup.data.puzzles``) and the network names the permutation.
§3.1 The context-free network (CFN) runs one tower with shared weights on every
tile (up to fc6), concatenates the nine tile features, and a joint classifier
(fc7, fc8) predicts the permutation index with a softmax cross-entropy.

Heads (``head``): ``cfn``, Noroozi's fc6 (1024, ReLU, dropout) per tile, then
fc7 (4096, ReLU, dropout) and fc8 over |P|; ``goyal``, Goyal et al. 2019's ResNet
head, Linear(D, 1000) + BN + ReLU per tile, then Linear(9000, |P|). The tower is
any registered backbone: ``alexnet`` is the CFN's (conv1 at stride 2 on tiles,
pool5's 2 x 2 x 256 flattened into fc6: ``tile_pool`` 2) and gets the ``cfn`` head by
default; any other tower is pooled globally and gets the ``goyal`` head (Goyal et al.).
The CFN solver (Caffe: biases at lr x2 without weight decay, lr 0.01, wd 5e-4) is in
``configs/jigsaw_alexnet_imagenet.yaml``; the method's defaults are Goyal's ResNet recipe.

Transfer: the backbone alone is evaluated on whole images by the usual eval
commands; an AlexNet checkpoint evaluates as a standard AlexNet, conv1 at stride
4 (Noroozi's transfer, METHODS.md 2.4).

Sizes scale with the input (``selfsup.data.puzzles.tile_geometry``): 64 px tiles
in 85 px cells at 256 px, 16 in 21 at 64 px, 8 in 10 at 32 px.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.puzzles import PuzzleMaker, permutation_set, tile_geometry
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.models.backbones import AlexNet

HEADS = ("cfn", "goyal")
TILE_NORMS = ("imagenet", "tile")


@dataclass
class JigsawConfig(MethodConfig):
    permutations: str = "1000"        # |P|: a number (greedy max-average set), noroozi-100, noroozi-701, or a file
    head: Optional[str] = None        # cfn (Noroozi) | goyal (Goyal et al. 2019); default: cfn on alexnet, else goyal
    tile_dim: Optional[int] = None    # fc6 width (cfn: 1024) / per-tile Linear width (goyal: 1000)
    hidden_dim: int = 4096            # fc7 width (cfn only)
    dropout: float = 0.5              # after fc6 and fc7 (cfn only)
    tile_pool: Optional[int] = None   # tile feature: the last map average-pooled to tile_pool^2 cells, flattened;
                                      # default: 2 on alexnet (pool5's 2 x 2 x 256 into fc6, the CFN), else 1
    conv1_stride: int = 2             # alexnet only: conv1 stride on tiles (CFN); whole images use 4
    jitter_255: int = 21              # tile jitter in px at the 255 px geometry, scaled with the image
    channel_shift_255: int = 2        # per-channel shift in px at the 255 px geometry (rand() % 3)
    gray_prob: float = 0.5            # share of grayscale puzzles (official code: 50%)
    projection_prob: float = 0.5      # share of the colour puzzles given Noroozi's colour projection
    tile_norm: str = "imagenet"       # imagenet (Jigsaw's mean subtraction; Goyal / VISSL) | tile (Jigsaw++'s per-tile MVN)
    flip: bool = False                # horizontal flip of the image (VISSL: true; Caffe: false)
    max_substitute: int = 0           # Jigsaw++: up to this many slots get another image's tiles


class Jigsaw(Method):
    name = "jigsaw"
    # 2 epochs on CIFAR-10 (the convnet) learned less in bf16 than in fp32 on both the tuning and the validation
    # split (README, "The first run learns"; Jigsaw++, which inherits this, lost on one and gained on the other):
    # precision=auto keeps fp32 on a CPU, the precision the recipe was chosen in; precision=bf16 still asks for it
    auto_bf16_on_cpu = False
    Config = JigsawConfig
    eval_stages_back = 1    # Goyal et al. 2019 evaluate pretext tasks one stage before the last (res4 of ResNet-50)
    # Goyal et al. 2019 / VISSL ResNet-50 recipe (METHODS.md 2.4): SGD, momentum 0.9, weight decay 1e-4,
    # lr 0.1 per 256 images, 5 warmup epochs, 105 epochs (cosine here instead of their steps).
    defaults = {"optim": {"name": "sgd", "lr": 0.1, "scale_lr": True, "weight_decay": 1e-4, "momentum": 0.9,
                          "warmup_epochs": 5}, "epochs": 105}
    # 64 px or less: the CFN's Caffe solver (Noroozi & Favaro: lr 0.01, weight decay 5e-4, biases at lr x2). With
    # 8 px tiles, Goyal's lr 0.1 barely starts the puzzle in a short run (README, "The first run learns").
    small_image_defaults = {"optim": {"lr": 0.01, "weight_decay": 5e-4, "bias_lr_mult": 2.0}}

    @classmethod
    def backbone_options(cls, cfg, backbone_name: str) -> dict:
        """Per-tile normalisation is the backbone's input stage (``TileNorm``), so a checkpoint
        standardises whole images the same way in evaluation."""
        if cfg.tile_norm not in TILE_NORMS:
            raise SelfSupError(f"unknown {cls.name}.tile_norm {cfg.tile_norm!r}: use one of {', '.join(TILE_NORMS)}")
        return {"input": "tile_norm"} if cfg.tile_norm == "tile" else {}

    def __init__(self, backbone, cfg: JigsawConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        tower = getattr(backbone, "net", backbone)                       # inside TileNorm
        alexnet = isinstance(tower, AlexNet)
        self.head = cfg.head or ("cfn" if alexnet else "goyal")
        if self.head not in HEADS:
            raise SelfSupError(f"unknown {self.name}.head {cfg.head!r}: use one of {', '.join(HEADS)}")
        self.tile_pool = cfg.tile_pool or (2 if alexnet else 1)
        tile_dim = cfg.tile_dim or (1024 if self.head == "cfn" else 1000)
        self.geometry = tile_geometry(image_size, 3, cfg.jitter_255, cfg.channel_shift_255)
        self.register_buffer("perms", torch.as_tensor(permutation_set(cfg.permutations)), persistent=False)
        if len(self.perms) < 2:
            raise SelfSupError(f"{self.name}.permutations={cfg.permutations} gives {len(self.perms)} permutation: a "
                               "puzzle needs 2 or more classes, e.g. 100")
        if self.perms.shape[1] != 9:
            raise SelfSupError(f"{self.name}.permutations has {self.perms.shape[1]} tiles per row: use a set of 3x3 puzzles")
        if alexnet:
            tower.conv1.stride = (cfg.conv1_stride, cfg.conv1_stride)
        feat_dim = self._tile_feature_dim()
        n = 9
        if self.head == "cfn":
            self.tile_head = nn.Sequential(nn.Linear(feat_dim, tile_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout))
            self.classifier = nn.Sequential(nn.Linear(n * tile_dim, cfg.hidden_dim), nn.ReLU(inplace=True),
                                            nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, len(self.perms)))
        else:
            self.tile_head = nn.Sequential(nn.Linear(feat_dim, tile_dim), nn.BatchNorm1d(tile_dim), nn.ReLU(inplace=True))
            self.classifier = nn.Linear(n * tile_dim, len(self.perms))

    def _tile_feature_dim(self) -> int:
        t = self.geometry.tile
        was_training = self.backbone.training
        try:
            with torch.no_grad():
                fmap = self.backbone.eval().forward_map(torch.zeros(1, 3, t, t))
        except RuntimeError:
            raise SelfSupError(f"{self.geometry.tile} px tiles are too small for this backbone: raise image_size "
                               "or use a backbone with less downsampling (convnet, a resnet with cifar_stem)") from None
        finally:
            self.backbone.train(was_training)
        if min(fmap.shape[-2:]) < self.tile_pool:
            raise SelfSupError(f"{self.name}.tile_pool={self.tile_pool} exceeds the {fmap.shape[-1]}x{fmap.shape[-1]} "
                               "map of a tile: lower tile_pool")
        return fmap.shape[1] * self.tile_pool ** 2

    def view_maker(self):
        c = self.cfg
        return PuzzleMaker(self.image_size, self.perms.cpu().numpy(), self.geometry, c.gray_prob, c.projection_prob,
                           c.flip, c.max_substitute)

    def forward(self, batch):
        tiles, labels = batch.views[0], batch.targets           # (B * 9) x 3 x t x t in slot order, B
        f = F.adaptive_avg_pool2d(self.backbone.forward_map(tiles), self.tile_pool).flatten(1)
        logits = self.classifier(self.tile_head(f).view(len(labels), -1))   # the 9 slots concatenated in order
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "puzzle_acc": (logits.argmax(1) == labels).float().mean().detach()}
