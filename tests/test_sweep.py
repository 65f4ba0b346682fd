"""selfsup sweep: the grid, the data-spec axes, resumable cells, the CSV, the tables and the plots."""
import csv
import errno
import json
import os
import re

import pytest

from conftest import one_line_error, run
from selfsup import sweep
from selfsup.errors import SelfSupError
from selfsup.sweep import cell_name, cell_settings, cells, load_sweep

SWEEP = """
name: tiny
base:
  method: simclr
  backbone: convnet
  epochs: 1
  batch_size: 16
  device: cpu
  data: "synthetic:64?classes=4&size=16"
  optim: {lr: 0.1, warmup_epochs: 0}
grid:
  width: [0.5, 1]
  data.fraction: [0.5, 1.0]
evals:
  - {protocol: knn, train_data: "synthetic:64?classes=4&size=16", test_data: "synthetic:32?classes=4&size=16&seed=1", taps: [conv3, conv4]}
"""


def test_grid_and_data_axes(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP)
    spec = load_sweep(tmp_path / "s.yaml")
    assert [tuple(c.values()) for c in cells(spec)] == [(0.5, 0.5), (0.5, 1.0), (1, 0.5), (1, 1.0)]
    s = cell_settings(spec, {"width": 2, "data.fraction": 0.1})
    assert s["width"] == 2 and s["data"] == "synthetic:64?classes=4&size=16&fraction=0.1" and s["optim.lr"] == 0.1
    assert spec["x"] == "width" and spec["lines"] == ["data.fraction", "tap"]
    (tmp_path / "bad.yaml").write_text(SWEEP.replace("protocol: knn", "protocol: nope"))
    with pytest.raises(SelfSupError, match="each eval needs protocol"):
        load_sweep(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text(SWEEP.replace("width: [0.5, 1]", "width: []"))
    with pytest.raises(SelfSupError, match="non-empty list"):
        load_sweep(tmp_path / "bad2.yaml")


def test_zipped_axes_move_together(tmp_path):
    """zip: [[data.fraction, epochs]] pairs the i-th values (equal steps), the other axes still multiply."""
    (tmp_path / "z.yaml").write_text(SWEEP.replace("data.fraction: [0.5, 1.0]", "data.fraction: [0.1, 0.3, 1.0]\n  epochs: [20, 7, 2]")
                                     + "zip: [data.fraction, epochs]\nplot: {x: data.fraction}\n")
    spec = load_sweep(tmp_path / "z.yaml")
    assert [tuple(c.values()) for c in cells(spec)] == [(0.5, 0.1, 20), (0.5, 0.3, 7), (0.5, 1.0, 2),
                                                        (1, 0.1, 20), (1, 0.3, 7), (1, 1.0, 2)]
    assert list(cells(spec)[0]) == ["width", "data.fraction", "epochs"] and spec["lines"] == ["width", "tap"]
    assert cell_settings(spec, cells(spec)[1])["epochs"] == 7
    (tmp_path / "bad.yaml").write_text((tmp_path / "z.yaml").read_text().replace("epochs: [20, 7, 2]", "epochs: [20, 7]"))
    with pytest.raises(SelfSupError, match="zipped axes data.fraction, epochs need lists of one length, got 3, 2"):
        load_sweep(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text((tmp_path / "z.yaml").read_text().replace("zip: [data.fraction, epochs]", "zip: [data.fraction, nope]"))
    with pytest.raises(SelfSupError, match="zip must list groups of two or more grid axes"):
        load_sweep(tmp_path / "bad2.yaml")


def test_sweep_runs_every_cell_writes_results_and_skips_finished_work(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(SWEEP)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out, "--parallel", 2)
    assert code == 0, err
    assert "4 cells" in stdout and "overhead" in stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8 and {r["tap"] for r in rows} == {"conv3", "conv4"}
    assert all(0 <= float(r["value"]) <= 1 for r in rows)
    cell = out / "cells" / "width=0.5,data.fraction=0.5"
    assert json.loads((cell / "cell.json").read_text())["train_s"] > 0
    assert (out / "knn_top1_vs_width.png").stat().st_size > 1000 and "| width | data.fraction |" in (out / "results.md").read_text()
    # the small cell really is small: half the channels, half the images
    from selfsup.checkpoint import load_checkpoint
    assert load_checkpoint(cell / "last.pt")["backbone_options"] == {"width": 0.5}
    mtime = (cell / "last.pt").stat().st_mtime_ns
    code, stdout, _ = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)       # everything is done: skipped
    assert code == 0 and (cell / "last.pt").stat().st_mtime_ns == mtime
    assert list(csv.DictReader(open(out / "results.csv"))) == rows
    assert json.loads((cell / "cell.json").read_text())["eval_s"] == 0


def test_shipped_sweep_files_load_and_resolve_every_cell():
    """Every file in configs/sweeps parses, and each cell's settings resolve to a valid run config
    (no data is read: the image size is given). The ImageNet sweeps' cells train with the shipped recipes
    (configs/jigsaw_imagenet.yaml, jigsaw_alexnet_imagenet.yaml, colorization_imagenet.yaml), the grid's
    values over them."""
    import contextlib
    import io
    from pathlib import Path

    from selfsup.config import check_config
    from selfsup.sweep import resolve_cell

    files = sorted(Path(__file__).parent.parent.glob("configs/sweeps/*.yaml"))
    assert len(files) >= 7
    resolved = {}
    for f in files:
        spec = load_sweep(f)
        for cell in cells(spec):
            with contextlib.redirect_stderr(io.StringIO()):
                cfg = resolve_cell(spec, cell, image_size_of=lambda spec: 32)
            check_config(cfg)
            resolved[f.stem, cell_name(cell)] = cfg
    for name in ("goyal_complexity_imagenet", "goyal_data_size_imagenet", "goyal_capacity_imagenet"):
        cfgs = [c for (n, _), c in resolved.items() if n == name and c.backbone == "resnet50"]
        assert cfgs and all(
            (c.image_size, c.epochs, c.precision, c.optim.lr, c.optim.warmup_epochs, c.jigsaw.head, c.jigsaw.flip,
             c.jigsaw.gray_prob, c.jigsaw.projection_prob, c.jigsaw.channel_shift_255, c.jigsaw.tile_norm)
            == (256, 105, "bf16", 0.1, 5, "goyal", True, 0.66, 0.0, 0, "imagenet") for c in cfgs), name
    assert [c.jigsaw.permutations for (n, _), c in resolved.items() if n == "goyal_complexity_imagenet"] == [
        "100", "701", "2000", "5000", "10000"]
    alex = [c for (n, _), c in resolved.items() if n == "goyal_capacity_imagenet" and c.backbone == "alexnet"]
    assert len(alex) == 3 and all((c.optim.lr, c.optim.scale_lr, c.optim.weight_decay, c.optim.bias_lr_mult, c.epochs,
                                   c.jigsaw.head, c.jigsaw.conv1_stride) == (0.01, False, 5e-4, 2.0, 70, "cfn", 2)
                                  for c in alex)
    col = [c for (n, _), c in resolved.items() if n == "goyal_complexity_colorization_imagenet"]
    assert len(col) == 8 and all((c.image_size, c.epochs, c.optim.warmup_epochs, c.precision, c.colorization.res5_stride)
                                 == (224, 105, 5, "bf16", 1) for c in col)
    assert [c.colorization.k for c in col] == [2, 5, 10, 20, 40, 80, 160, 313]


def test_eval_keys_are_checked_when_the_file_is_read(tmp_path):
    """A misspelled eval key, a key another protocol's evaluation takes, or an unknown linear preset is
    refused in one line before any cell trains, naming the key and the valid ones."""
    for eval_, fragment in [("{protocol: knn, kk: 1, ", r"unknown key 'kk' in the knn eval: use name, .*\bk\b.*temperature"),
                            ("{protocol: svm, k: 1, ", r"unknown key 'k' in the svm eval: use .*costs"),
                            ("{protocol: linear, preset: gooyal, ", "unknown linear preset 'gooyal'")]:
        (tmp_path / "s.yaml").write_text(SWEEP.replace("{protocol: knn, ", eval_))
        with pytest.raises(SelfSupError, match=fragment):
            load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(SWEEP.replace("{protocol: knn, ", "{protocol: knn, name: a, ")
                                     + "  - {protocol: knn, name: a, train_data: X, test_data: Y}\n")
    with pytest.raises(SelfSupError, match="two evals are labelled 'a'"):
        load_sweep(tmp_path / "s.yaml")


def test_two_evals_of_one_protocol_stay_apart_and_layerwise_probes_give_a_row_per_tap(tmp_path, capsys):
    """Two knn evals (different test data) each keep their rows, table and plot, told apart by a label
    (the protocol numbered, or the eval's name); a layer-wise linear probe (preset goyal) gives a row per tap."""
    sweep = SWEEP.replace("epochs: 1", "epochs: 0").replace("  data.fraction: [0.5, 1.0]\n", "") + (
        '  - {protocol: knn, train_data: "synthetic:64?classes=4&size=16", test_data: "synthetic:32?classes=4&size=16&seed=2", tap: conv4}\n'
        '  - {name: goyal, protocol: linear, preset: goyal, epochs: 1, cached: true, train_data: "synthetic:64?classes=4&size=16", '
        'test_data: "synthetic:32?classes=4&size=16&seed=1", taps: [conv3, conv4]}\n')
    (tmp_path / "s.yaml").write_text(sweep)
    assert load_sweep(tmp_path / "s.yaml")["labels"] == ["knn-1", "knn-2", "goyal"]
    out = tmp_path / "out"
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["width"], r["eval"], r["tap"]) for r in rows) == sorted(
        (w, e, t) for w in ("0.5", "1") for e, t in [("knn-1", "conv3"), ("knn-1", "conv4"), ("knn-2", "conv4"),
                                                     ("goyal", "conv3"), ("goyal", "conv4")])
    assert {r["protocol"] for r in rows if r["eval"] == "goyal"} == {"linear"}
    md = (out / "results.md").read_text()
    assert "## knn-1 top1" in md and "## knn-2 top1" in md and "## goyal top1" in md and "seed=2" in md
    for label in ("knn-1", "knn-2", "goyal"):
        assert (out / f"{label}_top1_vs_width.png").stat().st_size > 1000


