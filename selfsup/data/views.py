"""View recipes as batched tensor augmentations with per-sample random parameters.

Images arrive as a uint8 batch (B x C x H x W, C = 1 or 3) already on the training
device; every augmentation works on the whole batch at once with parameters drawn
per sample from a ``torch.Generator``, so the input pipeline costs a few batched
tensor ops per step instead of per-image PIL work. The operations follow
torchvision's definitions (RandomResizedCrop, ColorJitter with a random order of
its four parts, RandomGrayscale, GaussianBlur, RandomSolarize, horizontal flip).

Recipes (each a list of ``ViewSpec``, one per view, parameterised by image size):
- ``simclr`` / ``simclr:S``: Chen et al. 2020 (METHODS.md 7.5): crop (0.08, 1), flip,
  colour distortion of strength S: jitter (0.8S, 0.8S, 0.8S, 0.2S) p=0.8, grayscale
  p=0.2. Above 64 px: S = 1.0 and blur p=0.5 (ImageNet); at 64 px or less: S = 0.5 and
  no blur (the official CIFAR-10 command, ``--color_jitter_strength=0.5 --use_blur=False``).
  An explicit S replaces the strength only; the blur still follows the size.
- ``mocov2``: the MoCo v2 policy (METHODS.md 1.1): crop (0.2, 1), jitter (0.4, 0.4,
  0.4, 0.1) p=0.8, grayscale p=0.2, blur p=0.5, flip.
- ``byol``: Grill et al. 2020 (METHODS.md 7.1): crop (0.08, 1), flip, jitter (0.4,
  0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, blur p=1.0 / 0.1 (above 64 px; none at 64 px or
  less, as solo-learn's CIFAR recipes; ``byol:blur`` keeps it at any size), solarize p=0 / 0.2.
- ``multicrop`` / ``multicrop:2x160+4x96``: SwAV's multi-crop (Caron et al. 2020, §3.2;
  METHODS.md 5.2): the first group of crops are global, the others local at scale
  (0.05, 0.14); "" means 2 crops at the image size + 6 at 96/224 of it. Global scale:
  (0.14, 1) with six local crops or more (2x224+6x96), (0.08, 1) with fewer (2x224
  alone, 2x160+4x96), as the official scripts. SimCLR's colour distortion, blur p=0.5.
- ``patch:14`` / ``patch:14x4``: BagSSL's fixed-scale patches (METHODS.md 7.1): square
  patches of a fixed side (14 px of the source image) at uniformly random positions,
  entirely inside the image, resized to the network input, with the BYOL colour
  augmentation; two per image by default, ``x4`` for four.

Blur (METHODS.md 1.1, 5.2, 7.5): sigma ~ U[0.1, 2.0] in pixels of the view, whatever
its size (PIL's ``GaussianBlur(radius=sigma)`` on the crop, as the official code); the
kernel spans +-ceil(3 sigma), no wider than the view. ``ViewSpec.blur_kernel_frac``
is the explicit size-relative option: SimCLR's TF code's kernel of 10% of the view
side (``kernel_size=height//10``), with the same sigmas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from selfsup.errors import SelfSupError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation of one view; probabilities of 0 switch a step off."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)   # sigma ~ U[a, b] in pixels of this view (PIL radius)
    blur_kernel_frac: float | None = None          # None: kernel +-3 sigma; 0.1: SimCLR code's size // 10 (odd)
    solarize_prob: float = 0.0
    patch: int | None = None        # fixed patch side in source pixels at a random position, instead of the crop
    inside: bool = False            # the crop's bilinear samples never read a pixel outside its box (see resized_crop)



def color_distortion(strength: float) -> tuple[float, float, float, float]:
    """SimCLR's colour jitter of strength s (App. A; METHODS.md 7.5): (0.8s, 0.8s, 0.8s, 0.2s)."""
    s = strength
    return 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s


def simclr_views(size: int, n: int = 2, strength: float | None = None) -> list[ViewSpec]:
    """SimCLR (METHODS.md 7.5): crop (0.08, 1), flip, colour distortion of ``strength``
    (default 1.0 above 64 px, 0.5 at 64 px or less) with p=0.8, grayscale p=0.2, and
    blur p=0.5 above 64 px only (the CIFAR-10 command has ``--use_blur=False``)."""
    small = size <= 64
    if strength is None:
        strength = 0.5 if small else 1.0
    return [ViewSpec(size, jitter=color_distortion(strength), blur_prob=0.0 if small else 0.5)] * n


