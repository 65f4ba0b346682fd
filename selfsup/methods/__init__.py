"""Methods by name: ``build_method("simclr", backbone="resnet18", temperature=0.2)``."""
from __future__ import annotations

from dataclasses import fields

from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.byol import BYOL
from selfsup.methods.checks import METHOD_CHECKS, check_method_options
from selfsup.methods.colorization import Colorization
from selfsup.methods.deepcluster_v2 import DeepClusterV2
from selfsup.methods.distill import Distill
from selfsup.methods.jigclu import JigClu
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.jigsaw_pp import JigsawPP
from selfsup.methods.moco_v2 import MoCoV2
from selfsup.methods.sela_v2 import SeLaV2
from selfsup.methods.simclr import SimCLR
from selfsup.methods.spectral_contrastive import SpectralContrastive
from selfsup.methods.supervised import Supervised
from selfsup.methods.swav import SwAV
from selfsup.methods.tcr import TCR
from selfsup.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, BYOL, VICReg, TCR, SpectralContrastive, MoCoV2, JigClu,
                                                   SwAV, DeepClusterV2, SeLaV2, Jigsaw, JigsawPP, Colorization,
                                                   Supervised, Distill)}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method of your own (a ``Method`` subclass with a ``name``), as a class decorator: every
    command and function that takes a method name then knows it (docs/add_a_method.md)."""
    if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name):
        raise SelfSupError(f"register_method needs a Method subclass with a name, got {cls!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise SelfSupError(f"a method named {cls.name!r} exists already: give yours another name")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise SelfSupError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, backbone="resnet18", image_size: int = 224, cifar_stem: bool = False,
                 **overrides) -> Method:
    """Create a method with its paper defaults, overriding any field of its Config. Settings outside their
    range (``METHOD_CHECKS``; any number inf or nan, a temperature of 0 or below) are refused in one line."""
    from selfsup.models import build_backbone

    cls = get_method(name)
    valid = {f.name for f in fields(cls.Config)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise SelfSupError(f"unknown option {unknown[0]!r} for method {name}: valid options are {', '.join(sorted(valid))}")
    cfg = cls.Config(**overrides)
    check_method_options(name, cfg)          # the ranges check_config holds a run's settings to
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, cifar_stem=cifar_stem, **cls.backbone_options(cfg, backbone))
    return cls(backbone, cfg, image_size)


__all__ = ["METHODS", "METHOD_CHECKS", "Method", "MethodConfig", "build_method", "get_method", "register_method"]
