"""VOC07 linear-SVM and low-shot protocols (selfsup.eval.svm, selfsup.eval.lowshot) against
plain sklearn and plain transcriptions of the definitions."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

import selfsup.eval.svm as svm
from selfsup.errors import SelfSupError
from selfsup.eval.lowshot import lowshot_benchmark, lowshot_samples, lowshot_samples_per_class
from selfsup.eval.svm import (COSTS, choose_costs, fit_linear_svms, normalize_features, parse_costs,
                              squared_hinge_objective, svm_benchmark, svm_cv, voc_ap)


def data(n_train=240, n_test=160, dims=400, classes=3, seed=0, signal=0.6, difficult=0.1):
    """Small VOC-like features (non-negative, class prototypes + noise) and 1 / 0 / -1 targets."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    Y = (rng.random((n, classes)) < rng.uniform(0.15, 0.35, classes)).astype(np.int64)
    Y[(Y == 1) & (rng.random((n, classes)) < difficult)] = -1
    protos = rng.standard_normal((classes, dims))
    X = np.log1p(np.exp(np.abs(Y) @ protos * signal + rng.standard_normal((n, dims)))).astype(np.float32)
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:]


def svc(C):
    return LinearSVC(C=C, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge", dual=True, tol=1e-4,
                     max_iter=2000, intercept_scaling=1, random_state=0)


def sk_labels(col):
    return np.where(col == 1, 1, -1)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# ----------------------------------------------------------------------------- AP

def ap_by_thresholds(scores, targets):
    """VOC AP written out: drop difficult; for every distinct score t (high to low), predict
    positive score >= t, precision and recall; precision made monotone (the best precision
    at any recall at least as large); sum of recall steps times that precision."""
    keep = [i for i in range(len(targets)) if targets[i] != -1]
    s = [scores[i] for i in keep]
    pos = [targets[i] == 1 for i in keep]
    n_pos = sum(pos)
    points = []
    for t in sorted(set(s), reverse=True):
        tp = sum(1 for si, p in zip(s, pos) if si >= t and p)
        fp = sum(1 for si, p in zip(s, pos) if si >= t and not p)
        points.append((tp / n_pos, tp / (tp + fp)))
    ap, prev_recall = 0.0, 0.0
    for i, (recall, _) in enumerate(points):
        best = max(p for r, p in points[i:])
        ap += (recall - prev_recall) * best
        prev_recall = recall
    return ap


def ap_fssb(scores, targets):
    """fssb svm_helper.get_precision_recall + calculate_ap, transcribed (difficult dropped first)."""
    keep = targets != -1
    scores, t = scores[keep], (targets[keep] > 0).astype(np.float64)
    ind = np.argsort(scores)[::-1]
    tp = t[ind]
    fp = 1 - tp
    P = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
    R = np.cumsum(tp) / t.sum()
    mrec, mpre = np.r_[0, R, 1], np.r_[0, P, 0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in idx))


def test_voc_ap_equals_direct_transcription_with_ties_and_difficult():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(5, 60))
        scores = np.round(rng.standard_normal(n), 1)            # many ties
        targets = rng.choice([-1, 0, 1], n, p=[0.15, 0.55, 0.3])
        targets[0] = 1
        assert voc_ap(scores, targets) == pytest.approx(ap_by_thresholds(scores.tolist(), targets.tolist()), abs=1e-12)
        # the order of the images does not matter, ties included
        perm = rng.permutation(n)
        assert voc_ap(scores[perm], targets[perm]) == pytest.approx(voc_ap(scores, targets), abs=1e-12)
    for trial in range(20):                                      # without ties: fssb's value exactly
        scores, targets = rng.standard_normal(50), rng.choice([-1, 0, 1], 50)
        targets[0] = 1
        assert voc_ap(scores, targets) == pytest.approx(ap_fssb(scores, targets), abs=1e-12)
    targets = np.array([1, 1, 0, -1, 0, 1, 0])
    assert voc_ap(np.where(targets == 1, 5.0, -5.0) + np.arange(7) * 0.01, targets) == 1.0
    assert voc_ap([3.0, 2.0, 1.0], [0, 1, 0]) == pytest.approx(0.5)
    # difficult images do not count wherever they are ranked
    assert voc_ap([9.0, 3.0, 2.0, 1.0], [-1, 0, 1, 0]) == voc_ap([-9.0, 3.0, 2.0, 1.0], [-1, 0, 1, 0]) == 0.5
    with pytest.raises(SelfSupError, match="no positive"):
        voc_ap([1.0, 2.0], [0, -1])


