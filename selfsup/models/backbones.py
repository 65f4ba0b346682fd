"""Backbones created by name, each exposing named taps and its output width.

A backbone maps images (B x 3 x H x W) to feature maps at named taps
(``conv1, pool1, res2 .. res5, pool5`` for ResNets, ``conv1 .. conv4`` for the small
convnet, ``conv1 .. conv5`` for the AlexNet of Jigsaw's CFN; ``stage1 .. stageN`` for a timm
convnet and ``block{i} .. norm`` for a timm ViT, ``timm:NAME``, see ``timm_backbone``); ``default_tap`` is the
last feature map (``res5`` for ResNets, else the last tap) and ``forward`` returns it
globally average-pooled (B x ``out_dim``), the representation evaluated by default. Pretraining heads live in the
methods, so a backbone's state dict is all evaluation needs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

from selfsup.data.color import rgb_to_lab
from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, unnormalize
from selfsup.errors import SelfSupError


class Backbone(nn.Module):
    """Base class: subclasses set ``taps``, ``tap_dims`` and implement ``forward_taps``;
    a subclass whose last tap is not its last feature map sets ``default_tap``."""

    taps: tuple[str, ...] = ()
    tap_dims: dict[str, int] = {}

    @property
    def default_tap(self) -> str:
        """The last feature map: what ``forward_map`` returns and evaluation uses by default."""
        return self.taps[-1]

    @property
    def out_dim(self) -> int:
        return self.tap_dims[self.default_tap]

    def forward_taps(self, x: torch.Tensor, taps: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (B x out_dim x h x w)."""
        return self.forward_taps(x, (self.default_tap,))[self.default_tap]

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
    the usual stem for 32 px inputs. ``in_channels=1`` takes one input channel (the
    L of Colorization); ``last_stride=1`` keeps res5 at the resolution of res4 (Goyal
    et al.'s colorization ResNet-50: output stride 16).

    Taps as Goyal et al. 2019's ResNet-50 probes (METHODS.md 6.2): ``conv1`` (after BN and
    ReLU), ``pool1`` (after the 3x3/2 max-pool; the conv1 map itself with the CIFAR stem),
    ``res2 .. res5`` (the four stages) and ``pool5`` (res5 globally average-pooled,
    B x C x 1 x 1). ``default_tap`` is res5.
    """

    taps = ("conv1", "pool1", "res2", "res3", "res4", "res5", "pool5")
    default_tap = "res5"

    def __init__(self, depth: int = 18, cifar_stem: bool = False, in_channels: int = 3, last_stride: int = 2):
        super().__init__()
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if last_stride != 2:
            block = net.layer4[0]
            (block.conv2 if depth >= 50 else block.conv1).stride = (last_stride, last_stride)
            block.downsample[0].stride = (last_stride, last_stride)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.tap_dims = {"conv1": 64, "pool1": 64, "res2": 64 * expansion, "res3": 128 * expansion,
                         "res4": 256 * expansion, "res5": 512 * expansion, "pool5": 512 * expansion}

    def forward_taps(self, x, taps=None):
        taps = self.check_taps(taps)
        out = {}
        out["conv1"] = x = self.relu(self.bn1(self.conv1(x)))
        out["pool1"] = x = self.maxpool(x)
        for name, layer in zip(("res2", "res3", "res4", "res5"), (self.layer1, self.layer2, self.layer3, self.layer4)):
            if all(t in out for t in taps):
                break
            out[name] = x = layer(x)
        if "pool5" in taps:
            out["pool5"] = nn.functional.adaptive_avg_pool2d(out["res5"], 1)
        return {t: out[t] for t in taps}


class ConvNet(Backbone):
    """A small, fast convnet for CPU demos and tests: 4 x (3x3 conv, BN, ReLU, 2x2 max-pool).
    ``width`` multiplies every stage's channels (0.5: 12-24-48-96, 2: 48-96-192-384).

    At 32 px the last map is 2 x 2. Trains at over 1,000 images/s on 2 CPU cores.
    """

    taps = ("conv1", "conv2", "conv3", "conv4")

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), cifar_stem: bool = False, in_channels: int = 3,
                 width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise SelfSupError(f"width={width} is not valid: it must be positive (1.0: 24-48-96-192 channels)")
        widths = tuple(max(1, round(w * width)) for w in widths)      # the capacity axis (Goyal et al. 2019)
        blocks, in_ch = [], in_channels
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


class AlexNet(Backbone):
    """The per-tile tower of Jigsaw's context-free network (CFN; Noroozi & Favaro 2016,
    METHODS.md 2.4), conv1 .. conv5 of AlexNet with its groups and LRN, no batch norm:

    conv1 96@11x11 -> ReLU -> max-pool 3/2 -> LRN(5); conv2 256@5x5 pad 2, 2 groups ->
    ReLU -> max-pool 3/2 -> LRN; conv3 384@3x3; conv4 384@3x3, 2 groups; conv5 256@3x3,
    2 groups -> max-pool 3/2. conv1 has AlexNet's stride 4 on whole images; the Jigsaw
    method sets ``conv1.stride`` to 2 for its 64 px tiles, as the CFN, and a checkpoint
    evaluates as a standard AlexNet (Noroozi's transfer). Needs inputs of 67 px or more
    at stride 4 (39 px at stride 2)."""

    taps = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self, cifar_stem: bool = False, in_channels: int = 3):
        super().__init__()
        if cifar_stem:
            raise SelfSupError("alexnet has no CIFAR stem: drop cifar_stem, or use convnet or a resnet for 32 px images")
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4)
        self.stage1 = nn.Sequential(relu(), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5, 1e-4, 0.75))
        self.conv2 = nn.Sequential(nn.Conv2d(96, 256, 5, padding=2, groups=2), relu(), nn.MaxPool2d(3, 2),
                                   nn.LocalResponseNorm(5, 1e-4, 0.75))
        self.conv3 = nn.Sequential(nn.Conv2d(256, 384, 3, padding=1), relu())
        self.conv4 = nn.Sequential(nn.Conv2d(384, 384, 3, padding=1, groups=2), relu())
        self.conv5 = nn.Sequential(nn.Conv2d(384, 256, 3, padding=1, groups=2), relu(), nn.MaxPool2d(3, 2))
        self.tap_dims = {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384, "conv5": 256}

    def forward_taps(self, x, taps=None):
        taps = self.check_taps(taps)
        out = {"conv1": self.stage1(self.conv1(x))}
        x = out["conv1"]
        for name in self.taps[1:]:
            if all(t in out for t in taps):
                break
            x = getattr(self, name)(x)
            out[name] = x
        return {t: out[t] for t in taps}


class InputStage(Backbone):
    """``net`` behind a fixed, parameter-free transform of its input (``prepare``). The
    stage receives the usual normalised RGB images, in pretraining and in evaluation
    alike, so a checkpoint is evaluated on exactly the inputs it was trained on."""

    def __init__(self, net: Backbone):
        super().__init__()
        self.net, self.taps, self.tap_dims = net, net.taps, net.tap_dims

    @property
    def default_tap(self) -> str:
        return self.net.default_tap

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_taps(self, x, taps=None):
        return self.net.forward_taps(self.prepare(x), taps)


class LChannel(InputStage):
    """Only the lightness (Colorization, METHODS.md 3.1): the images are converted to Lab
    and ``net``, a backbone with one input channel, receives L - 50."""

    @staticmethod
    def lightness(x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB -> L - 50 (B x 1 x H x W), computed in float32 (also under autocast)."""
        with torch.autocast(x.device.type, enabled=False):
            return rgb_to_lab(unnormalize(x))[:, :1].to(x.dtype) - 50

    def prepare(self, x):
        return self.lightness(x)


class TileNorm(InputStage):
    """Every input image standardised by its own statistics, in the order of Jigsaw++'s
    Caffe prototxt (METHODS.md 2.2): an ``MVN`` layer with ``across_channels`` (the RGB
    minus its mean, over its standard deviation, both over C x H x W), then a ``Power``
    layer of scale 50. The RGB is recovered from the normalised input without clipping,
    so the colour projection's values outside [0, 1] keep their place in the tile's
    statistics. In pretraining each tile is an input image; in evaluation the whole image
    is standardised the same way [A]. No parameters: the state dict is the tower's."""

    scale = 50.0

    @staticmethod
    def standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        """The MVN step alone: each image's RGB (un-normalised, not clipped) to mean 0, std 1."""
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, -1, 1, 1)
        rgb = x.float() * std + mean
        m, s = rgb.mean((1, 2, 3), keepdim=True), rgb.std((1, 2, 3), keepdim=True)
        return ((rgb - m) / (s + eps)).to(x.dtype)

    def prepare(self, x):
        return self.standardize(x) * self.scale


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": lambda **kw: ResNet(18, **kw),
    "resnet34": lambda **kw: ResNet(34, **kw),
    "resnet50": lambda **kw: ResNet(50, **kw),
    "convnet": lambda **kw: ConvNet(**kw),
    "alexnet": lambda **kw: AlexNet(**kw),
}
INPUTS = ("rgb", "L", "tile_norm")
TIMM_PREFIX = "timm:"        # timm:NAME, any installed timm model (a prefix family, not in BACKBONES)


