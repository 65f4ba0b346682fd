"""Jigsaw and Jigsaw++: tile geometry, puzzles, occlusion, colour, the CFN and training end to end."""
import json

import numpy as np
import pytest
import torch

from selfsup.cli import main
from selfsup.data.loader import Batch
from selfsup.data.puzzles import (TileGeometry, assemble, cut_tiles, disassemble, occlude, permutation_set,
                                  puzzle_colors, PuzzleMaker, tile_geometry)
from selfsup.data.views import normalize
from selfsup.errors import SelfSupError
from selfsup.methods import build_method


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size,expected", [(256, (255, 85, 64, 21, 2)), (224, (222, 74, 56, 18, 2)),
                                           (64, (63, 21, 16, 5, 0)), (32, (30, 10, 8, 2, 0))])
def test_tile_geometry_scales_noroozis_255_85_64(size, expected):
    g = tile_geometry(size)
    assert (g.crop, g.cell, g.tile, g.jitter, g.channel_shift) == expected
    assert tile_geometry(256, jitter_255=18).jitter == 18                      # Jigsaw++'s jitter
    assert g.tile + g.jitter <= g.cell                                         # tiles never reach the next cell


def test_tiles_are_windows_of_their_own_cell_channel_by_channel():
    geom = TileGeometry(crop=30, cell=10, tile=6, jitter=2, channel_shift=2)
    h = w = 32
    # pixel value encodes (channel, y, x), so a tile's corner tells where it was cut from
    x = (torch.arange(3).view(3, 1, 1) * 10000 + torch.arange(h).view(h, 1) * 100 + torch.arange(w)).float()
    x = x.expand(4, 3, h, w).contiguous()
    tiles = cut_tiles(x, geom, gen())
    assert tiles.shape == (4, 9, 3, 6, 6)
    seen_offsets = set()
    for b in range(4):
        for cell in range(9):
            r, c = divmod(cell, 3)
            for ch in range(3):
                t = tiles[b, cell, ch]
                y0, x0 = int(t[0, 0] % 10000) // 100, int(t[0, 0] % 100)
                assert int(t[0, 0]) // 10000 == ch
                # a contiguous window, clamped at the border
                ys = torch.clamp(torch.arange(6) + y0, max=h - 1)
                xs = torch.clamp(torch.arange(6) + x0, max=w - 1)
                assert torch.equal(t, x[0, ch][ys][:, xs])
                # inside its cell up to jitter + channel shift, relative to the crop's corner (0 to 2)
                oy, ox = y0 - r * 10, x0 - c * 10
                seen_offsets.add((oy, ox))
                assert 0 <= oy <= 2 + 2 + 2 and 0 <= ox <= 2 + 2 + 2
    assert len(seen_offsets) > 10                                              # offsets vary per tile and channel


def test_assemble_then_disassemble_gives_back_the_tiles():
    tiles = torch.randn(5, 9, 3, 4, 4)
    perms = torch.as_tensor(permutation_set("noroozi-100"))[torch.tensor([0, 7, 42, 99, 3])]
    puzzles = assemble(tiles, perms)
    for i in range(5):
        for s in range(9):                                                     # slot s holds tile perm[s]
            assert torch.equal(puzzles[i, s], tiles[i, perms[i, s]])
    assert torch.equal(disassemble(puzzles, perms), tiles)
    assert not torch.equal(puzzles, tiles)


