"""Fault injection: SIGKILL a real training process at random points, saves included, then resume.

After every kill last.pt must load (or not exist yet), and the run resumed to the end must
equal an uninterrupted run bitwise. Slow (about 4 minutes on 2 CPU cores): `make test-slow`.
SELFSUP_FAULT_KILLS sets the number of kills (default 20).
"""
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from selfsup.checkpoint import load_checkpoint

DATA = "synthetic:64?classes=4&size=16"


def command(out, resume):
    # ResNet-18: a checkpoint of about 90 MB, so that a good share of the kills land inside a save
    return [sys.executable, "-m", "selfsup", "pretrain", "simclr", "--data", DATA, "--backbone", "resnet18",
            "--epochs", "16", "--batch-size", "16", "--out", str(out), "progress=false", "device=cpu",
            "save_every_steps=1", "log_every=1", "optim.lr=0.1", "cifar_stem=false"] + (["--resume"] if resume else [])


@pytest.mark.slow
def test_random_kills_never_leave_an_unreadable_checkpoint_and_resume_is_exact(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run(command(tmp_path / "straight", False), check=True, capture_output=True, env=env, timeout=900)
    reference = load_checkpoint(tmp_path / "straight" / "last.pt")

    out, rng = tmp_path / "cut", random.Random(0)
    kills, in_save, steps = 0, 0, []
    wanted = int(os.environ.get("SELFSUP_FAULT_KILLS", "20"))
    while kills < wanted:
        logged = (out / "metrics.jsonl").stat().st_size if (out / "metrics.jsonl").exists() else 0
        proc = subprocess.Popen(command(out, (out / "last.pt").exists()), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 120                # past the imports: until this launch logs a step
        while proc.poll() is None and time.time() < deadline and (
                not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size <= logged):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))           # then a random point of the steps and saves that follow
        if proc.poll() is not None:
            pytest.fail(f"the run ended after {kills} kills: lengthen it")
        proc.kill()
        proc.wait()
        kills += 1
        in_save += bool(list(out.glob(".*.tmp")))   # a partial checkpoint: the kill landed in a save
        if (out / "last.pt").exists():
            ckpt = load_checkpoint(out / "last.pt")  # always a whole checkpoint
            steps.append(ckpt["epoch"] * 4 + ckpt["step_in_epoch"])
    assert steps == sorted(steps) and steps, steps
    done = subprocess.run(command(out, True), capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    final = load_checkpoint(out / "last.pt")
    for key, value in reference["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, final["model"][key]), key
    print(f"\n{kills} kills, {in_save} inside a save, last.pt loaded after every kill; "
          f"checkpointed steps after each kill: {steps}; resumed run equals the uninterrupted one")
