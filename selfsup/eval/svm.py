"""Goyal et al. 2019's VOC07 linear-SVM protocol (METHODS.md 6.1) on feature arrays.

``svm_benchmark(Xtr, Ytr, Xte, Yte)`` runs fssb's ``train_svm_kfold.py`` + ``test_svm.py``:

- features (N x D, already pooled) are cast to float64 and L2-normalised per sample,
  x / (||x||_2 + 1e-5) (fssb ``svm_helper.normalize_features`` after ``astype(float64)``);
  ``normalize=False`` takes them as they are;
- targets (N x C ints): 1 present, 0 absent, -1 difficult. Training labels of class c:
  1 -> +1, 0 -> -1 and **difficult (-1) -> -1: difficult images stay in training as
  negatives**; at test, difficult images of class c are left out of its AP;
- one ``LinearSVC(C, class_weight={1: 2, -1: 1}, penalty='l2', loss='squared_hinge',
  dual=True, tol=1e-4, max_iter=2000, intercept_scaling=1, random_state=seed)`` per class
  and cost; for each, the mean over folds of ``cross_val_score(clf, X, y, cv=3,
  scoring='average_precision')`` (sklearn's StratifiedKFold(3), unshuffled, sklearn's
  ``average_precision_score``);
- the best cost per class is the one of highest mean CV AP; **ties go to the cost that
  comes first in the cost list** (fssb ``get_chosen_costs``: ``np.argmax`` over its list);
- refit on all of trainval with that cost; test AP is ``voc_ap`` of ``decision_function``
  on the test set; mAP is the mean over classes. APs are fractions in [0, 1].

Refusals (one line, ``SelfSupError``): a class with fewer than ``cv`` positive or negative
training images (stratified 3-fold CV cannot run), or with no positive test image (its AP
is undefined; Goyal's VOC07 has positives for every class): no NaN AP is ever averaged.

Speed, with results equal to sklearn's on the raw features (profiled: 90 % of a VOC-size
run is inside liblinear, the rest Gram, factorisations and AP):

- (class, fold) jobs run in parallel over processes (joblib's loky). Threads are not used:
  sklearn's liblinear draws its coordinate order from one **process-global** random
  generator, so two fits in two threads race for it and give nondeterministic results
  (measured: other iteration counts). Large arrays go to the workers as memory maps; below
  ``PROCESS_MIN_WORK`` the jobs run in this process (workers take seconds to start).
- ``gram=True`` (``"auto"``: when N_train < D): the dual of a linear SVM sees the features
  only through inner products, so each training set of n < D rows is replaced by the rows
  of the Cholesky factor L of its Gram matrix (L L^T = X X^T, n x n, lower triangular).
  sklearn's LinearSVC runs unchanged on these rows (given as CSR: n(n+1)/2 non-zeros
  instead of n x D, e.g. 5.6M instead of 30.7M for a VOC fold), takes the same coordinate
  steps in the same order, and returns w_z; w = X^T L^-T w_z is the same hyperplane in
  feature space (w lies in the span of the training rows), so decisions on any other rows
  are x . w + b. Equal to sklearn on the raw features up to floating-point rounding
  (measured: same iteration counts, max |decision difference| ~1e-13); each back-mapped w
  is checked on the training rows (K a = L w_z) and a failed check or a failed Cholesky
  (e.g. duplicate rows) falls back to the raw fit (counted in ``fallbacks``). Measured on
  one VOC-size fold (3333 x 9216), per fit: 3-5x faster (C = 1e-7: 1.6 -> 0.4 s, C = 1:
  10.9 -> 2.3 s, C = 100: 29 -> 5.4 s).
- The factorisation order is free (any order gives exact inner products; liblinear still
  visits the rows in data order), and a row factorised i-th has i + 1 non-zeros. The long
  fits (large C) spend their iterations on the support vectors, so after a fit of
  ``REORDER_ITERS`` iterations the larger costs of that training set run on a factor taken
  in the order of that fit's margins, support vectors first (C = 100: 6.3 -> 3.4 s); each
  refit is factorised in the order of the images' out-of-fold margins at its cost.
- Measured (``benchmarks/svm.py``, 5000 + 5000 x 9216 synthetic VOC-like features, 10
  classes, 26 costs, 2 cores shared with other jobs at load 5-7): one class's CV grid
  (78 fits) 338 s plain sequential sklearn -> 60 s; the full protocol (790 fits) 596 s
  wall, of which CV 82 %, solver CPU 548 s (CV 452 s, refits 96 s), i.e. about 283 s on
  two idle cores. Decisions and CV APs equal plain sklearn's (max |CV AP difference| 0).
- ``solver="torch"``: the same primal problem (intercept_scaling 1: the bias is a feature
  of value 1 and is regularised), min_w 0.5 ||w||^2 + C sum_i c_i max(0, 1 - y_i w.[x_i, 1])^2
  with c_i = 2 for positives and 1 for negatives, solved to optimality by a batched
  finite Newton method in kernel space (Chapelle 2007, Keerthi & DeCoste 2005) with exact
  line search, for all costs of a training set at once; meant for a GPU (``device``).
  Its minimiser is liblinear's up to liblinear's tolerance (tol 1e-4), not bit for bit.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from selfsup.errors import SelfSupError

# fssb's GETTING_STARTED cost list plus svm_helper.parse_cost_list's 0.5^k, k = 4..19
# (26 costs, in fssb's order); VISSL's voc07 SVM config.
COSTS = {"goyal": [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0] + [0.5 ** k for k in range(4, 20)],
         "vissl": [0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0]}
CLASS_WEIGHT = {1: 2, -1: 1}
MAX_ITER = 2000
TOL = 1e-4
GRAM_MAX_ROWS = 20000          # a Gram matrix of at most 20000^2 float64 (3.2 GB) is kept
CHECK_TOL = 1e-7               # back-mapped decisions on the training rows vs the rep's
# Worker processes cost seconds to start (each imports torch and sklearn): below this much
# work (sum over jobs of rows^2 x fits, ~1e9 is a few seconds of liblinear) jobs run here.
PROCESS_MIN_WORK = 1e9


# ----------------------------------------------------------------------------- inputs

def parse_costs(text) -> list[float]:
    """Costs of an SVM grid: a preset name (``goyal``: fssb's 26, ``vissl``: VISSL's 11), a
    comma list (``"0.01,0.1"``, taken as is: no 0.5^k appended) or a sequence of numbers."""
    if isinstance(text, str):
        if text.strip().lower() in COSTS:
            return list(COSTS[text.strip().lower()])
        items = [t.strip() for t in text.split(",")]
    else:
        items = list(text)
    if not items or any(isinstance(i, str) and not i for i in items):
        raise SelfSupError(f"--costs {text!r} has an empty cost: use a preset ({', '.join(COSTS)}) "
                           "or a comma list such as --costs 0.01,0.1")
    costs: list[float] = []
    for item in items:
        try:
            c = float(item)
        except (TypeError, ValueError):
            raise SelfSupError(f"--costs: {item!r} is neither a number nor a preset ({', '.join(COSTS)}): "
                               "use e.g. --costs goyal or --costs 0.01,0.1") from None
        if not (math.isfinite(c) and c > 0):
            raise SelfSupError(f"--costs: cost {item} must be a positive number (the SVM's C > 0): "
                               "use e.g. --costs 0.01,0.1")
        if c in costs:
            raise SelfSupError(f"--costs: cost {item} appears twice: give each cost once")
        costs.append(c)
    return costs


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def check_features(X, name: str = "features") -> np.ndarray:
    """N x D finite features as float64, C-contiguous (the layout liblinear reads)."""
    X = _numpy(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise SelfSupError(f"{name} must be a non-empty N x D matrix, got shape {tuple(X.shape)}: "
                           "pool and flatten the features first")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise SelfSupError(f"{name} contain NaN or infinite values: recompute the features")
    return X


def check_targets(Y, n: int, name: str = "targets") -> np.ndarray:
    """N x C int64 targets with values 1 (present), 0 (absent), -1 (difficult); a 1-D
    vector is one class."""
    Y = _numpy(Y)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != n or Y.shape[1] == 0:
        raise SelfSupError(f"{name} must be an N x C matrix with N = {n} (one row per image), got shape "
                           f"{tuple(Y.shape)}: pass one column per class")
    if not np.isin(Y, (-1, 0, 1)).all():
        raise SelfSupError(f"{name} must hold 1 (present), 0 (absent) or -1 (difficult) only, got values "
                           f"{sorted(set(np.unique(Y).tolist()) - {-1, 0, 1})[:5]}: remap the labels")
    return Y.astype(np.int64)


def normalize_features(X: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """x / (||x||_2 + 1e-5) per row, in float64 (METHODS.md 6.1; fssb normalize_features)."""
    return X / (np.linalg.norm(X, axis=1) + eps)[:, None]


def train_labels(column: np.ndarray) -> np.ndarray:
    """SVM labels of one class: 1 -> +1; 0 and difficult (-1) -> -1 (difficult images are
    negatives in training, METHODS.md 6.1)."""
    return np.where(np.asarray(column) == 1, 1, -1).astype(np.int64)


# ----------------------------------------------------------------------------- AP

def voc_ap(scores, targets) -> float:
    """VOC AP of one class: images with target -1 (difficult) left out, 1 positive, 0
    negative; the area under the precision-recall curve made monotone non-increasing from
    the right, sum of delta recall x precision (fssb ``svm_helper.calculate_ap`` on
    ``get_precision_recall``).

    Ties: all images of one score enter the ranking together (one point of the curve per
    distinct score). This does not depend on the input order and equals fssb's value
    whenever scores are distinct; within a tie it counts as if the negatives came first
    (fssb's ``argsort()[::-1]`` leaves that order to numpy's unstable sort).
    A class with no positive image is refused (its AP is undefined)."""
    s = np.asarray(_numpy(scores), dtype=np.float64).ravel()
    t = np.asarray(_numpy(targets)).ravel()
    if s.shape != t.shape:
        raise SelfSupError(f"voc_ap: {s.size} scores for {t.size} targets: give one score per image")
    keep = t != -1
    s, pos = s[keep], t[keep] > 0
    if not np.isfinite(s).all():
        raise SelfSupError("voc_ap: scores contain NaN or infinite values: check the classifier's decisions")
    n_pos = int(pos.sum())
    if n_pos == 0:
        raise SelfSupError("voc_ap: the class has no positive (non-difficult) image in the evaluation set, "
                           "so its AP is undefined: leave the class out or use a set that contains it")
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    tp = np.cumsum(pos)
    fp = np.cumsum(~pos)
    last = np.r_[s[1:] != s[:-1], True]            # the last image of each group of equal scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def squared_hinge_objective(X, y, coef, intercept, C: float, class_weight=CLASS_WEIGHT) -> float:
    """liblinear's primal objective with intercept_scaling 1: 0.5 (||w||^2 + b^2) +
    C sum_i c_i max(0, 1 - y_i (x_i . w + b))^2, c_i the class weight of y_i."""
    X = np.asarray(_numpy(X), dtype=np.float64)
    y = np.asarray(_numpy(y))
    w = np.asarray(_numpy(coef), dtype=np.float64).ravel()
    b = float(np.asarray(_numpy(intercept)).ravel()[0])
    c = np.where(y == 1, class_weight[1], class_weight[-1])
    h = np.maximum(0.0, 1.0 - y * (X @ w + b))
    return float(0.5 * (w @ w + b * b) + C * np.sum(c * h * h))


# ----------------------------------------------------------------------------- liblinear

def make_svc(cost: float, seed: int = 0, max_iter: int = MAX_ITER, tol: float = TOL):
    """The SVM of METHODS.md 6.1 for one cost."""
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, class_weight=CLASS_WEIGHT, penalty="l2", loss="squared_hinge", dual=True, tol=tol,
                     max_iter=max_iter, intercept_scaling=1, fit_intercept=True, random_state=seed)


@dataclass
class _Opts:
    seed: int = 0
    max_iter: int = MAX_ITER
    tol: float = TOL


def _liblinear(A, y: np.ndarray, costs: Sequence[float], opts: _Opts):
    """LinearSVC on A (dense or CSR) for each cost: coefficient rows, intercepts, iterations,
    seconds. ConvergenceWarnings are silenced; non-convergence is n_iter >= max_iter, the
    condition under which sklearn warns."""
    from sklearn.exceptions import ConvergenceWarning

    W = np.empty((len(costs), A.shape[1]))
    b = np.empty(len(costs))
    it = np.empty(len(costs), dtype=np.int64)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for j, cost in enumerate(costs):
            clf = make_svc(cost, opts.seed, opts.max_iter, opts.tol).fit(A, y)
            W[j], b[j], it[j] = clf.coef_[0], clf.intercept_[0], int(np.max(clf.n_iter_))
    return W, b, it, time.perf_counter() - t0


def _cholesky(K_sub: np.ndarray):
    """Lower Cholesky factor (torch float64) of a Gram block, None when not positive definite."""
    L, info = torch.linalg.cholesky_ex(torch.from_numpy(np.ascontiguousarray(K_sub)))
    return L if int(info) == 0 else None


def _csr(L: torch.Tensor):
    """A lower-triangular L as CSR of its lower triangle (row i: i + 1 entries), built
    without scanning the zeros above the diagonal."""
    import scipy.sparse as sp

    n = L.shape[0]
    counts = np.arange(1, n + 1)
    indptr = np.r_[0, np.cumsum(counts)]
    data = L.numpy()[np.tri(n, dtype=bool)]
    indices = (np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)).astype(np.int32)
    return sp.csr_matrix((data, indices, indptr.astype(np.int32)), shape=(n, n))


class _Rep:
    """The Cholesky rows of a Gram block K_sub (n x n, rows in data order) with the
    factorisation taken in ``order``: L L^T = K_sub[order][:, order], and the rep of data
    row order[i] is L[i] (i + 1 non-zeros), so rows early in the order are short. The CSR
    ``Z`` holds the reps in data order, which liblinear sees (its coordinate order is the
    data order: same steps whatever ``order``)."""

    def __init__(self, K_sub: np.ndarray, order: np.ndarray | None = None):
        self.K = K_sub
        self.order = order
        Kp = K_sub if order is None else K_sub[np.ix_(order, order)]
        self.L = _cholesky(Kp)
        self.Z = None
        if self.L is not None:
            Z = _csr(self.L)
            self.Z = Z if order is None else Z[np.argsort(order)]

    def backmap(self, Wz: np.ndarray):
        """Kernel coefficients in data order (q x n) of rep weights Wz, and the check."""
        from scipy.linalg import solve_triangular

        # scipy's (LAPACK trtrs): torch's solve_triangular takes ~0.7 s for one right-hand
        # side of 3333 (measured), scipy 3 ms
        A = solve_triangular(self.L.numpy(), Wz.T, lower=True, trans="T", check_finite=False)
        if self.order is not None:
            A_data = np.empty_like(A)
            A_data[self.order] = A
            A = A_data
        dz = self.Z @ Wz.T
        dk = self.K @ A
        err = np.abs(dk - dz).max(0) / (1.0 + np.abs(dz).max(0))
        return A.T.copy(), np.isfinite(err) & (err <= CHECK_TOL)


# After a fit of this many liblinear iterations, the larger costs (slower, fewer support
# vectors) of the same training set get a rep factorised in the order of that fit's
# margins, support vectors first: their reps are then the short rows. Measured on a VOC
# fold (3333 rows): C = 10 4.4 -> 3.3 s, C = 100 6.3 -> 3.4 s, for ~1 s of factorisation.
REORDER_ITERS = 50


@dataclass
class _Fit:
    """SVMs on one training set (``rows``) for q costs: w = X[rows]^T a[j] (kernel form) or
    w = coef[j] (raw form), intercept b[j]."""
    rows: np.ndarray
    b: np.ndarray
    n_iter: np.ndarray
    seconds: float                 # CPU seconds of this process (rep share + fits)
    a: np.ndarray | None = None
    coef: np.ndarray | None = None
    fallback: bool = False

    def coefs(self, X: np.ndarray) -> np.ndarray:
        """w in feature space (q x D)."""
        if self.a is None:
            return self.coef
        every = len(self.rows) == len(X) and np.array_equal(self.rows, np.arange(len(X)))
        return self.a @ (X if every else X[self.rows])

    def decisions(self, X: np.ndarray, K: np.ndarray | None, eval_rows: np.ndarray) -> np.ndarray:
        """Decision values (len(eval_rows) x q) on other rows of the training features."""
        if self.a is not None and K is not None:
            return K[np.ix_(eval_rows, self.rows)] @ self.a.T + self.b
        return X[eval_rows] @ self.coefs(X).T + self.b

    def test_decisions(self, X: np.ndarray, Xte: np.ndarray, Kte: np.ndarray | None = None) -> np.ndarray:
        """Decision values (N_test x q); Kte = Xte X^T when precomputed."""
        if self.a is not None and Kte is not None:
            return Kte[:, self.rows] @ self.a.T + self.b
        return Xte @ self.coefs(X).T + self.b


def _fit_set(X: np.ndarray, K: np.ndarray | None, rows: np.ndarray, Y: np.ndarray, costs: Sequence[float],
             opts: _Opts, gram: bool, order: np.ndarray | None = None) -> list[_Fit]:
    """SVMs on X[rows] for every cost and every label vector of Y (m x n or n, +-1), via the
    Cholesky rows of the Gram block when ``gram`` (K: the Gram of all rows of X, or None to
    compute the block), each falling back to the raw rows when the factor or the back-map
    check fails. Costs are fitted in increasing order; see REORDER_ITERS. ``order``: the
    order of the first factorisation (e.g. predicted support vectors first)."""
    Y = np.atleast_2d(Y)
    q = len(costs)
    rep = K_sub = Xr = None
    t_rep = time.process_time()
    if gram:
        K_sub = K[np.ix_(rows, rows)] if K is not None else gram_matrix(np.ascontiguousarray(X[rows]))
        rep = _Rep(K_sub, order)
        if rep.Z is None:
            rep = None
    t_rep = (time.process_time() - t_rep) / len(Y)
    fits = []
    for y in Y:
        t0 = time.process_time()
        if rep is not None:
            a, b, it = np.empty((q, len(rows))), np.empty(q), np.empty(q, dtype=np.int64)
            ok, current = True, rep
            for step, j in enumerate(sorted(range(q), key=lambda j: costs[j])):
                Wz, b[j:j + 1], it[j:j + 1], _ = _liblinear(current.Z, y, [costs[j]], opts)
                aj, okj = current.backmap(Wz)
                a[j], ok = aj[0], ok and bool(okj[0])
                if not ok:
                    break
                if current is rep and order is None and it[j] >= REORDER_ITERS and step < q - 1:
                    margins = y * (K_sub @ a[j] + b[j])
                    ordered = _Rep(K_sub, np.argsort(margins, kind="stable"))
                    if ordered.Z is not None:
                        current = ordered
            if ok:
                fits.append(_Fit(rows, b, it, t_rep + time.process_time() - t0, a=a))
                continue
        if Xr is None:
            Xr = np.ascontiguousarray(X[rows])
        W, b, it, _ = _liblinear(Xr, y, costs, opts)
        fits.append(_Fit(rows, b, it, t_rep + time.process_time() - t0, coef=W, fallback=gram))
    return fits


def fit_linear_svms(X, y, costs, seed: int = 0, gram="auto", max_iter: int = MAX_ITER, tol: float = TOL) -> dict:
    """LinearSVC (``make_svc``) on X (as given: no normalisation) and labels y (+-1, or 1 /
    0 / -1 targets, mapped by ``train_labels``) for every cost, through the Cholesky rows
    when ``gram``. Returns coef (costs x D), intercept, n_iter and whether the Cholesky
    rows were used: the same hyperplanes as sklearn on X, up to rounding."""
    X = check_features(X)
    y = np.asarray(_numpy(y)).ravel()
    y = y if set(np.unique(y).tolist()) <= {-1, 1} else train_labels(y)
    costs = parse_costs(costs)
    g = use_gram(gram, len(X), X.shape[1])
    fit = _fit_set(X, gram_matrix(X) if g else None, np.arange(len(X)), y, costs, _Opts(seed, max_iter, tol), g)[0]
    return {"coef": fit.coefs(X), "intercept": fit.b, "n_iter": fit.n_iter, "gram": fit.a is not None}


def _cv_job(X, K, c: int, fold: int, tr: np.ndarray, va: np.ndarray, y: np.ndarray, costs, opts: _Opts,
            gram: bool):
    """One (class, fold) of the CV: the fold's AP (sklearn average_precision_score, as
    cross_val_score's 'average_precision' scorer) for every cost."""
    from sklearn.metrics import average_precision_score

    fit = _fit_set(X, K, tr, y[tr], costs, opts, gram)[0]
    dec = fit.decisions(X, K, va)
    aps = [float(average_precision_score(y[va], dec[:, j])) for j in range(len(costs))]
    return c, fold, aps, fit.n_iter, fit.seconds, fit.fallback, dec


