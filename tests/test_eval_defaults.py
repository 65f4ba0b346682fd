"""Every evaluation protocol defaults to the checkpoint's pretraining size, also when that size
came from the data (config image_size null), and says the size it used."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY, one_line_error, run
from selfsup.checkpoint import load_checkpoint
from selfsup.errors import SelfSupError
from selfsup.eval import linear_probe

BIG = "synthetic:32?classes=4&size=32&seed=1"        # twice the pretraining size (16 px)


@pytest.fixture(scope="session")
def ckpt(random_ckpt):
    return random_ckpt


def test_the_checkpoint_size_came_from_the_data(ckpt):
    c = load_checkpoint(ckpt)
    assert c["config"]["image_size"] is None and c["image_size"] == 16


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_knn_and_linear_default_to_the_pretraining_size(ckpt, capsys, protocol):
    results = {}
    for size in (None, 16, 32):
        extra = [] if size is None else ["--image-size", size]
        code, out, err = run(capsys, "eval", protocol, "--checkpoint", ckpt, "--train-data", BIG, "--test-data", BIG,
                             "--pool", "goyal", *(["--probe-epochs", 1] if protocol == "linear" else []), "--no-cache",
                             "--json", *extra)
        assert code == 0, err
        results[size] = json.loads(out.strip().splitlines()[-1])
    assert results[None]["image_size"] == 16 and results[32]["image_size"] == 32
    assert results[None]["feature_dim"] == results[16]["feature_dim"] != results[32]["feature_dim"]


def test_cluster_defaults_to_the_pretraining_size(ckpt, capsys):
    code, out, err = run(capsys, "eval", "cluster", "--checkpoint", ckpt, "--test-data", BIG, "--no-cache", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["image_size"] == 16


def test_svm_and_lowshot_features_default_to_the_pretraining_size(ckpt):
    from selfsup.eval.suite import _features, default_svm_taps

    dims = {}
    for size in (None, 16, 32):
        taps, xtr, _, _, _, info = _features(str(ckpt), BIG, BIG, ("conv4",), size, "cpu", 64, False, False,
                                             default_svm_taps)
        assert info["image_size"] == (size or 16)
        dims[size] = xtr["conv4"].shape[1]
    assert dims[None] == dims[16] != dims[32]


def test_viz_defaults_to_the_pretraining_size(ckpt, tmp_path, monkeypatch):
    from selfsup.report import viz

    seen = []
    monkeypatch.setattr(viz, "clusters_png", lambda *a, **k: seen.append(a[7]) or "ok")
    viz.visualise("clusters", str(ckpt), BIG, tmp_path / "c.png", clusters=2)
    assert seen == [16]


def test_viz_patch_figures_bring_the_images_to_the_pretraining_size(ckpt, tmp_path, monkeypatch):
    """As `eval patches`: the 32 px images are brought to the checkpoint's 16 px first, so a patch side means
    what it meant in pretraining (it was read in the images' own pixels: 8 px windows of 32 px images)."""
    from selfsup.report import viz

    line = viz.visualise("heatmap", str(ckpt), BIG, tmp_path / "h.png", patch_size=8)
    assert "5 x 5 windows of 8 px" in line, line              # (16 - 8) / 2 + 1 windows a side, not 13
    assert "5 x 5 windows of 8 px" in viz.visualise("heatmap", str(ckpt), BIG, tmp_path / "h.png")   # side 16 / 2
    boxes = []
    monkeypatch.setattr(viz, "patch_knn_png", lambda ds, i, q, found, png, size: boxes.extend(
        [q] + [b for _, b, _ in found]) or size == 16 or pytest.fail(f"shown at {size}"))
    viz.visualise("patch-knn", str(ckpt), BIG, tmp_path / "k.png", patch_size=8, max_images=8)
    assert boxes and max(float(b.max()) for b in boxes) <= 16
    grids = []
    monkeypatch.setattr(viz, "convergence_png", lambda result, png, title: grids.append(result["all_patches"]))
    viz.visualise("convergence", str(ckpt), BIG, tmp_path / "c.png", patch_size=8, max_images=8)
    assert grids == [25]                                      # every 8 px window of the 16 px image at stride 2


def test_a_foreign_state_dict_is_evaluated_at_the_images_size():
    from selfsup.eval.checks import eval_image_size

    assert eval_image_size({}) is None and eval_image_size({"config": {"image_size": 24}}) == 24
    assert eval_image_size({"image_size": 16, "config": {"image_size": None}}) == 16
    assert eval_image_size({"image_size": 16}, 40) == 40


@pytest.fixture(scope="module")
def nan_ckpt(ckpt):
    """The checkpoint with finite but huge convolution weights: the activations overflow, the
    features are infinite or NaN (a NaN weight itself is refused when the checkpoint is read)."""
    c = torch.load(ckpt, weights_only=True)
    for key in ("model", "backbone_state"):
        if isinstance(c.get(key), dict):
            for v in c[key].values():
                if v.ndim == 4:
                    v.mul_(1e15)
    out = ckpt.parent / "nan.pt"
    torch.save(c, out)
    return out


@pytest.mark.parametrize("protocol", ["knn", "linear", "patches", "cluster"])
def test_nan_features_are_refused(nan_ckpt, capsys, protocol):
    code, out, err = run(capsys, "eval", protocol, "--checkpoint", nan_ckpt, "--train-data", TINY, "--test-data",
                         TINY, *(["--probe-epochs", 1] if protocol in ("linear", "patches") else []), "--no-cache",
                         "--json")
    assert one_line_error(code, err, "features contain NaN or infinite values"), err


def test_the_standardised_probe_needs_two_training_images():
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(SelfSupError, match="needs at least 2 training images, got 1"):
        linear_probe(x[:1], y[:1], x, y, epochs=1)


def test_a_test_class_with_no_training_image_is_refused(tmp_path, capsys, ckpt):
    from PIL import Image

    lines = {"train": [], "test": []}
    for label in range(3):
        for i in range(4):
            path = tmp_path / f"{label}_{i}.png"
            Image.fromarray(np.full((16, 16, 3), 60 * label + 10 * i, dtype=np.uint8)).save(path)
            lines["test"].append(f"{path} {label}")
            if label != 1:                              # class 1 is listed (labels 0 and 2) but has no image
                lines["train"].append(f"{path} {label}")
    for split, items in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(items) + "\n")
    for protocol in ("knn", "linear"):
        code, _, err = run(capsys, "eval", protocol, "--checkpoint", ckpt, "--train-data", tmp_path / "train.txt",
                           "--test-data", tmp_path / "test.txt", *(["--probe-epochs", 1] if protocol == "linear" else []),
                           "--no-cache")
        assert one_line_error(code, err, "1 class of"), err
        assert "has no training image in" in err and "(first: '1')" in err