KNN = "{protocol: knn, "
TAPS = "taps: [conv3, conv4]"


@pytest.mark.parametrize("old, new, fragment", [
    (KNN, "{protocol: knn, k: 0, ", "eval knn: --k must be at least 1, got 0"),
    (KNN, "{protocol: knn, temperature: 0, ", "eval knn: --temperature must be a positive number, got 0"),
    (KNN, "{protocol: knn, temperature: -0.1, ", "eval knn: --temperature must be a positive number"),
    (KNN, "{protocol: knn, pool: mean, ", "eval knn: unknown pooling 'mean': use avg"),
    (KNN, "{protocol: knn, batch_size: 0, ", "eval knn: --batch-size must be at least 1"),
    (KNN, "{protocol: knn, device: tpu, ", "eval knn: unknown device 'tpu'"),
    (KNN, "{protocol: knn, preset: moco, ", "eval knn: --preset applies to eval linear only"),
    (KNN, "{protocol: linear, epochs: 0, ", "eval linear: --probe-epochs must be at least 1, got 0"),
    (KNN, "{protocol: linear, preset: goyal, lr: -1, ", "eval linear: --lr must be a positive number"),
    (KNN, '{protocol: svm, costs: "0.1,,1", ', "eval svm: --costs '0.1,,1' has an empty cost"),
    (KNN, '{protocol: svm, costs: "0.1,C", ', "eval svm: --costs: 'C' is neither a number nor a preset"),
    (KNN, "{protocol: svm, costs: [0.1, -1], ", "eval svm: --costs: cost -1 must be a positive number"),
    (KNN, "{protocol: svm, n_jobs: 0, ", "eval svm: --jobs 0 runs no worker process"),
    (KNN, "{protocol: svm, solver: liblinear, ", "eval svm: unknown SVM solver 'liblinear'"),
    # low-shot is no protocol of a sweep: its entry (here with a k of 0) is refused when the file is read too
    (KNN, "{protocol: lowshot, ks: [0, 1], ", "each eval needs protocol (knn, linear, svm)"),
    (TAPS, "taps: [conv3, res4]", "eval knn (taps: ['conv3', 'res4']), cell width=0.5,data.fraction=0.5 (backbone "
                                  "convnet): unknown tap 'res4' for this backbone: choose one of conv1, conv2, conv3, conv4"),
    (TAPS + "}\n", TAPS + "}\n  - {protocol: knn, k: 0, train_data: A, test_data: B}\n",
     "eval knn-2: --k must be at least 1"),
])
def test_bad_eval_values_are_refused_before_any_cell_trains(tmp_path, capsys, old, new, fragment):
    """A value the evaluation would refuse after the first cell has trained (a kNN of no neighbours, a
    temperature not above 0, an untrained probe, malformed SVM costs, a tap the backbone lacks, ...) is
    refused by the evaluation's own check when the file is read: one line naming the file, the eval's
    label, the key, the value and the fix; exit 2, and nothing is trained or written."""
    assert old in SWEEP
    (tmp_path / "s.yaml").write_text(SWEEP.replace(old, new))
    out = tmp_path / "out"
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)
    assert one_line_error(code, err, fragment), err
    assert f"sweep file {tmp_path / 's.yaml'}" in err
    assert not out.exists() and not list(tmp_path.rglob("*.pt"))


