import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from selfsup.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pretrain(capsys, out, *extra):
    return run(capsys, "pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", 1,
               "--batch-size", 16, "--out", out, "progress=false", "device=cpu", *extra)


def test_pretrain_then_eval_json(tmp_path, capsys):
    code, out, err = pretrain(capsys, tmp_path / "run")
    assert code == 0, err
    for protocol in ("knn", "linear"):
        code, out, err = run(capsys, "eval", protocol, "--checkpoint", tmp_path / "run" / "last.pt",
                             "--train-data", TINY, "--test-data", TINY + "&seed=1",
                             *(["--probe-epochs", 5] if protocol == "linear" else []), "--json")
        assert code == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert 0.0 <= result["top1"] <= 1.0 and result["protocol"] == protocol


def test_eval_accepts_a_torchvision_state_dict(tmp_path, capsys):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    code, out, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "tv.pt", "--train-data", TINY,
                         "--test-data", TINY, "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["feature_dim"] == 512


@pytest.mark.parametrize("argv, fragment", [
    (["pretrain", "simclr", "--data", "/no/such/path"], "does not exist"),
    (["pretrain", "simclrr", "--data", TINY], "unknown method"),
    (["pretrain", "simclr", "--data", TINY, "--backbone", "vgg"], "unknown backbone"),
    (["pretrain", "simclr", "--data", TINY, "optim.lrr=1"], "unknown config key"),
    (["pretrain", "simclr", "--data", TINY, "optim.lr=fast"], "bad config value"),
    (["pretrain", "simclr", "--data", TINY, "epochs"], "key=value"),
    (["pretrain", "simclr", "--data", "nosuchformat:/tmp"], "unknown format"),
    (["pretrain", "simclr", "--data", TINY, "--config", "/no/such.yaml"], "neither a file nor a shipped config"),
    (["eval", "knn", "--checkpoint", "/no/such.pt", "--train-data", TINY, "--test-data", TINY], "does not exist"),
])
def test_bad_input_gets_one_line_error(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:") and fragment in lines[0], err


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    assert pretrain(capsys, tmp_path / "run")[0] == 0
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    ckpt["backbone"] = "resnet18"                      # claims resnet18, holds convnet weights
    torch.save(ckpt, tmp_path / "bad.pt")
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "bad.pt", "--train-data", TINY, "--test-data", TINY)
    assert code == 2 and "does not fit backbone resnet18" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "junk.pt", "--train-data", TINY, "--test-data", TINY)
    assert code == 2 and "cannot read checkpoint" in err
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "run", "--train-data", TINY, "--test-data", TINY)
    assert code == 2 and f"checkpoint {tmp_path / 'run'} is a directory: pass {tmp_path / 'run' / 'last.pt'}" in err
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path, "--train-data", TINY, "--test-data", TINY)
    assert code == 2 and "is a directory: pass the path of a .pt file" in err
    code, _, err = pretrain(capsys, tmp_path / "run", "--resume", "backbone=resnet18")
    assert code == 2 and "resume with the same method and backbone" in err


