"""Seeded subsets: a deterministic train/validation holdout and label fractions per class."""
from __future__ import annotations

import numpy as np

from selfsup.errors import SelfSupError


def holdout_split(labels, val_per_class: int | None = None, val_fraction: float | None = None,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``val_per_class`` images (or a ``val_fraction``) of each class, chosen with ``seed``.

    Returns sorted (train, val) indices; unlabeled samples (-1) all stay in train.
    """
    if (val_per_class is None) == (val_fraction is None):
        raise SelfSupError("give exactly one of val_per_class and val_fraction")
    if val_per_class is not None and val_per_class < 1:
        raise SelfSupError(f"val_per_class={val_per_class} holds out nothing: give at least 1 (images per class)")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise SelfSupError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive): e.g. 0.1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        n_val = val_per_class if val_per_class is not None else int(round(val_fraction * len(idx)))
        if n_val < 1:
            raise SelfSupError(f"class {c} has {len(idx)} images, val_fraction={val_fraction} holds out none of them: "
                               f"raise val_fraction or use val_per_class=N")
        if n_val >= len(idx):
            raise SelfSupError(f"class {c} has {len(idx)} images, cannot hold out {n_val}: lower val_per_class / "
                               f"val_fraction")
        val.append(rng.permutation(idx)[:n_val])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def fraction_per_class(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded ``fraction`` of each class (at least one image per class)."""
    if not 0 < fraction <= 1:
        raise SelfSupError(f"fraction={fraction} must be in (0, 1]: e.g. 0.01 or 0.1 for the 1% and 10% settings")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.permutation(idx)[:max(1, int(round(fraction * len(idx))))])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
