"""Checkpoints: written atomically, loaded with clear errors."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from selfsup.errors import SelfSupError


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"checkpoint {path} does not exist: pass the path of a .pt file written by `selfsup pretrain`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SelfSupError(f"cannot read checkpoint {path} ({type(exc).__name__}): it is not a PyTorch file or it is truncated") from None
    if not isinstance(ckpt, dict):
        raise SelfSupError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict: pass a file written by `selfsup pretrain` or a state dict")
    return ckpt


def load_backbone(path: str | Path, ckpt: dict | None = None):
    """The backbone of a checkpoint, ready for evaluation (eval mode, on CPU).

    Accepts a ``selfsup pretrain`` checkpoint (which records the backbone's name)
    or a plain torchvision ResNet state dict (its depth is inferred from the keys).
    Pass ``ckpt`` when the file is already loaded.
    """
    from selfsup.models import build_backbone

    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    options = {}
    if "backbone_state" in ckpt:
        name, cifar_stem, state = ckpt["backbone"], ckpt.get("cifar_stem", False), ckpt["backbone_state"]
        options = ckpt.get("backbone_options") or {}
    else:
        state = ckpt.get("state_dict", ckpt)
        name, cifar_stem = _guess_torchvision_resnet(state, path)
    backbone = build_backbone(name, cifar_stem=cifar_stem, **options)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise SelfSupError(f"checkpoint {path} does not fit backbone {name} ({first[:120]}): pass a checkpoint of that architecture") from None
    return backbone.eval()


def load_method(ckpt: dict, backbone):
    """The whole pretrained method (backbone and heads, eval mode) of a ``selfsup pretrain``
    checkpoint around ``backbone`` (from ``load_backbone``), or None for a plain state dict."""
    from selfsup.methods import build_method

    config = ckpt.get("config") or {}
    name = config.get("method")
    if "model" not in ckpt or not name:
        return None
    method = build_method(name, backbone=backbone, image_size=config.get("image_size") or 224, **(config.get(name) or {}))
    method.load_state_dict(ckpt["model"])
    return method.eval()


def load_projector(ckpt: dict, backbone):
    """The pretraining projector of a ``selfsup pretrain`` checkpoint (eval mode), or None when
    the checkpoint has none (a torchvision state dict, or a method without a projector)."""
    method = load_method(ckpt, backbone)
    return method.projector if method is not None and hasattr(method, "projector") else None


def _guess_torchvision_resnet(state: dict, path) -> tuple[str, bool]:
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise SelfSupError(f"checkpoint {path} is neither a selfsup checkpoint nor a ResNet state dict: pass a file written by `selfsup pretrain`")
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50}.get((bottleneck, blocks))
    if depth is None:
        raise SelfSupError(f"checkpoint {path} is a ResNet of unsupported depth: use resnet18, resnet34 or resnet50")
    return f"resnet{depth}", state["conv1.weight"].shape[-1] == 3
