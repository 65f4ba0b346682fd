"""Evaluation and viz inputs that would give a meaningless result are refused in one line;
classes are matched by name; the device is resolved before anything (cache hits too)."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, one_line_error, run
from selfsup.cli import main
from selfsup.data.datasets import load_dataset
from selfsup.errors import SelfSupError
from selfsup.eval import extract_features, knn_scores, linear_probe
from selfsup.eval.patches import aggregated_features, nearest_patches, patch_convergence, similarity_map
from selfsup.models import build_backbone

COLOURS = {"a": (220, 30, 30), "b": (30, 200, 30), "c": (30, 30, 220)}


def pretrain(out, method="simclr", data=TINY, backbone="convnet", *extra):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFSUP_CACHE", str(out.parent / "cache"))
        assert main(["pretrain", method, "--data", data, "--backbone", backbone, "--epochs", "0", "--batch-size", "4",
                     "--out", str(out), "progress=false", "device=cpu", *extra]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return pretrain(tmp_path_factory.mktemp("eval_inputs") / "run", "simclr", TINY, "convnet", "simclr.views=patch:8")


def image_folder(root, classes, per_class=4):
    """Solid-colour 16 px images (a shade per image), one subfolder per class."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = np.array(COLOURS[name]) * (1 - 0.05 * i)
            Image.fromarray(np.full((16, 16, 3), colour, dtype=np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def test_test_classes_are_matched_to_the_training_classes_by_name(tmp_path, capsys, ckpt):
    train = image_folder(tmp_path / "train", "abc")
    test = image_folder(tmp_path / "test", "ac")            # labels a=0, c=1 here; a=0, c=2 in train
    for protocol in ("knn", "patches"):
        code, out, err = run(capsys, "eval", protocol, "--checkpoint", ckpt, "--train-data", train, "--test-data", test,
                             "--k", 3, "--probe", "knn", "--json")
        assert code == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert (result["knn"] if protocol == "patches" else result)["top1"] == 1.0


def test_test_classes_missing_from_the_training_data_are_refused(tmp_path, capsys, ckpt):
    train = image_folder(tmp_path / "train", "ac")
    test = image_folder(tmp_path / "test", "abc")
    code, _, err = run(capsys, "eval", "linear", "--checkpoint", ckpt, "--train-data", train, "--test-data", test)
    assert one_line_error(code, err, "1 class of"), err
    assert "(first: 'b')" in err
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", ckpt, "--train-data", TINY,
                       "--test-data", "synthetic:64?classes=6&size=16")
    assert one_line_error(code, err, "2 classes of synthetic:64?classes=6&size=16 are not in"), err


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "knn", "--k", 0], "--k must be at least 1, got 0"),
    (["eval", "knn", "--k", -3], "--k must be at least 1, got -3"),
    (["eval", "knn", "--temperature", 0], "--temperature must be a positive number, got 0.0"),
    (["eval", "knn", "--temperature", -0.1], "--temperature must be a positive number"),
    (["eval", "knn", "--temperature", "nan"], "--temperature must be a positive number"),
    (["eval", "linear", "--probe-epochs", 0], "--probe-epochs must be at least 1, got 0"),
    (["eval", "linear", "--probe-epochs", -1], "--probe-epochs must be at least 1"),
    (["eval", "linear", "--lr", 0], "--lr must be a positive number, got 0.0"),
    (["eval", "linear", "--lr", -0.1], "--lr must be a positive number"),
    (["eval", "knn", "--batch-size", 0], "--batch-size must be at least 1, got 0"),
    (["eval", "linear", "--batch-size", -8], "--batch-size must be at least 1"),
    (["eval", "knn", "--image-size", 0], "--image-size must be at least 1"),
    (["eval", "patches", "--num-patches", 0], "--num-patches must be at least 1, got 0"),
    (["eval", "patches", "--chunk", 0], "--chunk must be at least 1, got 0"),
    (["eval", "patches", "--aggregate", "local", "--window", 0], "--window must be at least 1, got 0"),
    (["eval", "patches", "--aggregate", "local", "--stride", 0], "--stride must be at least 1, got 0"),
    (["eval", "patches", "--aggregate", "local", "--stride", -2], "--stride must be at least 1"),
    (["eval", "patches", "--patch-size", 0], "--patch-size must be at least 1, got 0"),
    (["eval", "patches", "--probe", "knn,svm"], "unknown probe 'svm'"),
    (["eval", "patches", "--probe", "knn", "--k", 0], "--k must be at least 1"),
    (["eval", "patches", "--pool", "goyal"], "--pool goyal applies to eval knn and linear"),   # was ignored
    (["eval", "patches", "--pool", "9k"], "--pool 9k applies to eval knn and linear"),
    (["eval", "patches", "--pool", "max"], "--pool max applies to eval knn and linear"),
    (["eval", "linear", "--preset", "goyal", "--pool", "max"], "layer-wise probes (--preset goyal, --taps) pool "
                                                                 "every tap"),                  # was ignored
    (["eval", "linear", "--taps", "conv3", "--pool", "avg"], "layer-wise probes"),
    (["eval", "knn", "--seed", "3"], "--seed applies to eval linear, patches, cluster and lowshot"),  # was ignored
    (["eval", "svm", "--seed", "3"], "--seed applies to eval linear, patches, cluster and lowshot"),
    (["eval", "knn", "--probe-epochs", "3"], "--probe-epochs and --lr set the linear probe"),         # was ignored
    (["eval", "knn", "--lr", "0.5"], "--probe-epochs and --lr set the linear probe"),
    (["eval", "patches", "--probe", "knn", "--lr", "0.5"], "--probe-epochs and --lr set the linear probe"),
])
def test_meaningless_eval_settings_are_refused(capsys, ckpt, argv, fragment):
    code, _, err = run(capsys, *argv, "--checkpoint", ckpt, "--train-data", TINY, "--test-data", TINY)
    assert one_line_error(code, err, fragment), err


