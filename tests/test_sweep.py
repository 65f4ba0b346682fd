"""selfsup sweep: the grid, the data-spec axes, resumable cells, the CSV, the tables and the plots."""
import csv
import json

import pytest

from conftest import one_line_error, run
from selfsup.errors import SelfSupError
from selfsup.sweep import cell_settings, cells, load_sweep

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
    (no data is read: the image size is given)."""
    from pathlib import Path

    from selfsup.config import check_config, resolve_config
    from selfsup.methods import get_method

    files = sorted(Path(__file__).parent.parent.glob("configs/sweeps/*.yaml"))
    assert len(files) >= 7
    for f in files:
        spec = load_sweep(f)
        for cell in cells(spec):
            s = cell_settings(spec, cell)
            items = [f"{k}={v}" for k, v in s.items() if k != "method"]
            cfg = resolve_config(get_method(s["method"]), flags={"method": s["method"]}, overrides=items,
                                 image_size_of=lambda spec: 32)
            check_config(cfg)


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
