"""A run writes and deletes its own files only, and a tampered run directory is refused in one line."""
import os
import shutil

import pytest
import torch

from conftest import TINY, one_line_error, run
from selfsup.engine import rundir
from selfsup.engine.rundir import RunLock
from selfsup.errors import SelfSupError
from selfsup.report import run_report


def pretrain(capsys, out, *extra, epochs=1):
    return run(capsys, "pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", epochs,
               "--batch-size", 16, "--out", out, "progress=false", "device=cpu", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run (4 steps), to copy: ``shutil.copytree(finished, out)``."""
    from selfsup.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", "1", "--batch-size", "16",
                 "--out", str(out), "progress=false", "device=cpu", "log_every=1"]) == 0
    return out


# ------------------------------------------------------------------ links and special files in the run directory

@pytest.mark.parametrize("name", [".lock", "config.yaml", "metrics.jsonl", "report.md", "loss.png", "tb",
                                  "tb/events.out.tfevents.1.host.1.0"])
def test_a_link_in_the_run_directory_is_refused_and_its_target_kept(tmp_path, capsys, name):
    out, victim = tmp_path / "run", tmp_path / "victim"
    (out / "tb").mkdir(parents=True)
    if name == "tb":
        (out / "tb").rmdir()
        victim.mkdir()
        (victim / "events.out.tfevents.x").write_text("keep")
    else:
        victim.write_text("keep")
    (out / name).symlink_to(victim)
    code, _, err = pretrain(capsys, out)
    assert one_line_error(code, err, f"{out / name} is a symbolic link: a run directory holds only the run's own "
                                     f"files; remove it or choose another --out"), err
    if name == "tb":
        assert os.listdir(victim) == ["events.out.tfevents.x"]
    else:
        assert victim.read_text() == "keep"
    assert not (out / "config.yaml").exists() or (out / "config.yaml").is_symlink()


@pytest.mark.parametrize("name", ["data", "notes.txt", ".last.pt.1.x.tmp"])
def test_a_link_beside_the_runs_files_is_the_users_and_left_alone(tmp_path, capsys, name):
    """Every link in OUT was refused (a data folder or notes linked beside a run, DVC-style links): only the names
    the run writes are checked; a killed save's partial file is unlinked, which removes the link, not its target."""
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.write_text("keep")
    (out / name).symlink_to(victim)
    code, _, err = pretrain(capsys, out)
    assert code == 0, err
    assert victim.read_text() == "keep"


def test_a_checkpoint_linked_into_the_run_directory_is_replaced_not_written_through(tmp_path, capsys, finished):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere.pt"
    shutil.copytree(finished, out)
    shutil.move(out / "last.pt", elsewhere)
    kept = elsewhere.read_bytes()
    (out / "last.pt").symlink_to(elsewhere)                    # resumed from it, then replaced by a rename
    code, _, err = pretrain(capsys, out, "--resume-with-changes", epochs=2)
    assert code == 0, err
    assert elsewhere.read_bytes() == kept and not (out / "last.pt").is_symlink()


def test_resuming_someone_elses_run_directory_with_links_writes_nothing_through_them(tmp_path, capsys, finished):
    out, victim = tmp_path / "run", tmp_path / "victim"
    shutil.copytree(finished, out)
    victim.write_text("keep")
    (out / "config.yaml").unlink()
    (out / "config.yaml").symlink_to(victim)
    code, _, err = pretrain(capsys, out, "--resume-with-changes", epochs=2)
    assert one_line_error(code, err, "config.yaml is a symbolic link"), err
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("name", ["config.yaml", ".lock", "metrics.jsonl"])
def test_a_fifo_in_the_run_directory_is_refused_not_waited_on(tmp_path, capsys, name):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / name)
    code, _, err = pretrain(capsys, out)
    assert one_line_error(code, err, f"{out / name} is a named pipe (FIFO): a run directory holds only"), err


def test_a_folder_where_the_run_writes_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "report.md").mkdir(parents=True)
    code, _, err = pretrain(capsys, out)
    assert one_line_error(code, err, "report.md is a folder, where the run writes a file"), err


