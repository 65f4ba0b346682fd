"""Frozen features of a backbone at any tap, batched, cached on disk."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.datasets import cache_root
from selfsup.data.views import EvalTransform
from selfsup.checkpoint import safe_load, save_atomic
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one


def pool_features(fmap: torch.Tensor, pool: str = "avg", target_dims: int = 9216) -> torch.Tensor:
    """Flatten a B x C x h x w map: global average ("avg"), or average-pooled to an
    s x s grid with C * s^2 close to ``target_dims`` ("9k", Goyal et al. 2019 §6.1 style)."""
    if pool == "avg":
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
    if pool == "9k":
        c, h, w = fmap.shape[1:]
        s = max(1, min(h, w, round(math.sqrt(target_dims / c))))
        return torch.flatten(F.adaptive_avg_pool2d(fmap, s), 1)
    raise SelfSupError(f"unknown pooling {pool!r}: use avg or 9k")


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
    if not path.exists():
        return path, None
    cached = safe_load(path, "feature cache")
    return path, (cached["features"], cached["labels"])


@torch.no_grad()
def extract_features(backbone, dataset, tap: str | None = None, pool: str = "avg", image_size: int | None = None,
                     batch_size: int = 256, device: str | torch.device = "cpu", cache_key: str | None = None,
                     cache_dir: str | Path | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N x D float32) and labels (N) of ``dataset`` through ``backbone``.

    The backbone runs in eval mode without gradients; images are resized and
    centre-cropped to ``image_size`` (default: the dataset's size) and normalised.
    With ``cache_key`` (e.g. a checkpoint's hash) the result is stored under
    ``cache_dir/features`` and reused when the same checkpoint, dataset, tap,
    pooling and size come again.
    """
    at_least_one("--batch-size", batch_size, 256)
    tap = backbone.check_taps([tap])[0] if tap else backbone.taps[-1]
    cache_file, cached = feature_cache(cache_key, f"{dataset.fingerprint}|{tap}|{pool}|{image_size}", cache_dir)
    if cached is not None:
        return cached
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval().to(device, memory_format=torch.channels_last)     # about 1.6x faster convolutions on CPU
    transform = EvalTransform(image_size)
    chunks = []
    n = len(dataset)
    from tqdm import tqdm

    for start in tqdm(range(0, n, batch_size), desc="features", disable=not progress, leave=False):
        images = torch.from_numpy(np.array(dataset.images[start:start + batch_size])).to(device)
        fmap = backbone.forward_taps(transform(images).contiguous(memory_format=torch.channels_last), (tap,))[tap]
        chunks.append(pool_features(fmap.float(), pool).cpu())
    backbone.train(was_training)
    feats = torch.cat(chunks) if chunks else torch.empty(0)
    labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    if cache_file is not None:
        save_atomic({"features": feats, "labels": labels}, cache_file)
    return feats, labels


def file_hash(path: str | Path) -> str:
    """Cheap identity of a file for cache keys: path, size and modification time."""
    st = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
