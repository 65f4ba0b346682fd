"""Frozen features of a backbone at any tap, batched, cached on disk."""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.datasets import cache_root
from selfsup.data.views import EvalTransform, normalize, to_float
from selfsup.checkpoint import UnreadableFile, safe_load, save_atomic
from selfsup.tempfiles import remove_dead_temporaries
from selfsup.errors import SelfSupError
from selfsup.models.pooling import cc_max_pool
from selfsup.eval.checks import at_least_one


POOLS = ("avg", "9k", "goyal", "max")

# Goyal et al. 2019's average pooling of ResNet-50 at 224 px (METHODS.md 6.1; fssb's
# resnet_jigsaw_finetune_linear.py for pool1, VISSL's feature-eval configs), by output grid:
# grid side -> (map side, kernel, stride, padding) of the tap it comes from. conv1 (112 px)
# and pool1 (56 px, kernel 5, stride 5, padding 2) have the same geometry relative to the
# map, so one entry serves both; pool5 (res5's global pool, 1 x 1) is left as it is.
GOYAL_WINDOWS = {12: (112, 10, 10, 4),       # conv1 -> 12 x 12 x 64 = 9216 (pool1 too)
                 6: (56, 16, 8, 0),          # res2 -> 6 x 6 x 256 = 9216
                 4: (28, 13, 5, 0),          # res3 -> 4 x 4 x 512 = 8192
                 3: (14, 8, 3, 0),           # res4 -> 3 x 3 x 1024 = 9216
                 2: (7, 6, 1, 0)}            # res5 -> 2 x 2 x 2048 = 8192
GOYAL_DIMS = 9216


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def goyal_grid(channels: int, side: int, target_dims: int = GOYAL_DIMS) -> int:
    """The pooled grid side along a map side: round(sqrt(target / C)), at most the side
    (ResNet-50 at 224: 12, 12, 6, 4, 3, 2 for conv1, pool1, res2 .. res5)."""
    return max(1, min(side, round(math.sqrt(target_dims / channels))))