def test_an_out_that_is_a_link_to_a_folder_is_a_run_directory(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, _, err = pretrain(capsys, tmp_path / "link")
    assert code == 0, err
    assert (tmp_path / "real" / "last.pt").is_file() and (tmp_path / "real" / "report.md").is_file()


def test_the_lock_is_not_followed_when_a_link_appears_after_the_check(tmp_path, monkeypatch):
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.write_text("keep")
    (out / ".lock").symlink_to(victim)
    monkeypatch.setattr(rundir, "check_entries", lambda out: None)      # the link made just after the check
    with pytest.raises(SelfSupError, match=r"\.lock is a symbolic link"):
        RunLock(out).acquire()
    assert victim.read_text() == "keep"


def test_the_report_writes_through_no_link(tmp_path, finished):
    out, victim = tmp_path / "run", tmp_path / "victim"
    shutil.copytree(finished, out)
    victim.write_text("keep")
    (out / "loss.png").unlink()
    (out / "loss.png").symlink_to(victim)
    with pytest.raises(SelfSupError, match="loss.png is a symbolic link"):
        run_report(out)
    assert victim.read_text() == "keep"


def test_a_folder_named_like_a_temporary_is_left_alone(tmp_path, capsys, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / ".keep.tmp").mkdir()
    (out / ".keep.tmp" / "data").write_text("keep")
    (out / ".last.pt.99999.deadbeef.tmp").write_bytes(b"partial")
    code, _, err = pretrain(capsys, out, "--resume-with-changes", epochs=2)
    assert code == 0, err
    assert (out / ".keep.tmp" / "data").read_text() == "keep" and not (out / ".last.pt.99999.deadbeef.tmp").exists()


# ------------------------------------------------------------------ a metrics.jsonl edited by hand

TAMPERED = ['[1]', '{"epoch_end": true}', '{"step": "x"}', '{"epoch": 0, "step": 1, "loss": "x"}', '"text"',
            '{"epoch": 0, "step": 2, "loss": 1.0, "lr": 0.1, "images_per_s": null}', '[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]',
            '{"epoch": 0, "epoch_end": true, "monitor_knn_top1": "high"}', '{"epoch": -1, "step": 1}']


def test_a_tampered_metrics_log_is_cleaned_on_resume_and_the_report_written(tmp_path, capsys, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    good = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text("\n".join(TAMPERED) + "\n" + good + "\xff\n")
    code, printed, err = pretrain(capsys, out, "--resume-with-changes", "log_every=1", epochs=2)
    assert code == 0 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "selfsup does not write" in line]) == 1, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines[:4] == good.splitlines() and len(lines) == 4 + 1 + 4       # the change record, 4 new steps
    assert "8 steps, last loss" in (out / "report.md").read_text()


def test_the_report_skips_records_selfsup_does_not_write(tmp_path, capsys, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write("\n".join(TAMPERED) + "\n")
    run_report(out)
    assert "4 steps, last loss" in (out / "report.md").read_text()
    assert capsys.readouterr().err.count("selfsup does not write") == 1


# ------------------------------------------------------------------ a tampered last.pt

def tamper(ckpt, key, value):
    """``ckpt`` with ``key`` (``rng``, ``extra``: of the first process's state; ``momentum``: a parameter's
    buffer) set to ``value``, or removed for None."""
    if key in ("rng", "extra"):
        ckpt["ranks"][0][key] = value
    elif key == "momentum":
        next(iter(ckpt["optimizer"]["state"].values()))["momentum_buffer"] = value
    elif value is None:
        del ckpt[key]
    else:
        ckpt[key] = value


@pytest.mark.parametrize("key, value, fragment", [
    ("ranks", 5, "its 'ranks' is a int, not a list"),
    ("ranks", [5], "its 'ranks' entry of process 0 is not a dict"),
    ("ranks", [{}], "its 'ranks' entry of process 0 is not a dict"),
    ("rng", [1, 2], "its 'ranks' entry of process 0 is not a dict"),
    ("rng", {"torch": "x"}, "its gradient scaler or RNG state"),
    ("extra", {"x_extra_state": 1}, "the extra state of process 0 is not the simclr method's"),
    ("model", [1], "its 'model' is a list, not a dict"),
    ("model", {"backbone.stem.0.weight": "x"}, "its model state"),
    ("optimizer", "x", "its 'optimizer' is a str, not a dict"),
    ("optimizer", {"state": {}, "param_groups": []}, "its optimiser state does not fit the model"),
    ("optimizer", {"state": 1, "param_groups": [{"params": "x"}]}, "its optimiser state does not fit the model"),
    ("momentum", torch.zeros(3), "buffers of other shapes than the parameters"),
    ("momentum", "x", "buffers of other shapes than the parameters"),
    ("scaler", "x", "its 'scaler' is a str, not a dict"),
    ("epoch", "x", "its position, epoch 'x' step 0, is not one of a run of 2 epochs of 4 steps"),
    ("epoch", -5, "epoch -5 step 0"),
    ("epoch", 3, "epoch 3 step 0"),
    ("epoch", True, "epoch True step 0"),
    ("epoch", None, "epoch None step 0"),
    ("epoch", torch.ones(100, 100), "epoch a Tensor step 0"),
    ("step_in_epoch", 10**6, "epoch 1 step 1000000, is not one of a run of 2 epochs of 4 steps"),
    ("step_in_epoch", -1, "epoch 1 step -1"),
])
def test_a_damaged_checkpoint_is_refused_in_one_line_on_resume(tmp_path, capsys, finished, key, value, fragment):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    tamper(ckpt, key, value)
    torch.save(ckpt, out / "last.pt")
    config = (out / "config.yaml").read_text()
    code, printed, err = pretrain(capsys, out, "--resume-with-changes", epochs=2)
    assert one_line_error(code, err, f"checkpoint {out / 'last.pt'} is damaged ("), err
    assert fragment in err and "resume from another checkpoint or start a new run" in err, err
    assert "resumed at step" not in printed and (out / "config.yaml").read_text() == config


def test_a_stop_on_an_epochs_last_step_resumes(tmp_path, capsys):
    """A SIGTERM landing on the last step of an epoch saves step_in_epoch == the epoch's steps; the position
    check refused that checkpoint, the trainer's own, as damaged."""
    import signal

    from selfsup.engine.trainer import Trainer

    from conftest import tiny_overrides
    from selfsup.config import resolve_config
    from selfsup.methods import get_method

    out = tmp_path / "run"
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(out, epochs=2))
    trainer = Trainer(cfg)
    steps = trainer.steps_per_epoch
    forward = type(trainer.method).forward

    def stop_on_last(self, batch):
        if trainer.epoch == 0 and trainer.global_step == steps - 1:      # the last step of the first epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, batch)

    type(trainer.method).forward = stop_on_last
    try:
        assert trainer.fit() == "interrupted"
    finally:
        type(trainer.method).forward = forward
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, steps)
    cfg.resume = True
    assert Trainer(cfg).fit() == "done"