def test_taps_are_checked_against_every_cells_backbone(tmp_path):
    """A grid that varies the backbone: a tap one of its backbones lacks is refused, naming that cell."""
    sweep = SWEEP.replace("width: [0.5, 1]", "backbone: [convnet, resnet18]").replace("  data.fraction: [0.5, 1.0]\n", "")
    (tmp_path / "s.yaml").write_text(sweep)
    with pytest.raises(SelfSupError, match=r"cell backbone=resnet18 \(backbone resnet18\): unknown tap 'conv3'"):
        load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(sweep.replace(TAPS, "taps: [conv1]")
                                     + '  - {protocol: svm, taps: [all], train_data: A, test_data: B}\n')
    assert load_sweep(tmp_path / "s.yaml")["labels"] == ["knn", "svm"]


def test_valid_eval_values_pass_and_the_sweep_runs(tmp_path, capsys):
    """Settings the evaluations take (other than their defaults) load, and the sweep runs with them."""
    sweep = SWEEP.replace("epochs: 1", "epochs: 0").replace("width: [0.5, 1]", "width: [0.5]").replace(
        "  data.fraction: [0.5, 1.0]\n", "").replace(KNN, "{protocol: knn, k: 5, temperature: 0.1, pool: avg, batch_size: 8, ")
    (tmp_path / "s.yaml").write_text(sweep + '  - {protocol: svm, costs: "0.1,1", n_jobs: 1, solver: torch, taps: [all], '
                                     'train_data: A, test_data: B}\n  - {protocol: linear, preset: goyal, epochs: 1, lr: 0.05, '
                                     'train_data: A, test_data: B, taps: [conv4]}\n')
    assert load_sweep(tmp_path / "s.yaml")["labels"] == ["knn", "svm", "linear"]
    (tmp_path / "s.yaml").write_text(sweep)
    out = tmp_path / "out"
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["eval"], r["tap"]) for r in rows] == [("knn", "conv3"), ("knn", "conv4")]
    assert (out / "cells" / "width=0.5" / "last.pt").exists()


