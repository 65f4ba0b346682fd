"""Layer-wise linear probes (Goyal et al. 2019's Places205 protocol, METHODS.md 6.2): a head
per tap (Goyal pooling -> BatchNorm without affine -> Linear N(0, 0.01)), trained together
with SGD Nesterov, lr 0.01, x0.1 at 2/7, 4/7 and 6/7 of the epochs."""
import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from selfsup.data.datasets import load_dataset
from selfsup.errors import SelfSupError
from selfsup.eval.layerwise import (GOYAL, _scores, fit_heads, format_layerwise, goyal_optimizer,
                                    layerwise_linear_probe, make_head, make_heads)
from selfsup.eval.linear import PRESETS, augmented_linear_probe, get_preset, milestones, preset_lr
from selfsup.models.backbones import build_backbone

TAPS = ("conv1", "conv2", "conv3", "conv4")


def random_features(n=40, dims=None, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = dims or {"a": 12, "b": 20}
    labels = torch.arange(n) % classes
    feats = {t: torch.randn(n, d, generator=g) + labels[:, None].float() for t, d in dims.items()}
    return feats, labels


def test_goyal_preset_and_its_schedule():
    goyal = get_preset("goyal")
    assert goyal is PRESETS["goyal"] is GOYAL
    assert (goyal.epochs, goyal.lr, goyal.weight_decay, goyal.batch_size, goyal.nesterov, goyal.pool) == \
        (14, 0.01, 1e-4, 256, True, "goyal")
    assert milestones(goyal, 14) == (4, 8, 12) and milestones(goyal, 7) == (2, 4, 6)
    assert milestones(goyal, 140) == (40, 80, 120)             # fssb's 40k / 80k / 120k of 140k
    assert [preset_lr(goyal, 0.01, 7, e) for e in range(7)] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rel=1e-9)
    assert [preset_lr(goyal, 0.01, 14, e) for e in range(14)] == pytest.approx(
        [1e-2] * 4 + [1e-3] * 4 + [1e-4] * 4 + [1e-5] * 2, rel=1e-9)
    # the schedule fit_heads actually applies, and an overridden lr keeps the steps
    feats, labels = random_features()
    history = []
    fit_heads(make_heads({"a": 12}, 3, torch.Generator().manual_seed(0)), lambda i: {"a": feats["a"][i]}, labels,
              7, 0.5, torch.Generator().manual_seed(0), history=history)
    assert [h["lr"] for h in history] == pytest.approx([0.5, 0.5, 0.05, 0.05, 5e-3, 5e-3, 5e-4], rel=1e-9)
    opt = goyal_optimizer(make_head(4, 2, torch.Generator()), 0.01)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4


def test_fit_heads_is_nesterov_sgd_with_weight_decay():
    """Two steps of fit_heads equal Nesterov SGD written out by hand."""
    feats, labels = random_features(n=10)
    head = make_head(12, 3, torch.Generator().manual_seed(0))
    ref = copy.deepcopy(head)
    lr, wd, m = 0.3, GOYAL.weight_decay, 0.9
    fit_heads(torch.nn.ModuleDict({"a": head}), lambda i: {"a": feats["a"][i]}, labels, 2, lr,
              torch.Generator().manual_seed(1))
    g, bufs = torch.Generator().manual_seed(1), None
    params = list(ref.parameters())
    for epoch in range(2):
        idx = torch.randperm(10, generator=g)
        grads = torch.autograd.grad(F.cross_entropy(ref(feats["a"][idx]), labels[idx]), params)
        d = [gr + wd * p for gr, p in zip(grads, params)]
        bufs = d if bufs is None else [m * b + di for b, di in zip(bufs, d)]
        with torch.no_grad():
            for p, di, b in zip(params, d, bufs):
                p -= preset_lr(GOYAL, lr, 2, epoch) * (di + m * b)             # Nesterov: d + m * buf
    for p, q in zip(head.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-7)


def test_heads_trained_together_equal_each_trained_alone():
    feats, labels = random_features()
    preset = replace(GOYAL, batch_size=16)                      # 3 steps per epoch, the last of 8
    heads = make_heads({"a": 12, "b": 20}, 3, torch.Generator().manual_seed(0))
    alone = copy.deepcopy(heads)
    together = fit_heads(heads, lambda i: {t: feats[t][i] for t in feats}, labels, 3, 0.1,
                         torch.Generator().manual_seed(5), preset)
    for tap in ("a", "b"):
        single = torch.nn.ModuleDict({tap: alone[tap]})
        loss = fit_heads(single, lambda i: {tap: feats[tap][i]}, labels, 3, 0.1, torch.Generator().manual_seed(5),
                         preset)
        assert loss[tap] == pytest.approx(together[tap], rel=1e-6)
        for (name, x), (_, y) in zip(heads[tap].state_dict().items(), alone[tap].state_dict().items()):
            assert torch.allclose(x.float(), y.float(), rtol=0, atol=1e-7), name     # weights and BN statistics
        assert not torch.equal(heads[tap][1].weight, make_heads({"a": 12, "b": 20}, 3,
                                                              torch.Generator().manual_seed(0))[tap][1].weight)


