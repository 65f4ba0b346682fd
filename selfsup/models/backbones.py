"""Backbones created by name, each exposing named taps and its output width.

A backbone maps images (B x 3 x H x W) to feature maps at named taps
(``conv1, res2 .. res5`` for ResNets, ``conv1 .. conv4`` for the small convnet);
``forward`` returns the globally average-pooled last tap (B x ``out_dim``), which
is the representation evaluated by default. Pretraining heads live in the
methods, so a backbone's state dict is all evaluation needs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

from selfsup.errors import SelfSupError


class Backbone(nn.Module):
    """Base class: subclasses set ``taps``, ``tap_dims`` and implement ``forward_taps``."""

    taps: tuple[str, ...] = ()
    tap_dims: dict[str, int] = {}

    @property
    def out_dim(self) -> int:
        return self.tap_dims[self.taps[-1]]

    def forward_taps(self, x: torch.Tensor, taps: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (B x out_dim x h x w)."""
        return self.forward_taps(x, (self.taps[-1],))[self.taps[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_map(x), 1), 1)

    def check_taps(self, taps) -> tuple[str, ...]:
        taps = tuple(taps) if taps is not None else self.taps
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise SelfSupError(f"unknown tap {unknown[0]!r} for this backbone: choose one of {', '.join(self.taps)}")
        return taps


class ResNet(Backbone):
    """A torchvision ResNet without its classifier; module names match torchvision's.

    ``cifar_stem=True`` replaces the 7x7/2 conv and the max-pool with a 3x3/1 conv,
    the usual stem for 32 px inputs.
    """

    taps = ("conv1", "res2", "res3", "res4", "res5")

    def __init__(self, depth: int = 18, cifar_stem: bool = False):
        super().__init__()
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.tap_dims = {"conv1": 64, "res2": 64 * expansion, "res3": 128 * expansion,
                         "res4": 256 * expansion, "res5": 512 * expansion}

    def forward_taps(self, x, taps=None):
        taps = self.check_taps(taps)
        out = {}
        x = self.relu(self.bn1(self.conv1(x)))
        out["conv1"] = x
        x = self.maxpool(x)
        for name, layer in zip(self.taps[1:], (self.layer1, self.layer2, self.layer3, self.layer4)):
            if all(t in out for t in taps):
                break
            x = layer(x)
            out[name] = x
        return {t: out[t] for t in taps}


class ConvNet(Backbone):
    """A small, fast convnet for CPU demos and tests: 4 x (3x3 conv, BN, ReLU, 2x2 max-pool).

    At 32 px the last map is 2 x 2. Trains at over 1,000 images/s on 2 CPU cores.
    """

    taps = ("conv1", "conv2", "conv3", "conv4")

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), cifar_stem: bool = False):
        super().__init__()
        blocks, in_ch = [], 3
        for w in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True)))
            in_ch = w
        self.blocks = nn.ModuleList(blocks)
        self.tap_dims = dict(zip(self.taps, widths))

    def forward_taps(self, x, taps=None):
        taps = self.check_taps(taps)
        out = {}
        for name, block in zip(self.taps, self.blocks):
            if all(t in out for t in taps):
                break
            x = block(x)
            out[name] = x
        return {t: out[t] for t in taps}


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": lambda **kw: ResNet(18, **kw),
    "resnet34": lambda **kw: ResNet(34, **kw),
    "resnet50": lambda **kw: ResNet(50, **kw),
    "convnet": lambda **kw: ConvNet(**kw),
}


def build_backbone(name: str, cifar_stem: bool = False) -> Backbone:
    """Create a backbone by registry name, e.g. ``build_backbone("resnet18", cifar_stem=True)``."""
    if name not in BACKBONES:
        raise SelfSupError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](cifar_stem=cifar_stem)