def test_one_tap_written_without_a_list_is_that_tap(tmp_path):
    """``taps: conv3`` names one tap (it was split into the characters c, o, n, ...)."""
    (tmp_path / "s.yaml").write_text(SWEEP.replace("taps: [conv3, conv4]", "taps: conv3"))
    assert load_sweep(tmp_path / "s.yaml")["evals"][0]["taps"] == ["conv3"]


def _resolved(method, config, items):
    """``selfsup pretrain METHOD --config CONFIG ITEMS...``'s config, its notes silenced."""
    import contextlib
    import io

    from selfsup.config import resolve_config
    from selfsup.methods import get_method

    with contextlib.redirect_stderr(io.StringIO()):
        return resolve_config(get_method(method), config, flags={"method": method}, overrides=items)


def _cell(spec, cell):
    import contextlib
    import io

    from selfsup.sweep import resolve_cell

    with contextlib.redirect_stderr(io.StringIO()):
        return resolve_cell(spec, cell)


def test_a_base_config_is_the_cells_recipe_under_their_values(tmp_path):
    """base: {config: NAME} makes each cell resolve as `selfsup pretrain METHOD --config NAME key=value ...` (the
    base's other keys and the cell's values over the config), not as the method's built-in defaults."""
    (tmp_path / "s.yaml").write_text(SWEEP.replace("  method: simclr\n", "  config: simclr_cifar10\n  method: simclr\n"))
    spec = load_sweep(tmp_path / "s.yaml")
    data = "synthetic:64?classes=4&size=16"
    for cell in cells(spec):
        expected = _resolved("simclr", "simclr_cifar10", [
            "backbone=convnet", "epochs=1", "batch_size=16", "device=cpu", "optim.lr=0.1", "optim.warmup_epochs=0",
            f"width={cell['width']}", f"data={data}&fraction={cell['data.fraction']}"])
        assert _cell(spec, cell) == expected
    recipe, plain = _cell(spec, cells(spec)[0]), _resolved("simclr", None, ["backbone=convnet", f"data={data}"])
    assert recipe.simclr != plain.simclr or recipe.optim.weight_decay != plain.optim.weight_decay   # the config counts
    # method may be left to the config
    (tmp_path / "m.yaml").write_text(SWEEP.replace("  method: simclr\n", "  config: simclr_cifar10\n"))
    assert _cell(load_sweep(tmp_path / "m.yaml"), cells(spec)[0]) == _cell(spec, cells(spec)[0])