def mocov2_views(size: int, n: int = 2, blur: bool = True) -> list[ViewSpec]:
    """MoCo v2 (METHODS.md 1.1): crop (0.2, 1), flip, jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale
    p=0.2, blur p=0.5 at every size; ``blur`` False (``mocov2:noblur``) drops the blur, as the other
    recipes do at 64 px or less."""
    return [ViewSpec(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_prob=0.5 if blur else 0.0)] * n


def byol_views(size: int, blur: bool | None = None) -> list[ViewSpec]:
    """BYOL (METHODS.md 7.1): blur p=1.0 / 0.1 and solarize p=0 / 0.2 on the two views. ``blur``
    None: the blur above 64 px only (solo-learn's CIFAR recipes, like SimCLR's CIFAR-10 command,
    have none: sigma up to 2 px wipes out a 32 px image); True: at any size (``byol:blur``)."""
    spec = ViewSpec(size, jitter=(0.4, 0.4, 0.2, 0.1))
    a, b = (1.0, 0.1) if (size > 64 if blur is None else blur) else (0.0, 0.0)
    return [replace(spec, blur_prob=a), replace(spec, blur_prob=b, solarize_prob=0.2)]


def patch_views(size: int, side: int, n: int = 2) -> list[ViewSpec]:
    """BagSSL fixed-scale patches: n patches of ``side`` px resized to ``size``, BYOL colour
    augmentation with its blur at every size, as the paper states for CIFAR (views alternate
    the two BYOL blur/solarize settings)."""
    a, b = (replace(spec, patch=side) for spec in byol_views(size, blur=True))
    return [a if i % 2 == 0 else b for i in range(n)]


def parse_crops(crops: str) -> list[tuple[int, int]]:
    """"2x224+6x96" -> [(2, 224), (6, 96)]: crop counts and sizes, global crops first."""
    try:
        groups = [tuple(int(v) for v in part.split("x")) for part in crops.split("+")]
        if not groups or any(len(g) != 2 or g[0] < 1 or g[1] < 1 for g in groups):
            raise ValueError
    except ValueError:
        raise SelfSupError(f"cannot parse crops {crops!r}: write COUNTxSIZE groups joined by '+', e.g. 2x224+6x96") from None
    return groups  # type: ignore[return-value]


def default_global_scale(groups: list[tuple[int, int]]) -> tuple[float, float]:
    """The official global-crop scale for these crop groups (METHODS.md 5.2): SwAV's (0.14, 1)
    goes with six local crops or more (2x224+6x96, whose local crops take (0.05, 0.14));
    with fewer (2x224 alone, SeLa-v2's and DeepCluster-v2's 2x160+4x96) the scripts use (0.08, 1)."""
    return (0.14, 1.0) if sum(count for count, _ in groups[1:]) >= 6 else (0.08, 1.0)


def multicrop_views(size: int, crops: str = "", global_scale=None, local_scale=(0.05, 0.14),
                    color_strength: float = 1.0, blur_prob: float = 0.5) -> list[ViewSpec]:
    """SwAV multi-crop (§3.2; METHODS.md 5.2): the first group of ``crops`` are the global
    crops, the others local ones; "" means 2 x size + 6 x round(size * 96 / 224), and at 64 px
    or less 2 x size + 4 x size / 2 (the official advice for CIFAR, facebookresearch/swav
    issues #23 and #37: 2x32+4x16, global scale (0.14, 1)); "global" means the two global
    crops of the image size alone (solo-learn's CIFAR recipe). ``global_scale`` None:
    ``default_global_scale`` of the crops. Colour distortion of strength s: jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s) p=0.8,
    grayscale p=0.2."""
    if crops == "global":
        groups = [(2, size)]
    elif crops:
        groups = parse_crops(crops)
    elif size <= 64:
        groups = [(2, size), (4, max(1, round(size / 2)))]
        global_scale = global_scale or (0.14, 1.0)          # the advice's (configs/swav_cifar10.yaml)
    else:
        groups = [(2, size), (6, max(1, round(size * 96 / 224)))]
    if global_scale is None:
        global_scale = default_global_scale(groups)
    specs = []
    for k, (count, crop_size) in enumerate(groups):
        spec = ViewSpec(crop_size, scale=tuple(global_scale if k == 0 else local_scale),
                        jitter=color_distortion(color_strength), blur_prob=blur_prob)
        specs += [spec] * count
    return specs


