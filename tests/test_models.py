import math

import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.models import BACKBONES, build_backbone, projection_mlp


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_forward_backward_and_taps(name):
    torch.manual_seed(0)
    net = build_backbone(name)
    x = torch.randn(2, 3, 96 if name == "alexnet" else 64, 96 if name == "alexnet" else 64)
    maps = net.forward_taps(x)
    assert list(maps) == list(net.taps)
    for tap, fmap in maps.items():
        assert fmap.shape[1] == net.tap_dims[tap]
    sizes = [m.shape[-1] for m in maps.values()]
    assert sizes == sorted(sizes, reverse=True)               # each stage at most as large as the one before
    out = net(x)
    assert out.shape == (2, net.out_dim)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_resnet_widths_and_cifar_stem():
    assert build_backbone("resnet18").out_dim == 512 and build_backbone("resnet50").out_dim == 2048
    plain, cifar = build_backbone("resnet18").eval(), build_backbone("resnet18", cifar_stem=True).eval()
    x = torch.randn(1, 3, 32, 32)
    assert plain.forward_taps(x, ("res5",))["res5"].shape[-1] == 1
    assert cifar.forward_taps(x, ("res5",))["res5"].shape[-1] == 4       # 32 / 8: no stride-2 stem, no max-pool
    assert cifar.forward_taps(x, ("conv1",))["conv1"].shape[-1] == 32


def test_alexnet_is_the_cfn_tower_on_tiles_and_alexnet_on_images():
    net = build_backbone("alexnet").eval()
    net.conv1.stride = (2, 2)                                     # the CFN on 64 px tiles (METHODS.md 2.4)
    sizes = [m.shape[-1] for m in net.forward_taps(torch.randn(1, 3, 64, 64)).values()]
    assert sizes == [13, 6, 6, 6, 2]                              # conv1 27 -> pool 13, pool 6, pool5 2: 2 x 2 x 256
    net.conv1.stride = (4, 4)                                     # AlexNet on a 227 px image
    assert net.forward_map(torch.randn(1, 3, 227, 227)).shape[-1] == 6
    with pytest.raises(SelfSupError, match="no CIFAR stem"):
        build_backbone("alexnet", cifar_stem=True)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnet", "alexnet"])
