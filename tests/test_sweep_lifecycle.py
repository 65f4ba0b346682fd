"""selfsup sweep --parallel N as a process: its workers end with it (SIGTERM / SIGINT to it, or its SIGKILL)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker states in /proc")

LONG = """
name: long
base: {method: simclr, backbone: convnet, epochs: 500, batch_size: 16, device: cpu, progress: false,
       data: "synthetic:64?classes=4&size=16", optim: {lr: 0.1, warmup_epochs: 0}}
grid: {width: [0.5, 1]}
evals: [{protocol: knn, train_data: "synthetic:64?classes=4&size=16", test_data: "synthetic:32?classes=4&size=16&seed=1"}]
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _start(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """The sweep, running, and the pids of its two workers once both cells train (each cell's .lock names it)."""
    for lock in (tmp_path / "out" / "cells").glob("*/.lock"):
        lock.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "sweep", str(tmp_path / "s.yaml"), "--out",
                             str(tmp_path / "out"), "--parallel", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        locks = [p.read_text() for p in (tmp_path / "out" / "cells").glob("*/.lock")]
        if len(locks) == 2 and all(text.startswith("pid ") for text in locks):
            return proc, [int(text.split()[1]) for text in locks]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the sweep's cells did not start training in 60 s")


def _gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(_alive(p) for p in pids)


def test_stopping_or_killing_a_parallel_sweep_ends_its_workers(tmp_path):
    """SIGTERM to `sweep --parallel N` killed the sweep alone: its spawned workers went on training (and then idled)
    under PID 1, holding their cells. The sweep now stops them (each training cell saving its checkpoint) and says
    so in one line; killed (SIGKILL), its workers end too (PR_SET_PDEATHSIG), and a rerun can take the cells."""
    (tmp_path / "s.yaml").write_text(LONG)
    started = []
    try:
        proc, workers = _start(tmp_path)
        started += workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("selfsup: error: sweep stopped (SIGTERM)")
        assert _gone(workers, 5), "workers outlived the sweep"

        proc, workers = _start(tmp_path)                # the cells again, then the sweep dies without a word
        started += workers
        proc.kill()
        proc.wait()
        assert _gone(workers, 20), "workers outlived the killed sweep"
    finally:                                            # a failure leaves no worker behind
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
