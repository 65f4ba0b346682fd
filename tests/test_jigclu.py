import math

import pytest
import torch

from selfsup.data.jigclu import JigCluViews, montage, split_boxes, unmontage
from selfsup.data.loader import Batch
from selfsup.losses import jigclu_clustering
from selfsup.methods import build_method
from selfsup.methods.jigclu import decouple
from selfsup.models.backbones import Backbone


def clustering_slow(z, ids, t):
    """JigClu eq. 1-2 written out with loops."""
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z)
    total = 0.0
    for i in range(n):
        cluster = [j for j in range(n) if j != i and ids[j] == ids[i]]
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += sum(-math.log(math.exp(float(z[i] @ z[j]) / t) / den) for j in cluster) / len(cluster)
    return total / n


@pytest.mark.parametrize("m, n", [(2, 5), (3, 3)])
def test_clustering_loss_matches_equation(m, n):
    torch.manual_seed(m)
    z = torch.randn(m * m * n, 12)
    ids = torch.arange(n).repeat(m * m)[torch.randperm(m * m * n)]
    assert jigclu_clustering(z, ids, 0.3).item() == pytest.approx(clustering_slow(z, ids, 0.3), abs=1e-5)


def test_clustering_loss_properties():
    torch.manual_seed(0)
    ids = torch.arange(4).repeat(4)
    z = torch.randn(16, 8)
    perm = torch.randperm(16)
    assert jigclu_clustering(z[perm], ids[perm]).item() == pytest.approx(jigclu_clustering(z, ids).item(), abs=1e-5)
    clustered = torch.nn.functional.one_hot(ids, 8).float()        # every image its own direction
    assert jigclu_clustering(clustered, ids, 0.1).item() < jigclu_clustering(z, ids, 0.1).item()


@pytest.mark.parametrize("m", [2, 3, 4])
def test_montage_is_a_true_permutation_and_reassembles(m):
    n, p = 5, 4
    patches = torch.arange(m * m * n, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, p, p).contiguous()
    perm = torch.randperm(m * m * n)
    mont = montage(patches, perm, m)
    assert mont.shape == (n, 3, m * p, m * p)
    cells = unmontage(mont, m)                                       # slot-major: row k holds patch perm[k]
    ids = cells[:, 0, 0, 0].long()
    assert sorted(ids.tolist()) == list(range(m * m * n))            # every patch exactly once
    assert torch.equal(ids, perm)
    # reassemble the original batch from the montages and the targets
    image, location = perm % n, perm // n
    rebuilt = torch.empty_like(patches)
    rebuilt[location * n + image] = cells
    assert torch.equal(rebuilt, patches)
    # a slice of montages (one process's share) equals the same rows of the whole
    assert torch.equal(montage(patches, perm, m, start=2, count=2), mont[2:4])


class LocalBackbone(Backbone):
    """Spatially local features: the mean colour of each 4 x 4 block."""

    taps = ("res5",)
    tap_dims = {"res5": 3}

    def forward_taps(self, x, taps=None):
        return {"res5": torch.nn.functional.avg_pool2d(x, 4)}


@pytest.mark.parametrize("m", [2, 3])
def test_decouple_maps_each_cell_to_its_patch(m):
    n, p = 4, 8
    patches = torch.rand(m * m * n, 3, 1, 1).expand(-1, -1, p, p).contiguous()   # constant-colour patches
    perm = torch.randperm(m * m * n)
    q = decouple(LocalBackbone().forward_map(montage(patches, perm, m)), m)       # (n, 3, m, m)
    cells = q.flatten(2).permute(2, 0, 1).reshape(m * m * n, 3)
    assert torch.allclose(cells, patches[perm, :, 0, 0], atol=1e-6)


