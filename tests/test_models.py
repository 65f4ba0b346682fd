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
