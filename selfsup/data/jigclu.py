"""JigClu's input pipeline (Chen, Liu, Jia, CVPR 2021, §3.1; METHODS.md 1.1).

Split each image into m x m overlapping patches, augment every patch
independently (the MoCo v2 policy), then permute all n*m*m patches of the
(global) batch and stitch them into n montage images of m x m patches.

Patches are numbered position-major, k = pos * n + img with pos = row * m + col,
so a patch's source image is ``k % n`` and its location ``k // n``; montage slot
s of montage i holds patch ``perm[s * n + i]``.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from selfsup.data.views import (IMAGENET_MEAN, IMAGENET_STD, ViewSpec, crop_boxes, normalize, photometric,
                                resized_crop, to_float)
from selfsup.errors import SelfSupError

AUG_POSITIONS = ("after", "during", "before")
OVERLAP_MODES = ("code", "paper")


def split_boxes(width: float, height: float, m: int, overlap: float, mode: str = "code") -> torch.Tensor:
    """The m*m patch boxes (x1, y1, x2, y2) of a width x height image, row-major.

    ``mode="code"`` (official code, the default): each cell of the m x m grid
    extends ``overlap * side`` past every interior boundary, so with m = 2 and
    0.3 each patch covers 0.8 of a side and neighbours share 0.6 of it.
    ``mode="paper"`` (§5.3, Fig. 7): neighbours share a band of ``overlap * side``,
    i.e. each cell extends half of it past every interior boundary.
    """
    if mode not in OVERLAP_MODES:
        raise SelfSupError(f"unknown overlap mode {mode!r}: use one of {', '.join(OVERLAP_MODES)}")
    ext = overlap if mode == "code" else overlap / 2
    boxes = []
    for r in range(m):
        for c in range(m):
            x1 = c * width / m - (ext * width if c > 0 else 0)
            x2 = (c + 1) * width / m + (ext * width if c < m - 1 else 0)
            y1 = r * height / m - (ext * height if r > 0 else 0)
            y2 = (r + 1) * height / m + (ext * height if r < m - 1 else 0)
            boxes.append([max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2)])
    return torch.tensor(boxes)


def sub_boxes(outer: torch.Tensor, inner_unit: torch.Tensor) -> torch.Tensor:
    """Place boxes given in unit coordinates of ``outer`` boxes: (n, 4) x (k, 4) -> (k * n, 4), position-major."""
    w = (outer[:, 2] - outer[:, 0])[None, :]
    h = (outer[:, 3] - outer[:, 1])[None, :]
    x1 = outer[None, :, 0] + inner_unit[:, None, 0] * w
    y1 = outer[None, :, 1] + inner_unit[:, None, 1] * h
    x2 = outer[None, :, 0] + inner_unit[:, None, 2] * w
    y2 = outer[None, :, 1] + inner_unit[:, None, 3] * h
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4)


class JigCluViews:
    """uint8 images (n, C, S, S) -> [patches (n*m*m, 3, S/m, S/m)], position-major.

    ``aug_position`` (Table 7): "after" the split, every patch augmented on its own
    (the method); "during": crop the image first, split the crop, then the rest of
    the augmentation per patch; "before": the whole augmentation on the image, then
    split (every patch of an image shares it).
    """

    def __init__(self, size: int, m: int = 2, overlap: float = 0.3, overlap_mode: str = "code",
                 aug_position: str = "after", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if aug_position not in AUG_POSITIONS:
            raise SelfSupError(f"unknown augmentation position {aug_position!r}: use one of {', '.join(AUG_POSITIONS)}")
        if size % m:
            raise SelfSupError(f"image size {size} is not divisible by m={m}: choose image_size as a multiple of m")
        self.size, self.m, self.patch = size, m, size // m
        self.overlap, self.overlap_mode, self.aug_position = overlap, overlap_mode, aug_position
        # the MoCo v2 policy (METHODS.md 1.1), for patches of size / m
        self.spec = ViewSpec(self.patch, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_prob=0.5)
        self.mean, self.std = mean, std
        split_boxes(1.0, 1.0, m, overlap, overlap_mode)         # validates the mode

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        x = to_float(images)
        n, _, h, w = x.shape
        unit = split_boxes(1.0, 1.0, self.m, self.overlap, self.overlap_mode).to(x.device)
        whole = torch.tensor([[0.0, 0.0, w, h]], device=x.device).expand(n, 4)
        source = torch.arange(n, device=x.device).repeat(self.m * self.m)       # position-major
        spec = self.spec
        if self.aug_position == "after":
            patch_boxes = sub_boxes(whole, unit)                                  # (m*m*n, 4)
            pw, ph = patch_boxes[:, 2] - patch_boxes[:, 0], patch_boxes[:, 3] - patch_boxes[:, 1]
            # RandomResizedCrop inside each patch: drawn in a unit square, scaled to the patch
            # (exact for square patches, the case of square images)
            crop = crop_boxes(len(patch_boxes), 1000, 1000, spec.scale, spec.ratio, g, x.device) / 1000
            boxes = torch.stack([patch_boxes[:, 0] + crop[:, 0] * pw, patch_boxes[:, 1] + crop[:, 1] * ph,
                                 patch_boxes[:, 0] + crop[:, 2] * pw, patch_boxes[:, 1] + crop[:, 3] * ph], 1)
            patches = photometric(resized_crop(x, boxes, self.patch, source), spec, g)
        elif self.aug_position == "during":
            crops = crop_boxes(n, h, w, spec.scale, spec.ratio, g, x.device)
            patches = photometric(resized_crop(x, sub_boxes(crops, unit), self.patch, source), spec, g)
        else:  # before: augment each image as a whole at full size, then split
            crops = crop_boxes(n, h, w, spec.scale, spec.ratio, g, x.device)
            big = photometric(resized_crop(x, crops, self.size), replace(spec, size=self.size), g)
            full = torch.tensor([[0.0, 0.0, self.size, self.size]], device=x.device).expand(n, 4)
            patches = resized_crop(big, sub_boxes(full, unit), self.patch, source)
        return [normalize(patches, self.mean, self.std)]


def montage(patches: torch.Tensor, perm: torch.Tensor, m: int, start: int = 0, count: int | None = None) -> torch.Tensor:
    """Stitch montages ``start .. start+count`` from the permuted patches (METHODS.md 1.1 step 3).

    ``patches``: (m*m*N, C, p, p) position-major over N images; montage i, slot
    s = row * m + col, holds ``patches[perm[s * N + i]]``.
    """
    total, c, p, _ = patches.shape
    n_all = total // (m * m)
    count = n_all - start if count is None else count
    chosen = patches[perm].view(m, m, n_all, c, p, p)[:, :, start:start + count]     # (row, col, img, c, p, p)
    return chosen.permute(2, 3, 0, 4, 1, 5).reshape(count, c, m * p, m * p)


def unmontage(montages: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of ``montage`` for the slots: (n, C, m*p, m*p) -> (m*m*n, C, p, p) in slot-major order."""
    n, c, size, _ = montages.shape
    p = size // m
    return montages.view(n, c, m, p, m, p).permute(2, 4, 0, 1, 3, 5).reshape(m * m * n, c, p, p)