def test_l_input_backbone_sees_only_lightness(name):
    from selfsup.data.color import rgb_to_lab
    from selfsup.data.views import normalize

    torch.manual_seed(0)
    net = build_backbone(name, input="L").eval()
    assert next(net.parameters()).shape[1] == 1                  # conv1 takes one channel
    rgb = torch.rand(2, 3, 80, 80)
    x = normalize(rgb)
    # what the inner network receives is L - 50 of the un-normalised image
    assert torch.allclose(net.lightness(x), rgb_to_lab(rgb)[:, :1] - 50, atol=1e-3)
    with torch.no_grad():
        ref = net.net(rgb_to_lab(rgb)[:, :1] - 50)
        assert torch.allclose(net(x), ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    with pytest.raises(SelfSupError, match="unknown backbone input"):
        build_backbone(name, input="lab")


def test_resnet_last_stride_one_keeps_res4_resolution():
    x = torch.randn(1, 3, 64, 64)
    for depth in (18, 50):
        net = build_backbone(f"resnet{depth}", last_stride=1).eval()
        maps = net.forward_taps(x, ("res4", "res5"))
        assert maps["res5"].shape[-1] == maps["res4"].shape[-1] == 4
    with pytest.raises(SelfSupError, match="takes no option"):
        build_backbone("convnet", last_stride=1)


def test_resnet_loads_torchvision_weights():
    import torchvision

    tv = torchvision.models.resnet18()
    net = build_backbone("resnet18")
    net.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    tv.eval(), net.eval()
    x = torch.randn(2, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    assert torch.allclose(tv(x), net(x), atol=1e-5)


def test_unknown_names():
    with pytest.raises(SelfSupError, match="unknown backbone"):
        build_backbone("alexnet2")
    with pytest.raises(SelfSupError, match="unknown tap"):
        build_backbone("convnet").forward_taps(torch.randn(1, 3, 16, 16), ("res5",))


def test_projection_mlp():
    head = projection_mlp(16, 32, 8, num_layers=3)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 2


def test_projection_mlp_last_bn_is_the_official_simclr_head():
    """Linear(no bias) -> BN(scale, no shift): every output unit of a training batch has mean 0 (the
    shift is frozen at 0), and the Linear before it has no bias."""
    torch.manual_seed(0)
    head = projection_mlp(16, 32, 8, last_bn=True).train()
    assert head[-2].bias is None and isinstance(head[-1], torch.nn.BatchNorm1d)
    assert not head[-1].bias.requires_grad and head[-1].weight.requires_grad
    z = head(torch.randn(64, 16) * 3 + 1)
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("depth, size", [(18, 64), (50, 224)])
def test_resnet_pool1_and_pool5_taps(depth, size):
    torch.manual_seed(0)
    net = build_backbone(f"resnet{depth}").eval()
    assert net.taps == ("conv1", "pool1", "res2", "res3", "res4", "res5", "pool5") and net.default_tap == "res5"
    with torch.no_grad():
        maps = net.forward_taps(torch.randn(2, 3, size, size))
        wide = 2048 if depth == 50 else 512
        assert maps["pool1"].shape == (2, 64, size // 4, size // 4)       # after the 3x3/2 max-pool
        assert torch.equal(maps["pool1"], net.maxpool(maps["conv1"]))
        assert maps["pool5"].shape == (2, wide, 1, 1)                     # res5 globally pooled
        assert torch.allclose(maps["pool5"].flatten(1), maps["res5"].mean((2, 3)), atol=1e-6)
        assert torch.allclose(net(torch.zeros(1, 3, size, size)), net.forward_taps(torch.zeros(1, 3, size, size),
                                                                              ("pool5",))["pool5"].flatten(1))
        only = net.forward_taps(torch.randn(1, 3, size, size), ("pool5",))
        assert list(only) == ["pool5"]
    assert net.out_dim == wide and net.tap_dims["pool1"] == 64 and net.tap_dims["pool5"] == wide
    assert net.forward_map(torch.randn(1, 3, size, size)).shape[-1] == size // 32   # still res5, a map
    cifar = build_backbone("resnet18", cifar_stem=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        m = cifar.forward_taps(x, ("conv1", "pool1"))
    assert torch.equal(m["conv1"], m["pool1"])                                     # no max-pool in the CIFAR stem
    lstage = build_backbone("resnet18", input="L")
    assert lstage.default_tap == "res5" and lstage.out_dim == 512


def tile_norm_slow(rgb, scale=50.0, eps=1e-5):
    """Caffe's MVN (across channels) then Power(scale), written out per image."""
    out = torch.empty_like(rgb, dtype=torch.float64)
    for i, img in enumerate(rgb.double()):
        values = img.flatten().tolist()
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        out[i] = (img - mean) / (std + eps) * scale
    return out


def test_tile_norm_is_mvn_then_scale_50_without_clipping():
    from selfsup.data.views import normalize

    torch.manual_seed(0)
    net = build_backbone("alexnet", input="tile_norm")
    rgb = torch.rand(4, 3, 8, 8) * 2 - 0.5                                         # in [-0.5, 1.5]: colour projection
    seen = net.prepare(normalize(rgb))
    assert torch.allclose(seen.double(), tile_norm_slow(rgb), atol=1e-3)
    clipped = tile_norm_slow(rgb.clamp(0, 1))
    assert not torch.allclose(seen.double(), clipped, atol=1e-1)                 # the old clamp changed it
    assert torch.allclose(seen.std((1, 2, 3)), torch.full((4,), 50.0), rtol=1e-4)
    # the standardised shape is kept: an affine map of the tile's own values
    flat, ref = seen.flatten(1).double(), rgb.flatten(1).double()
    for a, b in zip(flat, ref):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 1 - 1e-6
    # checkpoints keep loading: the stage adds no state, the keys are the tower's under net.
    tower_keys = {f"net.{k}" for k in build_backbone("alexnet").state_dict()}
    assert set(net.state_dict()) == tower_keys
    net.load_state_dict({f"net.{k}": v for k, v in build_backbone("alexnet").state_dict().items()})