def test_parse_costs():
    assert len(COSTS["goyal"]) == 26 and COSTS["goyal"][:10] == [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]
    assert COSTS["goyal"][10:] == [0.5 ** k for k in range(4, 20)]
    assert parse_costs("goyal") == COSTS["goyal"] and parse_costs("VISSL") == COSTS["vissl"]
    assert parse_costs("0.01, 0.1,1") == [0.01, 0.1, 1.0] and parse_costs([2, 0.5]) == [2.0, 0.5]
    for bad, msg in (("0.1,abc", "neither a number"), ("0.1,-1", "positive"), ("0,1", "positive"),
                     ("0.1,,1", "empty"), ("1,1", "twice"), ("nan", "positive"), ([], "empty")):
        with pytest.raises(SelfSupError, match=msg):
            parse_costs(bad)


# ----------------------------------------------------------------------------- SVM

@pytest.mark.parametrize("gram", [False, True])
def test_cv_ap_equals_cross_val_score(gram):
    Xtr, Ytr, _, _ = data()
    costs = [1e-3, 0.1, 10.0]
    res = svm_cv(Xtr, Ytr, costs, n_jobs=1, gram=gram)
    assert res["gram"] is gram
    X = normalize_features(Xtr.astype(np.float64))
    for c in range(Ytr.shape[1]):
        for j, C in enumerate(costs):
            folds = cross_val_score(svc(C), X, sk_labels(Ytr[:, c]), cv=3, scoring="average_precision")
            np.testing.assert_allclose(np.array(res["cv_ap_folds"])[c, :, j], folds, atol=1e-9)
            assert res["cv_ap"][c][j] == pytest.approx(folds.mean(), abs=1e-9)


def test_benchmark_selection_refit_and_difficult_against_sklearn():
    """End to end against sklearn written out: difficult -> -1 in training, best cost by
    cross_val_score (first on ties), refit on everything, AP on non-difficult test images."""
    Xtr, Ytr, Xte, Yte = data(seed=1)
    assert (Ytr == -1).any(0).all() and (Yte == -1).any(0).all()
    costs = [1e-4, 0.05, 1.0, 20.0]
    res = svm_benchmark(Xtr, Ytr, Xte, Yte, costs, n_jobs=1)
    X, Xt = normalize_features(Xtr.astype(np.float64)), normalize_features(Xte.astype(np.float64))
    aps = []
    for c in range(Ytr.shape[1]):
        y = sk_labels(Ytr[:, c])
        cv = [cross_val_score(svc(C), X, y, cv=3, scoring="average_precision").mean() for C in costs]
        best = costs[int(np.argmax(cv))]
        assert res["classes"][c]["best_cost"] == best
        dec = svc(best).fit(X, y).decision_function(Xt)
        keep = Yte[:, c] != -1
        ap = ap_fssb(dec[keep], Yte[keep, c])
        assert res["classes"][c]["test_ap"] == pytest.approx(ap, abs=1e-9)
        aps.append(ap)
    assert res["map"] == pytest.approx(np.mean(aps), abs=1e-9)
    t = res["timings"]
    assert t["fits"] == 3 * 3 * 4 + 3 and t["fallbacks"] == 0 and t["total_s"] >= t["cv_s"]


def test_difficult_images_are_training_negatives():
    Xtr, Ytr, _, _ = data(seed=2)
    X = normalize_features(Xtr.astype(np.float64))
    col = Ytr[:, 0]
    assert (col == -1).sum() > 3
    ours = fit_linear_svms(X, col, [0.1], gram=False)
    neg = svc(0.1).fit(X, np.where(col == 1, 1, -1))
    np.testing.assert_allclose(ours["coef"][0], neg.coef_[0], atol=1e-12)
    keep = col != -1
    dropped = svc(0.1).fit(X[keep], np.where(col[keep] == 1, 1, -1))
    assert np.abs(ours["coef"][0] - dropped.coef_[0]).max() > 1e-6


def test_choose_costs_ties_go_to_the_first_cost():
    grid = np.array([[0.5, 0.7, 0.7, 0.1], [0.9, 0.9, 0.9, 0.9], [0.1, 0.2, 0.3, 0.4]])
    assert choose_costs(grid, [100.0, 1e-7, 0.5, 2.0]).tolist() == [1e-7, 100.0, 2.0]


