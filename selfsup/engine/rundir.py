"""The run directory: one run at a time, no leftovers, a log that matches the checkpoint.

- ``RunLock``: an exclusive ``flock`` on ``OUT/.lock``, which holds the owner's PID
  and host. The kernel releases it when the process ends, however it ends, so a
  lock left by a killed run is stale by construction and the next run takes it.
  Before it, ``check_entries`` refuses a folder where the run's writes and deletions
  would land elsewhere or hang: a symbolic link or a FIFO among its files.
- ``remove_temporaries``: partial files of a killed save (``.NAME.PID.RANDOM.tmp``);
  only the lock holder writes in the folder, so every one found there is stale.
- ``truncate_metrics``: after a resume, ``metrics.jsonl`` keeps only the records of
  the steps the checkpoint holds, so no step is logged twice, and only records the
  engine writes (``is_metrics_record``), so a file edited by hand breaks no reader.
- ``config_changes``: the settings that differ between a run and its resumption.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
from fnmatch import fnmatch
from pathlib import Path

from selfsup.config import flatten
from selfsup.errors import SelfSupError

# settings that do not change what a run computes: they may differ on resume
RESUMABLE_KEYS = {"out", "resume", "resume_with_changes", "device", "progress", "log_every", "save_every",
                  "save_every_steps", "monitor", "compile", "data_on_device", "optim.fused",
                  "loader_threads"}   # how, not what
# what a run writes in its directory as files (and ``tb/``, a folder): a folder under one of these names is not its own
RUN_FILES = (".lock", "config.yaml", "metrics.jsonl", "report.md", "last.pt", "epoch_*.pt", "*.png")


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


def _not_own(path: Path, what: str) -> SelfSupError:
    return SelfSupError(f"{path} is {what}: a run directory holds only the run's own files; remove it or choose "
                        f"another --out")


def _foreign(entry: os.DirEntry, top: bool) -> str | None:
    """What makes ``entry`` (of a run directory, ``top``, or of its ``tb``) no file of the run's, or None. Only the
    names the run writes are checked (the user's other files beside a run are left alone), and a link to a
    checkpoint is fine: checkpoints are replaced by a rename, never written through."""
    if top and entry.name != "tb" and not any(fnmatch(entry.name, p) for p in RUN_FILES):
        return None
    if entry.is_symlink():
        return None if top and entry.name.endswith(".pt") else "a symbolic link"
    if entry.is_dir(follow_symlinks=False):
        return "a folder, where the run writes a file" if top and any(fnmatch(entry.name, p) for p in RUN_FILES) else None
    if entry.is_file(follow_symlinks=False):
        return "a file, where the run keeps its TensorBoard folder" if top and entry.name == "tb" else None
    mode = entry.stat(follow_symlinks=False).st_mode
    return "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device file"


def check_entries(out: Path) -> None:
    """Refuse in one line a run directory where what the run writes or deletes would land elsewhere or hang: a
    symbolic link (but to a checkpoint) or a special file (FIFO, device, socket) under a name the run writes
    (``RUN_FILES``, ``tb``) or in its ``tb`` folder, a ``tb`` that is a file, a folder under the name of a file the
    run writes. Other files beside the run are the user's; ``out`` itself may be a link to a folder."""
    for folder in (out, out / "tb"):
        try:
            entries = list(os.scandir(folder)) if folder == out or folder.is_dir() else []
        except OSError as exc:
            raise SelfSupError(f"cannot read the run directory {folder} ({exc.strerror}): choose another --out") from None
        for entry in entries:
            what = _foreign(entry, folder == out)
            if what:
                raise _not_own(folder / entry.name, what)


class RunLock:
    """An exclusive lock on a run directory for the lifetime of this process (or until ``release``); it is taken
    after ``check_entries``, so the run writes in a folder of its own files only."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        check_entries(self.path.parent)
        try:                                   # O_NOFOLLOW: a link made since the check is refused too
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _not_own(self.path, "a symbolic link") from None
            raise SelfSupError(f"cannot create {self.path} ({exc.strerror}): choose a writable --out") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_own(self.path, "not a file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):      # ENOLCK: an NFS mount without locks
                os.close(fd)
                raise SelfSupError(f"cannot lock {self.path} ({exc.strerror}): choose an --out on a file system "
                                   f"with locks") from None
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
    """Delete the partial files killed saves left in ``out`` (call it holding the lock); a folder is none."""
    for p in out.glob(".*.tmp"):
        if p.is_file():
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


def is_count(value) -> bool:
    """A count: an int (not a bool) >= 0, as the engine writes epochs and steps."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _numbers(record: dict, skip: tuple[str, ...]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in record.items() if k not in skip)


def is_metrics_record(record) -> bool:
    """Whether ``record`` is one the engine writes to ``metrics.jsonl``: a step's (epoch, step, loss, lr, images_per_s
    and the method's other numbers), an epoch's (epoch, epoch_end, numbers) or a resumption's (epoch, step,
    resumed_with_changes: {key: [before, after]})."""
    if not isinstance(record, dict) or not is_count(record.get("epoch")):
        return False
    if record.get("epoch_end") is True:
        return _numbers(record, ("epoch", "epoch_end"))
    if not is_count(record.get("step")):
        return False
    if "resumed_with_changes" in record:
        changes = record["resumed_with_changes"]
        return (len(record) == 3 and isinstance(changes, dict)
                and all(isinstance(v, list) and len(v) == 2 for v in changes.values()))
    return {"loss", "lr", "images_per_s"} <= set(record) and _numbers(record, ("epoch", "step"))


def metrics_records(path: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (none if there is none): a line cut by a kill is skipped, and so are
    records selfsup does not write (a file edited by hand), said in one line on stderr."""
    records, foreign = [], 0
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):   # a line cut by a kill
            continue
        if is_metrics_record(record):
            records.append(record)
        else:
            foreign += 1
    if foreign:
        print(f"selfsup: {path}: {foreign} record(s) that selfsup does not write were skipped", file=sys.stderr)
    return records


def truncate_metrics(path: Path, epoch: int, global_step: int) -> None:
    """Keep the records of steps up to ``global_step`` and of epochs before ``epoch`` (and only selfsup's)."""
    if not path.exists():
        return
    kept = [json.dumps(r) for r in metrics_records(path)
            if ((r["epoch"] < epoch) if r.get("epoch_end") else (r["step"] <= global_step))]
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
