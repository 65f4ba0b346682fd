"""Wall-clock seconds per part of the training step, for `selfsup bench --profile`.

The trainer times its parts through ``Trainer.clock``: ``NO_CLOCK`` (the default) does
nothing; a ``StepClock`` adds each part's seconds, synchronising a CUDA device at both
ends of a part so that queued kernels are charged to the part that launched them.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterable, Iterator

import torch


class _NoClock:
    def __call__(self, part: str):
        return contextlib.nullcontext()

    def iterate(self, part: str, items: Iterable) -> Iterable:
        return items


NO_CLOCK = _NoClock()


class StepClock:
    """``with clock(part): ...`` adds the block's seconds to ``seconds[part]``;
    ``clock.iterate(part, items)`` charges the waits for each next item to ``part``."""

    def __init__(self, device: torch.device | str = "cpu", warmup: int = 0):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = torch.device(device).type == "cuda"
        self.warmup, self.steps = warmup, 0          # the first ``warmup`` items of ``iterate`` are not counted

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        t = self._now()
        try:
            yield
        finally:
            self.seconds[part] += self._now() - t

    def iterate(self, part: str, items: Iterable) -> Iterator:
        it = iter(items)
        try:
            while True:
                if self.steps == self.warmup:
                    self.seconds.clear()
                with self(part):
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                self.steps += 1
                yield item
        finally:
            getattr(it, "close", lambda: None)()       # stops the loader's thread when the loop ends early

    @property
    def timed_steps(self) -> int:
        return max(0, self.steps - self.warmup)