VIEW_RECIPES = {"simclr": simclr_views, "mocov2": mocov2_views, "byol": byol_views, "multicrop": multicrop_views,
                "patch": patch_views}


def parse_patch(arg: str) -> tuple[int, int]:
    """"14" -> (14, 2) and "14x4" -> (14, 4): patch side and patches per image."""
    side, _, n = arg.partition("x")
    try:
        side_n = int(side), int(n or 2)
        if min(side_n) < 1:
            raise ValueError
    except ValueError:
        raise SelfSupError(f"cannot parse patches {arg!r}: write SIDE or SIDExCOUNT, e.g. patch:14 or patch:14x4") from None
    return side_n


def parse_strength(arg: str) -> float:
    """"0.5" -> 0.5: a colour-distortion strength in [0, 2.5] (the hue jitter 0.2 s is at most 0.5)."""
    try:
        strength = float(arg)
        if not 0 <= strength <= 2.5:
            raise ValueError
    except ValueError:
        raise SelfSupError(f"cannot parse colour strength {arg!r}: write a number in [0, 2.5], e.g. simclr:0.5") from None
    return strength


def view_recipe(name: str, size: int) -> list[ViewSpec]:
    """A recipe by name; ``simclr:0.5`` gives SimCLR's colour strength, ``multicrop:2x160+4x96``
    the crops of a multi-crop recipe, ``patch:14x2`` the side and number of fixed-scale patches."""
    base, _, arg = name.partition(":")
    if (base not in VIEW_RECIPES or (arg and base not in ("simclr", "multicrop", "patch", "byol", "mocov2"))
            or (base == "patch" and not arg) or (base == "byol" and arg not in ("", "blur"))
            or (base == "mocov2" and arg not in ("", "noblur"))):
        raise SelfSupError(f"unknown view recipe {name!r}: choose one of simclr, simclr:STRENGTH, mocov2, mocov2:noblur, "
                           "byol, byol:blur, multicrop, multicrop:2x224+6x96, patch:SIDE or patch:SIDExCOUNT")
    if base == "byol" and arg:
        return byol_views(size, blur=True)
    if base == "mocov2" and arg:
        return mocov2_views(size, blur=False)
    if base == "patch":
        return patch_views(size, *parse_patch(arg))
    if base == "simclr" and arg:
        return simclr_views(size, strength=parse_strength(arg))
    return multicrop_views(size, arg) if arg else VIEW_RECIPES[base](size)


# ---------------------------------------------------------------- batched operations

