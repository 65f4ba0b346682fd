import math

import torch
import torch.nn.functional as F

from selfsup.eval import knn_predict, knn_scores, linear_probe, pool_features, topk_accuracy


def knn_slow(train, ytr, test, k, t, c):
    train = F.normalize(train, dim=1)
    test = F.normalize(test, dim=1)
    out = torch.zeros(len(test), c)
    for i, q in enumerate(test):
        sims = [(float(q @ x), j) for j, x in enumerate(train)]
        sims.sort(reverse=True)
        for s, j in sims[:k]:
            out[i, ytr[j]] += math.exp(s / t)
    return out


def test_knn_matches_direct_definition():
    torch.manual_seed(0)
    train, ytr, test = torch.randn(60, 8), torch.randint(0, 4, (60,)), torch.randn(10, 8)
    fast = knn_scores(train, ytr, test, k=5, temperature=0.5, num_classes=4, chunk=3)
    assert torch.allclose(fast, knn_slow(train, ytr, test, 5, 0.5, 4), rtol=1e-4)
    assert torch.equal(knn_predict(train, ytr, test, k=5, temperature=0.5), fast.argmax(1))


def test_knn_separable_clusters_are_perfect():
    torch.manual_seed(0)
    centers = torch.randn(3, 16) * 5
    y = torch.randint(0, 3, (300,))
    x = centers[y] + 0.1 * torch.randn(300, 16)
    pred = knn_predict(x[:200], y[:200], x[200:])
    assert (pred == y[200:]).float().mean() == 1.0


def test_linear_probe_learns_linearly_separable_labels():
    torch.manual_seed(0)
    x = torch.randn(2000, 20)
    w = torch.randn(20, 4)
    y = (x @ w).argmax(1)
    res = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], epochs=30)
    assert res["top1"] > 0.9
    chance = linear_probe(x[:1500], torch.randint(0, 4, (1500,)), x[1500:], y[1500:], epochs=5)
    assert chance["top1"] < 0.6


def test_topk_and_pooling():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    acc = topk_accuracy(scores, torch.tensor([1, 2]), ks=(1, 2))
    assert acc == {"top1": 0.5, "top2": 0.5}
    fmap = torch.randn(2, 256, 8, 8)
    assert pool_features(fmap, "avg").shape == (2, 256)
    assert pool_features(fmap, "9k").shape == (2, 256 * 36)
    assert pool_features(torch.randn(2, 2048, 7, 7), "9k").shape == (2, 2048 * 4)