def test_every_command_has_help():
    for argv in (["--help"], ["pretrain", "--help"], ["eval", "--help"], ["demo", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "selfsup", *argv], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: selfsup" in proc.stdout


def test_real_process_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "simclr", "--data", "/no/such/dir"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("selfsup: error:")


@pytest.mark.parametrize("script, argv, fragment", [
    ("experiments/tune_demo.py", ["OUT", "x", "simclr", "0", "--data", "/no/such/dir"], "Fashion-MNIST not found"),
    ("benchmarks/input_pipeline.py", ["--data", "/no/such.tar"], "/no/such.tar does not exist"),
])
def test_scripts_end_bad_input_with_one_line_as_the_command_line(tmp_path, script, argv, fragment):
    """Benchmark and experiment scripts (``selfsup.errors.script_main``): exit status 2, one line, no traceback."""
    path = Path(__file__).resolve().parents[1] / script
    argv = [str(tmp_path) if a == "OUT" else a for a in argv]
    proc = subprocess.run([sys.executable, str(path), *argv], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith(f"{path.name}: error: ") and fragment in lines[-1]


def test_eval_patches_uses_the_pretraining_patch_side_and_viz_writes_figures(tmp_path, capsys):
    code, out, err = pretrain(capsys, tmp_path / "run", "simclr.views=patch:8")
    assert code == 0, err
    ckpt = tmp_path / "run" / "last.pt"
    code, out, err = run(capsys, "eval", "patches", "--checkpoint", ckpt, "--train-data", TINY,
                         "--test-data", TINY + "&seed=1", "--num-patches", 3, "--probe-epochs", 5, "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["patch_size"] == 8 and result["num_patches"] == 3
    assert 0 <= result["knn"]["top1"] <= 1 and 0 <= result["linear"]["top1"] <= 1
    code, out, err = run(capsys, "eval", "patches", "--checkpoint", ckpt, "--train-data", TINY, "--test-data", TINY,
                         "--aggregate", "local", "--window", 8, "--stride", 4, "--probe", "knn", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["feature_dim"] == 192     # 3 x 3 grid of windows -> 1 x 1
    for kind in ("heatmap", "patch-knn", "convergence"):
        png = tmp_path / f"{kind}.png"
        code, out, err = run(capsys, "viz", kind, "--checkpoint", ckpt, "--data", TINY, "--out", png, "--max-images", 8)
        assert code == 0, err
        assert png.stat().st_size > 1000 and "wrote" in out
    code, out, err = run(capsys, "viz", "heatmap", "--checkpoint", ckpt, "--data", TINY, "--out", tmp_path / "x.png",
                         "--query", "9,9")
    assert code == 2 and "outside the" in err


def test_eval_patches_on_a_torchvision_state_dict(tmp_path, capsys):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    code, out, err = run(capsys, "eval", "patches", "--checkpoint", tmp_path / "tv.pt", "--train-data", TINY,
                         "--test-data", TINY, "--num-patches", 2, "--probe", "knn", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["patch_size"] is None and result["feature_dim"] == 512          # multi-scale crops


def test_monitor_logs_knn_per_epoch_and_every_run_writes_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = pretrain(capsys, out, "monitor.knn=" + TINY + "&seed=2", "monitor.images=32", "--epochs", 2)
    assert code == 0, err
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    monitored = [r for r in records if "monitor_knn_top1" in r]
    assert [r["epoch"] for r in monitored] == [0, 1] and all(0 <= r["monitor_knn_top1"] <= 1 for r in monitored)
    report = (out / "report.md").read_text()
    assert "report.md" in printed and "![loss](loss.png)" in report and "monitor.png" in report
    assert (out / "loss.png").exists() and (out / "monitor.png").exists()
    code, _, err = pretrain(capsys, tmp_path / "bad", "monitor.knn=" + TINY, "monitor.every=0")
    assert code == 2 and "monitor.every=0 is not valid" in err


def test_config_mistakes_are_named_in_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """A value given to a group of settings, a YAML list as --config, a batch of one image for a method
    that needs two, and a bad SELFSUP_PROGRESS: one line naming the key or file and the fix; --out untouched."""
    from conftest import one_line_error

    out = tmp_path / "run"
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "group.yaml").write_text("optim: 3\n")
    for extra, fragment in [
        (["optim=3"], "'optim' in override 'optim=3' is a group of settings, not a value: set its keys instead, e.g. optim."),
        (["--config", tmp_path / "group.yaml"], "'optim' in " + str(tmp_path / "group.yaml") + " is a group of settings"),
        (["--config", tmp_path / "list.yaml"], "config file " + str(tmp_path / "list.yaml") + " holds a list, not settings"),
        (["--batch-size", 1], "batch_size=1 is too small for simclr: its loss contrasts each image with the others"),
    ]:
        code, _, err = run(capsys, "pretrain", "simclr", "--data", TINY, "--out", out, "device=cpu", *extra)
        assert one_line_error(code, err, fragment), err
    for method in ("byol", "spectral_contrastive", "vicreg", "deepcluster_v2", "sela_v2"):
        code, _, err = run(capsys, "pretrain", method, "--data", TINY, "--batch-size", 1, "--out", out, "device=cpu")
        last = err.strip().splitlines()[-1]          # after the note on the small-image recipe
        assert code == 2 and last.startswith(f"selfsup: error: batch_size=1 is too small for {method}"), err
    monkeypatch.setenv("SELFSUP_PROGRESS", "bogus")
    code, _, err = pretrain(capsys, out)
    assert one_line_error(code, err, "SELFSUP_PROGRESS='bogus' is not a progress mode: use bar, lines or off"), err
    assert not out.exists()