def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _coin(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_boxes(n: int, height, width, scale, ratio, g: torch.Generator, device) -> torch.Tensor:
    """RandomResizedCrop boxes (x1, y1, x2, y2) per sample, torchvision's algorithm:
    up to 10 draws of (area, log-ratio), the first that fits, else a central crop.

    ``height`` and ``width``: ints (every image of the batch), or tensors of n per-sample
    sizes (images of their own sizes padded into one batch: each box lies inside its image)."""
    per_sample = torch.is_tensor(height)
    if per_sample:
        height = height.to(device=device, dtype=torch.float32)
        width = width.to(device=device, dtype=torch.float32)
    tries = 10
    hw = height * width
    area = (hw[:, None] if per_sample else hw) * _uniform(n * tries, *scale, g, device).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), g, device).view(n, tries)
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * r))
    h = torch.round(torch.sqrt(area / r))
    if per_sample:
        ok = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
    else:
        ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    # fallback: whole image, clamped to the ratio range
    if per_sample:
        in_ratio = width / height
        low, high = in_ratio < ratio[0], in_ratio > ratio[1]
        fw = torch.where(high, torch.round(height * ratio[1]), width)
        fh = torch.where(low, torch.round(width / ratio[0]), height)
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            fw, fh = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            fw, fh = round(height * ratio[1]), height
        else:
            fw, fh = width, height
        fw, fh = torch.full_like(w[:, 0], fw), torch.full_like(h[:, 0], fh)
    idx = first.clamp(min=0)
    w = torch.where(first >= 0, w.gather(1, idx[:, None])[:, 0], fw)
    h = torch.where(first >= 0, h.gather(1, idx[:, None])[:, 0], fh)
    u = torch.rand(n, 2, generator=g, device=device)
    x1 = torch.where(first >= 0, torch.floor(u[:, 0] * (width - w + 1)), torch.floor((width - w) / 2))
    y1 = torch.where(first >= 0, torch.floor(u[:, 1] * (height - h + 1)), torch.floor((height - h) / 2))
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def patch_boxes(n: int, height, width, side: int, g: torch.Generator, device) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of ``side`` x ``side`` patches at uniformly random integer
    positions, entirely inside a height x width image (BagSSL fixed-scale sampling);
    ``height`` and ``width`` may be tensors of per-sample sizes (see ``crop_boxes``)."""
    if torch.is_tensor(height):
        height, width = height.to(device=device, dtype=torch.float32), width.to(device=device, dtype=torch.float32)
        if side > float(torch.minimum(height, width).min()):
            small = int(torch.minimum(height, width).argmin())
            raise SelfSupError(f"patch side {side} exceeds an image of {int(height[small])}x{int(width[small])} px: "
                               f"use a smaller patch side")
        u = torch.rand(n, 2, generator=g, device=device)
        x1, y1 = torch.floor(u[:, 0] * (width - side + 1)), torch.floor(u[:, 1] * (height - side + 1))
        return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)
    if side > min(height, width):
        raise SelfSupError(f"patch side {side} exceeds the {height}x{width} images: use a smaller patch side")
    x1 = torch.randint(0, width - side + 1, (n,), generator=g, device=device).float()
    y1 = torch.randint(0, height - side + 1, (n,), generator=g, device=device).float()
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def fill_padding(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Images padded into one batch (image i in the top-left sizes[i] = (h, w) of x[i]) with the row and the
    column just past each image's true size overwritten by its last row and column, in place. Those are the
    only padding pixels a crop reads: every box lies inside its image and roi_align's bilinear samples lie at
    least half a pixel inside the box, so a sample reads at most one pixel past the image, which then holds
    what roi_align's clamping reads at the border of an unpadded image. The rest of the padding is never read."""
    n, c, hh, ww = x.shape
    sizes = sizes.to(x.device)
    h, w, batch = sizes[:, 0], sizes[:, 1], torch.arange(n, device=x.device)
    row = h.clamp(max=hh - 1)
    x[batch, :, row, :] = torch.where((h < hh).view(n, 1, 1), x[batch, :, h - 1, :], x[batch, :, row, :])
    col = w.clamp(max=ww - 1)
    x[batch, :, :, col] = torch.where((w < ww).view(n, 1, 1), x[batch, :, :, w - 1], x[batch, :, :, col])
    return x


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, source: torch.Tensor | None = None,
                 inside: bool = False) -> torch.Tensor:
    """Crop image ``source[i]`` (default: image i) to box i (x1, y1, x2, y2 in pixels)
    and resize it to size x size: one output per box.

    roi_align averages several bilinear samples per output pixel when shrinking,
    which acts like an antialiasing filter. Its samples span the box's continuous extent, so those within half
    a pixel of an edge blend in the pixel beyond it. ``inside``: the box is shrunk by half a pixel on each
    side, so every sample lies between the centres of the box's own edge pixels, as when the crop is cut out
    first and then resized (PIL, torchvision); the scale changes by (w - 1) / w."""
    if source is None:
        source = torch.arange(len(boxes), device=x.device)
    if inside:
        boxes = boxes + torch.tensor([0.5, 0.5, -0.5, -0.5], device=boxes.device, dtype=boxes.dtype)
    rois = torch.cat([source.to(x.dtype)[:, None], boxes.to(x.dtype)], dim=1)
    return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def cut_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Box i (integer x1, y1, x2, y2) cut out of image i and resized to size x size by torch's antialiased
    bilinear filter, in the images' dtype: torchvision's RandomResizedCrop on tensors (crop, then resize with
    antialias), uint8 in and out. It reads only inside each box. The streaming path uses it on the CPU,
    where at 224 px it runs about ten times faster than ``resized_crop``'s roi_align (README, "Streaming
    large image sets"); one call per box, so the GPU keeps roi_align's single kernel."""
    out = torch.empty(len(boxes), images.shape[1], size, size, dtype=images.dtype, device=images.device,
                      memory_format=torch.channels_last)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        out[i:i + 1] = F.interpolate(images[i:i + 1, :, y1:y2, x1:x2], size=(size, size), mode="bilinear",
                                     antialias=True, align_corners=False)
    return out


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as torchvision: B x 1 x H x W."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp_(0, 1)


