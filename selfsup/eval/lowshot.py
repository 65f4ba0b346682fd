"""Low-shot linear SVMs of Goyal et al. 2019 (METHODS.md 6.3) on feature arrays.

Sampling (fssb ``extra_scripts/create_voc_low_shot_samples.py`` and
``create_places_low_shot_samples.py``):

- VOC style (``lowshot_samples``, multi-label targets 1 / 0 / -1 difficult): for each
  independent sample, a target matrix of all -1 (ignore); for each class independently,
  k random images of label 1 become positives (1) and 19 k random images of label 0
  become negatives (0). Difficult images are never chosen, neither as positives nor as
  negatives (fssb samples each symbol among the images that carry it). fssb's code draws
  (num_classes - 1) k negatives, 19 k for VOC07's 20 classes; ``negatives_per_positive``
  (default 19, METHODS.md) sets the ratio. A k with too few images of a class is refused.
- Places style (``lowshot_samples_per_class``, single-label, given as a one-vs-rest 0/1
  matrix): k random images per class; every class's SVM is one-vs-rest on the C k images
  of the sample. ``lowshot_benchmark`` skips a k larger than the smallest class, with a
  note in the result (fssb logs "Skip k").

Draws are seeded by (seed, k, sample): deterministic, independent across samples and k.

Training and test (``train_svm_low_shot.py``, ``test_svm_low_shot.py``,
``aggregate_low_shot_svm_stats.py``): per sample, k, cost and class one LinearSVC of
METHODS.md 6.1 (``selfsup.eval.svm.make_svc``) on the non-ignored images of the class, no
CV; AP on the **full** test set (VOC: difficult images of the class left out; Places: all
images, one-vs-rest); mAP over classes. The number reported for k is the mean over the
samples at the cost of highest mean (ties: the cost first in the list), with std
(numpy's, ddof 0), min and max at that cost. **That cost is chosen on the test set**: it
is Goyal's code's protocol, not a CV protocol. Places style also reports top-1 accuracy
of the argmax over the one-vs-rest decision values (at the cost chosen by mAP, and the
best top-1 over costs). All numbers are fractions.

Jobs (one per sample and k) run over processes; each class's training set of n < D rows
goes through the Cholesky rows of its Gram block (``selfsup.eval.svm``), decisions on the
test set through the test-train Gram matrix when it fits.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from selfsup.errors import SelfSupError
from selfsup.eval.svm import (GRAM_MAX_ROWS, MAX_ITER, TOL, _Opts, _Pool, _fit_set, check_features, check_targets,
                              class_name, gram_matrix, normalize_features, parse_costs, use_gram, voc_ap)

KS = (1, 2, 4, 8, 16, 32, 64, 96)
NEGATIVES_PER_POSITIVE = 19
KTE_MAX_BYTES = 2 << 30


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SelfSupError(f"low-shot k must be a positive integer, got {k!r}: use e.g. k values 1,2,4,8,16,32,64,96")
    return int(k)


def _rng(seed: int, k: int, sample: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(k), int(sample)])


def lowshot_samples(Y, k: int, num_samples: int = 5, seed: int = 0,
                    negatives_per_positive: int = NEGATIVES_PER_POSITIVE,
                    class_names: Sequence[str] | None = None) -> np.ndarray:
    """VOC-style low-shot targets: an int8 array (num_samples x N x C) of -1 (ignore) but,
    per class, exactly k images of label 1 set to 1 and ``negatives_per_positive`` k images
    of label 0 set to 0 (difficult images never chosen). Refuses a k for which some class
    has too few positive or negative images."""
    k = _check_k(k)
    Y = check_targets(Y, len(np.asarray(Y)), "low-shot targets")
    n, n_cls = Y.shape
    neg = negatives_per_positive * k
    out = np.full((num_samples, n, n_cls), -1, dtype=np.int8)
    pos_idx = [np.flatnonzero(Y[:, c] == 1) for c in range(n_cls)]
    neg_idx = [np.flatnonzero(Y[:, c] == 0) for c in range(n_cls)]
    for c in range(n_cls):
        if len(pos_idx[c]) < k or len(neg_idx[c]) < neg:
            raise SelfSupError(f"low-shot k={k} needs {k} positive and {neg} negative images of "
                               f"{class_name(c, class_names)}, which "
                               f"has {len(pos_idx[c])} and {len(neg_idx[c])}: use smaller k values")
    for s in range(num_samples):
        rng = _rng(seed, k, s)
        for c in range(n_cls):
            out[s, rng.choice(pos_idx[c], k, replace=False), c] = 1
            out[s, rng.choice(neg_idx[c], neg, replace=False), c] = 0
    return out


def _single_labels(Y, name: str) -> np.ndarray:
    """Class index per image of a one-vs-rest 0/1 matrix (exactly one 1 per row), or of a
    1-D integer label vector."""
    Y = np.asarray(Y.detach().cpu().numpy() if hasattr(Y, "detach") else Y)
    if Y.ndim == 1:
        if Y.size == 0 or not np.issubdtype(Y.dtype, np.integer) or Y.min() < 0:
            raise SelfSupError(f"{name}: single labels must be non-negative class indices: pass a label vector "
                               "or a one-vs-rest 0/1 matrix")
        return Y.astype(np.int64)
    Y = check_targets(Y, len(Y), name)
    if not ((Y >= 0).all() and (Y.sum(1) == 1).all()):
        raise SelfSupError(f"{name}: Places-style low-shot needs exactly one class (a single 1) per image: use "
                           "style='voc' for multi-label targets")
    return Y.argmax(1)


def lowshot_samples_per_class(Y, k: int, num_samples: int = 5, seed: int = 0) -> np.ndarray:
    """Places-style low-shot samples: an int64 array (num_samples x C k) of image indices,
    k random images of each class in class order (fssb's ``sample_data``). ``Y``: a
    one-vs-rest 0/1 matrix or a label vector. Refuses k above the smallest class."""
    k = _check_k(k)
    labels = _single_labels(Y, "low-shot targets")
    n_cls = int(labels.max()) + 1 if np.ndim(Y) == 1 else np.shape(Y)[1]
    members = [np.flatnonzero(labels == c) for c in range(n_cls)]
    smallest = min(len(m) for m in members)
    if k > smallest:
        raise SelfSupError(f"low-shot k={k} is larger than the smallest class ({smallest} images): use k <= "
                           f"{smallest}")
    out = np.empty((num_samples, n_cls * k), dtype=np.int64)
    for s in range(num_samples):
        rng = _rng(seed, k, s)
        out[s] = np.concatenate([rng.choice(m, k, replace=False) for m in members])
    return out


def _lowshot_job(X, K, Xte, Kte, sample: int, k: int, sets, Yte, costs, opts: _Opts, g: bool, style: str):
    """All classes of one (sample, k): AP (classes x costs) on the full test set, and for
    Places style the top-1 accuracy (costs) of the argmax over the classes' decisions."""
    n_cls, q = Yte.shape[1], len(costs)
    ap = np.zeros((n_cls, q))
    fits = nc = fallbacks = 0
    secs = 0.0
    best_score = best_cls = None
    if style == "places":
        best_score = np.full((len(Xte), q), -np.inf)
        best_cls = np.zeros((len(Xte), q), dtype=np.int64)
    for rows, labels, classes in sets:
        for c, fit in zip(classes, _fit_set(X, K, rows, labels, costs, opts, g)):
            dec = fit.test_decisions(X, Xte, Kte)
            ap[c] = [voc_ap(dec[:, j], Yte[:, c]) for j in range(q)]
            fits += q
            nc += int((fit.n_iter >= opts.max_iter).sum())
            fallbacks += int(fit.fallback)
            secs += fit.seconds
            if best_score is not None:
                better = dec > best_score
                best_score = np.where(better, dec, best_score)
                best_cls[better] = c
    top1 = None
    if best_cls is not None:
        top1 = (best_cls == Yte.argmax(1)[:, None]).mean(0)
    return sample, k, ap, top1, fits, nc, fallbacks, secs


def _stats(values: np.ndarray, j: int) -> dict:
    return {"mean": float(values[:, j].mean()), "std": float(values[:, j].std()), "min": float(values[:, j].min()),
            "max": float(values[:, j].max()), "per_sample": values[:, j].tolist()}


def lowshot_benchmark(Xtr, Ytr, Xte, Yte, ks: Sequence[int] = KS, num_samples: int = 5, costs="goyal",
                      style: str = "voc", n_jobs: int | None = -1, seed: int = 0, normalize: bool = True,
                      gram="auto", negatives_per_positive: int = NEGATIVES_PER_POSITIVE, max_iter: int = MAX_ITER,
                      tol: float = TOL, class_names: Sequence[str] | None = None) -> dict:
    """Goyal et al.'s low-shot SVM benchmark (METHODS.md 6.3; the module doc) on arrays.

    Xtr, Xte: N x D pooled features (``normalize``: x / (||x|| + 1e-5) in float64, as the
    SVM benchmark). Ytr, Yte: VOC style, N x C targets 1 / 0 / -1 difficult; Places style,
    one-vs-rest 0/1 matrices (one class per image). ks: the k values; num_samples: the
    independent samples per k; costs: a preset or list (``parse_costs``); n_jobs: worker
    processes; gram: the Cholesky-row speed-up (True, False, "auto"); class_names: the names
    of Y's columns, for messages.

    Returns ``ks``: per k (as a string key) the mAP ``mean``, ``std``, ``min``, ``max`` and
    ``per_sample`` at ``cost`` (the cost maximising the mean over samples, chosen on the
    test set) and ``map_by_cost`` (mean over samples, per cost); Places style adds
    ``top1`` (same statistics at that cost) and ``top1_best`` (the best mean top-1 over
    costs, with its cost). Also ``skipped`` (k values left out, with the reason),
    ``cost_selection``, ``costs`` and ``timings``."""
    t0 = time.perf_counter()
    if style not in ("voc", "places"):
        raise SelfSupError(f"unknown low-shot style {style!r}: use voc (multi-label) or places (one class per image)")
    costs = parse_costs(costs)
    ks = sorted({_check_k(k) for k in ks})
    if not ks:
        raise SelfSupError("no low-shot k values given: use e.g. k values 1,2,4,8,16,32,64,96")
    if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 1):
        raise SelfSupError(f"num_samples must be at least 1, got {num_samples!r}: use e.g. 5")
    Xtr, Xte = check_features(Xtr, "training features"), check_features(Xte, "test features")
    if Xtr.shape[1] != Xte.shape[1]:
        raise SelfSupError(f"training features have {Xtr.shape[1]} dimensions but test features {Xte.shape[1]}: "
                           "extract both at the same tap and pooling")
    Ytr, Yte = check_targets(Ytr, len(Xtr), "training targets"), check_targets(Yte, len(Xte), "test targets")
    if Ytr.shape[1] != Yte.shape[1]:
        raise SelfSupError(f"training targets have {Ytr.shape[1]} classes but test targets {Yte.shape[1]}: "
                           "use the same class list")
    n_cls = Ytr.shape[1]
    for c in range(n_cls):
        if not (Yte[:, c] == 1).any():
            raise SelfSupError(f"{class_name(c, class_names)} has no positive (non-difficult) test image, so its AP "
                               "is undefined: leave the class out or use a test set that contains it")
    skipped = []
    samples = {}
    if style == "voc":
        for k in ks:
            samples[k] = lowshot_samples(Ytr, k, num_samples, seed, negatives_per_positive, class_names)
        set_rows = max(ks) * (1 + negatives_per_positive)
    else:
        labels_tr = _single_labels(Ytr, "training targets")
        _single_labels(Yte, "test targets")
        smallest = int(np.bincount(labels_tr, minlength=n_cls).min())
        for k in ks:
            if k > smallest:
                skipped.append({"k": k, "note": f"skipped: k={k} is larger than the smallest class "
                                                f"({smallest} training images)"})
            else:
                samples[k] = lowshot_samples_per_class(Ytr, k, num_samples, seed)
        if not samples:
            raise SelfSupError(f"every low-shot k ({', '.join(map(str, ks))}) is larger than the smallest class "
                               f"({smallest} training images): use k values up to {smallest}")
        set_rows = n_cls * max(samples)
    if normalize:
        Xtr, Xte = normalize_features(Xtr), normalize_features(Xte)
    opts = _Opts(seed, max_iter, tol)
    g = bool(samples) and use_gram(gram, set_rows, Xtr.shape[1])
    results: dict = {}
    stats = dict(fits=0, not_converged=0, fallbacks=0, solver_cpu_s=0.0)
    with _Pool(n_jobs) as pool:
        full = g and len(Xtr) <= GRAM_MAX_ROWS
        K = gram_matrix(Xtr) if full else None
        Kte = gram_matrix(Xte, Xtr) if full and len(Xte) * len(Xtr) * 8 <= KTE_MAX_BYTES else None
        Xs, Ks, Xts, Ktes = pool.share(Xtr), pool.share(K), pool.share(Xte), pool.share(Kte)
        prep_s = time.perf_counter() - t0
        jobs = []
        for k in sorted(samples, reverse=True):          # the largest first: better packing
            for s in range(num_samples):
                if style == "voc":
                    T = samples[k][s]
                    sets = []
                    for c in range(n_cls):
                        rows = np.flatnonzero(T[:, c] != -1)
                        sets.append((rows, np.where(T[rows, c] == 1, 1, -1)[None], [c]))
                else:
                    rows = samples[k][s]
                    sets = [(rows, np.stack([np.where(labels_tr[rows] == c, 1, -1) for c in range(n_cls)]),
                             list(range(n_cls)))]
                jobs.append((Xs, Ks, Xts, Ktes, s, k, sets, Yte, costs, opts, g, style))
        t_fit = time.perf_counter()
        aps = {k: np.zeros((num_samples, n_cls, len(costs))) for k in samples}
        top1 = {k: np.zeros((num_samples, len(costs))) for k in samples}
        work = sum(len(rows) ** 2 * len(lab) for j in jobs for rows, lab, _ in j[6]) * len(costs)
        for s, k, ap, t1, fits, nc, fb, secs in pool.map(_lowshot_job, jobs, work):
            aps[k][s] = ap
            if t1 is not None:
                top1[k][s] = t1
            stats["fits"] += fits
            stats["not_converged"] += nc
            stats["fallbacks"] += fb
            stats["solver_cpu_s"] += secs
        fit_s = time.perf_counter() - t_fit
    for k in sorted(samples):
        maps = aps[k].mean(1)                          # samples x costs
        mean = maps.mean(0)
        j = int(np.argmax(mean))
        entry = {"cost": costs[j], **_stats(maps, j), "map_by_cost": mean.tolist(),
                 "ap_per_class": aps[k][:, :, j].mean(0).tolist()}
        if style == "places":
            jt = int(np.argmax(top1[k].mean(0)))
            entry["top1"] = _stats(top1[k], j)
            entry["top1_best"] = {"cost": costs[jt], **_stats(top1[k], jt)}
        results[str(k)] = entry
    stats.update(total_s=time.perf_counter() - t0, prep_s=prep_s, fit_s=fit_s)
    return {"style": style, "ks": results, "skipped": skipped, "num_samples": num_samples, "costs": costs,
            "negatives_per_positive": negatives_per_positive if style == "voc" else None, "gram": g, "seed": seed,
            "cost_selection": "per k, the cost maximising the mean test mAP over the samples: chosen on the test "
                              "set (Goyal et al.'s code, aggregate_low_shot_svm_stats.py), not by cross-validation",
            "timings": stats}