def _refit_job(X, K, y: np.ndarray, cost: float, order: np.ndarray | None, opts: _Opts, gram: bool):
    """The SVM of one class on all training rows, its factorisation ordered by ``order``."""
    return _fit_set(X, K, np.arange(len(y)), y, [cost], opts, gram, order)[0]


# ----------------------------------------------------------------------------- workers

def check_jobs(n_jobs: int | None) -> None:
    """Refuse 0 worker processes (joblib's count: n >= 1 processes, -1 every core, -2 all but one)."""
    if n_jobs == 0:
        raise SelfSupError("--jobs 0 runs no worker process: use --jobs N for N processes, or -1 for every core")


class _Pool:
    """joblib over processes (loky) with the large arrays memory-mapped once; n_jobs 1 runs
    in this process without copies."""

    def __init__(self, n_jobs: int | None):
        from joblib import effective_n_jobs

        check_jobs(n_jobs)
        self.n_jobs = max(1, effective_n_jobs(n_jobs if n_jobs is not None else 1))
        self.dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def share(self, a):
        """A read-only memory map of ``a`` for the workers (``a`` itself in-process)."""
        if a is None or self.n_jobs == 1:
            return a
        if self.dir is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            if base is not None:
                st = os.statvfs(base)
                if st.f_bavail * st.f_frsize < 4 * a.nbytes:
                    base = None
            self.dir = tempfile.mkdtemp(prefix="selfsup-svm-", dir=base)
        path = os.path.join(self.dir, f"a{len(os.listdir(self.dir))}.npy")
        np.save(path, a)
        return np.load(path, mmap_mode="r")

    def map(self, fn, jobs, work: float | None = None):
        jobs = list(jobs)
        if self.n_jobs == 1 or len(jobs) <= 1 or (work is not None and work < PROCESS_MIN_WORK):
            return [fn(*args) for args in jobs]
        from joblib import Parallel, delayed

        return Parallel(n_jobs=min(self.n_jobs, len(jobs)), backend="loky")(delayed(fn)(*args) for args in jobs)


