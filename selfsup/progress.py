"""Progress output that suits both a terminal and a log file.

On a terminal the familiar tqdm bar redraws itself in place. Anywhere else
(``nohup``, Slurm, CI, ``2> log``) redraws would fill the log with carriage
returns, so a :class:`LineProgress` prints plain newline-terminated lines
instead, each flushed at once (``tail -f`` shows it)::

    epoch 3/10  step 120/195  loss 4.1234  lr 0.3  412 img/s  eta 0:01:10
    epoch 3/10  step 195/195  loss 4.0012  lr 0.3  405 img/s  elapsed 0:03:25

A line is printed when the count reaches a multiple of ``every`` (by default
``total / 10`` rounded up: about ten lines per loop) and always when it reaches
``total``, where ``eta`` (time left in this loop, from its elapsed time and the
steps it has done) gives way to ``elapsed``. The fields between the count and
the time are the ones last given to ``set_postfix``, as ``key value``; a key
ending in ``_s`` is a rate, shown as ``value key/s`` (``img_s`` -> ``412 img/s``).

The mode follows the output stream (stderr, where tqdm writes): a bar when
``stream.isatty()``, lines otherwise. The environment variable
``SELFSUP_PROGRESS`` forces it for every command: ``bar`` (tqdm even when
redirected), ``lines`` (lines even on a terminal), ``off`` (nothing); unset,
empty or ``auto`` leaves the choice to the stream. ``enabled=False`` (the
``progress=false`` config key) prints nothing in any mode.

This module sits at the bottom layer: it imports nothing from selfsup but the
errors.
"""
from __future__ import annotations

import math
import os
import sys
import time

from selfsup.errors import SelfSupError

ENV = "SELFSUP_PROGRESS"
LINES_PER_LOOP = 10
_now = time.perf_counter                 # the clock (tests replace it)


def line_every(total: int | None, multiple: int = 1, lines: int = LINES_PER_LOOP) -> int:
    """The smallest multiple of ``multiple`` that prints at most ``lines`` periodic lines over ``total``
    steps (the trainer passes its ``log_every``, so that lines fall on steps whose values it already has)."""
    multiple = max(1, int(multiple))
    if not total:
        return multiple
    return multiple * max(1, math.ceil(total / (lines * multiple)))


def mode(stream=None) -> str:
    """``bar``, ``lines`` or ``off``: ``SELFSUP_PROGRESS`` if set, otherwise ``bar`` on a terminal."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    if forced not in ("", "auto"):
        raise SelfSupError(f"{ENV}={os.environ[ENV]!r} is not a progress mode: use bar, lines or off, "
                           f"or unset it to choose by terminal")
    return "bar" if _isatty(sys.stderr if stream is None else stream) else "lines"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):    # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _field(key: str, value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} {key[:-2]}/s" if key.endswith("_s") and len(key) > 2 else f"{key} {text}"


class Silent:
    """What ``enabled=False`` or ``SELFSUP_PROGRESS=off`` gives: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kv) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LineProgress(Silent):
    """Plain progress lines for a stream that is not a terminal (see the module docstring).

    ``update`` costs a counter increment and a comparison between the lines it prints; it
    never touches the values given to ``set_postfix`` (already host numbers or strings).
    """

    def __init__(self, total: int | None, initial: int = 0, desc: str = "", every: int | None = None,
                 stream=None, unit: str = "step"):
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit = desc, unit
        self.every = max(1, int(every)) if every else line_every(total)
        self.stream = stream
        self.postfix: dict = {}
        self.start = _now()
        self._printed = initial           # the count at the last line (or the start)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kv) -> None:
        self.postfix = {**(ordered_dict or {}), **kv}

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n <= self._printed:
            return
        done = self.total is not None and self.n >= self.total
        if done or self.n // self.every > self._printed // self.every:
            self._line(done)

    def _line(self, done: bool) -> None:
        self._printed = self.n
        elapsed = _now() - self.start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [self.desc] if self.desc else []
        parts.append(f"{self.unit} {count}" if self.unit else count)
        parts += [_field(k, v) for k, v in self.postfix.items()]
        if done or self.total is None:        # no eta without a total
            parts.append(f"elapsed {_clock(elapsed)}")
        else:
            rate = (self.n - self.initial) / max(elapsed, 1e-9)
            parts.append(f"eta {_clock((self.total - self.n) / rate)}")
        stream = sys.stderr if self.stream is None else self.stream
        stream.write("  ".join(parts) + "\n")
        stream.flush()


def progress(total: int | None, initial: int = 0, desc: str = "", enabled: bool = True, every: int | None = None,
             stream=None, unit: str = "step"):
    """A progress reporter over ``total`` steps with ``update(n)``, ``set_postfix(**kv)``, ``close()``
    and ``with`` support: tqdm on a terminal, :class:`LineProgress` elsewhere, :class:`Silent` when
    disabled. ``stream`` defaults to sys.stderr (at call time, as tqdm); ``every`` and ``unit`` only
    shape the lines."""
    if not enabled:
        return Silent()
    chosen = mode(stream)
    if chosen == "off":
        return Silent()
    if chosen == "lines":
        return LineProgress(total, initial, desc, every, stream, unit)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=stream, dynamic_ncols=True, leave=False)


def track(iterable, desc: str = "", enabled: bool = True, total: int | None = None, every: int | None = None,
          stream=None, unit: str = "step"):
    """``iterable`` with progress, for ``for x in tqdm(range(...))`` loops: tqdm on a terminal, about
    ten lines per loop (a multiple of ``every`` and the last item) elsewhere, the bare iterable when
    disabled. The last line is printed when the iterable is exhausted, not on ``break``."""
    if not enabled:
        return iterable
    chosen = mode(stream)
    if chosen == "off":
        return iterable
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    if chosen == "bar":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=stream, leave=False)
    return _lines(iterable, LineProgress(total, 0, desc, every, stream, unit))


def _lines(iterable, bar: LineProgress):
    count = 0
    for item in iterable:
        yield item
        count += 1
        bar.update(1)
    if bar.total is None and count > bar._printed:     # unknown length: the final line at exhaustion
        bar.total = count
        bar._line(True)
