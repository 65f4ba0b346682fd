"""Speed of the project's k-means (``selfsup.kmeans``) against scikit-learn's, side by side, and of the
chunked nearest-centroid assignment.

1. k-means of 50,000 x 512 float32 (a mixture of 2,000 Gaussian clusters of random spread, as features
   look) into 2,000 clusters, 20 Lloyd iterations: ``kmeans(backend="faiss")``, ``backend="torch"`` and
   ``sklearn.cluster.KMeans(n_clusters=2000, init="random", n_init=1, max_iter=20, tol=0, algorithm="lloyd")``
   (the same algorithm, random seeds, no early stop). Prints seconds, ratios to sklearn and the
   objective (mean squared distance) of each. Target: faiss at most 60 s on this 2-core CPU.
2. Assignment of 1,000,000 x 512 rows (generated chunk by chunk, so the input never sits in memory
   whole) to the 2,000 centroids with ``assign``: seconds and the peak resident memory after 250k and
   after 1M rows (flat in N). Target: at most 60 s.

    python benchmarks/kmeans.py [--n 50000] [--k 2000] [--skip-sklearn] [--rows 1000000]

Times depend on the load of the machine: on a shared CPU they are inflated.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from selfsup.errors import script_main
from selfsup.kmeans import assign, kmeans


def mixture(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    which = torch.randint(k, (n,), generator=g)
    spread = 0.5 + torch.rand(k, generator=g)
    return centres[which] + spread[which, None] * torch.randn(n, d, generator=g)


def objective(x: torch.Tensor, centroids: torch.Tensor) -> float:
    labels = assign(x, centroids)
    return float(((x - centroids[labels]) ** 2).sum(1).mean())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()
    x = mixture(args.n, args.d, args.k, 0)
    print(f"k-means: {args.n} x {args.d} float32 into {args.k} clusters, {args.iterations} iterations, "
          f"{torch.get_num_threads()} threads")
    times = {}
    for backend in ("faiss", "torch"):
        t = time.perf_counter()
        c, _ = kmeans(x, args.k, args.iterations, seed=0, backend=backend)
        times[backend] = time.perf_counter() - t
        print(f"  selfsup {backend:5s}: {times[backend]:7.1f} s   objective {objective(x, c):.4f}")
    if not args.skip_sklearn:
        from sklearn.cluster import KMeans

        t = time.perf_counter()
        km = KMeans(args.k, init="random", n_init=1, max_iter=args.iterations, tol=0.0, algorithm="lloyd",
                    random_state=0).fit(x.numpy())
        times["sklearn"] = time.perf_counter() - t
        print(f"  sklearn      : {times['sklearn']:7.1f} s   objective "
              f"{objective(x, torch.from_numpy(km.cluster_centers_).float()):.4f}")
        for backend in ("faiss", "torch"):
            print(f"  sklearn / selfsup {backend}: {times['sklearn'] / times[backend]:.1f}x")
    print(f"  target: faiss at most 60 s: {'met' if times['faiss'] <= 60 else 'NOT met'}")

    centroids, _ = kmeans(x, args.k, 1, seed=0, backend="faiss")
    chunk = 65536
    g = torch.Generator().manual_seed(1)
    t, done, marks = time.perf_counter(), 0, {}
    counts = torch.zeros(args.k, dtype=torch.long)
    while done < args.rows:
        rows = min(chunk, args.rows - done)
        counts += torch.bincount(assign(torch.randn(rows, args.d, generator=g), centroids), minlength=args.k)
        done += rows
        for mark in (args.rows // 4, args.rows):
            if done >= mark and mark not in marks:
                marks[mark] = peak_rss_mb()
    seconds = time.perf_counter() - t
    print(f"assignment: {args.rows} x {args.d} to {args.k} centroids in chunks of {chunk}: {seconds:.1f} s "
          f"({'met' if seconds <= 60 else 'NOT met'}: at most 60 s); peak resident memory "
          + ", ".join(f"{m / 1e3:.0f}k rows {v:.0f} MB" for m, v in marks.items())
          + f"; {int(counts.sum())} rows assigned")


if __name__ == "__main__":
    with torch.inference_mode():
        script_main(main)
