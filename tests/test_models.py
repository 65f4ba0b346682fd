import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.models import BACKBONES, build_backbone, projection_mlp


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_forward_backward_and_taps(name):
    torch.manual_seed(0)
    net = build_backbone(name)
    x = torch.randn(2, 3, 64, 64)
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
