import json

import numpy as np
import pytest
import torch

from selfsup.data.datasets import load_dataset
from selfsup.demo import find_fashion_mnist, nearest_training_images, run_demo, score_features
from selfsup.errors import SelfSupError
from test_datasets import FASHION, write_idx


@pytest.fixture
def tiny_fashion(tmp_path):
    """Fashion-MNIST layout (gzipped IDX) holding 300 + 100 small synthetic images."""
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    for prefix, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        d = load_dataset(f"synthetic:{n}?classes=10&size=28&channels=1&seed={seed}")
        write_idx(root / f"{prefix}-images-idx3-ubyte", np.asarray(d.images[:, 0]))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", d.labels)
    return root


def test_demo_pipeline_writes_report(tiny_fashion, tmp_path):
    results = run_demo(out=str(tmp_path / "demo"), data=str(tiny_fashion), epochs=1, device="cpu")
    assert list(results) == ["random", "simclr", "jigclu", "swav"]
    for r in results.values():
        assert {"knn", "linear", "svm_map", "lowshot", "pretrain_s", "eval_s"} <= set(r)
        assert all(0 <= r[p] <= 1 for p in ("knn", "linear", "svm_map"))
        # 30 training images per class: k = 1 .. 16 run, 32 .. 96 are skipped
        assert sorted(r["lowshot"]) == [1, 2, 4, 8, 16] and all(0 <= v <= 1 for v in r["lowshot"].values())
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert "| simclr |" in report and "| random | 0 s |" in report and "evaluation" in report
    assert "epochs: simclr 1, jigclu 1, swav 1" in report          # the budgets run, not the defaults
    for png in ("loss.png", "accuracy.png", "lowshot.png", "retrieval.png"):
        assert f"]({png})" in report and (out / png).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["jigclu"]["knn"] == results["jigclu"]["knn"]
    # a second run reuses the finished runs: same pretraining times, no retraining
    again = run_demo(out=str(out), data=str(tiny_fashion), epochs=1, device="cpu", methods=["simclr"])
    assert again["simclr"]["pretrain_s"] == pytest.approx(results["simclr"]["pretrain_s"], abs=0.1)


def test_demo_refuses_unknown_method(tiny_fashion, tmp_path):
    with pytest.raises(SelfSupError, match="no recipe for byol"):
        run_demo(out=str(tmp_path / "demo"), data=str(tiny_fashion), methods=["simclr", "byol"])
    with pytest.raises(SelfSupError, match="an empty list"):                  # --methods= named none
        run_demo(out=str(tmp_path / "demo"), data=str(tiny_fashion), methods=[""])
    with pytest.raises(SelfSupError, match="at least one epoch"):              # was random weights as 'swav'
        run_demo(out=str(tmp_path / "demo"), data=str(tiny_fashion), epochs=0)
    assert not (tmp_path / "demo").exists()


def test_an_interrupted_demo_stops_and_scores_nothing(tiny_fashion, tmp_path, monkeypatch, capsys):
    """SIGTERM stopped the method's training only: the demo went on and scored the partial run as finished."""
    from selfsup.cli import main
    from selfsup.engine.trainer import Trainer

    monkeypatch.setattr(Trainer, "fit", lambda self, on_epoch_end=None: "interrupted")
    code = main(["demo", "--data", str(tiny_fashion), "--out", str(tmp_path / "demo"), "--epochs", "1",
                 "--device", "cpu"])
    assert code == 130 and "interrupted" in capsys.readouterr().out
    assert not (tmp_path / "demo" / "report.md").exists()


def test_a_rerun_on_other_data_or_budget_refuses_the_old_runs(tiny_fashion, tmp_path, monkeypatch, capsys):
    """A rerun reused any finished run of the same epochs, whatever data it was trained on (the report then
    showed runs of other images as this data's); and another --epochs was refused with advice the demo does not
    take (--resume-with-changes)."""
    import shutil

    from selfsup.cli import main

    other = tmp_path / "other-fashion"
    shutil.copytree(tiny_fashion, other)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "1", "--device", "cpu", "--methods", "jigclu"]
    assert main(args + ["--data", str(tiny_fashion)]) == 0
    capsys.readouterr()
    code = main(args + ["--data", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and f"the demo's run in {out / 'random'} has data=fashion-mnist:{tiny_fashion}?split=train, " \
        f"this command data=fashion-mnist:{other}?split=train" in err and f"remove {out / 'random'} to train" in err, err
    code = main(args[:4] + ["2"] + args[5:] + ["--data", str(tiny_fashion)])
    err = capsys.readouterr().err
    assert code == 2 and "has epochs=1, this command epochs=2" in err and "--resume-with-changes" not in err, err
    monkeypatch.chdir(tiny_fashion.parent)                       # the same data, spelled relative: reused
    assert main(args + ["--data", tiny_fashion.name]) == 0


def test_an_interrupted_and_resumed_run_reports_the_seconds_of_both_processes(tiny_fashion, tmp_path, monkeypatch):
    from selfsup.demo import pretrain
    from selfsup.engine.trainer import Trainer

    spec = f"fashion-mnist:{tiny_fashion}?split=train"
    real_fit, clock = Trainer.fit, iter([0.0, 100.0, 1000.0, 1030.0])
    monkeypatch.setattr("selfsup.demo.time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    monkeypatch.setattr(Trainer, "fit", lambda self, on_epoch_end=None: real_fit(self) and "interrupted")
    assert pretrain("jigclu", tmp_path / "run", spec, 1, "cpu", ["batch_size=32"]) is None      # 100 s, stopped
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert pretrain("jigclu", tmp_path / "run", spec, 1, "cpu", ["batch_size=32"]) == pytest.approx(130.0)


def test_score_features_on_separable_features():
    """Every protocol scores features that separate the classes perfectly at (nearly) 100%."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=g) * 10
    ytr, yte = torch.arange(10).repeat(40), torch.arange(10).repeat(10)
    xtr = centres[ytr] + torch.randn(len(ytr), 16, generator=g)
    xte = centres[yte] + torch.randn(len(yte), 16, generator=g)
    r = score_features(xtr, ytr, xte, yte)
    assert r["knn"] == 1.0 and r["linear"] == 1.0 and r["svm_map"] > 0.99
    assert sorted(r["lowshot"]) == [1, 2, 4, 8, 16, 32] and r["lowshot"][32] > 0.99


def test_nearest_training_images_is_brute_force_cosine():
    g = torch.Generator().manual_seed(1)
    xtr, xte = torch.randn(50, 8, generator=g), torch.randn(5, 8, generator=g)
    queries = np.array([0, 3])
    idx = nearest_training_images(xtr, xte, queries, 4)
    for row, q in enumerate(queries):
        sims = [float(torch.nn.functional.cosine_similarity(xte[q], xtr[j], dim=0)) for j in range(50)]
        assert idx[row].tolist() == sorted(range(50), key=lambda j: -sims[j])[:4]


def test_demo_without_data_says_how_to_get_it(tmp_path):
    with pytest.raises(SelfSupError, match="make demo"):
        find_fashion_mnist(str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_demo_beats_random_weights(tmp_path):
    results = run_demo(out=str(tmp_path / "demo"), device="cpu")
    assert all(results[m]["knn"] > results["random"]["knn"] for m in ("simclr", "jigclu", "swav"))
    assert max(results[m]["knn"] for m in ("simclr", "jigclu", "swav")) >= results["random"]["knn"] + 0.05