def test_head_is_batchnorm_without_affine_then_linear_normal_001():
    head = make_head(500, 10, torch.Generator().manual_seed(0))
    bn, fc = head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and list(bn.parameters()) == []
    assert isinstance(fc, torch.nn.Linear) and fc.weight.shape == (10, 500)
    assert [p.shape for p in head.parameters()] == [fc.weight.shape, fc.bias.shape]    # no weight decay on BN
    assert abs(fc.weight.std().item() - 0.01) < 5e-4 and abs(fc.weight.mean().item()) < 5e-4
    assert torch.equal(fc.bias, torch.zeros(10))
    x = torch.randn(64, 500) * 3 + 2
    head.train()
    by_batch = fc((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps))
    assert torch.allclose(head(x), by_batch, atol=1e-5)                  # training: the batch's statistics
    assert torch.allclose(bn.running_mean, 0.1 * x.mean(0), atol=1e-5)
    one = x[:1]                                                          # test: running statistics, any batch
    by_running = fc((one - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))
    assert torch.allclose(_scores(head, one, torch.device("cpu")), by_running, atol=1e-5)
    assert not torch.allclose(_scores(head, x, torch.device("cpu")), by_batch, atol=1e-3)


@pytest.fixture(scope="module")
def data():
    return (load_dataset("synthetic:300?classes=6&size=16"), load_dataset("synthetic:96?classes=6&size=16&seed=1"))


def counting(net):
    calls = []
    forward = net.forward_taps

    def wrapped(x, taps=None):
        calls.append((tuple(taps), x.shape[0]))
        return forward(x, taps)

    net.forward_taps = wrapped
    return calls


def test_cached_variant_makes_one_pass_for_all_taps(data, tmp_path):
    train, test = data
    net = build_backbone("convnet")
    calls = counting(net)
    result = layerwise_linear_probe(net, train, test, TAPS, augment=False, epochs=2, batch_size=512, cache_key="ck")
    assert calls == [(TAPS, 96), (TAPS, 300)]            # test, then train: one forward per batch, every tap
    calls.clear()
    again = layerwise_linear_probe(net, train, test, TAPS, augment=False, epochs=2, batch_size=512, cache_key="ck")
    assert calls == [] and again == result                # all from the cache, and the same numbers


def test_augmented_variant_runs_the_trunk_once_per_batch(data):
    train, test = data
    net = build_backbone("convnet")
    calls = counting(net)
    history = []
    layerwise_linear_probe(net, train, test, TAPS, augment=True, epochs=2, history=history)
    assert calls == [(TAPS, 96)] + [(TAPS, 256), (TAPS, 44)] * 2        # test features, then 2 batches x 2 epochs
    assert len(history) == 2 and set(history[0]["loss"]) == set(TAPS)


@pytest.mark.parametrize("augment", [True, False])
def test_end_to_end_learns_every_tap(data, augment):
    train, test = data
    torch.manual_seed(0)
    net = build_backbone("convnet").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = layerwise_linear_probe(net, train, test, TAPS, augment)          # the preset: 14 epochs, lr 0.01
    assert (result["preset"], result["epochs"], result["lr"], result["augment"]) == ("goyal", 14, 0.01, augment)
    assert result["milestones"] == (4, 8, 12) and result["pool"] == "goyal"
    assert list(result["taps"]) == list(TAPS)
    assert [r["feature_dim"] for r in result["taps"].values()] == [24 * 64, 48 * 16, 96 * 4, 192]
    for tap, r in result["taps"].items():
        assert set(r) == {"top1", "top5", "train_loss", "feature_dim"}
        assert r["top1"] > 0.5, (tap, r)                  # chance: 1/6
        assert r["top5"] >= r["top1"] and r["train_loss"] < 1.5
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training
    table = format_layerwise(result).splitlines()
    assert table[0] == "| layer-wise top-1 (%) | conv1 | conv2 | conv3 | conv4 |" and table[1] == "|---|---|---|---|---|"
    variant = "augmented" if augment else "cached features"
    assert table[2].startswith(f"| goyal, {variant}, 14 epochs, lr 0.01 | {100 * result['taps']['conv1']['top1']:.1f} |")


def test_refusals():
    train = load_dataset("synthetic:8?classes=2&size=16")
    net = build_backbone("convnet")
    with pytest.raises(SelfSupError, match="needs at least one tap"):
        layerwise_linear_probe(net, train, train, [])
    with pytest.raises(SelfSupError, match="unknown tap 'res9' for this backbone"):
        layerwise_linear_probe(net, train, train, ["conv1", "res9"])
    with pytest.raises(SelfSupError, match="--probe-epochs must be at least 1, got 0"):
        layerwise_linear_probe(net, train, train, TAPS, epochs=0)
    for lr in (0.0, -1.0):
        with pytest.raises(SelfSupError, match="--lr must be a positive number"):
            layerwise_linear_probe(net, train, train, TAPS, lr=lr)
    with pytest.raises(SelfSupError, match="preset goyal trains one head per tap"):
        augmented_linear_probe(net, train, train, "goyal")
    with pytest.raises(SelfSupError, match="unknown linear preset 'nope': use --preset fast, moco or swav"):
        get_preset("nope")