def test_split_boxes_code_and_paper_definitions():
    code = split_boxes(100, 100, 2, 0.3, "code")
    assert code[0].tolist() == pytest.approx([0, 0, 80, 80]) and code[3].tolist() == pytest.approx([20, 20, 100, 100])
    paper = split_boxes(100, 100, 2, 0.3, "paper")
    assert (paper[0, 2] - paper[1, 0]).item() == pytest.approx(30)             # shared band 0.3 of the side
    assert (code[0, 2] - code[1, 0]).item() == pytest.approx(60)
    assert split_boxes(90, 90, 3, 0.0).tolist()[4] == pytest.approx([30, 30, 60, 60])


@pytest.mark.parametrize("position", ["after", "during", "before"])
@pytest.mark.parametrize("m", [2, 3])
def test_views_shapes_and_positions(position, m):
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    (patches,) = JigCluViews(24, m=m, aug_position=position)(images, torch.Generator().manual_seed(0))
    assert patches.shape == (m * m * 4, 3, 24 // m, 24 // m)


def test_aug_position_switch_changes_what_it_says():
    """before: patches of one image share one colour transform; after: each has its own."""
    images = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    images[:, 0] = 200                                               # a reddish constant image
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    spread = {}
    for position in ("before", "after"):
        (p,) = JigCluViews(32, m=2, aug_position=position)(images, g())
        colours = p.mean(dim=(2, 3)).view(4, 8, 3)                   # (position, image, rgb)
        spread[position] = colours.std(dim=0).mean().item()          # spread across an image's patches
    assert spread["before"] < 1e-3 < spread["after"]


def tiny_batch(n=4, size=32, seed=0):
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return images


@pytest.mark.parametrize("fmt", ["montage", "small", "scaled"])
@pytest.mark.parametrize("branches", ["both", "clustering", "location"])
def test_method_forward_backward(fmt, branches):
    torch.manual_seed(0)
    method = build_method("jigclu", backbone="convnet", image_size=32, input_format=fmt, branches=branches)
    views = method.view_maker()(tiny_batch(), torch.Generator().manual_seed(0))
    out = method(Batch(views, torch.zeros(4, dtype=torch.long), torch.arange(4)))
    assert ("loss_clu" in out) == (branches != "location") and ("loss_loc" in out) == (branches != "clustering")
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())


def test_official_loss_factor():
    torch.manual_seed(0)
    views = None
    losses = {}
    for flag in (True, False):
        torch.manual_seed(0)
        method = build_method("jigclu", backbone="convnet", image_size=32, branches="clustering", official_loss_factor=flag)
        views = method.view_maker()(tiny_batch(), torch.Generator().manual_seed(0))
        torch.manual_seed(5)
        losses[flag] = method(Batch(views, torch.zeros(4), torch.arange(4)))["loss"].item()
    assert losses[True] == pytest.approx(losses[False] * 0.3 / 0.07, rel=1e-5)


def test_input_format_switch():
    """montage: one image per source image goes through the backbone; small / scaled: one per patch."""
    seen = {}
    for fmt in ("montage", "small", "scaled"):
        method = build_method("jigclu", backbone="convnet", image_size=32, input_format=fmt)
        shapes = []
        method.backbone.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
        orig = method.backbone.forward_map
        method.backbone.forward_map = lambda x: (shapes.append(tuple(x.shape)), orig(x))[1]
        views = method.view_maker()(tiny_batch(), torch.Generator().manual_seed(0))
        method(Batch(views, torch.zeros(4), torch.arange(4)))
        seen[fmt] = shapes[0]
    assert seen == {"montage": (4, 3, 32, 32), "small": (16, 3, 16, 16), "scaled": (16, 3, 32, 32)}


def test_a_final_map_smaller_than_m_is_refused_in_one_line():
    """The ImageNet stem leaves ResNet-18 a 1 x 1 map at 32 px: nothing to split into 2 x 2 cells."""
    from selfsup.errors import SelfSupError

    with pytest.raises(SelfSupError, match="gives 1 x 1 at 32 px: use cifar_stem=true"):
        build_method("jigclu", backbone="resnet18", image_size=32)
    assert build_method("jigclu", backbone="resnet18", image_size=32, cifar_stem=True) is not None