def test_seed_reaches_the_linear_probe(capsys, ckpt, monkeypatch):
    """eval linear --seed was refused, though the probe draws its head, batches and views from a seed (0)."""
    import selfsup.eval.run as run_mod

    seen, real = [], run_mod.linear_probe
    monkeypatch.setattr(run_mod, "linear_probe", lambda *a, seed=0, **k: seen.append(seed) or real(*a, seed=seed, **k))
    for seed in (["--seed", "7"], []):
        code, out, err = run(capsys, "eval", "linear", "--checkpoint", ckpt, "--train-data", TINY, "--test-data",
                             TINY, "--probe-epochs", 1, "--no-cache", "--json", *seed)
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1])["seed"] == (7 if seed else 0)     # recorded in the result
    assert seen == [7, 0]
    # a sweep's knn eval with a seed is refused when the file is read, as the command line refuses it
    from selfsup.eval.run import evaluation_settings

    with pytest.raises(SelfSupError, match="eval knn draws nothing at random; drop --seed"):
        evaluation_settings("knn", seed=3)


@pytest.mark.parametrize("argv, fragment", [
    (["heatmap", "--stride", 0], "--stride must be at least 1, got 0"),
    (["heatmap", "--stride", -1], "--stride must be at least 1"),
    (["heatmap", "--patch-size", 0], "--patch-size must be at least 1"),
    (["heatmap", "--image-size", 0], "--image-size must be at least 1"),
    (["patch-knn", "--k", 0], "--k must be at least 1, got 0"),
    (["patch-knn", "--patches-per-image", 0], "--patches-per-image must be at least 1, got 0"),
    (["patch-knn", "--max-images", 0], "--max-images must be at least 1, got 0"),
    (["convergence", "--max-images", -1], "--max-images must be at least 1"),
    (["convergence", "--counts", "0,4"], "--counts must be numbers of patches of at least 1, got 0,4"),
    (["convergence", "--counts", "1,two"], "--counts '1,two': give numbers of patches separated by commas"),
    (["colorize", "--max-images", 0], "--max-images must be at least 1"),
])
def test_meaningless_viz_settings_are_refused(tmp_path, capsys, ckpt, argv, fragment):
    code, _, err = run(capsys, "viz", *argv, "--checkpoint", ckpt, "--data", TINY, "--out", tmp_path / "x.png")
    assert one_line_error(code, err, fragment), err
    assert not (tmp_path / "x.png").exists()


def test_library_functions_refuse_them_too():
    data = load_dataset("synthetic:8?classes=2&size=16")
    net = build_backbone("convnet")
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    for call, fragment in [
        (lambda: knn_scores(x, y, x, k=0), "--k must be"),
        (lambda: knn_scores(x, y, x, temperature=0), "--temperature must be"),
        (lambda: linear_probe(x, y, x, y, epochs=0), "--probe-epochs must be"),
        (lambda: linear_probe(x, y, x, y, lr=float("inf")), "--lr must be"),
        (lambda: extract_features(net, data, batch_size=0), "--batch-size must be"),
        (lambda: aggregated_features(net, data, aggregate="local", window=0), "--window must be"),
        (lambda: aggregated_features(net, data, chunk=0), "--chunk must be"),
        (lambda: similarity_map(net, torch.zeros(3, 16, 16, dtype=torch.uint8), 8, 0), "--stride must be"),
        (lambda: nearest_patches(net, data, 0, torch.tensor([0., 0., 8., 8.]), k=0), "--k must be"),
        (lambda: patch_convergence(net, data, counts=(0,)), "--counts must be"),
    ]:
        with pytest.raises(SelfSupError, match=re.escape(fragment)):
            call()