def test_a_config_axis_zipped_with_the_backbone_gives_each_network_its_recipe(tmp_path):
    """grid: {backbone: [alexnet, resnet50], config: [jigsaw_alexnet_imagenet, jigsaw_imagenet]} zipped: the
    AlexNet cells get the CFN's solver, the ResNet-50 cells Goyal's, the grid's |P| over both."""
    (tmp_path / "s.yaml").write_text(
        "base: {method: jigsaw, data: 'imagenet/train?size=256'}\n"
        "grid:\n  backbone: [alexnet, resnet50]\n  config: [jigsaw_alexnet_imagenet, jigsaw_imagenet]\n"
        "  jigsaw.permutations: [100, 2000]\nzip: [[backbone, config]]\n"
        "evals: [{protocol: svm, train_data: A, test_data: B}]\nplot: {x: jigsaw.permutations}\n")
    spec = load_sweep(tmp_path / "s.yaml")
    assert [(c["backbone"], c["config"], c["jigsaw.permutations"]) for c in cells(spec)] == [
        ("alexnet", "jigsaw_alexnet_imagenet", 100), ("alexnet", "jigsaw_alexnet_imagenet", 2000),
        ("resnet50", "jigsaw_imagenet", 100), ("resnet50", "jigsaw_imagenet", 2000)]
    for cell in cells(spec):
        assert _cell(spec, cell) == _resolved("jigsaw", cell["config"], [
            "data=imagenet/train?size=256", f"backbone={cell['backbone']}", f"jigsaw.permutations={cell['jigsaw.permutations']}"])
    alex, r50 = _cell(spec, cells(spec)[0]), _cell(spec, cells(spec)[3])
    assert (alex.optim.lr, alex.optim.weight_decay, alex.optim.bias_lr_mult, alex.epochs, alex.jigsaw.head,
            alex.jigsaw.permutations) == (0.01, 5e-4, 2.0, 70, "cfn", "100")
    assert (r50.optim.lr, r50.epochs, r50.jigsaw.gray_prob, r50.jigsaw.flip, r50.precision,
            r50.jigsaw.permutations) == (0.1, 105, 0.66, True, "bf16", "2000")


