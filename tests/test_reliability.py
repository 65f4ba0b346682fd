"""Nothing runs from a checkpoint, nothing is lost, no silent wrong answer (the engine's side)."""
import errno
import json
import os
import signal

import pytest
import torch

from conftest import TINY, one_line_error, run, tiny_overrides
from selfsup.checkpoint import load_checkpoint, save_atomic
from selfsup.config import resolve_config
from selfsup.engine.rundir import RunLock
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.methods import build_method, get_method


def pretrain(capsys, out, *extra, epochs=1):
    return run(capsys, "pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", epochs,
               "--batch-size", 16, "--out", out, "progress=false", "device=cpu", *extra)


def make_cfg(out, method="simclr", **kw):
    return resolve_config(get_method(method), overrides=tiny_overrides(out, method=method, **kw))


class Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


# ------------------------------------------------------------------ security

def test_a_crafted_checkpoint_is_refused_by_every_command_and_runs_nothing(tmp_path, capsys):
    assert pretrain(capsys, tmp_path / "run")[0] == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    target = tmp_path / "pwned"
    ckpt["config"]["payload"] = Payload(target)
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil)
    commands = [["eval", protocol, "--checkpoint", evil, "--train-data", TINY, "--test-data", TINY]
                for protocol in ("knn", "linear", "patches")]
    commands += [["viz", kind, "--checkpoint", evil, "--data", TINY, "--out", tmp_path / "v.png"]
                 for kind in ("heatmap", "patch-knn", "convergence", "colorize")]
    for argv in commands:
        code, _, err = run(capsys, *argv)
        assert one_line_error(code, err, "refusing to load checkpoint"), (argv, err)
        assert "open" in err and not target.exists(), argv
    torch.save(ckpt, tmp_path / "run" / "last.pt")               # a crafted last.pt in a run directory
    code, _, err = pretrain(capsys, tmp_path / "run", "--resume")
    assert one_line_error(code, err, "refusing to load checkpoint") and not target.exists()


def test_a_foreign_state_dict_loads_without_unpickling_code(tmp_path, capsys):
    import torchvision

    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, tmp_path / "tv.pt")
    code, out, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "tv.pt", "--train-data", TINY,
                         "--test-data", TINY, "--json")
    assert code == 0, err


# ------------------------------------------------------------------ runs that are lost or mixed

def test_a_second_run_on_the_same_out_is_refused_and_a_dead_runs_lock_is_taken(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out).acquire()                     # a live run holds the directory
    code, _, err = pretrain(capsys, out)
    assert one_line_error(code, err, "in use by another run") and f"pid {os.getpid()}" in err
    assert not (out / "config.yaml").exists()
    held.release()                                    # what the kernel does when that run dies
    assert (out / ".lock").exists()
    assert pretrain(capsys, out)[0] == 0


def test_a_non_finite_loss_never_overwrites_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path / "run", epochs=2, save_every_steps=1, log_every=100)
    trainer = Trainer(cfg)
    forward = type(trainer.method).forward

    def diverge(self, batch):
        out = forward(self, batch)
        if trainer.global_step == 2:                  # the third step, not a logged one
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(type(trainer.method), "forward", diverge)
    with pytest.raises(SelfSupError, match="last.pt from step 2 is kept"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] * 4 + ckpt["step_in_epoch"] == 2
    assert all(v.isfinite().all() for v in ckpt["backbone_state"].values() if v.is_floating_point())


def test_a_sigterm_save_checks_the_weights_too(tmp_path, monkeypatch):
    trainer = Trainer(make_cfg(tmp_path / "run", epochs=2, log_every=100))
    step_end = type(trainer.method).on_step_end

    def poison(self, step, total):
        step_end(self, step, total)
        if step == 5:
            with torch.no_grad():
                next(self.parameters()).fill_(float("nan"))
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(type(trainer.method), "on_step_end", poison)
    with pytest.raises(SelfSupError, match="last.pt from step 4 is kept"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_resume_refuses_other_settings_unless_asked_and_records_the_change(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(capsys, out)[0] == 0
    code, _, err = run(capsys, "pretrain", "simclr", "--data", TINY + "&seed=3", "--backbone", "convnet",
                       "--epochs", 1, "--batch-size", 16, "--out", out, "progress=false", "device=cpu", "--resume")
    assert one_line_error(code, err, "--resume-with-changes") and "data=" in err
    code, _, err = pretrain(capsys, out, "--resume", "--batch-size", 32)
    assert one_line_error(code, err, "batch_size=16, this command batch_size=32")
    code, printed, err = pretrain(capsys, out, "--resume-with-changes", epochs=2)
    assert code == 0, err
    assert "epochs 1 -> 2" in printed
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    # the short-run warmup follows the run's length (10 x epochs / 100), so it changes with it, recorded too
    assert [r["resumed_with_changes"] for r in records if "resumed_with_changes" in r] == [
        {"epochs": [1, 2], "optim.warmup_epochs": [0.1, 0.2]}]


def test_resume_drops_leftovers_of_a_killed_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(capsys, out)[0] == 0                          # 4 steps, all saved
    with open(out / "metrics.jsonl", "a") as f:                   # logged after the last save, then killed
        f.write(json.dumps({"epoch": 1, "step": 5, "loss": 1.0}) + "\n" + '{"epoch": 1, "st')
    (out / ".last.pt.99999.deadbeef.tmp").write_bytes(b"partial")
    assert pretrain(capsys, out, "--resume-with-changes", epochs=2)[0] == 0
    steps = [json.loads(line).get("step") for line in open(out / "metrics.jsonl")]
    assert steps == [4, 4, 8]               # logged at epoch ends; the change record sits at step 4
    assert not list(out.glob(".*.tmp"))


def test_a_start_over_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tb").mkdir()                                          # what the killed run had logged, no last.pt
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "step": 2, "loss": 9.0}) + "\n")
    (out / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"old events")
    code, _, err = pretrain(capsys, out)
    assert code == 0 and "stopped before its first checkpoint: starting it over" in err, err
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert 9.0 not in [r.get("loss") for r in records] and len({r.get("step") for r in records if "loss" in r}) > 0
    assert not (out / "tb" / "events.out.tfevents.1.host.1.0").exists() and list((out / "tb").glob("events.*"))


