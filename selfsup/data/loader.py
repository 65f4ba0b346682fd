"""Batches of uint8 images, turned into views on the training device in a background thread.

The order of every epoch, and the random parameters of every batch's augmentation,
are functions of (seed, epoch, step, rank) only: a run resumed in the middle of an
epoch sees exactly the batches and views the uninterrupted run would have seen.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch


@dataclass
class Batch:
    views: list[torch.Tensor]     # augmented, normalised views (each B x 3 x h x w)
    labels: torch.Tensor          # B, int64 (-1 where unlabeled); only the supervised method reads them
    indices: torch.Tensor         # B, dataset indices (for memory banks)
    targets: torch.Tensor | None = None   # pretext targets drawn with the views (a puzzle's permutation index)


def batch_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


class BatchLoader:
    """Iterates one process's share of the global batches of an epoch.

    ``batch_size`` is the per-process batch; the global batch is
    ``batch_size * world_size``. With ``drop_last`` every step is full.
    """

    def __init__(self, dataset, batch_size: int, transform: Callable, *, device, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, prefetch: int = 2,
                 resident: bool = False):
        self.dataset, self.batch_size, self.transform = dataset, batch_size, transform
        self.device, self.shuffle, self.drop_last = torch.device(device), shuffle, drop_last
        self.seed, self.rank, self.world_size, self.prefetch = seed, rank, world_size, prefetch
        self.global_batch = batch_size * world_size
        self.threads = 0                  # intra-op threads of the thread that makes the views (0: torch's setting)
        # images stored at their own aspect ratio (``dataset.full``, ``dataset.sizes``) reach a size-aware
        # transform whole, padded, with their sizes; any other transform gets their centre crops
        self.padded = getattr(dataset, "full", None) is not None and getattr(transform, "accepts_sizes", False)
        self.source = dataset.full if self.padded else dataset.images
        self.resident = None              # ``resident``: every image and label on the device, copied once
        if resident:
            self.resident = (torch.from_numpy(np.ascontiguousarray(self.source)).to(self.device),
                             torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64)).to(self.device))

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order of the dataset's rows in ``epoch``: a function of (seed, epoch) only."""
        n = len(self.dataset)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        order = self.epoch_order(epoch)
        out = []
        for k in range(len(self)):
            chunk = order[k * self.global_batch:(k + 1) * self.global_batch]
            per = -(-len(chunk) // self.world_size)
            out.append(chunk[self.rank * per:(self.rank + 1) * per])
        return out

    def load(self, epoch: int, step: int, idx: np.ndarray) -> Batch:
        """The batch of (epoch, step) for the dataset rows ``idx``: read, moved to the device, augmented."""
        if self.resident is not None:
            rows = torch.from_numpy(idx.astype(np.int64)).to(self.device)
            images, labels = self.resident[0][rows], self.resident[1][rows]
        else:
            images = torch.from_numpy(np.ascontiguousarray(self.source[np.sort(idx)]))
            order = np.argsort(np.argsort(idx))                     # undo the sort used for fast reads
            images = images[torch.from_numpy(order)]
            labels = torch.from_numpy(np.asarray(self.dataset.labels[idx], dtype=np.int64))
        if self.device.type == "cuda" and self.resident is None:
            images = images.pin_memory().to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
        g = batch_generator(self.seed, epoch, step, self.rank, self.device)
        if self.padded:
            sizes = torch.from_numpy(np.asarray(self.dataset.sizes[idx], dtype=np.int64)).to(self.device)
            views = self.transform(images, g, sizes=sizes)
        else:
            views = self.transform(images, g)         # a list of views, or (views, targets)
        views, targets = views if isinstance(views, tuple) else (views, None)
        return Batch(views, labels, torch.from_numpy(idx.astype(np.int64)).to(self.device), targets)

    def _batches(self, epoch: int, steps: list) -> Iterator[Batch]:
        """The batches of ``steps`` ((step, indices) pairs) in order (the streaming loader decodes in workers)."""
        for step, idx in steps:
            yield self.load(epoch, step, idx)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` from ``start_step`` on, prepared ahead in a thread."""
        steps = list(enumerate(self.batch_indices(epoch)))[start_step:]
        produce = self._batches(epoch, steps)
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        step_threads = torch.get_num_threads()

        def work():
            try:
                # the count is per thread (the step keeps its own), but torch also records it for threads started
                # later: the finally below gives those the step's count again
                if self.threads:
                    torch.set_num_threads(self.threads)
                for batch in produce:
                    if stop.is_set():
                        return
                    q.put(batch)
                q.put(None)
            except BaseException as exc:  # handed to the consumer
                q.put(exc)
            finally:
                produce.close()           # a streaming loader's worker processes end here
                if self.threads:
                    torch.set_num_threads(step_threads)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