def adjust_brightness(x, factor):
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def adjust_hue(x, shift):
    """Rotate the hue of each image by ``shift`` (a fraction of the circle, in [-0.5, 0.5]), as torchvision's
    RGB -> HSV -> RGB. The way back is the closed form of HSV -> RGB: channel n in (R, G, B) = (5, 3, 1) is
    v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6, and v s = max - min: no branch per sector."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)              # (amax, not max: max's indices cost 20 times the values)
    delta = maxc - minc
    dc = torch.where(delta > 0, delta, torch.ones_like(delta))
    h6 = torch.where(maxc == r, (g - b) / dc, torch.where(maxc == g, 2.0 + (b - r) / dc, 4.0 + (r - g) / dc))
    h6 = torch.where(delta > 0, h6, torch.zeros_like(h6)) + 6.0 * shift.view(-1, 1, 1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - delta * torch.minimum(k, 4.0 - k).clamp_(0, 1))
    return torch.stack(out, 1)


def color_jitter(x, strengths, g: torch.Generator) -> torch.Tensor:
    """torchvision ColorJitter with per-sample factors and a per-sample random order."""
    n, device = len(x), x.device
    bri, con, sat, hue = strengths
    ops = []
    if bri > 0:
        ops.append((adjust_brightness, _uniform(n, max(0.0, 1 - bri), 1 + bri, g, device)))
    if con > 0:
        ops.append((adjust_contrast, _uniform(n, max(0.0, 1 - con), 1 + con, g, device)))
    if sat > 0:
        ops.append((adjust_saturation, _uniform(n, max(0.0, 1 - sat), 1 + sat, g, device)))
    if hue > 0:
        ops.append((adjust_hue, _uniform(n, -hue, hue, g, device)))
    order = torch.rand(n, len(ops), generator=g, device=device).argsort(1)  # order[i, step] = op index
    for step in range(len(ops)):
        for k, (fn, factor) in enumerate(ops):
            sel = (order[:, step] == k).nonzero()[:, 0]
            if len(sel):
                x[sel] = fn(x[sel], factor[sel])
    return x


def blur_radius(sigma_max: float, size: int, kernel_frac: float | None = None) -> int:
    """Half-width r of the (2r + 1)-tap blur kernel on a view of side ``size`` (METHODS.md 1.1, 5.2):
    ceil(3 sigma), where PIL's GaussianBlur(radius=sigma) has nearly all its weight; with
    ``kernel_frac`` f, SimCLR's code: a kernel of int(f * size) taps (radius half of it).
    Never wider than the view (2r + 1 <= size)."""
    r = math.ceil(3 * sigma_max) if kernel_frac is None else int(kernel_frac * size) // 2
    return max(0, min(r, (size - 1) // 2))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image, reflect padding; every image
    uses the kernel half-width of the largest sigma (default ``blur_radius``), normalised."""
    n, c, h, w = x.shape
    if radius is None:
        radius = blur_radius(float(sigma.max()), min(h, w))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)                  # (n*c) x (2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.view(n, c, h, w)