def test_a_config_of_another_method_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(SWEEP.replace("  method: simclr\n", "  method: simclr\n  config: jigsaw_imagenet\n"))
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", tmp_path / "out")
    assert one_line_error(code, err, "config jigsaw_imagenet is a jigsaw recipe (method: jigsaw), but the cell's "
                                     "method is simclr: name a simclr config, or drop method"), err
    (tmp_path / "s.yaml").write_text(SWEEP.replace("  method: simclr\n", "  method: simclr\n  config: nope_cfg\n"))
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", tmp_path / "out")
    assert one_line_error(code, err, "config 'nope_cfg' is neither a file nor a shipped config"), err
    assert not (tmp_path / "out").exists()


def _image_folder(root, classes=2, per_class=6):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")


def test_data_equals_path_moves_a_sweeps_data_so_it_runs_from_any_directory(tmp_path, capsys, monkeypatch):
    """A sweep whose data path is relative to another directory (the shipped CPU sweeps': a clone's root) is
    refused before any cell trains, naming the fix; `selfsup sweep FILE data=PATH` moves the base's data and
    the evals' data on the same path, each keeping its options, and runs."""
    _image_folder(tmp_path / "data" / "imgs")
    sweep = (SWEEP.replace("epochs: 1", "epochs: 0").replace("  data.fraction: [0.5, 1.0]\n", "")
             .replace("width: [0.5, 1]", "width: [0.5]")
             .replace('train_data: "synthetic:64?classes=4&size=16", test_data: "synthetic:32?classes=4&size=16&seed=1"',
                      'train_data: "data/imgs?val_per_class=2&part=train", test_data: "data/imgs?val_per_class=2&part=val"')
             .replace('  data: "synthetic:64?classes=4&size=16"', '  data: "data/imgs?val_per_class=2&part=train"'))
    (tmp_path / "s.yaml").write_text(sweep)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", "out")
    assert one_line_error(code, err, f"its data path data/imgs does not exist (relative to the working directory "
                                     f"{elsewhere}): pass the dataset's location, `selfsup sweep {tmp_path / 's.yaml'} data=/path/to/imgs` "
                                     "(the evals on the same path follow it)"), err
    assert not (elsewhere / "out").exists()
    spec = load_sweep(tmp_path / "s.yaml", [f"data={tmp_path / 'data/imgs'}"])
    assert spec["base"]["data"] == f"{tmp_path / 'data/imgs'}?val_per_class=2&part=train"
    assert (spec["evals"][0]["train_data"], spec["evals"][0]["test_data"]) == (
        f"{tmp_path / 'data/imgs'}?val_per_class=2&part=train", f"{tmp_path / 'data/imgs'}?val_per_class=2&part=val")
    assert load_sweep(tmp_path / "s.yaml", ["data=x?part=val"])["base"]["data"] == "x?part=val"   # options: the spec whole
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", f"data={tmp_path / 'data/imgs'}", "--out", "out",
                       "batch_size=4")                            # 8 training images: a smaller batch too
    assert code == 0, err
    rows = list(csv.DictReader(open(elsewhere / "out" / "results.csv")))
    assert [r["tap"] for r in rows] == ["conv3", "conv4"]
    # other settings of the base; a grid axis is refused
    assert load_sweep(tmp_path / "s.yaml", ["epochs=3", "optim.lr=0.5"])["base"]["epochs"] == 3
    with pytest.raises(SelfSupError, match="width=2 sets an axis of its grid"):
        load_sweep(tmp_path / "s.yaml", ["width=2"])


