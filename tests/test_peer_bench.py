"""benchmarks/peer.py: its helpers (no lightly needed), and its lightly side where lightly is installed."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peer.py"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("peer_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_specs_and_fractions(peer):
    assert peer.spec_of("/d/c.tar", "train") == "/d/c.tar?val_per_class=500&part=train"
    assert peer.spec_of("/d/c.tar", "val", 0.04).endswith("part=val&fraction=0.04")
    assert peer.spec_of("/d/c.tar", "train", 1.0).endswith("part=train")
    f = peer.fraction_for(512)
    assert round(f * 4500) * 10 >= 512
    assert peer.fraction_for(45000) is None


def test_epochs_that_fit_the_budget_round_to_the_nearest(peer):
    """The --recipe selfsup schedule: 900 s at 104 images/s over 45,000 images is 2.08 epochs -> 2 (flooring
    0.95 of it gave 1 and left half the budget unused); 1.4 -> 1; never 0."""
    assert peer.epochs_that_fit(900, 104, 45000) == 2
    assert peer.epochs_that_fit(900, 98, 45000) == 2
    assert peer.epochs_that_fit(900, 70, 45000) == 1
    assert peer.epochs_that_fit(10, 1, 45000) == 1


def test_rates_from_metrics_is_total_images_over_total_time(peer, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": i, "images_per_s": r}) for i, r in enumerate([1.0, 100.0, 50.0])))
    # warmup step dropped; 2 steps of 10 images taking 0.1 s and 0.2 s
    assert peer.rates_from_metrics(path, 10, 1, 2) == pytest.approx(20 / 0.3)


def test_memory_loader_replays_batches(peer):
    class Base:
        global_batch = 4

        def __len__(self):
            return 3

    loader = peer.MemoryLoader(Base(), ["a", "b", "c"])
    assert len(loader) == 3 and loader.global_batch == 4
    assert list(loader.epoch(0, 1)) == ["b", "c"]


def test_peer_recipe_views_match_the_recipe(peer):
    views = peer.peer_recipe_views()
    assert len(views) == 2 and views[0] == views[1]
    v = views[0]
    assert v.scale == (peer.PEER_RECIPE["min_scale"], 1.0) and v.blur_prob == 0.0
    assert v.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))


def test_peer_backbone_is_a_torchvision_resnet18(peer):
    import torchvision

    net, dim, resnet = peer.peer_backbone("resnet18")
    assert dim == 512 and net(torch.zeros(2, 3, 32, 32)).flatten(1).shape == (2, 512)
    keys = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    assert keys == {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}


def test_array_images_gives_pil_images(peer):
    images = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    ds = peer.ArrayImages(images, [7, 8], lambda im: im)
    im, label = ds[1]
    assert im.size == (5, 4) and label == 8
    assert np.array_equal(np.asarray(im), images[1].transpose(1, 2, 0))


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg", "swav"])
def test_lightly_side_runs_one_step(peer, method):
    pytest.importorskip("lightly")
    from PIL import Image

    from selfsup.methods import build_method

    overrides = {"crops": "2x32+4x16"} if method == "swav" else {}
    ours = build_method(method, backbone="convnet", image_size=32, **overrides)
    specs = ours.view_maker().specs
    transform = peer.peer_transform(method, specs)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    views = transform(image)
    assert [tuple(v.shape[-2:]) for v in views] == [(s.size, s.size) for s in specs]
    model, _ = peer.build_peer(method, "convnet", ours.cfg, 10, 10)
    batch = [torch.stack([v] * 4) for v in views]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = peer.peer_step(model, opt, batch, 0, None, torch.device("cpu"))
    assert torch.isfinite(loss)


def test_variants_parse_and_job_views_take_crop_inside(peer):
    from dataclasses import asdict

    assert peer.parse_variants("simclr.proj_last_bn=true; a=1, b=2;") == [["simclr.proj_last_bn=true"], ["a=1", "b=2"]]
    with pytest.raises(SystemExit, match="key=value"):
        peer.parse_variants("simclr.crop_inside")
    stored = json.loads(json.dumps([asdict(v) for v in peer.peer_recipe_views()]))
    assert peer.job_views(stored, False) == peer.peer_recipe_views()
    assert all(v.inside for v in peer.job_views(stored, True))


def test_curve_table_has_one_column_per_epoch(peer):
    from types import SimpleNamespace
    results = [{"name": "lightly", "top1": [40.16, 44.14], "seconds": 10.4},
               {"name": "selfsup+simclr.proj_last_bn=true", "top1": [39.2, 43.6], "seconds": 9.6}]
    lines = peer.curve_table(results, SimpleNamespace(curve=2, jobs=2)).splitlines()
    assert lines[2] == "| run | epoch 1 | epoch 2 | seconds (training and kNN) |" and lines[3] == "|---|---|---|---|"
    assert lines[4] == "| lightly | 40.16 | 44.14 | 10 |"
    assert lines[5] == "| selfsup+simclr.proj_last_bn=true | 39.20 | 43.60 | 10 |"


def test_view_stats_tables_both_pipelines(peer):
    pytest.importorskip("lightly")
    from types import SimpleNamespace

    args = SimpleNamespace(data="synthetic:5200", train_fraction=None, view_stats=16)
    lines = peer.view_stats(args).splitlines()
    assert lines[0] == "the peer recipe's views of 16 training images, pixels in [0, 1]"
    cells = [line.strip("| ").split(" | ") for line in lines[4:]]
    rows = {name: [float(x) for x in values] for name, *values in cells}
    assert set(rows) == {"selfsup", "lightly"}
    for mean, std, gray, diff in rows.values():
        assert 0 < mean < 1 and 0 < std < 0.5 and 0 <= gray <= 1 and 0 < diff < 1
    assert peer.view_stats(args) == "\n".join(lines)        # seeded: the same table twice
