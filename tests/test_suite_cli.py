"""The command line of the Goyal et al. 2019 suite: layer-wise probes (eval linear --taps)."""
import json

import pytest

from conftest import TINY, one_line_error, run


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    from selfsup.cli import main

    out = tmp_path_factory.mktemp("random")
    assert main(["pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", "0", "--batch-size", "32",
                 "--out", str(out), "progress=false"]) == 0
    return out / "last.pt"


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
