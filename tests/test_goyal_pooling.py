"""Goyal et al. 2019's average pooling of the taps (METHODS.md 6.1, 6.2), its scaling rule for
other sizes and backbones, and the L2 step of their SVM, against literal transcriptions."""
import json
import math
import random

import pytest
import torch

from conftest import TINY
from selfsup.cli import main
from selfsup.errors import SelfSupError
from selfsup.eval.features import GOYAL_WINDOWS, goyal_grid, goyal_pool, goyal_window, l2_normalize_goyal, pool_features
from selfsup.models import build_backbone

# METHODS.md 6.1 and fssb's resnet_jigsaw_finetune_linear.py: ResNet-50 at 224 px
GOYAL = {"conv1": ((64, 112), (10, 10, 4), 9216), "pool1": ((64, 56), (5, 5, 2), 9216),
         "res2": ((256, 56), (16, 8, 0), 9216), "res3": ((512, 28), (13, 5, 0), 8192),
         "res4": ((1024, 14), (8, 3, 0), 9216), "res5": ((2048, 7), (6, 1, 0), 8192),
         "pool5": ((2048, 1), (1, 1, 0), 2048)}


def avg_pool_slow(fmap, kernel, stride, pad):
    """Average pooling written out: every window of the zero-padded map, sum over k x k / k^2."""
    b, c, h, w = fmap.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = torch.zeros(b, c, out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        for j in range(out_w):
            total = torch.zeros(b, c, dtype=torch.float64)
            for y in range(i * sh - ph, i * sh - ph + kh):
                for x in range(j * sw - pw, j * sw - pw + kw):
                    if 0 <= y < h and 0 <= x < w:
                        total += fmap[:, :, y, x].double()
            out[:, :, i, j] = total / (kh * kw)
    return out.flatten(1)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return build_backbone("resnet50").eval()


def maps_at(net, size):
    with torch.no_grad():
        return net.forward_taps(torch.randn(1, 3, size, size))


def test_resnet50_at_224_gets_goyal_windows_and_dims(resnet50):
    maps = maps_at(resnet50, 224)
    assert list(maps) == list(GOYAL)
    for tap, ((c, side), window, dims) in GOYAL.items():
        fmap = maps[tap]
        assert fmap.shape[1:] == (c, side, side), tap
        assert goyal_window(side, goyal_grid(c, side)) == window, tap
        assert pool_features(fmap, "goyal").shape == (1, dims), tap
    # conv1 12 x 12 x 64, pool1 12 x 12 x 64, res2 6 x 6 x 256, res3 4 x 4 x 512, res4 3 x 3 x 1024, res5 2 x 2 x 2048
    assert [goyal_grid(c, side) for (c, side), _, _ in GOYAL.values()] == [12, 12, 6, 4, 3, 2, 1]


@pytest.mark.parametrize("grid", sorted(GOYAL_WINDOWS))
def test_goyal_pool_equals_literal_average_pooling_at_goyals_geometry(grid):
    side, k, s, p = GOYAL_WINDOWS[grid]
    torch.manual_seed(grid)
    fmap = torch.randn(2, 3, side, side)
    fast = goyal_pool(fmap, target_dims=3 * grid * grid)             # 3 channels, Goyal's grid for this map
    assert torch.allclose(fast.double(), avg_pool_slow(fmap, (k, k), (s, s), (p, p)), atol=1e-5)


@pytest.mark.parametrize("c, h, w", [(64, 16, 16), (256, 9, 14), (8, 30, 21), (2048, 4, 4)])
def test_goyal_pool_equals_literal_average_pooling_of_scaled_windows(c, h, w):
    torch.manual_seed(0)
    fmap = torch.randn(1, c, h, w)
    (kh, sh, ph), (kw, sw, pw) = (goyal_window(n, goyal_grid(c, n)) for n in (h, w))
    slow = avg_pool_slow(fmap, (kh, kw), (sh, sw), (ph, pw))
    assert torch.allclose(goyal_pool(fmap).double(), slow, atol=1e-5)
    assert slow.shape[1] == c * goyal_grid(c, h) * goyal_grid(c, w)


SCALED = {  # ResNet-50 maps at 112 and 32 px: (kernel, stride, padding) and dims, as the README states
    112: {"conv1": ((5, 5, 2), 9216), "pool1": ((8, 2, 1), 9216), "res2": ((8, 4, 0), 9216),
          "res3": ((5, 3, 0), 8192), "res4": ((3, 2, 0), 9216), "res5": ((3, 1, 0), 8192), "pool5": ((1, 1, 0), 2048)},
    32: {"conv1": ((7, 1, 1), 9216), "pool1": ((1, 1, 0), 4096), "res2": ((3, 1, 0), 9216),
         "res3": ((1, 1, 0), 8192), "res4": ((1, 1, 0), 4096), "res5": ((1, 1, 0), 2048), "pool5": ((1, 1, 0), 2048)},
}


@pytest.mark.parametrize("size", [112, 32])
def test_scaled_windows_of_resnet50_at_112_and_32_px(resnet50, size):
    for tap, fmap in maps_at(resnet50, size).items():
        c, side = fmap.shape[1], fmap.shape[-1]
        window, dims = SCALED[size][tap]
        assert goyal_window(side, goyal_grid(c, side)) == window, (size, tap)
        assert pool_features(fmap, "goyal").shape[1] == dims, (size, tap)


def test_resnet18_at_224_stays_close_to_9k():
    with torch.no_grad():
        maps = build_backbone("resnet18").eval().forward_taps(torch.randn(1, 3, 224, 224))
    dims = {tap: pool_features(m, "goyal").shape[1] for tap, m in maps.items()}
    assert dims == {"conv1": 9216, "pool1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192, "pool5": 512}
    assert goyal_window(56, goyal_grid(64, 56)) == (5, 5, 2)           # res2 (64 channels at 56 px) pools as pool1


def test_window_properties_over_random_maps():
    rng = random.Random(0)
    for _ in range(2000):
        c, side = rng.choice([16, 24, 64, 96, 128, 256, 384, 512, 1024, 2048]), rng.randint(1, 130)
        g = goyal_grid(c, side)
        k, s, p = goyal_window(side, g)
        assert 1 <= g <= side and g == max(1, min(side, round(math.sqrt(9216 / c))))
        assert k >= 1 and s >= 1 and 0 <= 2 * p <= k
        assert (side + 2 * p - k) // s + 1 == g                        # exactly the grid
        assert (g - 1) * s + k == side + 2 * p                         # the windows tile the padded map
        assert k >= s                                                  # no pixel left out between windows
    for g0, (h0, k0, s0, p0) in GOYAL_WINDOWS.items():
        assert goyal_window(h0, g0) == (k0, s0, p0)


def test_l2_normalize_goyal_is_x_over_norm_plus_1e5():
    torch.manual_seed(0)
    x = torch.randn(5, 7) * torch.tensor([1e-6, 1e-3, 1.0, 10.0, 1e3])[:, None]
    slow = torch.stack([row / (math.sqrt(sum(float(v) ** 2 for v in row)) + 1e-5) for row in x])
    assert torch.allclose(l2_normalize_goyal(x), slow, rtol=1e-5, atol=1e-9)
    norms = l2_normalize_goyal(x).norm(dim=1)
    assert (norms < 1).all() and norms[-1] > 1 - 1e-6 and norms[0] < 0.5   # tiny vectors are damped, not inflated
    assert torch.equal(l2_normalize_goyal(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_9k_is_still_the_adaptive_approximation():
    fmap = torch.randn(2, 2048, 7, 7)
    assert torch.allclose(pool_features(fmap, "9k"), torch.flatten(torch.nn.functional.adaptive_avg_pool2d(fmap, 2), 1))
    assert not torch.allclose(pool_features(fmap, "goyal"), pool_features(fmap, "9k"))   # overlapping 6 x 6 windows
    with pytest.raises(SelfSupError, match="use avg, 9k, goyal or max"):
        pool_features(fmap, "median")


@pytest.fixture(scope="module")
def tv_resnet18(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("goyal") / "tv.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_cli_eval_with_goyal_pooling_at_res3(capsys, tv_resnet18, protocol):
    data = TINY.replace("size=16", "size=64")
    argv = ["eval", protocol, "--checkpoint", tv_resnet18, "--train-data", data, "--test-data", data,
            "--pool", "goyal", "--tap", "res3", *(["--probe-epochs", 2] if protocol == "linear" else [])]
    assert main([str(a) for a in argv + ["--json"]]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # res3 of ResNet-18 at 64 px: 128 x 8 x 8, grid 8 -> the map itself, 8192 dims
    assert result["tap"] == "res3" and result["feature_dim"] == 8192 and 0 <= result["top1"] <= 1
    assert main([str(a) for a in argv]) == 0
    assert "on res3 (8192 dims)" in capsys.readouterr().out


def test_cli_refuses_an_unknown_pooling_in_one_line(capsys, tv_resnet18):
    code = main(["eval", "knn", "--checkpoint", str(tv_resnet18), "--train-data", TINY, "--test-data", TINY,
                 "--pool", "goyl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown pooling 'goyl': use avg, 9k, goyal or max" in err[0]
