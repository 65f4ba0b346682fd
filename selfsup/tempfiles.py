"""Temporary files named after their writer, so that those of a killed writer can be found and removed.

Every partial file selfsup writes before a rename (checkpoints, feature caches, decoded-image caches) ends in
``.HOST.PID.tmp``: a later writer of the same entry deletes those whose process is gone on this host, and
leaves a live writer's (or another host's, on a shared folder) alone.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"     # no dots: the names split on them


def writer_suffix() -> str:
    """``HOST.PID.tmp``: the end of this process's temporary file names."""
    return f"{HOST}.{os.getpid()}.tmp"


def remove_dead_temporaries(folder: Path, prefix: str) -> None:
    """Delete the temporary files ``folder/PREFIX*.HOST.PID.tmp`` whose writer is gone: same host, pid not running.

    A live writer's files stay. So do files named with our own pid: another thread of this process may be writing
    them, and a leftover of an earlier run whose pid was reused is overwritten when we write that name."""
    if os.name != "posix":                       # elsewhere os.kill(pid, 0) does not merely test for a process
        return
    for tmp in Path(folder).glob(f"{prefix}*.tmp"):
        parts = tmp.name[:-len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or parts[1] != HOST or not parts[2].isdigit() or int(parts[2]) == os.getpid():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (OSError, OverflowError):         # PermissionError: alive, another user's
            pass