def test_lowshot_says_which_k_values_it_skipped_and_refuses_when_all_are():
    from selfsup.eval.lowshot import lowshot_benchmark
    from selfsup.eval.suite import format_lowshot

    rng = np.random.default_rng(0)
    labels = np.array([0] * 5 + [1] * 7)                  # the smallest class has 5 images
    X, Y = rng.normal(size=(12, 8)), np.eye(2, dtype=np.int64)[labels]
    r = lowshot_benchmark(X, Y, X, Y, ks=(2, 10), num_samples=2, costs="0.1", style="places", n_jobs=1)
    text = format_lowshot({"per_tap": {"conv4": r}, "style": "places", "num_samples": 2})
    assert "| 2 |" in text and "| 10 |" not in text
    assert "skipped: k=10 is larger than the smallest class (5 training images)" in text
    with pytest.raises(SelfSupError, match=r"every low-shot k \(10, 50\) is larger than the smallest class \(5 "):
        lowshot_benchmark(X, Y, X, Y, ks=(10, 50), num_samples=2, costs="0.1", style="places", n_jobs=1)


@pytest.mark.parametrize("argv, fragment", [
    (["--clusters", 0], "--clusters must be at least 1, got 0"),
    (["--clusters", -2], "--clusters must be at least 1, got -2"),
    (["--clusters", 65], "--clusters 65 is more than the 64 images"),
    (["--iterations", -1], "--iterations must be at least 0, got -1"),
    (["--teacher", "hog:0"], "--teacher hog:0: the HOG codebook needs a whole number of words of at least 1"),
    (["--teacher", "hog:many"], "--teacher hog:many: the HOG codebook needs a whole number"),
])
def test_transfer_refuses_bad_values_before_extracting(ckpt, tmp_path, capsys, monkeypatch, argv, fragment):
    from selfsup import transfer
    from selfsup.cluster import hog

    def no_work(*a, **k):
        raise AssertionError("features extracted before the settings were checked")

    monkeypatch.setattr(transfer, "extract_features", no_work)
    monkeypatch.setattr(hog, "hog_codebook", no_work)
    teacher = [] if "--teacher" in argv else ["--teacher", ckpt]
    code, _, err = run(capsys, "transfer", *teacher, "--student", "convnet", "--cluster-data", TINY,
                       "--out", tmp_path / "t", *argv)
    assert one_line_error(code, err, fragment), err


