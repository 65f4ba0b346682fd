"""Linear probes on frozen backbones, by named preset.

- ``fast`` (the default): cached, unaugmented features, standardised with the training
  set's mean and std (a BatchNorm without affine parameters, frozen after fitting, as
  Goyal et al. 2019's linear heads); SGD momentum 0.9, lr 0.1, cosine per iteration,
  weight decay 0, batch 256, 100 epochs. Quick; no paper's protocol.
- ``moco``: MoCo's ``main_lincls``, which JigClu uses (METHODS.md 1.4): SGD momentum 0.9,
  weight decay 0, batch 256, 100 epochs, lr 10.0, x0.1 at epochs 60 and 80.
- ``swav``: SwAV's ``eval_linear`` (METHODS.md 5.7): SGD momentum 0.9, lr 0.3, weight decay
  1e-6, cosine per epoch to 0, batch 256, 100 epochs, no BatchNorm on the features.
- ``goyal``: Goyal et al. 2019's Places205 layer-wise probes (METHODS.md 6.2), one head per
  tap trained together, each Goyal's fixed average pooling (about 9k dims) -> BatchNorm
  without affine parameters -> Linear; SGD Nesterov momentum 0.9, lr 0.01, weight decay
  1e-4, batch 256, 14 epochs (VISSL's), x0.1 at epochs 4, 8 and 12 (fssb: 40k, 80k, 120k of
  140k iterations, 2/7, 4/7, 6/7 of the run). Augmented (fssb) or on cached centre-view
  features; run by ``selfsup.eval.layerwise.layerwise_linear_probe``, not by this module's
  single-tap probes.

Every head is a Linear initialised N(0, 0.01), bias 0. The augmented presets (moco,
swav) train on a fresh RandomResizedCrop(size, scale (0.08, 1)) + horizontal flip view of
every image at every epoch, made by ``selfsup.data.views``' batched ops, and run the
frozen backbone (eval mode, no gradients) on each batch on the device: no feature cache,
as the features change with every view. They are tested on the centre view
Resize(size x 256 / 224) -> CenterCrop(size) (``CenterView``), whose features are cached.
Epochs and lr may be overridden; step milestones keep their share of the epochs (60 % and
80 % for moco, 2/7, 4/7 and 6/7 for goyal). Accuracy is that of the last epoch (SwAV's script reports the best epoch's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.views import ViewMaker, ViewSpec
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, finite, positive
from selfsup.eval.features import extract_features, pool_features
from selfsup.eval.knn import topk_accuracy

TEST_CROP = 224 / 256                 # Resize(256) -> CenterCrop(224), at any size


@dataclass(frozen=True)
class Preset:
    """A linear-probe protocol: its optimiser, schedule and whether it trains on augmented views."""

    name: str
    epochs: int
    lr: float
    schedule: str                     # cosine-iter (per iteration) | cosine (per epoch) | step (x0.1, per epoch)
    milestones: tuple[int, ...] = ()  # epochs of the x0.1 steps, out of ``epochs``
    weight_decay: float = 0.0
    batch_size: int = 256
    augment: bool = False             # RandomResizedCrop + flip views through the frozen backbone
    standardize: bool = False         # features standardised by the training set's mean and std
    nesterov: bool = False            # Nesterov momentum
    pool: str | None = None           # the preset's pooling (None: the caller's)
    layerwise: bool = False           # one head per tap, trained together (selfsup.eval.layerwise)


PRESETS = {
    "fast": Preset("fast", 100, 0.1, "cosine-iter", standardize=True),
    "moco": Preset("moco", 100, 10.0, "step", milestones=(60, 80), augment=True),
    "swav": Preset("swav", 100, 0.3, "cosine", weight_decay=1e-6, augment=True),
    "goyal": Preset("goyal", 14, 0.01, "step", milestones=(4, 8, 12), weight_decay=1e-4, augment=True,
                    nesterov=True, pool="goyal", layerwise=True),
}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise SelfSupError(f"unknown linear preset {name!r}: use --preset fast, moco or swav (one tap), "
                           f"or goyal (layer-wise)")
    return PRESETS[name]


def check_probe(epochs: int, lr: float) -> None:
    """Refuse a probe that would not train: fewer than one epoch, or a learning rate not above 0."""
    at_least_one("--probe-epochs", epochs, 100)
    positive("--lr", lr, 0.1)


def milestones(preset: Preset, epochs: int) -> tuple[int, ...]:
    """The step epochs of ``preset`` for a probe of ``epochs`` epochs: (60, 80) at 100, scaled and rounded, each
    at least one epoch after the one before (the first after epoch 0): the first epoch always runs at the stated
    lr and no two steps land together (goyal's (4, 8, 12) of 14 at 2 epochs: (1, 2, 3), not (1, 1, 2)); a step
    at or past ``epochs`` never happens."""
    out = []
    for m in preset.milestones:
        out.append(max(round(m * epochs / preset.epochs), (out[-1] if out else 0) + 1))
    return tuple(out)


def preset_lr(preset: Preset, lr: float, epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The learning rate at iteration ``step`` of epoch ``epoch`` (both from 0)."""
    if preset.schedule == "cosine-iter":
        return 0.5 * lr * (1 + math.cos(math.pi * (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)))
    if preset.schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    return lr * 0.1 ** sum(epoch >= m for m in milestones(preset, epochs))


def describe(preset: str | Preset, overrides: dict | None = None) -> str:
    """"preset moco, epochs 5": the preset and the settings overridden, for output next to a paper's number."""
    return ", ".join([f"preset {get_preset(preset).name}"] + [f"{k} {v:g}" for k, v in (overrides or {}).items()])


def _head(dim: int, num_classes: int, g: torch.Generator) -> torch.nn.Linear:
    head = torch.nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    return head


def _fit(head, features_of, labels: torch.Tensor, preset: Preset, epochs: int, lr: float, batch_size: int,
         weight_decay: float, g: torch.Generator, history: list | None = None, progress: bool = False) -> float:
    """Train ``head`` with SGD (momentum 0.9) on ``features_of(indices)``; returns the last epoch's
    mean loss and appends every epoch's to ``history``."""
    from selfsup.progress import track

    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay,
                          nesterov=preset.nesterov)
    n = len(labels)
    steps_per_epoch = math.ceil(n / batch_size)
    device = next(head.parameters()).device
    mean_loss = float("nan")
    for epoch in track(range(epochs), desc="linear probe", enabled=progress, unit="epoch"):
        order = torch.randperm(n, generator=g)
        total = 0.0
        for step, start in enumerate(range(0, n, batch_size)):
            idx = order[start:start + batch_size]
            for group in opt.param_groups:
                group["lr"] = preset_lr(preset, lr, epochs, epoch, step, steps_per_epoch)
            loss = F.cross_entropy(head(features_of(idx)), labels[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        mean_loss = total / n
        if history is not None:
            history.append(mean_loss)
    return mean_loss


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0, history: list | None = None) -> dict[str, float]:
    """The ``fast`` preset: a linear classifier on frozen, cached features; test top-1 / top-5
    and the last epoch's training loss.

    Features are standardised with the training set's mean and std (a BatchNorm without
    affine parameters, frozen after fitting, as in Goyal et al. 2019's linear heads); SGD
    with momentum 0.9 and a cosine schedule per iteration.
    """
    check_probe(epochs, lr)
    if len(train_feats) < 2:
        raise SelfSupError(f"the linear probe standardises the features by the training set's std, which needs at "
                           f"least 2 training images, got {len(train_feats)}: add training images")
    finite(train_feats, "training features")
    finite(test_feats, "test features")
    g = torch.Generator().manual_seed(seed)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    head = _head(xtr.shape[1], num_classes, g)
    loss = _fit(head, lambda idx: xtr[idx], train_labels, PRESETS["fast"], epochs, lr, batch_size, weight_decay, g,
                history)
    with torch.no_grad():
        scores = head(xte)
    return {**topk_accuracy(scores, test_labels), "train_loss": loss}


def augmented_linear_probe(backbone, train, test, preset: str | Preset = "moco", epochs: int | None = None,
                           lr: float | None = None, tap: str | None = None, pool: str = "avg",
                           image_size: int | None = None, batch_size: int = 256, device: str | torch.device = "cpu",
                           cache_key: str | None = None, test_classes: torch.Tensor | None = None, seed: int = 0,
                           progress: bool = False, history: list | None = None) -> dict:
    """An augmented preset (moco, swav) on the datasets ``train`` and ``test``: test top-1 / top-5,
    the last epoch's training loss and the feature width.

    Each batch of training images gets a RandomResizedCrop(size) + flip view (``size``:
    ``image_size`` or the images' side) and goes through the frozen ``backbone`` at ``tap``
    (default: its last map), pooled by ``pool``; the backbone stays in eval mode and is
    restored to its mode afterwards. ``epochs`` and ``lr`` (None: the preset's) override
    the preset; ``batch_size`` is the batch of the test features' extraction, the probe's
    batch the preset's (256). ``test_classes`` maps test labels to training classes.
    """
    preset = get_preset(preset)
    if preset.layerwise:
        raise SelfSupError(f"preset {preset.name} trains one head per tap: use "
                           f"selfsup.eval.layerwise.layerwise_linear_probe")
    if not preset.augment:
        raise SelfSupError(f"preset {preset.name} trains on cached features: use linear_probe, or --preset moco or swav")
    epochs = preset.epochs if epochs is None else epochs
    lr = preset.lr if lr is None else lr
    check_probe(epochs, lr)
    at_least_one("--image-size", image_size, 224)
    tap = backbone.check_taps([tap])[0] if tap else backbone.default_tap
    device = torch.device(device)
    size = image_size or min(train.images.shape[2:4])
    xte, yte = extract_features(backbone, test, tap, pool, size, batch_size, device, cache_key, progress=progress,
                                crop=TEST_CROP)
    finite(xte, "test features")
    yte = yte if test_classes is None else test_classes[yte]
    ytr = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    g = torch.Generator().manual_seed(seed)
    view_g = torch.Generator(device=device).manual_seed(seed)
    views = ViewMaker([ViewSpec(size, flip_prob=0.5, jitter_prob=0.0, gray_prob=0.0)])   # crop (0.08, 1) + flip

    @torch.no_grad()
    def features_of(idx: torch.Tensor) -> torch.Tensor:
        images = torch.from_numpy(np.asarray(train.images[idx.numpy()])).to(device)
        x = views(images, view_g)[0].contiguous(memory_format=torch.channels_last)
        return pool_features(backbone.forward_taps(x, (tap,))[tap].float(), pool)

    num_classes = int(max(ytr.max(), yte.max())) + 1
    head = _head(xte.shape[1], num_classes, g).to(device)
    was_training = backbone.training
    backbone.eval().to(device, memory_format=torch.channels_last)
    try:
        loss = _fit(head, features_of, ytr, preset, epochs, lr, preset.batch_size, preset.weight_decay, g, history,
                    progress)
    finally:
        backbone.train(was_training)
    with torch.no_grad():
        scores = head(xte.to(device)).cpu()
    return {**topk_accuracy(scores, yte), "train_loss": loss, "feature_dim": xte.shape[1]}
