"""Speed of the VOC07 linear-SVM protocol (METHODS.md 6.1, ``selfsup.eval.svm``) on
realistic synthetic features, against a plain sequential sklearn loop.

Features: VOC-like multi-label targets (10 classes, 4-25 % positives each, some
difficult), images = non-negative (softplus) mixtures of class prototypes of random
strength, a shared low-rank "scene" part and noise, L2-normalised; 5000 train / 5000
test x 9216 dimensions (one Goyal tap). Difficult images get a weak class signal.

1. Side by side, on the same subset of (class, cost) jobs (3-fold CV APs; default: class
   0, all 26 costs, 78 fits): VISSL-style
   ``for class: for cost: cross_val_score(LinearSVC(...), X, y, cv=3)`` in one process
   against ``svm_cv`` (Cholesky rows + worker processes), and ``svm_cv`` with one worker
   (the Cholesky rows alone). Prints the times, ratios and the largest CV-AP difference.
2. The full protocol (``svm_benchmark``: 26 costs x 3 folds x 10 classes + refits), its
   time against the 5-minute target (= the time per tap), the share spent in CV, and the
   solver's CPU seconds (with their projection onto idle cores).
3. ``--lowshot``: the VOC-style low-shot benchmark on the same features.

    python benchmarks/svm.py [--quick] [--n-jobs -1] [--skip-plain] [--skip-full] [--torch] [--lowshot]

Times depend on the load of the machine: on a shared CPU they are inflated.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from selfsup.errors import script_main


def synthetic_voc(n_train=5000, n_test=5000, dims=9216, classes=10, seed=0, rank=64, signal=None, difficult=0.08):
    """Train and test (features float32, targets 1 / 0 / -1 difficult), VOC-like. The class
    signal per dimension (default 0.15 at 9216 dims) grows as 1 / sqrt(dims) below that."""
    signal = 0.15 * max(1.0, (9216 / dims) ** 0.5) if signal is None else signal
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    freq = rng.uniform(0.04, 0.25, classes)
    Y = (rng.random((n, classes)) < freq).astype(np.int64)
    empty = Y.sum(1) == 0
    Y[empty, rng.integers(0, classes, int(empty.sum()))] = 1
    hard = (Y == 1) & (rng.random((n, classes)) < difficult)
    Y[hard] = -1
    protos = torch.randn(classes, dims, generator=g)
    basis = torch.randn(rank, dims, generator=g)
    strength = torch.from_numpy(rng.uniform(0.3, 1.0, (n, classes)).astype(np.float32))
    strength[torch.from_numpy(hard)] *= 0.3
    X = torch.empty(n, dims)
    for s in range(0, n, 1000):                       # in chunks: bounded memory
        e = min(n, s + 1000)
        z = (torch.from_numpy(np.abs(Y[s:e])).float() * strength[s:e]) @ protos * signal
        z += torch.randn(e - s, rank, generator=g) @ basis * 0.5 + torch.randn(e - s, dims, generator=g)
        X[s:e] = torch.nn.functional.softplus(z)
    X = X / (X.norm(dim=1, keepdim=True) + 1e-5)
    X = X.numpy()
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:]


def plain_cv(X, Y, classes, costs, seed=0):
    """VISSL / fssb style: one cross_val_score per (class, cost), sequentially, raw features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import cross_val_score

    from selfsup.eval.svm import make_svc, normalize_features, train_labels

    Xn = normalize_features(X.astype(np.float64))
    out = np.zeros((len(classes), len(costs)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, c in enumerate(classes):
            y = train_labels(Y[:, c])
            for j, cost in enumerate(costs):
                out[i, j] = cross_val_score(make_svc(cost, seed), Xn, y, cv=3, scoring="average_precision").mean()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 / 600 images x 2048 dims, 4 classes")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--dims", type=int, default=None)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--costs", default="goyal", help="the full protocol's costs (preset or comma list)")
    parser.add_argument("--subset-classes", default="0", help="classes of the side-by-side comparison")
    parser.add_argument("--subset-costs", default="goyal", help="costs of the side-by-side comparison")
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--skip-plain", action="store_true", help="no side-by-side comparison")
    parser.add_argument("--skip-full", action="store_true", help="no full protocol")
    parser.add_argument("--torch", action="store_true", help="also run the full protocol with solver='torch'")
    parser.add_argument("--device", default=None)
    parser.add_argument("--lowshot", action="store_true", help="also time the VOC-style low-shot benchmark")
    parser.add_argument("--lowshot-ks", default=None, help="default 1,2,...,96 (--quick: up to 16)")
    parser.add_argument("--lowshot-samples", type=int, default=5)
    args = parser.parse_args()

    from selfsup.eval.svm import parse_costs, svm_benchmark, svm_cv

    size = dict(n_train=600, n_test=600, dims=2048, classes=4) if args.quick else \
        dict(n_train=5000, n_test=5000, dims=9216, classes=10)
    for key in size:
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (a shared CPU inflates every time)")
    t = time.perf_counter()
    Xtr, Ytr, Xte, Yte = synthetic_voc(**size)
    print(f"features: {size} in {time.perf_counter() - t:.1f}s; positives per class (train): "
          f"{(Ytr == 1).sum(0).tolist()}, difficult: {int((Ytr == -1).sum())}")

    if not args.skip_plain:
        classes = [int(c) for c in args.subset_classes.split(",")]
        costs = parse_costs(args.subset_costs)
        sub = Ytr[:, classes]
        print(f"\nside by side: 3-fold CV of classes {classes} x costs {costs} ({len(classes) * len(costs) * 3} fits)")
        t = time.perf_counter()
        ours = svm_cv(Xtr, sub, costs, n_jobs=args.n_jobs)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ours1 = svm_cv(Xtr, sub, costs, n_jobs=1)
        t_ours1 = time.perf_counter() - t
        t = time.perf_counter()
        ref = plain_cv(Xtr, Ytr, classes, costs)
        t_plain = time.perf_counter() - t
        diff = max(np.abs(np.array(ours["cv_ap"]) - ref).max(), np.abs(np.array(ours1["cv_ap"]) - ref).max())
        print(f"  plain sklearn, sequential:           {t_plain:8.1f}s")
        print(f"  svm_cv, Cholesky rows, 1 process:    {t_ours1:8.1f}s   ratio {t_plain / t_ours1:5.2f}x "
              f"(of which {ours1['timings']['prep_s']:.1f}s prep: normalising, Gram matrix)")
        print(f"  svm_cv, Cholesky rows, n_jobs={args.n_jobs:<3}:  {t_ours:8.1f}s   ratio {t_plain / t_ours:5.2f}x "
              f"(of which {ours['timings']['prep_s']:.1f}s prep; the first call also starts the workers)")
        print(f"  solver CPU, Cholesky rows: {ours1['timings']['solver_cpu_s']:.1f}s (1 process), "
              f"{ours['timings']['solver_cpu_s']:.1f}s (workers)")
        print(f"  max |CV AP difference| to plain sklearn: {diff:.2e}")

    if not args.skip_full:
        from joblib import effective_n_jobs

        workers = effective_n_jobs(args.n_jobs)
        runs = [("sklearn", None)] + ([("torch", args.device)] if args.torch else [])
        for solver, device in runs:
            t = time.perf_counter()
            res = svm_benchmark(Xtr, Ytr, Xte, Yte, args.costs, n_jobs=args.n_jobs, solver=solver, device=device)
            total = time.perf_counter() - t
            tm = res["timings"]
            print(f"\nfull protocol, solver={solver}, {len(res['costs'])} costs x 3 folds x {Ytr.shape[1]} classes "
                  f"+ refits ({tm['fits']} fits, {tm['not_converged']} not converged, {tm['fallbacks']} fallbacks, "
                  f"gram={res['gram']})")
            print(f"  total (= time per tap): {total:7.1f}s  target 300s: {'met' if total <= 300 else 'MISSED'}")
            print(f"  prep {tm['prep_s']:.1f}s, CV {tm['cv_s']:.1f}s ({100 * tm['cv_s'] / total:.0f} % of the total), "
                  f"refit + test {tm['refit_test_s']:.1f}s")
            if solver == "sklearn":
                idle = tm["prep_s"] + (tm["cv_cpu_s"] + tm["refit_cpu_s"]) / workers
                print(f"  solver CPU: CV {tm['cv_cpu_s']:.1f}s, refit {tm['refit_cpu_s']:.1f}s; on {workers} idle "
                      f"cores that is about {idle:.0f}s (prep + CPU / workers)")
            print(f"  test mAP {100 * res['map']:.2f}; best costs "
                  f"{[c['best_cost'] for c in res['classes']]}")

    if args.lowshot:
        from selfsup.eval.lowshot import lowshot_benchmark

        ks = [int(k) for k in (args.lowshot_ks or ("1,2,4,8,16" if args.quick else "1,2,4,8,16,32,64,96")).split(",")]
        t = time.perf_counter()
        res = lowshot_benchmark(Xtr, Ytr, Xte, Yte, ks=ks, num_samples=args.lowshot_samples, costs=args.costs,
                                n_jobs=args.n_jobs)
        total = time.perf_counter() - t
        tm = res["timings"]
        print(f"\nlow-shot (VOC style), k {ks} x {args.lowshot_samples} samples x {len(res['costs'])} costs x "
              f"{Ytr.shape[1]} classes ({tm['fits']} fits, {tm['not_converged']} not converged): {total:.1f}s "
              f"(prep {tm['prep_s']:.1f}s, solver CPU {tm['solver_cpu_s']:.1f}s)")
        print("  mAP per k: " + ", ".join(f"k={k}: {100 * v['mean']:.1f} +- {100 * v['std']:.1f} (C={v['cost']:.3g})"
                                         for k, v in res["ks"].items()))


if __name__ == "__main__":
    script_main(main)