def test_cholesky_rows_give_sklearn_decisions(monkeypatch):
    Xtr, Ytr, Xte, _ = data(n_train=200, dims=500, seed=3)
    X, Xt = normalize_features(Xtr.astype(np.float64)), normalize_features(Xte.astype(np.float64))
    y = sk_labels(Ytr[:, 1])
    costs = [1e-6, 0.03, 1.0, 100.0]
    for reorder in (svm.REORDER_ITERS, 1):                      # 1: every larger cost on a re-ordered factor
        monkeypatch.setattr(svm, "REORDER_ITERS", reorder)
        ours = fit_linear_svms(X, y, costs, gram=True)
        assert ours["gram"]
        for j, C in enumerate(costs):
            ref = svc(C).fit(X, y)
            assert ours["n_iter"][j] == ref.n_iter_
            dec, ref_dec = Xt @ ours["coef"][j] + ours["intercept"][j], ref.decision_function(Xt)
            assert np.abs(dec - ref_dec).max() <= 1e-6 * (1 + np.abs(ref_dec).max())
    # duplicate rows: singular Gram -> the raw rows, still sklearn's result
    Xd = np.vstack([X, X[:5]])
    yd = np.r_[y, y[:5]]
    ours = fit_linear_svms(Xd, yd, [1.0], gram=True)
    ref = svc(1.0).fit(Xd, yd)
    np.testing.assert_allclose(Xt @ ours["coef"][0] + ours["intercept"][0], ref.decision_function(Xt), atol=1e-6)


def test_worker_processes_give_the_same_result(monkeypatch):
    monkeypatch.setattr(svm, "PROCESS_MIN_WORK", 0)
    Xtr, Ytr, _, _ = data(n_train=150, dims=200, classes=2, seed=4)
    one = svm_cv(Xtr, Ytr, [0.01, 1.0], n_jobs=1)
    two = svm_cv(Xtr, Ytr, [0.01, 1.0], n_jobs=2)
    assert one["cv_ap_folds"] == two["cv_ap_folds"]


def test_refusals():
    Xtr, Ytr, Xte, Yte = data()
    few = Ytr.copy()
    few[:, 0] = 0
    few[:2, 0] = 1
    with pytest.raises(SelfSupError, match="class 0 has 2 positive"):
        svm_benchmark(Xtr, few, Xte, Yte, [1.0], n_jobs=1)
    none = Yte.copy()
    none[:, 1] = np.where(none[:, 1] == 1, -1, none[:, 1])
    with pytest.raises(SelfSupError, match="class 1 has no positive"):
        svm_benchmark(Xtr, Ytr, Xte, none, [1.0], n_jobs=1)
    with pytest.raises(SelfSupError, match="1 \\(present\\), 0 \\(absent\\) or -1"):
        svm_benchmark(Xtr, Ytr * 2, Xte, Yte, [1.0], n_jobs=1)
    with pytest.raises(SelfSupError, match="dimensions"):
        svm_benchmark(Xtr, Ytr, Xte[:, :10], Yte, [1.0], n_jobs=1)
    with pytest.raises(SelfSupError, match="solver"):
        svm_benchmark(Xtr, Ytr, Xte, Yte, [1.0], solver="libsvm")


# ----------------------------------------------------------------------------- torch solver

def test_torch_solver_matches_liblinear_objective_and_map():
    Xtr, Ytr, Xte, Yte = data(n_train=200, dims=300, seed=5)
    X = normalize_features(Xtr.astype(np.float64))
    costs = np.array([1e-4, 0.05, 1.0, 100.0])
    labels = np.stack([sk_labels(Ytr[:, c]) for c in range(3)])
    Kd = torch.from_numpy(X @ X.T)
    beta, b, steps, conv = svm._torch_fit(Kd, np.arange(len(X)), labels, np.tile(costs, (3, 1)))
    assert conv.all()
    for c in range(3):
        for j, C in enumerate(costs):
            coef = beta[c, j].numpy() @ X
            ours = squared_hinge_objective(X, labels[c], coef, b[c, j].item(), C)
            ref = svc(C).fit(X, labels[c])
            theirs = squared_hinge_objective(X, labels[c], ref.coef_[0], ref.intercept_[0], C)
            # ours is the exact minimiser: never above liblinear's (stopped at tol 1e-4), and
            # liblinear's is within 1e-5 of it (measured: at most 5e-7)
            assert ours <= theirs * (1 + 1e-12)
            assert (theirs - ours) / theirs < 1e-5
    res_t = svm_benchmark(Xtr, Ytr, Xte, Yte, costs.tolist(), solver="torch", device="cpu")
    res_s = svm_benchmark(Xtr, Ytr, Xte, Yte, costs.tolist(), n_jobs=1)
    assert abs(res_t["map"] - res_s["map"]) < 0.005
    assert res_t["timings"]["not_converged"] == 0


# ----------------------------------------------------------------------------- low-shot

def test_lowshot_samples_voc():
    _, Ytr, _, _ = data(n_train=400)
    a = lowshot_samples(Ytr, 2, num_samples=3, seed=7)
    assert a.shape == (3, 400, 3) and a.dtype == np.int8
    for s in range(3):
        for c in range(3):
            col = a[s, :, c]
            assert (col == 1).sum() == 2 and (col == 0).sum() == 38
            assert (Ytr[col == 1, c] == 1).all() and (Ytr[col == 0, c] == 0).all()   # never a difficult image
    assert (lowshot_samples(Ytr, 2, num_samples=3, seed=7) == a).all()
    assert not (a[0] == a[1]).all() and not (lowshot_samples(Ytr, 2, 3, seed=8) == a).all()
    assert (lowshot_samples(Ytr, 1, 2, negatives_per_positive=5)[0] == 0).sum(0).tolist() == [5, 5, 5]
    with pytest.raises(SelfSupError, match="k=30 needs 30 positive and 570 negative"):
        lowshot_samples(Ytr, 30)


