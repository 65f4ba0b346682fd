"""The command line of the Goyal et al. 2019 suite: layer-wise probes (eval linear --taps)."""
import json

import pytest

from conftest import TINY, one_line_error, run

TEST = "synthetic:32?classes=4&size=16&seed=1"


def test_layerwise_probe_from_the_command_line(random_ckpt, capsys):
    code, out, _ = run(capsys, "eval", "linear", "--checkpoint", random_ckpt, "--train-data", TINY, "--test-data", TEST,
                       "--taps", "conv2,conv4", "--probe-epochs", "2", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["preset"] == "goyal" and list(result["taps"]) == ["conv2", "conv4"]
    assert result["augment"] is True and result["overrides"] == {"epochs": 2}
    code, out, _ = run(capsys, "eval", "linear", "--checkpoint", random_ckpt, "--train-data", TINY, "--test-data", TEST,
                       "--preset", "goyal", "--cached", "--probe-epochs", "1")
    assert code == 0 and "| layer-wise top-1 (%) | conv1 | conv2 | conv3 | conv4 |" in out   # every tap by default
    assert "cached features" in out


@pytest.mark.parametrize("argv, fragment", [
    (["linear", "--taps", "conv2", "--preset", "moco"], "--taps trains Goyal's layer-wise heads"),
    (["knn", "--taps", "conv2"], "--taps and --cached apply to eval linear only"),
    (["linear", "--cached"], "--cached applies to the layer-wise preset goyal"),
    (["linear", "--taps", ","], "--taps ','"),
    (["linear", "--taps", "conv9"], "unknown tap 'conv9'"),
])
def test_layerwise_bad_options_are_one_line_errors(random_ckpt, capsys, argv, fragment):
    code, _, err = run(capsys, "eval", *argv[:1], "--checkpoint", random_ckpt, "--train-data", TINY, "--test-data", TEST,
                       *argv[1:], "--probe-epochs", "1")
    assert one_line_error(code, err, fragment), err


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    from selfsup.data.datasets import load_dataset
    from selfsup.data.mosaic import build_mosaics

    out = tmp_path_factory.mktemp("voc") / "mosaics"
    build_mosaics(load_dataset("synthetic:200?size=16&classes=4"), out, trainval=60, test=50, seed=0)
    return out


def test_svm_and_lowshot_from_the_command_line(random_ckpt, mosaics, capsys):
    """eval svm: every stage's tap by default, a mAP per tap; eval lowshot: VOC-style samples on a
    multi-label set, the cost chosen on the test set and said so."""
    tv, te = f"voc07:{mosaics}?split=trainval", f"voc07:{mosaics}?split=test"
    code, out, _ = run(capsys, "eval", "svm", "--checkpoint", random_ckpt, "--train-data", tv, "--test-data", te,
                       "--costs", "0.1,1", "--jobs", "1", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["taps"] == ["conv1", "conv2", "conv3", "conv4"] and result["multi_label"]
    for r in result["per_tap"].values():
        assert 0 < r["map"] <= 1 and len(r["classes"]) == 4 and r["timings"]["cv_s"] <= r["timings"]["total_s"]
    code, out, _ = run(capsys, "eval", "lowshot", "--checkpoint", random_ckpt, "--train-data", tv, "--test-data", te,
                       "--costs", "0.1,1", "--shots", "1", "--samples", "2", "--jobs", "1")
    assert code == 0 and "| k | conv3 mAP (%) | conv4 mAP (%) |" in out and "chosen on the test set" in out


@pytest.mark.parametrize("argv, fragment", [
    (["lowshot", "--shots", "1,x"], "--shots '1,x'"),
    (["svm", "--costs", "-1"], "cost"),
    (["svm", "--test-data", TINY], "must both be multi-label"),
    (["knn"], "is multi-label (voc07): score it with eval svm"),
    (["svm", "--tap", "conv2"], "drop --tap / --pool and name the taps with --taps"),     # was silently ignored
    (["lowshot", "--pool", "avg"], "drop --tap / --pool and name the taps with --taps"),
    (["svm", "--device", "auto", "--solver", "torch", "--taps", "conv4"], None),   # auto resolves: runs
])
def test_suite_bad_options_are_one_line_errors(random_ckpt, mosaics, capsys, argv, fragment):
    test = argv[argv.index("--test-data") + 1] if "--test-data" in argv else f"voc07:{mosaics}?split=test"
    rest = [a for i, a in enumerate(argv[1:]) if "--test-data" not in argv[1:][max(i - 1, 0):i + 1]]
    code, _, err = run(capsys, "eval", argv[0], "--checkpoint", random_ckpt, "--train-data",
                       f"voc07:{mosaics}?split=trainval", "--test-data", test, "--jobs", "1", *rest)
    if fragment is None:
        assert code == 0, err
        return
    assert one_line_error(code, err, fragment), err


def test_lowshot_draws_follow_seed(random_ckpt, mosaics, capsys):
    """eval lowshot --seed 7 draws other samples than the default seed 0 (it was accepted and ignored)."""
    tv, te = f"voc07:{mosaics}?split=trainval", f"voc07:{mosaics}?split=test"
    results = {}
    for seed in ([], ["--seed", "0"], ["--seed", "7"]):
        code, out, err = run(capsys, "eval", "lowshot", "--checkpoint", random_ckpt, "--train-data", tv, "--test-data",
                             te, "--costs", "0.1,1", "--shots", "1", "--samples", "2", "--jobs", "1", "--taps",
                             "conv4", "--json", *seed)
        assert code == 0, err
        results[tuple(seed)] = json.loads(out.strip().splitlines()[-1])["per_tap"]["conv4"]["ks"]
    assert results[()] == results[("--seed", "0")] != results[("--seed", "7")]
