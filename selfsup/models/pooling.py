"""Spatial poolings of feature maps shared by evaluation and methods."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CC_DIMS = 9600     # CC+ (METHODS.md 4): AlexNet conv4 max-pooled to 5 x 5 x 384


def cc_max_pool(fmap: torch.Tensor, target_dims: int = CC_DIMS) -> torch.Tensor:
    """B x C x h x w -> B x (C s^2): max-pooled to the s x s grid with C s^2 close to ``target_dims``
    (CC+'s teacher features: AlexNet conv4 5 x 5 x 384, VGG16 conv4 4 x 4 x 512)."""
    c, h, w = fmap.shape[1:]
    s = max(1, min(h, w, round(math.sqrt(target_dims / c))))
    return torch.flatten(F.adaptive_max_pool2d(fmap, s), 1)