def without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("protocol", ["knn", "linear", "patches"])
def test_eval_refuses_an_absent_cuda_with_and_without_a_cached_result(capsys, monkeypatch, ckpt, protocol):
    without_cuda(monkeypatch)
    argv = ["eval", protocol, "--checkpoint", ckpt, "--train-data", TINY, "--test-data", TINY, "--num-patches", 2,
            "--json", *(["--probe-epochs", 1] if protocol != "knn" else [])]
    code, _, err = run(capsys, *argv)                        # fills the feature cache, on the CPU
    assert code == 0, err
    for extra in ([], ["--no-cache"]):
        code, _, err = run(capsys, *argv, "--device", "cuda", *extra)
        assert one_line_error(code, err, "device=cuda was asked for but no CUDA GPU is visible"), err
    code, _, err = run(capsys, *argv, "--device", "auto")
    assert code == 0, err


@pytest.mark.parametrize("kind", ["heatmap", "patch-knn", "convergence", "colorize"])
def test_viz_refuses_an_absent_cuda_for_every_kind(tmp_path, capsys, monkeypatch, ckpt, kind):
    without_cuda(monkeypatch)
    code, _, err = run(capsys, "viz", kind, "--checkpoint", ckpt, "--data", TINY, "--out", tmp_path / "x.png",
                       "--device", "cuda")
    assert one_line_error(code, err, "device=cuda was asked for but no CUDA GPU is visible"), err


def test_viz_heatmap_runs_on_the_device_asked_for(tmp_path, capsys, monkeypatch, ckpt):
    import selfsup.report.viz as viz

    devices = []
    real = viz.similarity_map
    monkeypatch.setattr(viz, "similarity_map", lambda *a, **kw: devices.append(kw.get("device")) or real(*a, **kw))
    code, out, err = run(capsys, "viz", "heatmap", "--checkpoint", ckpt, "--data", TINY, "--out", tmp_path / "h.png",
                         "--device", "cpu")
    assert code == 0 and "spaces embedding, projection" in out, err
    assert devices == [torch.device("cpu")]


def test_viz_heatmap_keeps_the_evaluation_backbone_of_a_jigsaw_alexnet(tmp_path, capsys, monkeypatch):
    import selfsup.report.viz as viz

    ckpt = pretrain(tmp_path / "jigsaw", "jigsaw", "synthetic:4?classes=2&size=256", "alexnet",
                    "jigsaw.permutations=10")
    strides = []
    real = viz.similarity_map
    monkeypatch.setattr(viz, "similarity_map", lambda net, *a, **kw: strides.append(net.conv1.stride) or real(net, *a, **kw))
    code, out, err = run(capsys, "viz", "heatmap", "--checkpoint", ckpt, "--data", "synthetic:4?classes=2&size=256",
                         "--out", tmp_path / "h.png")
    assert code == 0, err
    assert strides == [(4, 4)]              # a standard AlexNet on whole images, not the tiles' stride 2


class NotPlainData:
    pass


@pytest.mark.parametrize("patches", [False, True])
def test_feature_caches_are_read_without_running_code(tmp_path, patches):
    data = load_dataset("synthetic:8?classes=2&size=16")
    net = build_backbone("convnet")
    extract = (lambda: aggregated_features(net, data, num_patches=2, cache_key="k", cache_dir=tmp_path)) if patches \
        else (lambda: extract_features(net, data, cache_key="k", cache_dir=tmp_path))
    extract()
    (cache_file,) = (tmp_path / "features").iterdir()
    torch.save({"features": NotPlainData(), "labels": torch.zeros(8)}, cache_file)
    with pytest.raises(SelfSupError, match="refusing to load feature cache"):
        extract()


def test_eval_patches_brings_both_sets_to_the_pretraining_size(capsys, ckpt):
    """Patches and windows are drawn at the checkpoint's pretraining size (16 px here) in both sets: a test
    set of 24 px gets the same feature dimension (local windows of 8 px at stride 2 gave a 9 x 9 grid at
    24 px beside 5 x 5 at 16 px: a shape error in the probe), as eval knn resizes both sets."""
    bigger = "synthetic:64?classes=4&size=24"
    for extra in ([], ["--aggregate", "local", "--window", 8]):
        dims = []
        for test in (TINY, bigger):
            code, out, err = run(capsys, "eval", "patches", "--checkpoint", ckpt, "--train-data", TINY,
                                 "--test-data", test, "--probe", "knn", "--num-patches", 2, "--no-cache", "--json",
                                 *extra)
            assert code == 0, err
            result = json.loads(out.strip().splitlines()[-1])
            assert result["image_size"] == 16
            dims.append(result["feature_dim"])
        assert dims[0] == dims[1], extra


def test_eval_patches_of_a_foreign_state_dict_needs_one_size_for_both_sets(tmp_path, capsys):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    code, _, err = run(capsys, "eval", "patches", "--checkpoint", tmp_path / "tv.pt", "--train-data", TINY,
                       "--test-data", "synthetic:64?classes=4&size=24", "--probe", "knn", "--no-cache")
    assert one_line_error(code, err, "the training images are 16x16 and the test images 24x24: give --image-size"), err