def test_lowshot_samples_places():
    labels = np.repeat(np.arange(4), [5, 7, 9, 6])
    Y = np.eye(4, dtype=np.int64)[labels]
    idx = lowshot_samples_per_class(Y, 3, num_samples=4, seed=1)
    assert idx.shape == (4, 12)
    for s in range(4):
        assert len(set(idx[s].tolist())) == 12
        assert labels[idx[s]].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert (lowshot_samples_per_class(labels, 3, 4, seed=1) == idx).all()
    assert not (idx[0] == idx[1]).all()
    with pytest.raises(SelfSupError, match="smallest class"):
        lowshot_samples_per_class(Y, 6)


def test_lowshot_benchmark_voc_against_sklearn():
    Xtr, Ytr, Xte, Yte = data(n_train=300, seed=6)
    costs, ks = [0.01, 1.0], (1, 3)
    res = lowshot_benchmark(Xtr, Ytr, Xte, Yte, ks=ks, num_samples=2, costs=costs, n_jobs=1, seed=3)
    assert "test set" in res["cost_selection"]
    X, Xt = normalize_features(Xtr.astype(np.float64)), normalize_features(Xte.astype(np.float64))
    for k in ks:
        T = lowshot_samples(Ytr, k, 2, seed=3)
        maps = np.zeros((2, len(costs)))
        for s in range(2):
            for j, C in enumerate(costs):
                aps = []
                for c in range(3):
                    keep = T[s, :, c] != -1
                    dec = svc(C).fit(X[keep], sk_labels(T[s, keep, c])).decision_function(Xt)
                    aps.append(ap_fssb(dec, Yte[:, c]))
                maps[s, j] = np.mean(aps)
        j = int(np.argmax(maps.mean(0)))
        got = res["ks"][str(k)]
        assert got["cost"] == costs[j]
        assert got["mean"] == pytest.approx(maps[:, j].mean(), abs=1e-9)
        assert got["std"] == pytest.approx(maps[:, j].std(), abs=1e-9)
        assert (got["min"], got["max"]) == pytest.approx((maps[:, j].min(), maps[:, j].max()), abs=1e-9)
        np.testing.assert_allclose(got["map_by_cost"], maps.mean(0), atol=1e-9)


def test_lowshot_benchmark_places_top1_and_skip():
    rng = np.random.default_rng(0)
    labels, labels_te = rng.integers(0, 3, 90), rng.integers(0, 3, 60)
    protos = rng.standard_normal((3, 50)) * 0.3
    Xtr = protos[labels] + rng.standard_normal((90, 50))
    Xte = protos[labels_te] + rng.standard_normal((60, 50))
    Y, Yte = np.eye(3, dtype=np.int64)[labels], np.eye(3, dtype=np.int64)[labels_te]
    costs = [0.01, 1.0]
    res = lowshot_benchmark(Xtr, Y, Xte, Yte, ks=(4, 1000), num_samples=2, costs=costs, style="places", n_jobs=1)
    assert list(res["ks"]) == ["4"] and res["skipped"][0]["k"] == 1000 and "smallest class" in res["skipped"][0]["note"]
    got = res["ks"]["4"]
    X, Xt = normalize_features(Xtr), normalize_features(Xte)
    idx = lowshot_samples_per_class(Y, 4, 2, seed=0)
    top1, maps = np.zeros((2, 2)), np.zeros((2, 2))
    for s in range(2):
        for j, C in enumerate(costs):
            dec = np.stack([svc(C).fit(X[idx[s]], np.where(labels[idx[s]] == c, 1, -1)).decision_function(Xt)
                            for c in range(3)], 1)
            top1[s, j] = (dec.argmax(1) == labels_te).mean()
            maps[s, j] = np.mean([ap_fssb(dec[:, c], Yte[:, c]) for c in range(3)])   # one-vs-rest, all images
    assert not np.allclose(top1[:, 0], top1[:, 1])                 # the two costs are told apart
    j = int(np.argmax(maps.mean(0)))
    assert got["cost"] == costs[j] and got["mean"] == pytest.approx(maps[:, j].mean(), abs=1e-9)
    assert got["top1"]["per_sample"] == pytest.approx(top1[:, j].tolist(), abs=1e-12)
    jt = int(np.argmax(top1.mean(0)))
    assert got["top1_best"]["cost"] == costs[jt] and got["top1_best"]["mean"] == pytest.approx(top1[:, jt].mean())
