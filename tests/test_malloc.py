import os
import subprocess
import sys

import pytest

import selfsup.malloc as M

CHILD = """
import resource, torch
from selfsup.malloc import keep_freed_memory
on = keep_freed_memory()
x = torch.rand(10, 1000, 1000)                      # 40 MB, above glibc's largest mmap threshold
for _ in range(8):                                   # glibc settles its heap over the first few copies
    x.clone()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x.clone()
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[bool, int]:
    env = {**os.environ, "SELFSUP_KEEP_MEMORY": env_value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    on, faults = out.stdout.split()
    return on == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    """Ten copies of a 40 MB tensor after a few: glibc's defaults map each one afresh (about 10,000 page faults
    per copy); with keep_freed_memory the freed block is reused. SELFSUP_KEEP_MEMORY=0 keeps glibc's defaults."""
    on, kept = _faults("1")
    off, default = _faults("0")
    assert on and not off
    assert default > 50_000 and kept < default / 5, (kept, default)


def test_keep_freed_memory_is_set_once(monkeypatch):
    monkeypatch.setattr(M, "_done", None)
    monkeypatch.setenv("SELFSUP_KEEP_MEMORY", "0")
    assert M.keep_freed_memory() is False
    monkeypatch.setenv("SELFSUP_KEEP_MEMORY", "1")
    assert M.keep_freed_memory() is False            # decided once per process
