"""The project's one k-means: Lloyd's algorithm, Euclidean or spherical, on faiss or in torch.

- ``kmeans(x, k)``: ``iterations`` Lloyd steps from k distinct random rows (seeded). Euclidean:
  assign each row to the nearest centroid, move each centroid to the mean of its rows.
  ``spherical``: rows and centroids on the unit sphere, assignment by the largest dot product,
  centroids the normalised sums (DeepCluster-v2, METHODS.md 5.8). An empty cluster keeps its
  centroid. A final assignment follows.
- backend ``faiss`` (``faiss.Kmeans``: the fast path on one process, on the GPU when faiss-gpu
  and CUDA are there) or ``torch`` (any device, and under DDP: sums and counts are all-reduced,
  so every process gets the same centroids from its own rows). ``auto``: faiss on one CPU
  process when it is installed (the ``faiss`` extra), torch otherwise. faiss re-seeds empty clusters by splitting large ones, torch keeps
  them: the two agree on the algorithm, not on the bits.
- ``assign(x, centroids)``: the nearest centroid of every row, in chunks (memory flat in N).
- ``pca_whiten(x, dim)``: PCA to ``dim`` dimensions with whitening, the DeepCluster preprocessing; ``dim``
  beyond min(N - 1, D) or the rank of the centred rows is refused (null directions would be noise whitened),
  and so is N - 1 (all N rows whitened equally far apart).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from selfsup import distributed as dist
from selfsup.errors import SelfSupError

BACKENDS = ("auto", "faiss", "torch")


def _check(n: int, k: int, iterations: int, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}: use {', '.join(BACKENDS)}")
    if k < 1 or iterations < 0:
        raise ValueError(f"k-means needs k >= 1 and iterations >= 0, got k={k}, iterations={iterations}")
    if n < k and dist.world_size() == 1:     # under DDP, process 0 checks its own rows when it picks the seeds
        raise ValueError(f"k-means with k={k} needs at least k samples, got {n}")


@torch.no_grad()
def assign(x: torch.Tensor, centroids: torch.Tensor, spherical: bool = False, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid of every row (largest dot product when ``spherical``), chunk by chunk:
    argmin ||x - c||^2 = argmax (2 x.c - ||c||^2)."""
    bias = None if spherical else (centroids * centroids).sum(1)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for start in range(0, len(x), chunk):
        scores = x[start:start + chunk] @ centroids.T
        if bias is not None:
            scores = 2 * scores - bias
        out[start:start + chunk] = scores.argmax(1)
    return out


@torch.no_grad()
def _torch_lloyd(x: torch.Tensor, k: int, iterations: int, spherical: bool, generator: torch.Generator | None,
                 init: str = "random"):
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    if dist.is_main():
        if len(x) < k:
            raise ValueError(f"k-means with k={k} needs at least k samples, got {len(x)}")
        centroids = (x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone() if init == "random"
                     else kmeans_plus_plus(x, k, generator))
    dist.broadcast(centroids)
    for _ in range(iterations):
        labels = assign(x, centroids, spherical)
        sums = dist.all_reduce_sum(torch.zeros_like(centroids).index_add_(0, labels, x))
        counts = dist.all_reduce_sum(torch.bincount(labels, minlength=k).to(x.dtype))
        nonempty = counts > 0
        means = sums[nonempty] / counts[nonempty, None]
        centroids[nonempty] = F.normalize(means, dim=1) if spherical else means
    return centroids, assign(x, centroids, spherical)


