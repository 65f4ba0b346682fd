"""DeepCluster-v2 (Caron et al. 2020, App. A; METHODS.md 5.8).

Offline clustering with SwAV's architecture and multi-crop. A memory bank holds
the L2-normalised projections of the assignment crops of every sample seen in
the previous epoch (filled by a no-grad pass before training). At the start of
every epoch, for each of 3 heads, spherical k-means on one bank (crop 0, 1, 0)
gives K centroids, which become that head's prototypes (frozen: only k-means
moves them), and a hard assignment of every sample. During the epoch every
crop of a sample predicts its assignments by cross-entropy on
softmax(z^T C_h / tau), averaged over heads; the bank is overwritten with the
current embeddings, so epoch e clusters the features of epoch e - 1.

Under DDP each process keeps the bank of the samples it saw; k-means sums are
all-reduced and assignments are gathered by dataset index.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed as dist
from selfsup.errors import SelfSupError
from selfsup.kmeans import spherical_kmeans
from selfsup.methods.base import to_device
from selfsup.methods.prototypes import (SMALL_IMAGE_VIEWS, PrototypeConfig, PrototypeMethod, PrototypeUsage,
                                       normalize_rows_, prototype_scores)

IGNORE = -100   # assignment of samples not in any bank (ignored by the loss)


@dataclass
class DeepClusterV2Config(PrototypeConfig):
    nmb_prototypes: list[int] = field(default_factory=lambda: [3000, 3000, 3000])   # K per head
    kmeans_iterations: int = 10


def known_classes(dataset) -> int | None:
    """The number of classes of a labelled set (distinct labels, every image labelled), else None."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    labels = np.asarray(labels)
    if len(labels) == 0 or (labels < 0).any():
        return None
    return len(np.unique(labels))


