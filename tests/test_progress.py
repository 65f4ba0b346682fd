"""Progress output: a tqdm bar on a terminal, plain flushed lines in a log (selfsup.progress)."""
import io
import re

import pytest
import torch
from torch import nn
from tqdm import tqdm

import selfsup.progress as progress_mod
from conftest import tiny_overrides
from selfsup.config import resolve_config
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.eval.layerwise import fit_heads
from selfsup.methods import get_method
from selfsup.progress import LineProgress, Silent, line_every, progress, track


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    """The user's own SELFSUP_PROGRESS must not decide these tests."""
    monkeypatch.delenv("SELFSUP_PROGRESS", raising=False)


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """A clock that advances ``tick`` seconds each time it is read."""

    def __init__(self, tick=1.0):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


def run_steps(bar, steps, every_log=1):
    for i in range(steps):
        if (i + 1) % every_log == 0 or i + 1 == steps:
            bar.set_postfix(loss=f"{4 - i / 100:.4f}", lr=f"{0.3:.4g}", img_s=f"{412:.0f}")
        bar.update(1)
    bar.close()


def test_95_steps_every_10_give_9_periodic_lines_and_the_final_one():
    stream = io.StringIO()
    bar = progress(95, desc="epoch 3/10", every=10, stream=stream)
    assert isinstance(bar, LineProgress)
    run_steps(bar, 95)
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 10
    assert [re.search(r"step (\d+)/95", line).group(1) for line in lines] == \
        [str(s) for s in range(10, 100, 10)] + ["95"]
    for line in lines:
        assert line.startswith("epoch 3/10  step ") and "  loss " in line and "  lr 0.3  " in line
        assert "  412 img/s  " in line
    assert all(" eta " in line for line in lines[:-1]) and " elapsed " in lines[-1] and " eta " not in lines[-1]


def test_the_exact_line_format(monkeypatch):
    monkeypatch.setattr(progress_mod, "_now", Clock(tick=1.0))    # 1 s between reads: start, then each line
    stream = io.StringIO()
    bar = progress(195, initial=100, desc="epoch 3/10", every=20, stream=stream)
    for _ in range(20):
        bar.set_postfix(loss="4.1234", lr="0.3", img_s="412")
        bar.update(1)
    run_steps(bar, 75)
    lines = stream.getvalue().splitlines()
    # 20 steps in 1 s -> 20 steps/s; 75 left -> 4 s
    assert lines[0] == "epoch 3/10  step 120/195  loss 4.1234  lr 0.3  412 img/s  eta 0:00:04"
    assert lines[-1].startswith("epoch 3/10  step 195/195  loss ") and lines[-1].endswith("  412 img/s  elapsed 0:00:05")
    assert progress_mod._clock(3 * 3600 + 62) == "3:01:02" and progress_mod._clock(30 * 3600) == "30:00:00"


def test_a_resumed_bar_prints_on_the_same_multiples():
    stream = io.StringIO()
    run_steps(progress(95, initial=33, every=10, stream=stream), 62)
    steps = [re.search(r"step (\d+)/", line).group(1) for line in stream.getvalue().splitlines()]
    assert steps == ["40", "50", "60", "70", "80", "90", "95"]


def test_line_every_is_a_multiple_of_log_every_with_about_ten_lines_per_epoch():
    assert line_every(95) == 10 and line_every(100) == 10 and line_every(5) == 1
    assert line_every(195, 10) == 20 and line_every(5000, 10) == 500 and line_every(4, 1) == 1
    assert line_every(50, 100) == 100                        # fewer steps than log_every: the final line only


def test_a_terminal_gets_the_tqdm_bar():
    stream = FakeTTY()
    bar = progress(10, desc="epoch 1/1", stream=stream)
    assert isinstance(bar, tqdm)
    run_steps(bar, 10)
    assert isinstance(track(range(3), stream=FakeTTY()), tqdm)


def test_selfsup_progress_forces_the_mode(monkeypatch):
    monkeypatch.setenv("SELFSUP_PROGRESS", "lines")
    tty = FakeTTY()
    bar = progress(10, every=5, stream=tty)
    assert isinstance(bar, LineProgress)
    run_steps(bar, 10)
    assert len(tty.getvalue().splitlines()) == 2 and "\r" not in tty.getvalue()

    monkeypatch.setenv("SELFSUP_PROGRESS", "bar")
    assert isinstance(progress(10, stream=io.StringIO()), tqdm)

    monkeypatch.setenv("SELFSUP_PROGRESS", "off")
    for stream in (FakeTTY(), io.StringIO()):
        bar = progress(10, stream=stream)
        assert isinstance(bar, Silent)
        run_steps(bar, 10)
        assert list(track(range(4), stream=stream)) == [0, 1, 2, 3]
        assert stream.getvalue() == ""

    monkeypatch.setenv("SELFSUP_PROGRESS", "auto")
    assert isinstance(progress(10, stream=io.StringIO()), LineProgress)
    monkeypatch.setenv("SELFSUP_PROGRESS", "fancy")
    with pytest.raises(SelfSupError, match="SELFSUP_PROGRESS='fancy'.*bar, lines or off"):
        progress(10, stream=io.StringIO())


def test_disabled_prints_nothing_in_either_mode():
    for stream in (FakeTTY(), io.StringIO()):
        with progress(10, enabled=False, stream=stream) as bar:
            run_steps(bar, 10)
        items = range(4)
        assert track(items, enabled=False, stream=stream) is items
        assert stream.getvalue() == ""


def test_track_prints_about_ten_lines_and_the_last_item():
    stream = io.StringIO()
    assert list(track(range(95), desc="patches", stream=stream, unit="batch")) == list(range(95))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("patches  batch 10/95  eta ")
    assert lines[-1].startswith("patches  batch 95/95  elapsed ")

    stream = io.StringIO()                                  # no len(): a line every `every` items, with the time so far
    assert list(track((i for i in range(7)), desc="gen", every=2, stream=stream)) == list(range(7))
    lines = stream.getvalue().splitlines()
    assert [line.split("  elapsed ")[0] for line in lines] == ["gen  step 2", "gen  step 4", "gen  step 6", "gen  step 7/7"]

    stream = io.StringIO()                                  # a break prints no final line
    for i in track(range(95), stream=stream):
        if i == 50:
            break
    assert len(stream.getvalue().splitlines()) == 5


def test_the_layerwise_probe_prints_lines_when_not_a_terminal(capsys):
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    heads = nn.ModuleDict({"a": nn.Linear(4, 3)})
    fit_heads(heads, lambda idx: {"a": x[idx]}, y, 25, 0.1, torch.Generator().manual_seed(0), progress=True)
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    lines = err.splitlines()
    assert [re.match(r"layer-wise probe  epoch (\d+)/25  ", line).group(1) for line in lines] == \
        ["3", "6", "9", "12", "15", "18", "21", "24", "25"]


def test_pretrain_writes_plain_lines_to_a_log(tmp_path, capfd):
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "run", epochs=2, progress=True))
    assert Trainer(cfg).fit() == "done"
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 8                       # 64 images / 16 = 4 steps an epoch, log_every=1: a line each
    pattern = r"epoch [12]/2  step [1-4]/4  loss -?\d+\.\d{4}  lr \S+  \d+ img/s  (eta|elapsed) \d+:\d\d:\d\d"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[3].startswith("epoch 1/2  step 4/4  ") and "elapsed" in lines[3]
    assert lines[-1].startswith("epoch 2/2  step 4/4  ")