@torch.no_grad()
def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds (Arthur & Vassilvitskii 2007): the first a uniform row, each next one a row drawn
    with probability proportional to its squared distance to the nearest seed so far."""
    seeds = [int(torch.randint(len(x), (1,), generator=generator))]
    d2 = ((x - x[seeds[0]]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2.double().cpu() / d2.sum().clamp_min(1e-30).item()
        nxt = int(torch.multinomial(probs, 1, generator=generator)) if probs.sum() > 0 else int(
            torch.randint(len(x), (1,), generator=generator))
        seeds.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return x[torch.tensor(seeds, device=x.device)].clone()


def _has_faiss() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return faiss is not None


def _faiss_lloyd(x: torch.Tensor, k: int, iterations: int, spherical: bool, seed: int,
                 init: torch.Tensor | None = None):
    import faiss

    data = np.ascontiguousarray(x.detach().cpu().float().numpy())
    km = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, spherical=spherical, verbose=False,
                      gpu=torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"),
                      max_points_per_centroid=max(256, -(-len(data) // k)))   # use every row: no subsampling
    km.train(data, init_centroids=None if init is None else np.ascontiguousarray(init.cpu().float().numpy()))
    centroids = torch.from_numpy(km.centroids).to(x.device, x.dtype)
    return centroids, assign(x, centroids, spherical)


def kmeans(x: torch.Tensor, k: int, iterations: int = 20, spherical: bool = False, seed: int = 0,
           backend: str = "auto", generator: torch.Generator | None = None,
           init: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """(K x d centroids, N assignments) of Lloyd's k-means on the rows of ``x`` (see the module doc).
    With ``spherical`` the rows must be L2-normalised. ``generator`` (torch backend) overrides ``seed``.
    ``init``: ``random`` (k distinct rows: faiss's and DeepCluster's) or ``k-means++`` (seeded on one
    process; slower, fewer bad local minima when k is small)."""
    _check(len(x), k, iterations, backend)
    if init not in ("random", "k-means++"):
        raise ValueError(f"unknown k-means init {init!r}: use random or k-means++")
    if backend == "auto":
        backend = "faiss" if dist.world_size() == 1 and x.device.type == "cpu" and _has_faiss() else "torch"
    if backend == "faiss":
        if not _has_faiss():
            raise SelfSupError("backend='faiss' needs faiss: pip install 'selfsup[faiss]' (or use backend='torch')")
        if dist.world_size() > 1:
            raise ValueError("the faiss backend runs on one process: use backend='torch' under DDP")
        seeds = kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed)) if init == "k-means++" else None
        return _faiss_lloyd(x, k, iterations, spherical, seed, seeds)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    return _torch_lloyd(x, k, iterations, spherical, g, init)


def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None):
    """DeepCluster-v2's k-means: spherical Lloyd in torch, distributed (the rows of every process)."""
    return kmeans(x, k, iterations, spherical=True, backend="torch", generator=generator)


def pca_bound(dim: int, n: int, d: int) -> None:
    """Refuse PCA-whitening ``n`` rows of ``d`` features to ``dim`` dimensions beyond min(n - 1, d): centred,
    n rows span at most n - 1 directions, and the ones beyond would be null directions, rounding noise that
    whitening scales to unit variance. ``dim`` = n - 1 is refused too: whitened along all n - 1 directions,
    n rows form a regular simplex (every pair equally far apart), which leaves k-means nothing to find."""
    ok = min(n - 2, d)
    fix = f"use --pca {ok} or less" if ok >= 1 else "give at least 3 images"
    if dim < 1:
        raise SelfSupError(f"--pca must be at least 1, got {dim}: {fix}")
    if dim > min(n - 1, d):
        raise SelfSupError(f"--pca {dim} exceeds min(N - 1, feature dimension) = min({n - 1}, {d}) = "
                           f"{min(n - 1, d)} ({n} images, centred, span at most N - 1 directions): {fix}")
    if dim == n - 1:
        raise SelfSupError(f"--pca {dim} whitens all N - 1 = {n - 1} directions of the {n} images: whitened, they "
                           f"form a regular simplex (every pair equally far apart), nothing to cluster: {fix}")


def pca_whiten(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` projected on its ``dim`` principal components, each scaled to unit variance
    (DeepCluster's PCA-whitening before k-means), then L2-normalised rows.

    Refused (``SelfSupError``, one line) beyond min(N - 1, D) and at N - 1 (``pca_bound``), and beyond
    the rank of the centred rows: directions whose singular value is numerically zero relative to the
    largest (below s_max x max(N, D) x the input dtype's eps, numpy's ``matrix_rank`` tolerance; duplicate
    images, constant features) carry only rounding noise, which whitening would scale to unit variance.
    So the output has exactly ``dim`` real directions, the dimension reported."""
    n, d = x.shape
    pca_bound(dim, n, d)
    centred = x.double() - x.double().mean(0)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    eps = torch.finfo(x.dtype).eps if x.dtype.is_floating_point else torch.finfo(torch.float32).eps
    tol = float(s[0]) * max(n, d) * eps
    rank = int((s > tol).sum())
    if rank == 0:
        raise SelfSupError(f"--pca {dim}: the {n} feature vectors are all the same (nothing varies to whiten): "
                           f"cluster other images, or drop --pca")
    if dim > rank:
        raise SelfSupError(f"--pca {dim} exceeds the {rank} directions the centred features of the {n} images span "
                           f"(singular value {float(s[rank]):.1e} beyond them, numerically zero next to the largest "
                           f"{float(s[0]):.1e}: duplicate images or constant features): use --pca {rank} or less")
    scale = s[:dim] / max(1, n - 1) ** 0.5
    out = centred @ vt[:dim].T / scale
    return F.normalize(out, dim=1).to(x.dtype)
