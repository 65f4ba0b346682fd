"""One-line refusals of settings that would make an evaluation meaningless (a kNN of no
neighbours, an untrained probe, an empty grid of windows, non-finite features) instead of a
wrong number, and the evaluation size every protocol defaults to."""
from __future__ import annotations

import math

import torch

from selfsup.checkpoint import pretraining_size
from selfsup.errors import SelfSupError


def at_least_one(flag: str, value: int | None, example: int) -> None:
    """Refuse a count below 1; None (the default) passes."""
    if value is not None and value < 1:
        raise SelfSupError(f"{flag} must be at least 1, got {value}: use e.g. {flag} {example}")


def positive(flag: str, value: float, example: float) -> None:
    """Refuse a rate or temperature that is not a finite number above 0."""
    if not (math.isfinite(value) and value > 0):
        raise SelfSupError(f"{flag} must be a positive number, got {value}: use e.g. {flag} {example}")


def eval_image_size(ckpt: dict, image_size: int | None = None) -> int | None:
    """The evaluation size: ``image_size`` (``--image-size``, which callers check before their work), else the
    checkpoint's pretraining size (``ckpt["image_size"]``, set also when the size came from the data; older
    checkpoints: their config's), else None (a foreign state dict: the images' own size). A checkpoint's size
    that is not a whole number of pixels from 1 to ``MAX_IMAGE_SIZE`` is refused in one line."""
    return image_size or pretraining_size(ckpt)


def finite(features: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse features with NaN or infinite values (a diverged or corrupt checkpoint), which every
    probe would score as a number."""
    if not torch.isfinite(features).all():
        raise SelfSupError(f"{name} contain NaN or infinite values (a diverged or corrupt checkpoint?): "
                           "evaluate a checkpoint whose features are finite")
    return features