@pytest.mark.parametrize("protocol", ["svm", "lowshot"])
def test_suite_refuses_zero_jobs(ckpt, capsys, monkeypatch, protocol):
    from selfsup.eval import suite

    monkeypatch.setattr(suite, "_features", lambda *a, **k: pytest.fail("features extracted before --jobs was checked"))
    code, _, err = run(capsys, "eval", protocol, "--checkpoint", ckpt, "--train-data", TINY, "--test-data", TINY,
                       "--jobs", 0)
    assert one_line_error(code, err, "--jobs 0 runs no worker process"), err


def test_cluster_refuses_a_negative_image_size(ckpt, capsys):
    code, _, err = run(capsys, "eval", "cluster", "--checkpoint", ckpt, "--test-data", TINY, "--image-size", -5)
    assert one_line_error(code, err, "--image-size must be at least 1, got -5"), err


@pytest.mark.parametrize("argv, fragment", [
    (["--clusters", 0], "--clusters must be at least 1, got 0"),
    (["--clusters", -3], "--clusters must be at least 1, got -3"),
    (["--pca", 0], "--pca must be at least 1, got 0"),
    (["--iterations", -1], "--iterations must be at least 0, got -1"),
    (["--image-size", 0], "--image-size must be at least 1, got 0"),
])
def test_cluster_refuses_zero_instead_of_taking_the_default(ckpt, capsys, argv, fragment):
    code, _, err = run(capsys, "eval", "cluster", "--checkpoint", ckpt, "--test-data", TINY, *argv)
    assert one_line_error(code, err, fragment), err


def test_finetune_checks_its_settings_and_test_classes_before_training(ckpt, tmp_path, monkeypatch):
    from selfsup import finetune as ft

    monkeypatch.setattr(ft, "pretrain", lambda cfg: pytest.fail("trained before the checks"))
    with pytest.raises(SelfSupError, match="2 classes of synthetic:64\\?classes=6&size=16 are not in"):
        ft.finetune(str(ckpt), TINY, "synthetic:64?classes=6&size=16", epochs=1, out=str(tmp_path / "a"))
    for epochs in (0, -2):
        with pytest.raises(SelfSupError, match=f"--epochs must be at least 1, got {epochs}"):
            ft.finetune(str(ckpt), TINY, TINY, epochs=epochs, out=str(tmp_path / "b"))


def test_svm_and_lowshot_messages_name_the_class():
    from selfsup.eval.lowshot import lowshot_benchmark
    from selfsup.eval.svm import svm_benchmark

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 8))
    Ytr = np.eye(2, dtype=np.int64)[np.arange(12) % 2]
    Yte = np.eye(2, dtype=np.int64)[np.zeros(12, dtype=int)]        # no test image of 'dog'
    names = ["cat", "dog"]
    with pytest.raises(SelfSupError, match="class 'dog' has no positive"):
        svm_benchmark(X, Ytr, X, Yte, costs="0.1", n_jobs=1, class_names=names)
    with pytest.raises(SelfSupError, match="class 'dog' has no positive"):
        lowshot_benchmark(X, Ytr, X, Yte, ks=(1,), num_samples=1, costs="0.1", n_jobs=1, class_names=names)
    with pytest.raises(SelfSupError, match="class 'cat' has 0 positive"):
        svm_benchmark(X, Ytr * 0, X, Ytr, costs="0.1", n_jobs=1, class_names=names)
    with pytest.raises(SelfSupError, match="negative images of class 'cat'"):
        lowshot_benchmark(X, Ytr, X, Ytr, ks=(1,), num_samples=1, costs="0.1", n_jobs=1, class_names=names)


def test_eval_svm_names_the_class_without_test_images(ckpt, capsys):
    from selfsup.data.datasets import load_dataset

    test = "synthetic:32?classes=3&size=16&seed=1"
    missing = load_dataset(TINY).classes[3]
    code, _, err = run(capsys, "eval", "svm", "--checkpoint", ckpt, "--train-data", TINY, "--test-data", test,
                       "--taps", "conv4", "--costs", "0.1", "--jobs", 1, "--no-cache", "--json")
    assert one_line_error(code, err, f"class {missing!r} has no positive"), err


def test_knn_top5_counts_only_classes_that_got_votes():
    from selfsup.eval.run import _probe

    xtr, ytr = torch.eye(2, 4), torch.tensor([0, 1])         # the neighbours vote for classes 0 and 1 only
    xte, yte = torch.ones(1, 4), torch.tensor([4])           # class 4 ties with 2 and 3 at zero votes
    result = _probe("knn", xtr, ytr, xte, yte, 2, 0.07, 1, 0.1)
    assert result == {"top1": 0.0, "top5": 0.0}