def use_gram(gram, n_rows: int, dims: int) -> bool:
    """``gram="auto"``: the Cholesky rows when the training sets have fewer rows than
    dimensions (and the Gram matrix fits, at most 20000 rows)."""
    if gram == "auto":
        return n_rows < dims and n_rows <= GRAM_MAX_ROWS
    return bool(gram)


def gram_matrix(A: np.ndarray, B: np.ndarray | None = None, blocks: int = 4) -> np.ndarray:
    """A A^T (or A B^T) in float64, through torch's BLAS; A A^T exactly symmetric, from the
    blocks on and above the diagonal only (5/8 of the products for 4 blocks)."""
    a = torch.from_numpy(A)
    if B is not None:
        return (a @ torch.from_numpy(B).T).numpy()
    n = len(a)
    if n < 1024:
        K = a @ a.T
        return ((K + K.T) / 2).numpy()
    K = torch.empty(n, n, dtype=a.dtype)
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    for i in range(blocks):
        ai = a[edges[i]:edges[i + 1]]
        for j in range(i, blocks):
            block = ai @ a[edges[j]:edges[j + 1]].T
            if i == j:
                block = (block + block.T) / 2
            K[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = block
            K[edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = block.T
    return K.numpy()


# ----------------------------------------------------------------------------- torch solver

def _line_search(z, u, beta, d, Y, Cw, iters: int = 60):
    """Exact minimiser t >= 0 of phi(t) = f(beta + t d) for the kernel-space objective
    (z = K beta, u = K d), per problem: safeguarded Newton on the piecewise-linear,
    non-decreasing phi'(t)."""
    g0 = (beta * u).sum(1)
    g1 = (d * u).sum(1)
    a = 1.0 - Y * z
    bb = Y * u
    w = 2.0 * Cw
    t = torch.ones_like(g0)
    lo = torch.zeros_like(g0)
    hi = torch.full_like(g0, math.inf)
    scale = g0.abs() + g1.abs() + (w * bb.abs() * a.abs()).sum(1) + 1e-300
    for _ in range(iters):
        r = a - t[:, None] * bb
        act = (r > 0).to(z.dtype)
        f = g0 + t * g1 - (w * bb * r * act).sum(1)
        fp = g1 + (w * bb * bb * act).sum(1)
        lo = torch.where(f < 0, t, lo)
        hi = torch.where(f > 0, t, hi)
        if bool((f.abs() <= 1e-15 * scale).all()):
            break
        tn = t - f / fp.clamp_min(1e-300)
        bad = ~((tn > lo) & (tn < hi)) | ~torch.isfinite(tn)
        tn = torch.where(bad, torch.where(torch.isfinite(hi), 0.5 * (lo + hi), 2.0 * t), tn)
        done = f.abs() <= 1e-15 * scale
        t = torch.where(done, t, tn)
    return t


def solve_squared_hinge_kernel(Kt: torch.Tensor, Y: torch.Tensor, Cw: torch.Tensor, max_iter: int = 100,
                               chunk_bytes: int = 2 << 30):
    """Batched exact solver of P L2-regularised squared-hinge SVMs sharing one kernel.

    ``Kt`` (n x n): the kernel of the training rows with the bias feature, X X^T + 1;
    ``Y`` (P x n): labels +-1; ``Cw`` (P x n): C times the class weight of each row (0: row
    not in that problem). Minimises, per problem, 0.5 beta^T Kt beta + sum_i Cw_i
    max(0, 1 - y_i (Kt beta)_i)^2 (the primal with w = [X, 1]^T beta) by finite Newton
    steps: with A the rows inside the margin, beta_A = (Kt_AA + diag(1 / (2 Cw_A)))^-1 y_A
    (Chapelle 2007), then an exact line search; converged when A no longer changes (then
    beta is the exact minimiser). Returns beta (P x n), Newton steps (P) and converged (P)."""
    P, n = Y.shape
    dtype = Kt.dtype
    beta = torch.zeros(P, n, dtype=dtype, device=Kt.device)
    steps = torch.zeros(P, dtype=torch.long, device=Kt.device)
    converged = torch.zeros(P, dtype=torch.bool, device=Kt.device)
    per = max(1, int(chunk_bytes // max(1, n * n * Kt.element_size())))
    for start in range(0, P, per):
        idx = torch.arange(start, min(P, start + per), device=Kt.device)
        y, cw = Y[idx], Cw[idx]
        b = beta[idx]
        z = b @ Kt
        todo = torch.ones(len(idx), dtype=torch.bool, device=Kt.device)
        for _ in range(max_iter):
            live = todo.nonzero().squeeze(1)
            if live.numel() == 0:
                break
            yl, cl, bl, zl = y[live], cw[live], b[live], z[live]
            act = (yl * zl < 1) & (cl > 0)
            af = act.to(dtype)
            M = Kt.unsqueeze(0) * af[:, :, None] * af[:, None, :]
            M.diagonal(dim1=1, dim2=2).add_(torch.where(act, 0.5 / cl.clamp_min(1e-300), torch.ones_like(cl)))
            Lc, info = torch.linalg.cholesky_ex(M)
            bnew = torch.cholesky_solve((yl * af).unsqueeze(2), Lc).squeeze(2)
            d = bnew - bl
            u = d @ Kt
            t = _line_search(zl, u, bl, d, yl, cl)
            bl = bl + t[:, None] * d
            zl = bl @ Kt
            act_new = (yl * zl < 1) & (cl > 0)
            b[live], z[live] = bl, zl
            steps[idx[live]] += 1
            conv = (act_new == act).all(1) & (info == 0)
            converged[idx[live]] = conv
            todo[live] = ~conv
        beta[idx] = b
    return beta, steps, converged


def _torch_fit(Kd: torch.Tensor, rows, labels: np.ndarray, costs: np.ndarray, max_iter: int = 100):
    """Torch-solver SVMs on one training set: ``labels`` (m x n, +-1) and ``costs`` (m x q)
    give m x q problems; returns beta (m x q x n), intercepts (m x q), steps, converged."""
    r = torch.as_tensor(rows, device=Kd.device)
    Kt = Kd[r][:, r] + 1.0
    m, q = costs.shape
    Y = torch.as_tensor(np.repeat(labels, q, axis=0), dtype=Kd.dtype, device=Kd.device)
    cw = torch.where(Y > 0, float(CLASS_WEIGHT[1]), float(CLASS_WEIGHT[-1]))
    Cw = cw * torch.as_tensor(costs.reshape(-1, 1), dtype=Kd.dtype, device=Kd.device)
    chunk = (8 << 30) if Kd.device.type == "cuda" else (1 << 30)      # memory of the batched Newton systems
    beta, steps, conv = solve_squared_hinge_kernel(Kt, Y, Cw, max_iter=max_iter, chunk_bytes=chunk)
    return (beta.reshape(m, q, -1), beta.sum(1).reshape(m, q), steps.reshape(m, q).cpu().numpy(),
            conv.reshape(m, q).cpu().numpy())


def torch_device(device=None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


# ----------------------------------------------------------------------------- benchmark

def class_name(c: int, names: Sequence[str] | None = None) -> str:
    """"class 'dog'" in messages when the class names are known, else "class 3"."""
    return f"class {names[c]!r}" if names is not None else f"class {c}"


def _check_classes(Ytr: np.ndarray, Yte: np.ndarray, cv: int, names: Sequence[str] | None = None) -> None:
    for c in range(Ytr.shape[1]):
        pos = int((Ytr[:, c] == 1).sum())
        neg = len(Ytr) - pos
        if pos < cv or neg < cv:
            raise SelfSupError(f"{class_name(c, names)} has {pos} positive and {neg} negative training images; "
                               f"{cv}-fold stratified CV needs at least {cv} of each: leave the class out or add images")
        if not (Yte[:, c] == 1).any():
            raise SelfSupError(f"{class_name(c, names)} has no positive (non-difficult) test image, so its AP is "
                               "undefined: leave the class out or use a test set that contains it")


def choose_costs(cv_ap: np.ndarray, costs: Sequence[float]) -> np.ndarray:
    """Best cost per class (row) by mean CV AP; ties go to the cost first in the list."""
    return np.asarray(costs)[np.argmax(np.asarray(cv_ap), axis=1)]


def check_solver(solver: str) -> None:
    if solver not in ("sklearn", "torch"):
        raise SelfSupError(f"unknown SVM solver {solver!r}: use sklearn or torch")


def _prepare(Xtr, Ytr, cv: int, costs, solver: str):
    costs = parse_costs(costs)
    check_solver(solver)
    if not (isinstance(cv, int) and cv >= 2):
        raise SelfSupError(f"cv must be an integer of at least 2 folds, got {cv!r}: use e.g. cv=3")
    Xtr = check_features(Xtr, "training features")
    return Xtr, check_targets(Ytr, len(Xtr), "training targets"), costs


def _folds(labels: np.ndarray, cv: int):
    """cross_val_score's split for a classifier and cv=k: StratifiedKFold(k), unshuffled."""
    from sklearn.model_selection import StratifiedKFold

    return [list(StratifiedKFold(n_splits=cv).split(np.zeros(labels.shape[1]), y)) for y in labels]


def _cv_sklearn(pool: _Pool, Xs, Ks, labels, folds, costs, opts: _Opts, g: bool):
    """Mean-over-folds CV AP (classes x costs) with LinearSVC, one job per (class, fold)."""
    n_cls, cv, q = len(labels), len(folds[0]), len(costs)
    ap = np.zeros((n_cls, cv, q))
    oof = np.zeros((n_cls, labels.shape[1], q))
    stats = dict(fits=0, not_converged=0, fallbacks=0, solver_cpu_s=0.0)
    jobs = [(Xs, Ks, c, f, tr, va, labels[c], costs, opts, g) for c in range(n_cls) for f, (tr, va) in enumerate(folds[c])]
    work = sum(len(j[4]) * min(len(j[4]), X.shape[1]) for j in jobs) * q if (X := Xs) is not None else None
    for c, f, aps, it, secs, fb, dec in pool.map(_cv_job, jobs, work):
        ap[c, f] = aps
        oof[c, folds[c][f][1]] = dec
        stats["fits"] += q
        stats["not_converged"] += int((it >= opts.max_iter).sum())
        stats["solver_cpu_s"] += secs
        stats["fallbacks"] += int(fb)
    return ap, stats, oof


def _cv_torch(Kd: torch.Tensor, labels, folds, costs, max_newton: int = 100):
    from sklearn.metrics import average_precision_score

    n_cls, cv, q = len(labels), len(folds[0]), len(costs)
    ap = np.zeros((n_cls, cv, q))
    stats = dict(fits=0, not_converged=0, fallbacks=0, solver_cpu_s=0.0)
    for c in range(n_cls):
        for f, (tr, va) in enumerate(folds[c]):
            ts = time.process_time()
            beta, _, _, conv = _torch_fit(Kd, tr, labels[c][tr][None], np.asarray([costs]), max_newton)
            rv, rt = torch.as_tensor(va, device=Kd.device), torch.as_tensor(tr, device=Kd.device)
            dec = ((Kd[rv][:, rt] + 1.0) @ beta[0].T).cpu().numpy()
            stats["solver_cpu_s"] += time.process_time() - ts
            ap[c, f] = [average_precision_score(labels[c][va], dec[:, j]) for j in range(q)]
            stats["fits"] += q
            stats["not_converged"] += int((~conv).sum())
    return ap, stats


def svm_cv(Xtr, Ytr, costs="goyal", n_jobs: int | None = -1, cv: int = 3, seed: int = 0, normalize: bool = True,
           gram="auto", solver: str = "sklearn", device=None, max_iter: int = MAX_ITER, tol: float = TOL) -> dict:
    """The model-selection half of ``svm_benchmark``: for every class (column of Ytr) and
    cost, the mean over ``cv`` stratified folds of the fold's average precision, as
    ``cross_val_score(make_svc(C), X, y, cv=cv, scoring='average_precision').mean()``.

    Returns ``cv_ap`` (classes x costs), ``cv_ap_folds`` (classes x folds x costs),
    ``best_cost`` (per class, ties to the first in the list), ``costs`` and ``timings``
    (total_s, prep_s: checks, normalisation and the Gram matrix, solver_cpu_s, fits, ...)."""
    t0 = time.perf_counter()
    Xtr, Ytr, costs = _prepare(Xtr, Ytr, cv, costs, solver)
    for c in range(Ytr.shape[1]):
        pos = int((Ytr[:, c] == 1).sum())
        if pos < cv or len(Ytr) - pos < cv:
            raise SelfSupError(f"class {c} has {pos} positive and {len(Ytr) - pos} negative training images; "
                               f"{cv}-fold stratified CV needs at least {cv} of each: leave the class out or add images")
    if normalize:
        Xtr = normalize_features(Xtr)
    labels = np.stack([train_labels(Ytr[:, c]) for c in range(Ytr.shape[1])])
    folds = _folds(labels, cv)
    if solver == "torch":
        Xd = torch.as_tensor(Xtr, device=torch_device(device))
        ap, stats = _cv_torch(Xd @ Xd.T, labels, folds, costs)
        g = False
    else:
        g = use_gram(gram, len(Xtr), Xtr.shape[1])
        with _Pool(n_jobs) as pool:
            Xs, Ks = pool.share(Xtr), pool.share(gram_matrix(Xtr) if g else None)
            prep_s = time.perf_counter() - t0
            ap, stats, _ = _cv_sklearn(pool, Xs, Ks, labels, folds, costs, _Opts(seed, max_iter, tol), g)
    stats["prep_s"] = prep_s if solver == "sklearn" else 0.0
    stats["total_s"] = time.perf_counter() - t0
    mean = ap.mean(1)
    return {"cv_ap": mean.tolist(), "cv_ap_folds": ap.tolist(), "best_cost": choose_costs(mean, costs).tolist(),
            "costs": costs, "gram": g, "solver": solver, "timings": stats}


def svm_benchmark(Xtr, Ytr, Xte, Yte, costs="goyal", n_jobs: int | None = -1, cv: int = 3, seed: int = 0,
                  normalize: bool = True, gram="auto", solver: str = "sklearn", device=None,
                  max_iter: int = MAX_ITER, tol: float = TOL, class_names: Sequence[str] | None = None) -> dict:
    """Goyal et al.'s VOC07 SVM benchmark (METHODS.md 6.1; the module doc) on arrays.

    Xtr, Xte: N x D features (numpy or torch), pooled, not yet normalised (``normalize``
    applies x / (||x|| + 1e-5); False: taken as they are); Ytr, Yte: N x C targets (1, 0,
    -1 difficult). costs: a preset name, a comma list or numbers (``parse_costs``).
    n_jobs: worker processes (-1: all cores). gram: the Cholesky-row speed-up (True,
    False, "auto": when N_train < D). solver: "sklearn" (LinearSVC, the reference) or
    "torch" (batched exact Newton on ``device``, default cuda when available).
    class_names: the names of Y's columns, for messages.

    Returns a dict: ``map`` (test mAP, a fraction), ``classes`` (per class: best_cost,
    cv_ap at it, test_ap, positives), ``cv_ap`` (classes x costs mean CV AP), ``costs``,
    the rules used, and ``timings``: total_s, prep_s (checks, normalisation, Gram), cv_s,
    refit_test_s, solver_cpu_s (CPU seconds of the fits, summed over workers), fits,
    not_converged (liblinear stopped at max_iter; torch: Newton not converged), fallbacks
    (training sets refit on the raw rows after a failed Cholesky or back-map check)."""
    t_start = time.perf_counter()
    Xtr, Ytr, costs = _prepare(Xtr, Ytr, cv, costs, solver)
    Xte = check_features(Xte, "test features")
    if Xtr.shape[1] != Xte.shape[1]:
        raise SelfSupError(f"training features have {Xtr.shape[1]} dimensions but test features {Xte.shape[1]}: "
                           "extract both at the same tap and pooling")
    Yte = check_targets(Yte, len(Xte), "test targets")
    if Ytr.shape[1] != Yte.shape[1]:
        raise SelfSupError(f"training targets have {Ytr.shape[1]} classes but test targets {Yte.shape[1]}: "
                           "use the same class list")
    _check_classes(Ytr, Yte, cv, class_names)
    if normalize:
        Xtr, Xte = normalize_features(Xtr), normalize_features(Xte)
    n, dims = Xtr.shape
    n_cls = Ytr.shape[1]
    opts = _Opts(seed, max_iter, tol)
    labels = np.stack([train_labels(Ytr[:, c]) for c in range(n_cls)])
    folds = _folds(labels, cv)
    timings: dict = {}
    g = solver == "sklearn" and use_gram(gram, n, dims)
    if solver == "torch":
        Xd = torch.as_tensor(Xtr, device=torch_device(device))
        Kd = Xd @ Xd.T
        timings["prep_s"] = time.perf_counter() - t_start
        t_cv = time.perf_counter()
        ap, stats = _cv_torch(Kd, labels, folds, costs)
        timings["cv_s"] = time.perf_counter() - t_cv
        mean_ap = ap.mean(1)
        best = choose_costs(mean_ap, costs)
        t_rf, t_rf_cpu = time.perf_counter(), time.process_time()
        beta, b0, _, conv = _torch_fit(Kd, np.arange(n), labels, best[:, None])
        coef = (beta[:, 0] @ Xd).cpu().numpy()
        dec_te = Xte @ coef.T + b0[:, 0].cpu().numpy()
        stats["fits"] += n_cls
        stats["not_converged"] += int((~conv).sum())
        stats["solver_cpu_s"] += time.process_time() - t_rf_cpu
    else:
        with _Pool(n_jobs) as pool:
            K = gram_matrix(Xtr) if g else None
            Xs, Ks = pool.share(Xtr), pool.share(K)
            timings["prep_s"] = time.perf_counter() - t_start
            t_cv = time.perf_counter()
            ap, stats, oof = _cv_sklearn(pool, Xs, Ks, labels, folds, costs, opts, g)
            timings["cv_s"] = time.perf_counter() - t_cv
            stats["cv_cpu_s"] = stats["solver_cpu_s"]
            mean_ap = ap.mean(1)
            best = choose_costs(mean_ap, costs)
            t_rf = time.perf_counter()
            # each training image's out-of-fold margin at the class's best cost predicts the
            # refit's support vectors: they go first in the factorisation (short rows)
            jobs = []
            for c in range(n_cls):
                margins = labels[c] * oof[c][:, costs.index(best[c])]
                jobs.append((Xs, Ks, labels[c], best[c], np.argsort(margins, kind="stable") if g else None, opts, g))
            fits = pool.map(_refit_job, jobs, n * min(n, dims) * n_cls)
            coef = np.stack([f.coefs(Xtr)[0] for f in fits])
            b = np.array([f.b[0] for f in fits])
            it = np.array([f.n_iter[0] for f in fits])
            stats["refit_cpu_s"] = sum(f.seconds for f in fits)
            stats["solver_cpu_s"] += stats["refit_cpu_s"]
            stats["fallbacks"] += sum(int(f.fallback) for f in fits)
            dec_te = Xte @ coef.T + b
            stats["fits"] += n_cls
            stats["not_converged"] += int((it >= max_iter).sum())
    test_ap = np.array([voc_ap(dec_te[:, c], Yte[:, c]) for c in range(n_cls)])
    timings["refit_test_s"] = time.perf_counter() - t_rf
    timings["total_s"] = time.perf_counter() - t_start
    timings.update(stats)
    classes = [{"class": c, "best_cost": float(best[c]), "cv_ap": float(mean_ap[c, costs.index(best[c])]),
                "test_ap": float(test_ap[c]), "train_positives": int((Ytr[:, c] == 1).sum()),
                "test_positives": int((Yte[:, c] == 1).sum())} for c in range(n_cls)]
    return {"map": float(test_ap.mean()), "classes": classes, "cv_ap": mean_ap.tolist(), "costs": costs,
            "solver": solver, "gram": g, "cv": cv, "seed": seed, "normalized": bool(normalize),
            "rules": "difficult images are negatives in training and left out at test; best cost per class by "
                     "mean CV AP (sklearn average_precision, StratifiedKFold unshuffled), ties to the cost first "
                     "in the list; refit on all training images; test AP is VOC AP (monotone precision envelope)",
            "timings": timings}
