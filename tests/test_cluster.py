"""k-means (faiss and torch, Euclidean and spherical), assignment, the cluster metrics, eval cluster."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from conftest import one_line_error, run, tiny_overrides
from selfsup.cluster.metrics import cluster_scores, hungarian_accuracy
from selfsup.config import resolve_config
from selfsup.errors import SelfSupError
from selfsup.engine.trainer import Trainer
from selfsup.kmeans import assign, kmeans, pca_whiten
from selfsup.methods import get_method


def blobs(n_per=50, k=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    x = centres.repeat_interleave(n_per, 0) + torch.randn(k * n_per, d, generator=g)
    return x, torch.arange(k).repeat_interleave(n_per)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_recovers_separable_blobs(backend, spherical):
    x, y = blobs()
    if spherical:
        x = F.normalize(x, dim=1)
    for seed in range(3):
        _, labels = kmeans(x, 5, 20, spherical, seed=seed, backend=backend, init="k-means++")
        assert adjusted_rand_score(y, labels) == pytest.approx(1.0)


def test_assign_equals_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1000, 8, generator=g, dtype=torch.float64), torch.randn(7, 8, generator=g, dtype=torch.float64)
    brute = torch.cdist(x, c).argmin(1)
    assert torch.equal(assign(x, c, chunk=64), brute)
    xs, cs = F.normalize(x, dim=1), F.normalize(c, dim=1)
    assert torch.equal(assign(xs, cs, spherical=True, chunk=100), (xs @ cs.T).argmax(1))


def test_lloyd_step_is_the_mean_of_the_assigned_rows():
    """One torch iteration from known seeds: each centroid becomes the mean of its rows."""
    x, _ = blobs(n_per=10, k=3, d=4)
    g = torch.Generator().manual_seed(3)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:3]
    first = assign(x, x[pick])
    centroids, _ = kmeans(x, 3, 1, backend="torch", generator=g)
    expected = torch.stack([x[first == j].mean(0) for j in range(3)])
    assert torch.allclose(centroids, expected, atol=1e-6)


def test_metrics_and_pca_whitening():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert hungarian_accuracy(y, np.array([5, 5, 3, 3, 9, 9])) == 1.0       # a relabelling is perfect
    assert hungarian_accuracy(y, np.array([0, 0, 0, 0, 0, 0])) == pytest.approx(2 / 6)
    s = cluster_scores(y, np.array([1, 1, 0, 0, 2, 2]))
    assert s["nmi"] == pytest.approx(1.0) and s["ari"] == pytest.approx(1.0)
    x = torch.randn(500, 6) @ torch.diag(torch.tensor([5.0, 3, 1, 0.5, 0.2, 0.1]))
    w = pca_whiten(x, 3)
    assert w.shape == (500, 3) and torch.allclose(w.norm(dim=1), torch.ones(500), atol=1e-5)


def test_eval_cluster_command(tmp_path, capsys):
    data = "synthetic:64?classes=4&size=16"
    Trainer(resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "run", epochs=0, data=data))).fit()
    code, out, err = run(capsys, "eval", "cluster", "--checkpoint", tmp_path / "run" / "last.pt", "--test-data", data,
                         "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["clusters"] == 4 and r["tap"] == "conv4" and 0 <= r["accuracy"] <= 1 and -1 <= r["ari"] <= 1
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "run" / "last.pt", "--test-data", data)
    assert code == 2 and "needs --train-data" in err
    # --pca beyond N - 1 = 63 (192-dim features): refused, where it reported "pca": 100 and clustered on 64
    # dimensions, one of them the whitened null direction of the centred features
    code, _, err = run(capsys, "eval", "cluster", "--checkpoint", tmp_path / "run" / "last.pt", "--test-data", data,
                       "--pca", 100, "--json")
    assert one_line_error(code, err, "--pca 100 exceeds min(N - 1, feature dimension) = min(63, 192) = 63"), err
    assert "use --pca 62 or less" in err
    code, out, err = run(capsys, "eval", "cluster", "--checkpoint", tmp_path / "run" / "last.pt", "--test-data", data,
                         "--pca", 20, "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["pca"] == r["feature_dim"] == 20


def test_pca_whitening_refuses_null_directions():
    """Whitening scales every kept direction to unit variance: a direction the centred rows do not span
    (beyond N - 1, or of numerically zero variance: duplicates, constant features) would be rounding noise
    weighted like a real one, and the dimension reported would not be the one used."""
    x = torch.randn(100, 192, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SelfSupError, match=r"--pca 150 exceeds min\(N - 1, feature dimension\) = min\(99, 192\) = 99"):
        pca_whiten(x, 150)                      # gave 100 columns, one of them noise (singular value ~1e-14)
    with pytest.raises(SelfSupError, match=r"min\(99, 192\) = 99 .*use --pca 98 or less"):
        pca_whiten(x, 100)
    with pytest.raises(SelfSupError, match="regular simplex"):
        pca_whiten(x, 99)                       # all N - 1 directions whitened: every pair equally far apart
    w = pca_whiten(x, 99 - 1).double()
    assert w.shape == (100, 98)
    with pytest.raises(SelfSupError, match=r"min\(499, 6\) = 6"):
        pca_whiten(torch.randn(500, 6), 7)
    # duplicates: 10 distinct rows twice over span 9 directions, not 19
    dup = torch.randn(10, 32, generator=torch.Generator().manual_seed(1)).repeat(2, 1)
    with pytest.raises(SelfSupError, match="--pca 12 exceeds the 9 directions .* use --pca 9 or less"):
        pca_whiten(dup, 12)
    assert pca_whiten(dup, 9).shape == (20, 9)
    # constant features: 8 varying columns and 4 constant ones span 8 directions
    const = torch.cat([torch.randn(50, 8), torch.full((50, 4), 3.0)], 1)
    with pytest.raises(SelfSupError, match="--pca 10 exceeds the 8 directions"):
        pca_whiten(const, 10)
    with pytest.raises(SelfSupError, match="all the same"):
        pca_whiten(torch.ones(5, 4), 2)
def test_auto_backend_without_faiss(monkeypatch):
    """faiss is an optional extra: without it ``auto`` runs the torch backend and ``faiss`` names the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    x = torch.cat([torch.randn(50, 4) * 0.1 + c for c in (torch.full((4,), -5.0), torch.full((4,), 5.0))])
    centroids, labels = kmeans(x, 2, iterations=10, seed=0, backend="auto")
    assert centroids.shape == (2, 4) and len(set(labels[:50].tolist())) == 1 != len(set(labels.tolist()))
    with pytest.raises(SelfSupError, match=r"selfsup\[faiss\]"):
        kmeans(x, 2, backend="faiss")
