"""The run directory: one run at a time, no leftovers, a log that matches the checkpoint.

- ``RunLock``: an exclusive ``flock`` on ``OUT/.lock``, which holds the owner's PID
  and host. The kernel releases it when the process ends, however it ends, so a
  lock left by a killed run is stale by construction and the next run takes it.
- ``remove_temporaries``: partial files of a killed save (``.NAME.PID.RANDOM.tmp``);
  only the lock holder writes in the folder, so every one found there is stale.
- ``truncate_metrics``: after a resume, ``metrics.jsonl`` keeps only the records of
  the steps the checkpoint holds, so no step is logged twice.
- ``config_changes``: the settings that differ between a run and its resumption.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from selfsup.config import flatten
from selfsup.errors import SelfSupError

# settings that do not change what a run computes: they may differ on resume
RESUMABLE_KEYS = {"out", "resume", "resume_with_changes", "device", "progress", "log_every", "save_every",
                  "save_every_steps", "monitor", "compile", "data_on_device", "optim.fused",
                  "loader_threads"}   # how, not what


def prepare_out(out: Path) -> None:
    """Create the run directory, or say in one line why it cannot be one."""
    if out.exists() and not out.is_dir():
        raise SelfSupError(f"--out {out} is a file, not a folder: give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SelfSupError(f"cannot create the run directory {out} ({exc.strerror}): choose a writable --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SelfSupError(f"the run directory {out} is not writable: choose a writable --out")


class RunLock:
    """An exclusive lock on a run directory for the lifetime of this process (or until ``release``)."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise SelfSupError(f"cannot create {self.path} ({exc.strerror}): choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SelfSupError(f"{self.path.parent} is in use by another run ({owner}): wait for it to end, or "
                               f"choose another --out") from None
        try:                                   # the owner's name, for the refusal of a second run
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise SelfSupError(f"cannot write {self.path} ({exc.strerror}): free some space or choose another "
                               f"--out") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)                  # closing the descriptor drops the flock
            self.fd = None


def remove_temporaries(out: Path) -> None:
    """Delete the partial files killed saves left in ``out`` (call it holding the lock)."""
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def drop_logs(out: Path) -> None:
    """A fresh start's run directory: the step records and TensorBoard events of a run killed there before its
    first checkpoint (nothing to resume: it starts over) are removed, said in one line, so no step is logged twice."""
    old = [p for p in [out / "metrics.jsonl", *(out / "tb").glob("events.out.tfevents.*")] if p.is_file()]
    if old:
        print(f"selfsup: {out} holds the logs of a run stopped before its first checkpoint: starting it over, "
              f"they are replaced", file=sys.stderr)
    for p in old:
        p.unlink()


def truncate_metrics(path: Path, epoch: int, global_step: int) -> None:
    """Keep the records of steps up to ``global_step`` and of epochs before ``epoch``."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:                     # a line cut by a kill
            continue
        if (record["epoch"] < epoch) if record.get("epoch_end") else (record.get("step", 0) <= global_step):
            kept.append(line)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def config_changes(saved: dict, current: dict) -> dict[str, list]:
    """{key: [saved value, current value]} for every setting that changes what the run computes."""
    a, b = flatten(saved), flatten(current)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
            if k.split(".")[0] not in RESUMABLE_KEYS and k not in RESUMABLE_KEYS and a.get(k) != b.get(k)}


def refuse_changes(changes: dict[str, list], allowed: bool, run: str, fix: str) -> None:
    """Unless ``allowed`` (``resume_with_changes``), refuse ``changes`` (``config_changes``) in one line naming the
    first, how many more, and ``fix``: "the run in OUT has lr=0.1, this command lr=0.2 (and 2 more): FIX"."""
    if changes and not allowed:
        key, (old, new) = next(iter(changes.items()))
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise SelfSupError(f"{run} has {key}={old}, this command {key}={new}{more}: {fix}")