def test_eval_data_moves_the_imagenet_sweeps_voc07_folder(tmp_path, monkeypatch):
    """The shipped ImageNet sweeps read VOC2007 at VOCdevkit, relative to the working directory: `data=` moves only
    the ImageNet folder, and `eval_data=PATH` moves the evals' one other path, each spec keeping its format and
    options. A missing VOC07 folder is refused before any cell, naming that fix."""
    from selfsup.sweep import check_data_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(SelfSupError, match=r"eval svm's train_data path VOCdevkit does not exist \(relative to the "
                                           r"working directory .*\): pass its location, `selfsup sweep "
                                           r"goyal_capacity_imagenet eval_data=/path/to/VOCdevkit`"):
        check_data_paths(load_sweep("goyal_capacity_imagenet"))
    spec = load_sweep("goyal_capacity_imagenet", ["data=/big/imagenet/train", "eval_data=/big/VOCdevkit"])
    assert spec["base"]["data"] == "/big/imagenet/train?size=256"
    assert (spec["evals"][0]["train_data"], spec["evals"][0]["test_data"]) == (
        "voc07:/big/VOCdevkit?split=trainval", "voc07:/big/VOCdevkit?split=test")
    with pytest.raises(SelfSupError, match=r"give the path alone \(each eval keeps its own options\)"):
        load_sweep("goyal_capacity_imagenet", ["eval_data=/big/VOCdevkit?split=test"])
    # a sweep whose evals read only the base's data has no other path to move
    with pytest.raises(SelfSupError, match=r"eval_data=/x moves the evals' one data path other than the base's; "
                                           r".*goyal_data_size_cifar10.yaml has none: copy it"):
        load_sweep("goyal_data_size_cifar10", ["eval_data=/x"])


@pytest.mark.parametrize("values, fragment", [("[0.5, 0.5]", "lists 0.5 twice (as 0.5 and 0.5)"),
                                              ("[1, 2, 1.0]", "lists 1.0 twice (as 1 and 1.0)")])
def test_a_value_repeated_in_an_axis_is_refused_when_the_file_is_read(tmp_path, values, fragment):
    """width: [0.5, 0.5] gave duplicate rows, width: [1, 1.0] trained one cell twice (width=1, width=1.0): a
    value repeated in an axis, compared by value, is refused in one line naming the axis and the value."""
    (tmp_path / "s.yaml").write_text(SWEEP.replace("width: [0.5, 1]", f"width: {values}"))
    with pytest.raises(SelfSupError, match=r"grid axis width " + re.escape(fragment) + ": give each value once"):
        load_sweep(tmp_path / "s.yaml")


def test_a_damaged_evals_json_is_said_and_evaluated_again(tmp_path, capsys, monkeypatch):
    """evals.json was written in place: a full disk left 0 bytes and every rerun crashed on its JSON. It is
    written atomically now, and one that does not read is said in one line and counts as not evaluated."""
    (tmp_path / "s.yaml").write_text(SWEEP.replace("width: [0.5, 1]", "width: [0.5]")
                                     .replace("data.fraction: [0.5, 1.0]", "epochs: [1]"))
    out = tmp_path / "out"
    assert run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)[0] == 0
    cell = out / "cells" / "width=0.5,epochs=1"
    rows = list(csv.DictReader(open(out / "results.csv")))
    good = (cell / "evals.json").read_text()
    (cell / "evals.json").write_text("")
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)
    assert code == 0, err
    assert f"{cell / 'evals.json'} is damaged (not readable JSON): the cell's evaluations run again" in err
    assert json.loads((cell / "cell.json").read_text())["eval_s"] > 0
    assert (cell / "evals.json").read_text() == good and list(csv.DictReader(open(out / "results.csv"))) == rows
    assert not list(cell.glob(".*.tmp"))
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SelfSupError, match="No space left on device"):        # a full disk keeps the previous file
        sweep._write_json(cell / "evals.json", {})
    assert (cell / "evals.json").read_text() == good


ONE_CELL = SWEEP.replace("width: [0.5, 1]", "width: [0.5]").replace("  data.fraction: [0.5, 1.0]\n", "")