def test_a_change_of_the_optimisers_groups_is_named_as_such(tmp_path, capsys, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    code, _, err = pretrain(capsys, out, "--resume-with-changes", "optim.exclude_bias_norm=false", epochs=2)
    assert one_line_error(code, err, "optim.exclude_bias_norm change the optimiser's parameter groups: they cannot "
                                     "change on resume"), err


def test_a_damaged_extra_state_is_refused_in_one_line_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", TINY, "--backbone", "convnet", "--batch-size", 16, "--out", out, "progress=false",
              "device=cpu", "moco_v2.queue_size=32"]
    assert run(capsys, "pretrain", "moco_v2", *common, "--epochs", 0)[0] == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    (key,) = ckpt["ranks"][0]["extra"]
    ckpt["ranks"][0]["extra"][key] = {"queue": 5, "queue_ptr": 0}
    torch.save(ckpt, out / "last.pt")
    code, _, err = run(capsys, "pretrain", "moco_v2", *common, "--epochs", 1, "--resume-with-changes")
    assert one_line_error(code, err, "is damaged (its model state: "), err


def test_a_resume_with_a_changed_weight_decay_and_momentum_trains_with_them(tmp_path, capsys, finished):
    from selfsup.config import resolve_config
    from selfsup.engine.trainer import Trainer
    from selfsup.methods import get_method

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    overrides = [f"data={TINY}", "backbone=convnet", "batch_size=16", "epochs=2", f"out={out}", "device=cpu",
                 "resume=true", "resume_with_changes=true", "optim.weight_decay=0.003", "optim.momentum=0.5"]
    trainer = Trainer(resolve_config(get_method("simclr"), overrides=overrides))
    changes = trainer.restore(out / "last.pt")
    assert changes["optim.weight_decay"][1] == 0.003 and changes["optim.momentum"][1] == 0.5
    groups = trainer.optimizer.param_groups
    assert {g["momentum"] for g in groups} == {0.5} and {g["weight_decay"] for g in groups} == {0.0, 0.003}
    assert trainer.optimizer.state                                 # the momentum buffers are the checkpoint's


def test_read_metrics_skips_cut_and_foreign_lines(tmp_path, capsys):
    """The demo's loss curves read metrics.jsonl with read_metrics, which crashed on a line cut by a kill."""
    from selfsup.report.plots import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0, "step": 1, "loss": 2.0, "lr": 0.1, "images_per_s": 5.0}\n[1]\n'
                    '{"epoch": 0, "epoch_end": true, "loss": 2.0}\n{"epoch": 0, "st')
    assert [r["step"] for r in read_metrics(path)] == [1]
    assert [r["epoch"] for r in read_metrics(path, epoch_end=True)] == [0]
    assert "1 record(s) that selfsup does not write were skipped" in capsys.readouterr().err
