"""Lab colour and the quantised ab space of Colorization (Zhang, Isola, Efros, ECCV 2016;
METHODS.md section 3).

- ``rgb_to_lab`` / ``lab_to_rgb``: sRGB in [0, 1] <-> CIE Lab (D65), the conversion of
  ``skimage.color.rgb2lab`` that Zhang's code uses: L in [0, 100], a and b about [-110, 110].
- ``ab_bins()``: the Q = 313 in-gamut ab bin centres on a grid of step 10 (Zhang's
  ``pts_in_hull.npy``), and ``ab_prior()``: their empirical ImageNet prior (``prior_probs.npy``).
- ``soft_encode(ab, k, sigma)``: the soft target Z of §2.1 - a Gaussian (sigma = 5) over the
  K nearest bins of every ab value, normalised to sum to 1. K is the problem-complexity axis
  of Goyal et al. 2019 (2 .. 313; the code's default 10, the paper's text says 5).
- ``rebalance_weights(prior, lam)``: the class-rebalancing weights of eq. 4.
- ``annealed_mean(probs, temperature)``: the decoding of eq. 5 (T = 0.38), for pictures.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import SelfSupError

RESOURCES = Path(__file__).parent / "resources"
WHITE_D65 = (0.95047, 1.0, 1.08883)
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
              (0.212671, 0.715160, 0.072169),
              (0.019334, 0.119193, 0.950227))
XYZ_TO_RGB = tuple(map(tuple, np.linalg.inv(np.array(RGB_TO_XYZ)).tolist()))
GRAY_THRESHOLD = 5.0     # an image whose |a| and |b| never exceed this is grayscale (NonGrayMaskLayer)


def _channels_first(matrix, x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bj...->bi...", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """B x 3 x ... sRGB in [0, 1] -> B x 3 x ... Lab (D65, 2 degree observer)."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _channels_first(RGB_TO_XYZ, linear) / torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(
        1, 3, *([1] * (rgb.dim() - 2)))
    delta = 6 / 29
    f = torch.where(xyz > delta ** 3, xyz.clamp(min=1e-12) ** (1 / 3), xyz / (3 * delta ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_lab``, clipped to [0, 1] (out-of-gamut colours are clipped)."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    delta = 6 / 29
    xyz = torch.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4 / 29))
    xyz = xyz * torch.tensor(WHITE_D65, dtype=lab.dtype, device=lab.device).view(1, 3, *([1] * (lab.dim() - 2)))
    linear = _channels_first(XYZ_TO_RGB, xyz).clamp(min=0)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=1e-12) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


@lru_cache(maxsize=1)
def _bins() -> np.ndarray:
    return np.load(RESOURCES / "pts_in_hull.npy").astype(np.float32)


def ab_bins() -> torch.Tensor:
    """The 313 x 2 ab bin centres (a, b), float32, in the order of Zhang's ``pts_in_hull.npy``."""
    return torch.from_numpy(_bins().copy())


def ab_prior() -> torch.Tensor:
    """Zhang's empirical ImageNet prior over the 313 bins (float32, sums to 1)."""
    p = np.load(RESOURCES / "prior_probs.npy")
    return torch.from_numpy((p / p.sum()).astype(np.float32))


def soft_encode(ab: torch.Tensor, k: int = 10, sigma: float = 5.0, bins: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-encode ab values over the Q bins (Zhang et al. §2.1; METHODS.md 3.3).

    ``ab`` is B x 2 x H x W (returns B x Q x H x W) or N x 2 (returns N x Q). Each value
    puts weight exp(-d^2 / (2 sigma^2)) on its ``k`` nearest bin centres (d: Euclidean
    distance in ab), normalised to sum to 1; every other bin gets 0."""
    bins = (ab_bins() if bins is None else bins).to(ab.device, ab.dtype)
    q = len(bins)
    if not 1 <= k <= q:
        raise SelfSupError(f"soft encoding over k={k} nearest bins: k must be between 1 and {q}")
    flat = ab.movedim(1, -1).reshape(-1, 2) if ab.dim() == 4 else ab
    d2 = torch.cdist(flat, bins).square()                               # N x Q
    near_d2, near = d2.topk(k, dim=1, largest=False)
    w = torch.softmax(-near_d2 / (2 * sigma ** 2), dim=1)              # exp(-d^2 / 2 sigma^2), normalised
    z = torch.zeros_like(d2).scatter_(1, near, w)
    if ab.dim() == 4:
        b, _, h, wd = ab.shape
        return z.view(b, h, wd, q).permute(0, 3, 1, 2)
    return z


def rebalance_weights(prior: torch.Tensor | None = None, lam: float = 0.5) -> torch.Tensor:
    """Eq. 4: w proportional to ((1 - lam) p + lam / Q)^-1, scaled so that E_p[w] = sum_q p_q w_q = 1."""
    p = ab_prior() if prior is None else prior
    w = 1.0 / ((1 - lam) * p + lam / len(p))
    return w / (p * w).sum()


def colorful(ab: torch.Tensor) -> torch.Tensor:
    """B x 2 x H x W ab -> B bools: does any |a| or |b| exceed 5 (grayscale images get False)."""
    return (ab.abs() > GRAY_THRESHOLD).flatten(1).any(1)


def annealed_mean(probs: torch.Tensor, temperature: float = 0.38, bins: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: B x Q x H x W bin probabilities -> B x 2 x H x W ab, the mean of the bins under
    f_T(z) = exp(log z / T) / sum_q exp(log z_q / T)."""
    bins = (ab_bins() if bins is None else bins).to(probs.device, probs.dtype)
    sharpened = torch.softmax(torch.log(probs.clamp(min=1e-12)) / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", sharpened, bins)