def test_a_cell_whose_checkpoint_changed_is_evaluated_again(tmp_path, capsys):
    """evals.json was keyed by the eval's settings only: a cell resumed to more epochs, or retrained after its
    last.pt was deleted, kept the old checkpoint's scores. Each evaluation now records the hash of the checkpoint
    it scored and runs again when the cell's last.pt differs; the table shows the current weights' scores."""
    from selfsup.eval.features import file_hash

    (tmp_path / "s.yaml").write_text(ONE_CELL)
    out, cell = tmp_path / "out", tmp_path / "out" / "cells" / "width=0.5"

    def sweep_and_check(*overrides):
        code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out, *overrides)
        assert code == 0, err
        values = [float(r["value"]) for r in csv.DictReader(open(out / "results.csv"))]
        spec = load_sweep(tmp_path / "s.yaml")
        fresh = [r["value"] for r in sweep._evaluate(spec["evals"][0], str(cell / "last.pt"))]
        assert values == pytest.approx(fresh)                     # the scores of the weights in last.pt now
        stored = json.loads((cell / "evals.json").read_text())
        assert [v["checkpoint"] for v in stored.values()] == [file_hash(cell / "last.pt")]
        return json.loads((cell / "cell.json").read_text())["eval_s"]

    assert sweep_and_check() > 0
    assert sweep_and_check() == 0                                 # nothing changed: skipped
    assert sweep_and_check("epochs=2", "resume_with_changes=true") > 0          # resumed to epoch 2
    (cell / "last.pt").unlink()
    assert sweep_and_check("epochs=3", "resume_with_changes=true") > 0          # retrained from scratch


def test_a_changed_cell_is_refused_naming_the_override_a_sweep_takes(tmp_path, capsys):
    """The trainer's refusal of a cell whose settings changed said "pass --resume-with-changes", a flag sweep
    does not take: it names resume_with_changes=true after the sweep file, which continues the cell."""
    (tmp_path / "s.yaml").write_text(ONE_CELL)
    out = tmp_path / "out"
    assert run(capsys, "sweep", tmp_path / "s.yaml", "--out", out)[0] == 0
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out, "epochs=2")
    assert one_line_error(code, err, "has epochs=1, this command epochs=2: resume with the run's settings, or pass "
                                     "resume_with_changes=true after the sweep file to continue with the new ones")
    assert "--resume-with-changes" not in err
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--out", out, "epochs=2", "resume_with_changes=true")
    assert code == 0, err


def test_an_alias_bomb_or_a_deeply_nested_sweep_file_is_refused_in_one_line(tmp_path):
    """893 bytes of nested YAML aliases grew past 2 GB in a minute (the sweep flattens its base); a
    100,000-deep list ended in a RecursionError traceback."""
    keys = "abcdefghij"
    lines = ["base:", "  data: 'synthetic:64'", "  method: simclr",
             "  l0: &a0 {" + ", ".join(f"{c}: 1" for c in keys) + "}"]
    lines += [f"  l{i}: &a{i} {{" + ", ".join(f"{c}: *a{i - 1}" for c in keys) + "}" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["grid:", "  epochs: [1]", "evals: []"]) + "\n")
    with pytest.raises(SelfSupError, match=r"bomb\.yaml line 5: YAML aliases \(\*name\) are not read in sweep files"):
        load_sweep(tmp_path / "bomb.yaml")
    (tmp_path / "deep.yaml").write_text("plot: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SelfSupError, match=r"deep\.yaml: it is nested too deeply"):
        load_sweep(tmp_path / "deep.yaml")


def test_a_missing_eval_path_suggests_eval_data_only_where_it_can_move_it(tmp_path, monkeypatch):
    from selfsup.sweep import check_data_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        'name: two\nbase: {method: simclr, backbone: convnet, epochs: 0, data: "synthetic:64?classes=4&size=16"}\n'
        'grid: {width: [1]}\nevals:\n'
        '  - {protocol: knn, train_data: "/nope/a", test_data: "/nope/a"}\n'
        '  - {protocol: knn, train_data: "/nope/b", test_data: "/nope/b"}\n')
    with pytest.raises(SelfSupError, match=r"/nope/a does not exist: run from a directory where /nope/a exists, or "
                                           r"copy .*s\.yaml and set the evals' paths") as info:
        check_data_paths(load_sweep(tmp_path / "s.yaml"))
    assert "eval_data=" not in str(info.value)