def auto_cifar_stem(name: str, image_size: int) -> bool:
    """``cifar_stem: auto``: the CIFAR stem on the torchvision ResNets for images of 64 px or less,
    where the ImageNet stem's 4x downsampling would leave a final map of 2 x 2 or smaller."""
    return name.startswith("resnet") and image_size <= 64


def small_maps_on_cpu(name: str, cifar_stem: bool | None, image_size: int) -> bool:
    """Whether the backbone's maps are too small for bf16 autocast to pay on a CPU: a torchvision ResNet
    with the ImageNet stem at 32 px or less, whose stride-4 stem leaves 8 x 8 maps (README, "Distributed and
    mixed precision": 0.8x to 1.0x the fp32 rate at 32 px, 1.6x at 64 px, 2.0x at 96 px)."""
    return name.startswith("resnet") and cifar_stem is False and image_size <= 32


def build_backbone(name: str, cifar_stem: bool = False, input: str = "rgb", **options) -> Backbone:
    """Create a backbone by registry name, e.g. ``build_backbone("resnet18", cifar_stem=True)``,
    or any installed timm model as ``timm:NAME`` (``selfsup.models.timm_backbone``; the optional
    extra ``selfsup[timm]``), e.g. ``build_backbone("timm:vit_small_patch16_224")``.

    ``input="L"`` builds it with one input channel behind ``LChannel`` (Colorization),
    ``input="tile_norm"`` behind ``TileNorm`` (Jigsaw++); ``options`` go to the
    constructor (``last_stride`` for ResNets; ``img_size`` and ``timm.create_model``'s
    arguments for timm models)."""
    if name.startswith(TIMM_PREFIX):
        from selfsup.models.timm_backbone import TimmBackbone

        factory = lambda **kw: TimmBackbone(name[len(TIMM_PREFIX):], **kw)  # noqa: E731
    elif name in BACKBONES:
        factory = BACKBONES[name]
    else:
        raise SelfSupError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}, or {TIMM_PREFIX}NAME "
                           f"for a timm model")
    if input not in INPUTS:
        raise SelfSupError(f"unknown backbone input {input!r}: use one of {', '.join(INPUTS)}")
    try:
        net = factory(cifar_stem=cifar_stem, in_channels=1 if input == "L" else 3, **options)
    except TypeError:
        raise SelfSupError(f"backbone {name} takes no option {', '.join(options)}") from None
    return {"rgb": lambda n: n, "L": LChannel, "tile_norm": TileNorm}[input](net)