def augment(x: torch.Tensor, spec: ViewSpec, g: torch.Generator, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """One view of a float batch in [0, 1] (B x 3 x H x W); returns B x 3 x size x size in [0, 1].

    ``sizes`` (B x 2: h, w): the true size of each image of a padded batch (the streaming path); every
    crop or patch is drawn inside it, by the same definitions."""
    return photometric(resized_crop(x, view_boxes(x, spec, g, sizes), spec.size, inside=spec.inside), spec, g)


def view_boxes(x: torch.Tensor, spec: ViewSpec, g: torch.Generator, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The crop (or patch) boxes of one view of batch ``x``, inside each image's true size when ``sizes``."""
    if sizes is None:
        return spec_boxes(spec, len(x), x.shape[2], x.shape[3], g, x.device)
    return spec_boxes(spec, len(x), sizes[:, 0], sizes[:, 1], g, x.device)


def spec_boxes(spec: ViewSpec, n: int, height, width, g: torch.Generator, device) -> torch.Tensor:
    """The boxes of ``spec``'s crops (or patches) of n images of ``height`` x ``width`` (ints or n sizes)."""
    if spec.patch is not None:
        return patch_boxes(n, height, width, spec.patch, g, device)
    return crop_boxes(n, height, width, spec.scale, spec.ratio, g, device)


def photometric(v: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """Every step of a view after the crop: flip, colour jitter, grayscale, blur, solarize."""
    n, device = len(v), v.device
    if spec.flip_prob > 0:
        sel = _coin(n, spec.flip_prob, g, device).nonzero()[:, 0]
        v[sel] = v[sel].flip(3)
    if spec.jitter_prob > 0 and any(s > 0 for s in spec.jitter):
        sel = _coin(n, spec.jitter_prob, g, device).nonzero()[:, 0]
        v[sel] = color_jitter(v[sel], spec.jitter, g)
    if spec.gray_prob > 0:
        sel = _coin(n, spec.gray_prob, g, device).nonzero()[:, 0]
        v[sel] = grayscale(v[sel]).expand(-1, v.shape[1], -1, -1)
    if spec.blur_prob > 0:
        sel = _coin(n, spec.blur_prob, g, device).nonzero()[:, 0]
        if len(sel):
            sigma = _uniform(len(sel), *spec.blur_sigma, g, device)          # pixels of this view
            # the kernel of the largest sigma the spec allows: known without a device sync
            radius = blur_radius(spec.blur_sigma[1], min(v.shape[2:]), spec.blur_kernel_frac)
            v[sel] = gaussian_blur(v[sel], sigma, radius)
    if spec.solarize_prob > 0:
        sol = _coin(n, spec.solarize_prob, g, device).view(-1, 1, 1, 1)
        v = torch.where(sol & (v >= 0.5), 1 - v, v)
    return v


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 B x C x H x W -> float32 in [0, 1] with 3 channels (grayscale repeated)."""
    x = images.float().div_(255)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def unnormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The inverse of ``normalize``: float32 RGB, clipped to [0, 1]."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * s + m).clamp(0, 1)


class ViewMaker:
    """Callable turning a uint8 batch into the list of normalised views of a recipe.

    ``sizes`` (B x 2: h, w), on the streaming path: the batch holds images of their own sizes padded to
    the largest, and every crop is drawn inside its image's true size. On the CPU each crop is cut out and
    resized on uint8 (``cut_and_resize``); elsewhere the padding is replaced by edge pixels
    (``fill_padding``) and roi_align crops the float batch."""

    accepts_sizes = True

    def __init__(self, specs: list[ViewSpec], mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.specs, self.mean, self.std = list(specs), mean, std

    def __call__(self, images: torch.Tensor, g: torch.Generator, sizes: torch.Tensor | None = None) -> list[torch.Tensor]:
        if sizes is not None and images.device.type == "cpu":
            return [normalize(photometric(to_float(cut_and_resize(images, view_boxes(images, spec, g, sizes),
                                                                  spec.size).contiguous()), spec, g), self.mean, self.std)
                    for spec in self.specs]
        x = to_float(images)
        if sizes is not None:
            x = fill_padding(x, sizes)
        return [normalize(augment(x, spec, g, sizes), self.mean, self.std) for spec in self.specs]

    def from_crops(self, crops: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
        """The views from crops made elsewhere (uint8, one B x C x size x size per spec, e.g. by DALI): every
        step after the crop, then the normalisation."""
        return [normalize(photometric(to_float(c.contiguous()), spec, g), self.mean, self.std)
                for c, spec in zip(crops, self.specs)]


class EvalTransform:
    """Evaluation view: resize (shorter side) and centre-crop to ``size``, normalise."""

    def __init__(self, size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        if self.size is not None and (x.shape[2] != self.size or x.shape[3] != self.size):
            h, w = x.shape[2:]
            s = self.size / min(h, w)
            x = F.interpolate(x, size=(max(self.size, round(h * s)), max(self.size, round(w * s))),
                              mode="bilinear", antialias=True, align_corners=False)
            top, left = (x.shape[2] - self.size) // 2, (x.shape[3] - self.size) // 2
            x = x[:, :, top:top + self.size, left:left + self.size]
        return normalize(x, self.mean, self.std)