def test_jigsaw_pp_replaced_tiles_come_from_another_image():
    b, n = 64, 9
    tiles = torch.arange(b * n, dtype=torch.float32).view(b, n, 1, 1, 1).expand(b, n, 3, 2, 2).contiguous()
    puzzles = assemble(tiles, torch.stack([torch.randperm(n) for _ in range(b)]))
    out, donor, mask = occlude(puzzles, tiles, gen(), max_substitute=2)
    counts = mask.sum(1)
    assert set(counts.tolist()) == {0, 1, 2} and (donor != torch.arange(b)).all()
    for i in range(b):
        ids = out[i, :, 0, 0, 0].long()
        assert torch.equal(out[i][~mask[i]], puzzles[i][~mask[i]])             # the other slots are untouched
        foreign = ids[mask[i]]
        assert ((foreign // n) == donor[i]).all()                              # from the donor image ...
        assert len(set(foreign.tolist())) == len(foreign)                      # ... and distinct tiles of it
        assert ((ids[~mask[i]] // n) == i).all()
    big = occlude(puzzles.repeat(50, 1, 1, 1, 1), tiles.repeat(50, 1, 1, 1, 1), gen(1))[2].sum(1)
    assert np.allclose(np.bincount(big.numpy(), minlength=3) / len(big), 1 / 3, atol=0.03)   # uniform {0, 1, 2}
    with pytest.raises(SelfSupError, match="batch of 2"):
        occlude(puzzles[:1], tiles[:1], gen())


def test_puzzle_colours_one_draw_per_puzzle():
    x = torch.rand(2000, 9, 3, 2, 2)
    out = puzzle_colors(x, gray_prob=0.7, projection_prob=0.5, g=gen())
    gray = (out[:, :, 0] == out[:, :, 1]).flatten(1).all(1) & (out[:, :, 1] == out[:, :, 2]).flatten(1).all(1)
    assert abs(gray.float().mean().item() - 0.7) < 0.03
    assert torch.allclose(out[gray], x[gray].mean(2, keepdim=True).expand_as(x[gray]))       # (R + G + B) / 3
    unchanged = (out == x).flatten(1).all(1)
    projected = ~gray & ~unchanged
    assert abs(projected.float().mean().item() - 0.15) < 0.03
    # the projection's G channel is the mean of R, G, B, for every tile of the puzzle
    assert torch.allclose(out[projected][:, :, 1], x[projected].mean(2), atol=1e-5)


def test_jigsaw_pp_backbone_standardises_each_tile_and_each_evaluated_image():
    method = build_method("jigsaw_pp", backbone="convnet", image_size=32)
    assert type(method.backbone).__name__ == "TileNorm"
    rgb = torch.rand(36, 3, 8, 8) * 0.5 + 0.2
    seen = method.backbone.standardize(normalize(rgb))                      # the MVN, before the x50 scale
    assert torch.allclose(seen.mean((1, 2, 3)), torch.zeros(36), atol=1e-5)
    assert torch.allclose(seen.std((1, 2, 3)), torch.ones(36), atol=1e-3)
    expected = (rgb - rgb.mean((1, 2, 3), keepdim=True)) / rgb.std((1, 2, 3), keepdim=True)
    assert torch.allclose(seen, expected, atol=1e-3)                          # MVN across channels (METHODS.md 2.2)
    assert build_method("jigsaw", backbone="convnet", image_size=32, permutations="100").backbone.__class__.__name__ == "ConvNet"
    with pytest.raises(SelfSupError, match="unknown jigsaw.tile_norm"):
        build_method("jigsaw", backbone="convnet", image_size=32, permutations="100", tile_norm="none")


def test_puzzle_maker_output_is_the_permuted_tiles_with_their_labels():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    perms = permutation_set("noroozi-100")
    geom = tile_geometry(32)
    maker = PuzzleMaker(32, perms, geom, gray_prob=0.0, projection_prob=0.0)
    (views,), labels = maker(images, gen(3))
    assert views.shape == (6 * 9, 3, 8, 8) and labels.shape == (6,) and labels.max() < 100
    g = gen(3)                                                                 # the same draws, by hand
    tiles = cut_tiles(images.float() / 255, geom, g)
    expected_labels = torch.randint(0, 100, (6,), generator=g)
    assert torch.equal(labels, expected_labels)
    back = disassemble(views.view(6, 9, 3, 8, 8), torch.as_tensor(perms)[labels])
    assert torch.allclose(back, normalize(tiles.flatten(0, 1)).view_as(tiles), atol=1e-5)
    again, labels2 = maker(images, gen(3))                                     # a function of the generator only
    assert torch.equal(again[0], views) and torch.equal(labels2, labels)


@pytest.mark.parametrize("name,backbone,size,head", [("jigsaw", "convnet", 32, "cfn"), ("jigsaw_pp", "resnet18", 64, "goyal"),
                                                     ("jigsaw", "alexnet", 256, "cfn"), ("jigsaw_pp", "alexnet", 256, "cfn")])
def test_jigsaw_step_backpropagates_through_the_tower(name, backbone, size, head):
    torch.manual_seed(0)
    overrides = dict(head=head, permutations="100")
    if backbone == "alexnet":
        overrides["tile_pool"] = 2                                             # pool5 2 x 2 x 256 -> fc6, as the CFN
    method = build_method(name, backbone=backbone, image_size=size, **overrides)
    if backbone == "alexnet":
        tower = getattr(method.backbone, "net", method.backbone)
        assert tower.conv1.stride == (2, 2) and method.tile_head[0].in_features == 1024
    if name == "jigsaw_pp":
        assert type(method.backbone).__name__ == "TileNorm"
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    views, targets = method.view_maker()(images, gen())
    out = method(Batch(views, torch.zeros(4, dtype=torch.long), torch.arange(4), targets))
    assert out["loss"].ndim == 0 and 0 <= out["puzzle_acc"] <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in method.backbone.parameters())
    assert method.classifier(torch.zeros(1, method.classifier.in_features if head == "goyal"
                                         else method.classifier[0].in_features)).shape == (1, 100)


def test_jigsaw_errors_are_one_line():
    with pytest.raises(SelfSupError, match="too small for this backbone"):
        build_method("jigsaw", backbone="alexnet", image_size=64, permutations="100")
    with pytest.raises(SelfSupError, match="unknown jigsaw.head"):
        build_method("jigsaw", backbone="convnet", image_size=32, head="mlp", permutations="100")
    with pytest.raises(SelfSupError, match="unknown permutation set"):
        build_method("jigsaw", backbone="convnet", image_size=32, permutations="many")
    with pytest.raises(SelfSupError, match="tile_pool"):
        build_method("jigsaw", backbone="convnet", image_size=32, permutations="100", tile_pool=2)


def test_permutation_sets_by_name():
    assert permutation_set("noroozi-701").shape == (701, 9)
    assert np.array_equal(permutation_set("100"), permutation_set(100))
    pp = build_method("jigsaw_pp", backbone="convnet", image_size=32)
    assert pp.perms.shape == (701, 9) and pp.cfg.tile_norm == "tile" and pp.cfg.gray_prob == 0.7   # Jigsaw++ (§4)
    assert pp.geometry.jitter == 2 and tile_geometry(256, jitter_255=pp.cfg.jitter_255).jitter == 18
    jig = build_method("jigsaw", backbone="convnet", image_size=32, permutations="100")
    assert jig.cfg.tile_norm == "imagenet" and jig.cfg.max_substitute == 0          # Jigsaw: mean subtraction


@pytest.mark.parametrize("method", ["jigsaw", "jigsaw_pp"])
def test_pretrain_then_evaluate_on_whole_images(tmp_path, capsys, method):
    data = "synthetic:64?classes=4&size=32"
    code = main(["pretrain", method, "--data", data, "--backbone", "convnet", "--epochs", "1", "--batch-size", "16",
                 "--out", str(tmp_path / "run"), "progress=false", "device=cpu", f"{method}.permutations=100",
                 f"{method}.tile_dim=64", f"{method}.hidden_dim=64"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("puzzle_acc" in r for r in records)
    capsys.readouterr()
    code = main(["eval", "knn", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--train-data", data,
                 "--test-data", data + "&seed=1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert 0 <= json.loads(out.strip().splitlines()[-1])["top1"] <= 1


def test_cfn_defaults_on_alexnet_and_goyal_defaults_elsewhere():
    """METHODS.md 2.4: the CFN's fc6 takes pool5's 2 x 2 x 256 = 1024 per tile; Goyal's ResNet head
    is Linear(D, 1000) + BN + ReLU per tile, then Linear(9000, |P|)."""
    cfn = build_method("jigsaw", backbone="alexnet", image_size=256, permutations="100")
    assert cfn.head == "cfn" and cfn.tile_pool == 2
    assert cfn.tile_head[0].in_features == 1024 and cfn.tile_head[0].out_features == 1024
    assert cfn.classifier[0].in_features == 9 * 1024 and cfn.classifier[-1].out_features == 100
    goyal = build_method("jigsaw", backbone="resnet18", image_size=64, permutations="100")
    assert goyal.head == "goyal" and goyal.tile_pool == 1
    assert goyal.tile_head[0].in_features == 512 and goyal.tile_head[0].out_features == 1000
    assert isinstance(goyal.tile_head[1], torch.nn.BatchNorm1d) and goyal.classifier.in_features == 9000


def test_pretext_methods_are_evaluated_one_stage_before_the_last(tmp_path, capsys):
    """Goyal et al. 2019 report res4 for ResNet-50 pretext models: the checkpoint records the
    method's tap and `selfsup eval` uses it when --tap is not given, and names it."""
    from conftest import TINY, run

    assert build_method("jigsaw", backbone="resnet18", image_size=64, permutations="100").evaluation_tap() == "res4"
    assert build_method("colorization", backbone="convnet", image_size=32).evaluation_tap() == "conv3"
    assert build_method("simclr", backbone="resnet18").evaluation_tap() == "res5"
    code, _, err = run(capsys, "pretrain", "jigsaw", "--data", "synthetic:64?classes=4&size=32", "--backbone", "convnet",
                       "--epochs", 0, "--batch-size", 16, "--out", tmp_path / "run", "progress=false", "device=cpu",
                       "jigsaw.permutations=100")
    assert code == 0, err
    code, out, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "run" / "last.pt", "--train-data", TINY,
                         "--test-data", TINY)
    assert code == 0 and "knn on conv3" in out, err


def test_shipped_configs_resolve_to_one_solver():
    """jigsaw_cifar10 is Goyal's solver whole: it took the small-image layer's CFN bias lr x2 with Goyal's lr
    and weight decay; jigsaw_imagenet warms up from VISSL's 0.025."""
    from selfsup.config import find_config, resolve_config
    from selfsup.methods import get_method

    cifar = resolve_config(get_method("jigsaw"), find_config("jigsaw_cifar10"), {"method": "jigsaw"})
    assert (cifar.optim.lr, cifar.optim.weight_decay, cifar.optim.bias_lr_mult) == (0.1, 1e-4, 1.0)
    imagenet = resolve_config(get_method("jigsaw"), find_config("jigsaw_imagenet"), {"method": "jigsaw"})
    assert (imagenet.optim.warmup_start_lr, imagenet.optim.lr) == (0.025, 0.1)
