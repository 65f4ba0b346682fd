"""Colorization (Zhang et al. 2016): Lab, the 313 bins, soft encoding, rebalancing, the loss and the
annealed mean against slow transcriptions of their equations; the grayscale mask; the L-only
backbone; pretraining, kNN evaluation and `selfsup viz colorize` through the command line."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY, tiny_overrides
from selfsup.cli import main
from selfsup.data.color import (ab_bins, ab_prior, annealed_mean, colorful, lab_to_rgb, rebalance_weights, rgb_to_lab,
                                soft_encode)
from selfsup.data.loader import Batch
from selfsup.data.views import normalize
from selfsup.losses import colorization
from selfsup.methods import build_method
from selfsup.models.backbones import LChannel

# ---------------------------------------------------------------- slow transcriptions, loops and scalars


def soft_encode_slow(ab, k, sigma):
    """§2.1 pixel by pixel: sort the distances to the 313 bins, Gaussian weights on the k nearest, normalise."""
    bins = ab_bins().double().tolist()
    b, _, h, w = ab.shape
    z = torch.zeros(b, len(bins), h, w, dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                a, bb = float(ab[i, 0, y, x]), float(ab[i, 1, y, x])
                d = sorted((math.hypot(a - ca, bb - cb), q) for q, (ca, cb) in enumerate(bins))[:k]
                g = [math.exp(-dist ** 2 / (2 * sigma ** 2)) for dist, _ in d]
                for (_, q), gq in zip(d, g):
                    z[i, q, y, x] = gq / sum(g)
    return z


def rebalance_slow(p, lam):
    """Eq. 4 bin by bin: w_q = 1 / ((1 - lam) p_q + lam / Q), then divided by sum_q p_q w_q."""
    q = len(p)
    w = [1.0 / ((1 - lam) * float(pq) + lam / q) for pq in p]
    expectation = sum(float(pq) * wq for pq, wq in zip(p, w))
    return [wq / expectation for wq in w]


def colorization_slow(logits, z, v):
    """Eq. 2 as loops: -1/(BHW) sum_{b,h,w} v sum_q Z log softmax(logits)."""
    b, q, h, w = logits.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                scores = [float(logits[i, c, y, x]) for c in range(q)]
                m = max(scores)
                log_norm = m + math.log(sum(math.exp(s - m) for s in scores))
                total += float(v[i, y, x]) * sum(float(z[i, c, y, x]) * (scores[c] - log_norm) for c in range(q))
    return -total / (b * h * w)


# ---------------------------------------------------------------- colour space, bins, encoding, weights


@pytest.mark.parametrize("k", [2, 5, 10, 20, 313])
def test_soft_encoding_is_a_gaussian_over_the_k_nearest_bins(k):
    torch.manual_seed(k)
    ab = torch.rand(2, 2, 3, 3) * 200 - 100
    z = soft_encode(ab, k=k, sigma=5.0)
    assert z.shape == (2, 313, 3, 3)
    assert torch.allclose(z.sum(1), torch.ones(2, 3, 3), atol=1e-5)
    support = (z > 0).sum(1)
    assert (support <= k).all()
    if k <= 20:                     # beyond, the far bins' Gaussian weights underflow float32 to exactly 0
        assert (support == k).all()
    assert torch.allclose(z.double(), soft_encode_slow(ab, k, 5.0), atol=2e-5)          # float32 distances
    flat = soft_encode(ab.movedim(1, -1).reshape(-1, 2), k=k)          # the N x 2 form agrees
    assert torch.allclose(flat, z.movedim(1, -1).reshape(-1, 313))


def test_lab_matches_kornia_known_values_and_round_trips():
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(0)
    rgb = torch.rand(4, 3, 8, 8)
    lab = rgb_to_lab(rgb)
    assert torch.allclose(lab, kornia.color.rgb_to_lab(rgb), atol=1e-3)
    assert torch.allclose(lab_to_rgb(lab), rgb, atol=1e-4)
    known = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20]])
    assert torch.allclose(rgb_to_lab(known)[:, :, 0, 0], expected, atol=0.02)


def test_bins_and_prior():
    bins, prior = ab_bins(), ab_prior()
    assert bins.shape == (313, 2) and bins.dtype == torch.float32
    assert torch.equal(bins % 10, torch.zeros_like(bins)) and len(set(map(tuple, bins.tolist()))) == 313
    assert bins[120].tolist() == [0.0, 0.0]
    assert prior.shape == (313,) and (prior >= 0).all() and math.isclose(float(prior.sum()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.9])
def test_rebalancing_weights_equal_eq4(lam):
    p = ab_prior()
    w = rebalance_weights(p, lam)
    assert math.isclose(float((p.double() * w.double()).sum()), 1.0, rel_tol=1e-5)          # E_p[w] = 1
    assert torch.allclose(w.double(), torch.tensor(rebalance_slow(p, lam), dtype=torch.float64), rtol=1e-4)
    order = torch.argsort(p)                                                                 # rarest first
    assert (w[order][:-1] >= w[order][1:]).all() and w[order[0]] > w[order[-1]]             # rarer: heavier
    assert torch.allclose(rebalance_weights(lam=lam), w)                                     # default: Zhang's prior


def test_lambda_one_gives_uniform_weights():
    assert torch.allclose(rebalance_weights(lam=1.0), torch.ones(313))


# ---------------------------------------------------------------- the loss and the decoding


def test_loss_equals_eq2():
    torch.manual_seed(0)
    logits = torch.randn(2, 313, 2, 3) * 3
    z = soft_encode(torch.rand(2, 2, 2, 3) * 160 - 80, k=10)
    v = torch.rand(2, 2, 3) * 2
    assert math.isclose(float(colorization(logits, z, v)), colorization_slow(logits, z, v), rel_tol=1e-5)
    # a one-hot target with unit weights is the plain cross-entropy
    labels = torch.randint(0, 313, (2, 2, 3))
    onehot = torch.nn.functional.one_hot(labels, 313).permute(0, 3, 1, 2).float()
    assert torch.allclose(colorization(logits, onehot, torch.ones(2, 2, 3)),
                          torch.nn.functional.cross_entropy(logits, labels))


def test_annealed_mean_interpolates_mean_and_mode():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 313, 3, 3) * 2, dim=1)
    bins = ab_bins()
    mean = torch.einsum("bqhw,qc->bchw", probs, bins)
    assert torch.allclose(annealed_mean(probs, temperature=1.0), mean, atol=1e-3)
    mode = bins[probs.argmax(1)].permute(0, 3, 1, 2)
    assert torch.allclose(annealed_mean(probs, temperature=0.01), mode, atol=0.5)
    cold = annealed_mean(probs, temperature=0.38)                                        # in between
    assert ((cold - mode).abs().mean() < (mean - mode).abs().mean())


# ---------------------------------------------------------------- the method


def gray_and_colour_views(size=16):
    torch.manual_seed(0)
    gray = torch.rand(1, 1, size, size).expand(1, 3, size, size)
    colour = torch.rand(1, 3, size, size)
    return normalize(torch.cat([gray, colour]))


def test_grayscale_images_weigh_nothing():
    method = build_method("colorization", backbone="resnet18", image_size=16, cifar_stem=True).eval()
    x = gray_and_colour_views()
    logits = method.logits(x)
    assert logits.shape == (2, 313, 4, 4)                                                # res5 at stride 1
    z, v, mask = method.targets(x, logits.shape[-2:])
    assert mask.tolist() == [False, True]
    assert torch.equal(v[0], torch.zeros_like(v[0])) and (v[1] > 0).all()
    assert torch.allclose(v[1], method.class_weights[z[1].argmax(0)])                   # eq. 3: w of the dominant bin
    assert torch.equal(colorful(rgb_to_lab(torch.rand(1, 1, 4, 4).expand(1, 3, 4, 4))[:, 1:]), torch.tensor([False]))
    # no gradient from the gray image, at the logits and through the whole method (eval mode: no BN coupling)
    leaf = logits.detach().requires_grad_()
    colorization(leaf, z, v).backward()
    assert torch.equal(leaf.grad[0], torch.zeros_like(leaf.grad[0])) and leaf.grad[1].abs().sum() > 0
    both = method(Batch([x], torch.zeros(2), torch.arange(2)))
    alone = method(Batch([x[1:]], torch.zeros(1), torch.arange(1)))
    assert torch.allclose(both["loss"] * 2, alone["loss"], rtol=1e-5)
    method.zero_grad()
    gray_only = method(Batch([x[:1]], torch.zeros(1), torch.arange(1)))
    gray_only["loss"].backward()
    assert float(gray_only["loss"].detach()) == 0.0 and float(gray_only["colorful"]) == 0.0
    assert all(p.grad is None or torch.equal(p.grad, torch.zeros_like(p.grad)) for p in method.parameters())


def test_rebalance_off_and_k_bounds():
    method = build_method("colorization", backbone="convnet", image_size=16, rebalance=False, k=313).eval()
    x = gray_and_colour_views()
    z, v, _ = method.targets(x, (2, 2))
    assert torch.equal(v, torch.tensor([0.0, 1.0]).view(2, 1, 1).expand(2, 2, 2))
    from selfsup.errors import SelfSupError
    with pytest.raises(SelfSupError, match="colorization.k=314"):
        build_method("colorization", backbone="convnet", k=314)


def test_backbone_is_l_only_with_res5_at_stride_one_and_buffers_follow_the_module():
    from selfsup.methods.colorization import Colorization

    cfg = Colorization.Config()
    assert Colorization.backbone_options(cfg, "resnet50") == {"input": "L", "last_stride": 1}
    assert Colorization.backbone_options(cfg, "convnet") == {"input": "L"}
    method = build_method("colorization", backbone="resnet18", image_size=64)
    assert isinstance(method.backbone, LChannel) and method.backbone.net.conv1.weight.shape[1] == 1
    assert method.backbone.net.layer4[0].conv1.stride == (1, 1)
    maps = method.backbone.forward_taps(normalize(torch.rand(1, 3, 64, 64)), ("res4", "res5"))
    assert maps["res5"].shape[-1] == maps["res4"].shape[-1] == 4
    state = method.state_dict()
    assert "bins" not in state and "class_weights" not in state and "head.weight" in state
    assert {n for n, _ in method.named_buffers()} >= {"bins", "class_weights"}
    method = method.to(torch.float64)
    assert method.bins.dtype == torch.float64                                           # buffers move with .to()


def test_views_keep_the_colours():
    method = build_method("colorization", backbone="convnet", image_size=16)
    images = (torch.rand(4, 3, 24, 24) * 255).to(torch.uint8)
    (view,) = method.view_maker()(images, torch.Generator().manual_seed(0))
    assert view.shape == (4, 3, 16, 16)
    spec = method.view_maker().specs[0]
    assert spec.jitter_prob == spec.gray_prob == spec.blur_prob == spec.solarize_prob == 0 and spec.scale == (0.25, 1.0)


# ---------------------------------------------------------------- end to end through the command line


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_pretrain_eval_knn_and_viz_colorize(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "pretrain", "colorization",
                       *tiny_overrides(out, epochs=1, backbone="resnet18", cifar_stem="true", image_size=8))
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) and 0 <= r["bin_acc"] <= 1 and r["colorful"] == 1.0 for r in steps)

    from selfsup.checkpoint import load_backbone, load_checkpoint
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["backbone_options"] == {"input": "L", "last_stride": 1}
    backbone = load_backbone(out / "last.pt", ckpt)
    assert isinstance(backbone, LChannel) and backbone.net.conv1.weight.shape[1] == 1
    assert backbone.net.layer4[0].conv1.stride == (1, 1)

    code, stdout, err = run(capsys, "eval", "knn", "--checkpoint", out / "last.pt", "--train-data", TINY,
                            "--test-data", TINY + "&seed=1", "--json", "--no-cache")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert 0 <= result["top1"] <= 1 and result["feature_dim"] == 256 and result["tap"] == "res4"   # its evaluation tap

    png = tmp_path / "colorize.png"
    code, stdout, err = run(capsys, "viz", "colorize", "--checkpoint", out / "last.pt", "--data", TINY,
                            "--out", png, "--index", 2, "--max-images", 4)
    assert code == 0, err
    assert png.stat().st_size > 1000 and "wrote" in stdout and "images 2 to 5" in stdout

    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    code, _, err = run(capsys, "viz", "colorize", "--checkpoint", tmp_path / "tv.pt", "--data", TINY, "--out", png)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not pretrained with colorization" in lines[0]


def test_colorize_keeps_the_lightness_of_the_input():
    method = build_method("colorization", backbone="convnet", image_size=16).eval()
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16)
    out = method.colorize(normalize(rgb))
    assert out.shape == rgb.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    ab = method.predict_ab(normalize(rgb))
    assert ab.shape == (2, 2, 16, 16)
    expected = lab_to_rgb(torch.cat([rgb_to_lab(rgb)[:, :1], ab], dim=1))
    assert torch.allclose(out, expected, atol=1e-4)
    assert np.isfinite(out.numpy()).all()