def goyal_window(side: int, grid: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of an average pool giving ``grid`` outputs along a map
    side of ``side``, in the geometry of Goyal et al.'s window for that grid.

    The reference is the Goyal window of the nearest grid (ties: the finer grid), of
    map side h0, kernel k0, stride t0, padding p0 and grid g0. Stride and padding scale
    with the map's cell (side / grid) relative to the reference's (h0 / g0):
    t = round(t0 * (side / h0) * (g0 / grid)), p likewise, t at most (side + 2p) // grid
    (windows leave no gaps); the kernel then makes the grid exact,
    k = side + 2p - (grid - 1) * t. Goyal's windows tile their maps this way, so at
    Goyal's sizes the rule returns Goyal's windows. A padding over half the kernel
    (PyTorch refuses it) is dropped."""
    g0 = min(GOYAL_WINDOWS, key=lambda g: (abs(g - grid), -g))
    h0, _, t0, p0 = GOYAL_WINDOWS[g0]
    cell = (side / h0) * (g0 / grid)
    pad = _round(p0 * cell)
    stride = max(1, min(_round(t0 * cell), (side + 2 * pad) // grid))
    kernel = side + 2 * pad - (grid - 1) * stride
    if 2 * pad > kernel:
        pad, stride = 0, max(1, min(stride, side // grid))
        kernel = side - (grid - 1) * stride
    return kernel, stride, pad


def goyal_pool(fmap: torch.Tensor, target_dims: int = GOYAL_DIMS) -> torch.Tensor:
    """Goyal et al. 2019's fixed average pooling (METHODS.md 6.1, 6.2), flattened: a grid of
    ``goyal_grid`` cells per side (C x grid^2 close to 9k), windows from ``goyal_window``
    per axis; zero padding counts in the average (``nn.AvgPool2d``, as VISSL).

    ResNet-50 at 224 px gets Goyal's exact windows: conv1 (10, 10, 4) -> 9216, pool1
    (5, 5, 2) -> 9216, res2 (16, 8, 0) -> 9216, res3 (13, 5, 0) -> 8192, res4 (8, 3, 0)
    -> 9216, res5 (6, 1, 0) -> 8192, pool5 -> 2048. Other sizes and backbones get the
    scaled windows (e.g. res2 of ResNet-50 at 112 px: (8, 4, 0); res2 of ResNet-18 at
    224 px, 64 channels: pool1's (5, 5, 2) -> 9216)."""
    c, h, w = fmap.shape[1:]
    (kh, sh, ph), (kw, sw, pw) = (goyal_window(n, goyal_grid(c, n, target_dims)) for n in (h, w))
    return torch.flatten(F.avg_pool2d(fmap, (kh, kw), (sh, sw), (ph, pw)), 1)


def l2_normalize_goyal(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample L2 normalisation x / (||x||_2 + 1e-5) of Goyal et al. 2019's VOC07 SVM
    features (METHODS.md 6.1). It belongs to the SVM only: the Places205 linear heads
    (6.2) take the pooled features through a BatchNorm without affine parameters instead,
    as ``linear_probe``'s standardisation, and the kNN normalises by itself."""
    return x / (x.norm(dim=1, keepdim=True) + eps)


def check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise SelfSupError(f"unknown pooling {pool!r}: use avg, 9k, goyal or max")


def pool_features(fmap: torch.Tensor, pool: str = "avg", target_dims: int = GOYAL_DIMS) -> torch.Tensor:
    """Flatten a B x C x h x w map: global average ("avg"); average-pooled to an s x s grid
    of non-overlapping adaptive windows, C * s^2 close to ``target_dims`` ("9k", an
    approximation of Goyal et al. 2019's pooling); or Goyal et al.'s fixed, overlapping
    windows ("goyal", ``goyal_pool``: exact for ResNet-50 at 224 px, scaled otherwise); or
    max-pooled to the s x s grid with C * s^2 close to 9600 ("max": CC+'s teacher features,
    METHODS.md 4: AlexNet conv4 5 x 5 x 384, VGG16 conv4 4 x 4 x 512)."""
    check_pool(pool)
    if pool == "avg":
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
    if pool == "goyal":
        return goyal_pool(fmap, target_dims)
    if pool == "max":
        return cc_max_pool(fmap)
    c, h, w = fmap.shape[1:]
    s = max(1, min(h, w, round(math.sqrt(target_dims / c))))
    return torch.flatten(F.adaptive_avg_pool2d(fmap, s), 1)


def default_cache_dir() -> Path:
    return cache_root()


def feature_cache(cache_key: str | None, what: str, cache_dir: str | Path | None = None):
    """The cache file of the features ``what`` describes (dataset, tap, ...) for ``cache_key``
    (a checkpoint's hash), and the cached (features, labels) when present; (None, None)
    without a key."""
    if cache_key is None:
        return None, None
    name = hashlib.sha1(f"{cache_key}|{what}".encode()).hexdigest()[:20]
    path = Path(cache_dir or default_cache_dir()) / "features" / f"{name}.pt"
    remove_dead_temporaries(path.parent, f".{path.name}.")      # a killed extraction's partial file
    if not path.exists():
        return path, None
    try:                                        # one that would run code is refused, not overwritten
        cached = safe_load(path, "feature cache")
    except UnreadableFile:
        cached = None
    if not _is_feature_cache(cached):           # truncated, damaged or tampered: recomputed and written over
        print(f"feature cache {path} is damaged (not N x D float features and N integer labels): computing the "
              f"features again", file=sys.stderr)
        return path, None
    return path, (cached["features"], cached["labels"])


def _is_feature_cache(cached) -> bool:
    """Whether a feature cache file holds what the extractions write: {"features": N x D floats, "labels": N
    integers}, each tensor holding its own elements (not a view that repeats them: zero strides)."""
    if not isinstance(cached, dict):
        return False
    features, labels = cached.get("features"), cached.get("labels")
    if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided
               and t.numel() * t.element_size() <= t.untyped_storage().nbytes() for t in (features, labels)):
        return False
    return (features.dim() == 2 and features.is_floating_point() and labels.dim() == 1 and len(labels) == len(features)
            and labels.dtype in (torch.int64, torch.int32))


class CenterView:
    """The test view of the MoCo and SwAV linear protocols (METHODS.md 1.4, 5.7): the shorter
    side resized to round(size / crop), the centre size x size kept (torchvision's rounding),
    normalised; crop = 224 / 256 is Resize(256) -> CenterCrop(224) at any size. ``size``
    None: the images' shorter side."""

    def __init__(self, size: int | None = None, crop: float = 224 / 256):
        self.size, self.crop = size, crop

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        h, w = x.shape[2:]
        size = self.size or min(h, w)
        short = round(size / self.crop)
        if min(h, w) != short:
            s = short / min(h, w)
            x = F.interpolate(x, size=(max(short, round(h * s)), max(short, round(w * s))), mode="bilinear",
                              antialias=True, align_corners=False)
        top, left = round((x.shape[2] - size) / 2), round((x.shape[3] - size) / 2)
        return normalize(x[:, :, top:top + size, left:left + size])


def eval_resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images (uint8 B x C x H x W) as float in [0, 1], resized (shorter side, antialiased bilinear) and
    centre-cropped to ``size`` x ``size`` exactly as ``extract_features``'s view (``EvalTransform``) does,
    without its normalisation: the evaluation size every protocol brings its sets to (``eval patches``
    draws its patches and windows in these pixels). ``size`` None, or images at that size already: as they are."""
    return EvalTransform(size, mean=(0.0,), std=(1.0,))(images)


def extract_features(backbone, dataset, tap: str | None = None, pool: str = "avg", image_size: int | None = None,
                     batch_size: int = 256, device: str | torch.device = "cpu", cache_key: str | None = None,
                     cache_dir: str | Path | None = None, progress: bool = False,
                     crop: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N x D float32) and labels (N) of ``dataset`` through ``backbone`` at one tap
    (default: the backbone's last map): ``extract_tap_features`` with one tap."""
    tap = backbone.check_taps([tap])[0] if tap else backbone.default_tap
    feats, labels = extract_tap_features(backbone, dataset, (tap,), pool, image_size, batch_size, device, cache_key,
                                         cache_dir, progress, crop)
    return feats[tap], labels


@torch.no_grad()
def extract_tap_features(backbone, dataset, taps, pool: str = "avg", image_size: int | None = None,
                         batch_size: int = 256, device: str | torch.device = "cpu", cache_key: str | None = None,
                         cache_dir: str | Path | None = None, progress: bool = False,
                         crop: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of ``dataset`` at every tap of ``taps`` in one pass over the data: a dict
    tap -> N x D float32 features, and the labels (N).

    The backbone runs in eval mode without gradients; images are resized and
    centre-cropped to ``image_size`` (default: the dataset's size) and normalised;
    ``crop`` < 1 resizes to image_size / crop first (``CenterView``: 224 / 256 for the
    MoCo and SwAV protocols). With ``cache_key`` (e.g. a checkpoint's hash) each tap's
    features are stored under ``cache_dir/features`` and reused when the same checkpoint,
    dataset, tap, pooling, size and crop come again; only the taps not cached are run.
    """
    at_least_one("--batch-size", batch_size, 256)
    check_pool(pool)
    taps = backbone.check_taps(list(taps))
    labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    feats, files = {}, {}
    for tap in taps:
        what = f"{dataset.fingerprint}|{tap}|{pool}|{image_size}" + (f"|crop{crop}" if crop != 1.0 else "")
        files[tap], cached = feature_cache(cache_key, what, cache_dir)
        if cached is not None:
            feats[tap] = cached[0]
    todo = tuple(t for t in taps if t not in feats)
    if not todo:
        return feats, labels
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval().to(device, memory_format=torch.channels_last)     # about 1.6x faster convolutions on CPU
    transform = EvalTransform(image_size) if crop == 1.0 else CenterView(image_size, crop)
    chunks = {tap: [] for tap in todo}
    n = len(dataset)
    from selfsup.progress import track

    if getattr(dataset, "streaming", False):      # decoded from the original files, in order, in workers
        size = image_size or dataset.size
        batches = dataset.eval_batches(batch_size, size, crop)      # already size x size: the transform normalises
        transform = EvalTransform(size)
    else:
        batches = (torch.from_numpy(np.array(dataset.images[start:start + batch_size]))
                   for start in range(0, n, batch_size))
    for images in track(batches, desc="features", enabled=progress, unit="batch", total=-(-n // batch_size)):
        images = images.to(device)
        fmaps = backbone.forward_taps(transform(images).contiguous(memory_format=torch.channels_last), todo)
        for tap in todo:
            chunks[tap].append(pool_features(fmaps[tap].float(), pool).cpu())
    backbone.train(was_training)
    for tap in todo:
        feats[tap] = torch.cat(chunks[tap]) if chunks[tap] else torch.empty(0)
        if files[tap] is not None:
            save_atomic({"features": feats[tap], "labels": labels}, files[tap])
    return {tap: feats[tap] for tap in taps}, labels


def file_hash(path: str | Path) -> str:
    """The identity of a file's content for cache keys: SHA-1 of its bytes (about a second per GB). Path, size
    and modification time are not enough: a copy that keeps the time (``cp -p``, ``rsync -a``, tar) can bring
    other weights of the same size to the path."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