def fitting_prototypes(n: int, classes: int | None = None) -> int:
    """The prototypes per head to suggest for ``n`` samples: about 10 x the classes when they are known (the
    official CIFAR advice, facebookresearch/swav #23, #37), else n // 10; at most n (k-means needs a sample per
    prototype), at least 2 (one prototype takes every sample: loss 0, nothing learnt)."""
    return max(2, min(10 * classes if classes else n // 10, n))


def too_many(name: str, nmb_prototypes, n: int, what: str, dataset=None) -> None:
    """A one-line error when a head has more prototypes than ``n`` samples to cluster, with a count that
    fits (``fitting_prototypes``, from ``dataset``'s classes when it is labelled)."""
    if max(nmb_prototypes) <= n:
        return
    classes = known_classes(dataset)
    asked = f"{name}.nmb_prototypes={str(list(nmb_prototypes)).replace(' ', '')} asks for more prototypes than"
    if n < 2:
        raise SelfSupError(f"{asked} there are {what} ({n}): clustering needs 2 prototypes or more, one sample each at "
                           f"least: use more images")
    asked = f"{asked} the {n} {what}"
    k = fitting_prototypes(n, classes)
    fit = str([max(2, min(c, k)) for c in nmb_prototypes]).replace(" ", "")
    if classes and 10 * classes <= n:
        why = f"about 10x the {classes} classes, the official CIFAR advice"
    elif classes:
        why = f"one per image: 10x the {classes} classes, the official CIFAR advice, needs {10 * classes} images"
    else:
        why = "a tenth of them: the classes are unknown; the official CIFAR advice is about 10x the classes"
    raise SelfSupError(f"{asked}: set {name}.nmb_prototypes={fit} ({why}) or use more images")


class DeepClusterV2(PrototypeMethod):
    name = "deepcluster_v2"
    Config = DeepClusterV2Config
    # Same optimisation as SwAV (METHODS.md 5.7-5.8): 4.8 / 0.0048 / warmup from 0.3 at batch 4096.
    defaults = {"optim": {"name": "larc", "lr": 0.3, "scale_lr": True, "weight_decay": 1e-6, "warmup_epochs": 10,
                          "warmup_start_lr": 0.01875, "min_lr": 0.0003, "exclude_bias_norm": False}}
    small_image_defaults = {"deepcluster_v2": SMALL_IMAGE_VIEWS}     # 64 px or less: SwAV's CIFAR advice
    trainable_prototypes = False
    # what a collapse warning names (k-means has no epsilon, queue or frozen prototypes)
    collapse_remedies = "use fewer prototypes (about 10x the classes)"

    @classmethod
    def fit_dataset(cls, cfg: DeepClusterV2Config, dataset) -> DeepClusterV2Config:
        """Refuse more prototypes than images (before anything is written): each head assigns
        every image of the bank to one of K prototypes (k-means needs K samples at least)."""
        too_many(cls.name, cfg.nmb_prototypes, len(dataset), "images", dataset)
        return cfg

    def __init__(self, backbone, cfg: DeepClusterV2Config, image_size: int):
        super().__init__(backbone, cfg, image_size)
        self.heads = nn.ModuleList(nn.Linear(cfg.proj_dim, k, bias=False) for k in cfg.nmb_prototypes)
        for head in self.heads:
            head.weight.requires_grad_(self.trainable_prototypes)
        self.usage = [PrototypeUsage(k, f"head{h}_", self.collapse_remedies) for h, k in enumerate(cfg.nmb_prototypes)]
        # the memory bank and assignments are per process, kept out of DDP's buffer broadcast
        self.bank: torch.Tensor | None = None          # (assignment crops, N_local, proj_dim)
        self.bank_index: torch.Tensor | None = None    # (N_local,) dataset indices
        self.assignments: torch.Tensor | None = None   # (heads, dataset size)

        self.step_in_epoch = 0

    def get_extra_state(self):
        return {"bank": self.bank, "bank_index": self.bank_index, "assignments": self.assignments,
                "step_in_epoch": self.step_in_epoch, "usage": [u.state() for u in self.usage]}

    def set_extra_state(self, state):
        device = self.heads[0].weight.device
        state = to_device(state, device)
        self.bank, self.bank_index, self.assignments = state["bank"], state["bank_index"], state["assignments"]
        self.step_in_epoch = state["step_in_epoch"]
        for usage, counts in zip(self.usage, state["usage"]):
            usage.load(counts, device)

    # ------------------------------------------------------------ memory bank
    @torch.no_grad()
    def fill_bank(self, loader, epoch: int) -> None:
        """The first bank: a no-grad pass over one epoch of data (assignment crops only)."""
        device = self.heads[0].weight.device
        n_local = len(loader) * loader.batch_size
        self.bank = torch.zeros(len(self.cfg.crops_for_assign), n_local, self.cfg.proj_dim, device=device)
        self.bank_index = torch.full((n_local,), -1, dtype=torch.long, device=device)
        start = 0
        for batch in loader.epoch(epoch):
            self._store(start, batch.indices, [self.embed([batch.views[c]]) for c in self.cfg.crops_for_assign])
            start += len(batch.indices)

    def _store(self, start: int, indices: torch.Tensor, embeddings: list[torch.Tensor]) -> None:
        end = start + len(indices)
        self.bank_index[start:end] = indices
        for j, e in enumerate(embeddings):
            self.bank[j, start:end] = e.detach().to(self.bank.dtype)

    def on_epoch_start(self, epoch: int, loader) -> None:
        if self.bank is None:                    # filled once, its size fixed: checked once
            self.fill_bank(loader, epoch)
            too_many(self.name, self.cfg.nmb_prototypes, self.bank.shape[1], "embeddings in the memory bank (the "
                     "images of one epoch of full batches)", loader.dataset)
        self.dataset_size = len(loader.dataset)
        self.assign(epoch)
        self.step_in_epoch = 0

    @torch.no_grad()
    def assign(self, epoch: int) -> None:
        """Targets for every head, gathered by dataset index (-100 for samples in no bank)."""
        self.assignments = torch.full((len(self.heads), self.dataset_size), IGNORE, dtype=torch.long,
                                      device=self.bank.device)
        index = dist.gather(self.bank_index)
        seen = index >= 0
        g = torch.Generator().manual_seed(epoch)
        for h in range(len(self.heads)):
            labels, codes = self.head_labels(h, self.bank[h % len(self.bank)], g)
            self.usage[h].update(codes=codes, labels=labels)      # local: the summary all-reduces
            labels = dist.gather(labels)
            self.assignments[h, index[seen]] = labels[seen]

    def head_labels(self, h: int, bank: torch.Tensor, g: torch.Generator):
        """k-means on the bank: the centroids become head h's prototypes; returns (local labels, None)."""
        centroids, labels = spherical_kmeans(bank, self.heads[h].out_features, self.cfg.kmeans_iterations, g)
        self.heads[h].weight.copy_(centroids)
        return labels, None

    # ------------------------------------------------------------ training step
    def forward(self, batch):
        b, n_crops = len(batch.indices), len(batch.views)
        if self.trainable_prototypes:
            for head in self.heads:
                normalize_rows_(head.weight)
        z = self.embed(batch.views)
        loss = 0.0
        for h, head in enumerate(self.heads):
            targets = self.assignments[h, batch.indices].repeat(n_crops)
            logits = prototype_scores(head, z) / self.cfg.temperature
            loss = loss + F.cross_entropy(logits, targets, ignore_index=IGNORE)
        with torch.no_grad():   # the bank of the next epoch
            start = self.step_in_epoch * b
            self._store(start, batch.indices, [z[c * b:(c + 1) * b] for c in self.cfg.crops_for_assign])
            self.step_in_epoch += 1
        return {"loss": loss / len(self.heads)}

    def on_epoch_end(self, epoch: int):
        out = {}
        for usage in self.usage:
            out.update(usage.summary())
        return out
