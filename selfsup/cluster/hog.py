"""The HOG bag-of-words teacher of CC+ (Noroozi et al. 2018, Table 3's "HOG" row; METHODS.md 4.7).

A teacher without a network: each image (grayscale, at its size) becomes a set of local HOG
descriptors (scikit-image's ``hog``: 9 orientations, cells of ``max(4, size // 28)`` px, so 8 px at
224 as Dalal & Triggs, blocks of 2 x 2 cells, L2-Hys), one 36-d descriptor per block position; a
codebook of ``words`` visual words is learned by k-means on a sample of the clustering set's
descriptors; an image's feature is the L1-normalised histogram of its descriptors' nearest words.
The paper does not give the vocabulary: 1,000 words is our assumption [A].
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.feature import hog

from selfsup.kmeans import assign, kmeans


def _gray(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32) / 255.0
    return x[:, 0] if x.shape[1] == 1 else 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def hog_descriptors(images: np.ndarray) -> np.ndarray:
    """N x B x 36 block descriptors of uint8 images N x C x H x W (B block positions per image)."""
    gray = _gray(images)
    cell = max(4, gray.shape[-1] // 28)
    out = [hog(g, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), block_norm="L2-Hys",
               feature_vector=False) for g in gray]
    return np.stack(out).reshape(len(gray), -1, 36).astype(np.float32)


def hog_codebook(dataset, words: int = 1000, sample: int = 200_000, seed: int = 0, iterations: int = 20,
                 batch: int = 2048) -> torch.Tensor:
    """``words`` x 36 visual words: k-means on up to ``sample`` descriptors drawn from the dataset."""
    rng = np.random.default_rng(seed)
    per_image = hog_descriptors(dataset.images[:1]).shape[1]
    n_images = min(len(dataset), max(1, -(-sample // per_image)))
    idx = np.sort(rng.choice(len(dataset), n_images, replace=False))
    desc = np.concatenate([hog_descriptors(np.asarray(dataset.images[idx[s:s + batch]])).reshape(-1, 36)
                           for s in range(0, len(idx), batch)])
    desc = desc[rng.permutation(len(desc))[:sample]]
    centroids, _ = kmeans(torch.from_numpy(desc), min(words, len(desc)), iterations, seed=seed)
    return centroids


def hog_bow_features(dataset, codebook: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """N x words L1-normalised histograms of the images' HOG descriptors over the codebook."""
    out = []
    for s in range(0, len(dataset), batch):
        desc = torch.from_numpy(hog_descriptors(np.asarray(dataset.images[s:s + batch])))
        n, b, _ = desc.shape
        words = assign(desc.reshape(-1, 36), codebook).view(n, b)
        hist = torch.zeros(n, len(codebook)).scatter_add_(1, words, torch.ones(n, b))
        out.append(hist / b)
    return torch.cat(out)