def test_a_non_finite_loss_before_any_save_is_worded_for_the_runs_precision(tmp_path, monkeypatch):
    """It said 'no checkpoint was written, not overwritten' and advised precision=fp32 to an fp32 run."""
    for precision, advice in (("fp32", "lower optim.lr$"), ("bf16", "lower optim.lr, or use precision=fp32$")):
        cfg = make_cfg(tmp_path / precision, epochs=1, log_every=1, precision=precision)
        trainer = Trainer(cfg)
        forward = type(trainer.method).forward
        monkeypatch.setattr(type(trainer.method), "forward",
                            lambda self, batch: {**(o := forward(self, batch)), "loss": o["loss"] * float("nan")})
        with pytest.raises(SelfSupError, match=r"by step 1: no checkpoint was written; " + advice):
            trainer.fit()
        monkeypatch.undo()


def test_a_rerun_of_a_zero_epoch_run_keeps_its_checkpoint(tmp_path, capsys):
    """It was saved again with config.resume flipped: a new content hash, so a sweep evaluated the cell again."""
    out = tmp_path / "run"
    assert pretrain(capsys, out, epochs=0)[0] == 0
    before = (out / "last.pt").read_bytes()
    assert pretrain(capsys, out, "--resume", epochs=0)[0] == 0
    assert (out / "last.pt").read_bytes() == before


def test_a_file_system_without_locks_is_said_as_such(tmp_path, capsys, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    code, _, err = pretrain(capsys, tmp_path / "run")
    assert one_line_error(code, err, "cannot lock ") and "No locks available): choose an --out on a file system" in err


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_atomic({"a": torch.zeros(1)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert pretrain(capsys, out)[0] == 0
    before = (out / "last.pt").read_bytes()

    def full(obj, f):
        f.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, _, err = pretrain(capsys, out, "--resume-with-changes", epochs=2)
    assert one_line_error(code, err, "No space left on device") and "last.pt from step 4 is kept" in err
    assert (out / "last.pt").read_bytes() == before and not list(out.glob(".*.tmp"))


def test_disk_full_when_taking_the_run_lock_is_one_line(tmp_path, capsys, monkeypatch):
    real = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    code, _, err = pretrain(capsys, tmp_path / "run")
    assert one_line_error(code, err, "cannot write ") and ".lock (No space left on device): free some space" in err


@pytest.mark.parametrize("extra, fragment", [
    (["--epochs", "-1"], "epochs=-1 is not valid"),
    (["--batch-size", "0"], "batch_size=0 is not valid"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 is not valid"),
    (["optim.lr=-0.1", "optim.name=lars"], "optim.lr=-0.1 is not valid"),
    (["optim.lr=-0.1", "optim.name=larc"], "optim.lr=-0.1 is not valid"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1.0 is not valid"),
    (["log_every=0"], "log_every=0 is not valid"),
])
def test_meaningless_settings_are_refused_before_anything_is_written(tmp_path, capsys, extra, fragment):
    code, _, err = run(capsys, "pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--out",
                       tmp_path / "run", "progress=false", *extra)
    assert one_line_error(code, err, fragment), err
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_or_cannot_be_created(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = pretrain(capsys, tmp_path / "file")
    assert one_line_error(code, err, "is a file, not a folder")
    code, _, err = pretrain(capsys, tmp_path / "file" / "run")
    assert one_line_error(code, err, "cannot create the run directory")


# ------------------------------------------------------------------ method state follows the device

@pytest.mark.filterwarnings("ignore:for ")        # torch: copying into meta parameters is a no-op
@pytest.mark.parametrize("name, extra", [
    ("swav", {"nmb_prototypes": 8, "crops": "2x16+2x8", "queue_length": 32, "epoch_queue_starts": 0}),
    ("deepcluster_v2", {"nmb_prototypes": [8, 8], "crops": "2x16+2x8"}),
    ("moco_v2", {"queue_size": 32}),
])
def test_extra_state_moves_to_the_modules_device_on_load(name, extra):
    from selfsup.data.loader import BatchLoader
    from selfsup.data.datasets import load_dataset

    method = build_method(name, backbone="convnet", image_size=16, **extra)
    loader = BatchLoader(load_dataset(TINY), 16, method.view_maker(), device="cpu")
    method.on_epoch_start(0, loader)
    method(next(loader.epoch(0)))
    state = method.state_dict()
    extra_state = state["_extra_state"]
    assert any(isinstance(v, torch.Tensor) for v in extra_state.values())
    method.to("meta")                                  # any device other than the checkpoint's CPU
    method.load_state_dict(state)
    tensors = [v for v in _leaves(method.get_extra_state()) if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "meta" for t in tensors)


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree
