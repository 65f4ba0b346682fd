"""Layer-wise linear probes: Goyal et al. 2019's Places205 protocol (METHODS.md 6.2), preset ``goyal``.

One head per tap of a frozen trunk, all trained together on the same batches, each
with its own softmax cross-entropy (the losses are summed; the heads share no
parameters, so one optimiser trains each exactly as it would train it alone):

    tap map -> Goyal's fixed average pooling (``pool_features(.., "goyal")``, about 9k dims,
    METHODS.md 6.1) -> BatchNorm1d without affine parameters (fssb's ``BN_NO_SCALE_SHIFT``:
    batch statistics while fitting, running statistics at test) -> Linear to the classes,
    initialised N(0, 0.01), bias 0.

Schedule (``PRESETS["goyal"]``): SGD with Nesterov momentum 0.9, lr 0.01, weight decay 1e-4
(the BatchNorm has no parameters to exempt), batch 256, 14 epochs (VISSL's), x0.1 at epochs
4, 8 and 12: 2/7, 4/7 and 6/7 of the run, as fssb's steps at 40k, 80k and 120k of 140k
iterations. Overridden epochs keep those shares (7 epochs: 2, 4, 6).

Two variants:
- augmented (fssb's): every training batch gets a fresh RandomResizedCrop(size, (0.08, 1))
  + horizontal flip view (``selfsup.data.views``' batched ops, as ``augmented_linear_probe``)
  and goes through the trunk once for all taps (``forward_taps``);
- cached: the centre view's features of every tap, from one pass over the data
  (``extract_tap_features``), cached per tap with ``cache_key``, kept on the device whole.

Both test on the centre view Resize(size x 256 / 224) -> CenterCrop(size) (fssb: centre
crop 224; ``CenterView``), whose features are cached. Accuracy is the last epoch's.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import ViewMaker, ViewSpec
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one
from selfsup.eval.features import extract_tap_features, pool_features
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.linear import PRESETS, TEST_CROP, Preset, _head, check_probe, milestones, preset_lr

GOYAL = PRESETS["goyal"]


def make_head(dim: int, num_classes: int, g: torch.Generator) -> nn.Sequential:
    """One tap's head (METHODS.md 6.2): BatchNorm1d(dim) without affine parameters, then a
    Linear(dim, num_classes) initialised N(0, 0.01), bias 0."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), _head(dim, num_classes, g))


def make_heads(dims: dict[str, int], num_classes: int, g: torch.Generator) -> nn.ModuleDict:
    """A head per tap (``dims``: tap -> feature width), initialised in the order of ``dims``."""
    return nn.ModuleDict({tap: make_head(dim, num_classes, g) for tap, dim in dims.items()})


def goyal_optimizer(heads: nn.Module, lr: float, preset: Preset = GOYAL) -> torch.optim.SGD:
    """SGD, momentum 0.9, Nesterov and weight decay as ``preset`` (goyal: on, 1e-4), over all the heads."""
    return torch.optim.SGD(heads.parameters(), lr=lr, momentum=0.9, nesterov=preset.nesterov,
                           weight_decay=preset.weight_decay)


def fit_heads(heads: nn.ModuleDict, features_of, labels: torch.Tensor, epochs: int, lr: float,
              g: torch.Generator, preset: Preset = GOYAL, history: list | None = None,
              progress: bool = False) -> dict[str, float]:
    """Train every head of ``heads`` together on ``features_of(indices)`` (a dict tap -> B x D
    on the heads' device) with the sum of their cross-entropies; returns each tap's last-epoch
    mean loss.

    Batches of ``preset.batch_size`` in a fresh random order each epoch (from ``g``); a
    trailing batch of one image is skipped (BatchNorm needs two). The learning rate follows
    ``preset`` per epoch (goyal: x0.1 at 2/7, 4/7 and 6/7 of ``epochs``). Losses stay on the
    device until the epoch ends: one host sync per epoch. ``history`` receives one entry per
    epoch, {"lr": lr, "loss": {tap: mean loss}}.
    """
    from selfsup.progress import track

    opt = goyal_optimizer(heads, lr, preset)
    taps = list(heads)
    device = labels.device
    n, batch = len(labels), preset.batch_size
    heads.train()
    losses = {tap: float("nan") for tap in taps}
    for epoch in track(range(epochs), desc="layer-wise probe", enabled=progress, unit="epoch"):
        epoch_lr = preset_lr(preset, lr, epochs, epoch)
        for group in opt.param_groups:
            group["lr"] = epoch_lr
        order = torch.randperm(n, generator=g)
        total, seen = torch.zeros(len(taps), device=device), 0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            if len(idx) < 2:
                continue
            feats, y = features_of(idx), labels[idx.to(device)]
            loss = torch.stack([F.cross_entropy(heads[tap](feats[tap]), y) for tap in taps])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        losses = dict(zip(taps, (total / max(seen, 1)).tolist()))
        if history is not None:
            history.append({"lr": epoch_lr, "loss": dict(losses)})
    return losses


@torch.no_grad()
def _scores(head: nn.Module, feats: torch.Tensor, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    head.eval()
    return torch.cat([head(feats[i:i + chunk].to(device)).float().cpu() for i in range(0, len(feats), chunk)])


def layerwise_linear_probe(backbone, train, test, taps=None, augment: bool = True, epochs: int | None = None,
                           lr: float | None = None, image_size: int | None = None, batch_size: int = 256,
                           device: str | torch.device = "cpu", cache_key: str | None = None,
                           test_classes: torch.Tensor | None = None, seed: int = 0, progress: bool = False,
                           history: list | None = None) -> dict:
    """Goyal et al. 2019's layer-wise linear probes (METHODS.md 6.2) on the datasets ``train``
    and ``test``: a head per tap of ``taps`` (None: all the backbone's), trained together on
    the frozen ``backbone`` (eval mode, no gradients; its mode is restored afterwards).

    ``augment``: train on a RandomResizedCrop(size, (0.08, 1)) + flip view of each batch, one
    trunk forward for all taps per batch; else on the centre view's cached features, one
    pass over the data for all taps. ``size``: ``image_size`` or the images' side. Tested on
    the centre view (``TEST_CROP``). ``epochs`` and ``lr`` (None: 14 and 0.01) override the
    preset, the milestones keep their shares; ``batch_size`` is the batch of the feature
    extraction, the probe's batch the preset's (256). ``test_classes`` maps test labels to
    training classes; ``history`` gets {"lr", "loss": {tap: loss}} per epoch.

    Returns {"preset", "augment", "epochs", "lr", "milestones", "weight_decay", "batch_size",
    "pool", "taps": {tap: {"top1", "top5", "train_loss", "feature_dim"}}}, taps in order.
    """
    preset = GOYAL
    if taps is not None and len(taps) == 0:
        raise SelfSupError("the layer-wise probe needs at least one tap: name some, e.g. conv1,res2,res3,res4,res5")
    taps = tuple(dict.fromkeys(backbone.check_taps(taps)))
    epochs = preset.epochs if epochs is None else epochs
    lr = preset.lr if lr is None else lr
    check_probe(epochs, lr)
    at_least_one("--image-size", image_size, 224)
    if len(train) < 2:
        raise SelfSupError(f"the layer-wise probe needs at least 2 training images (BatchNorm), got {len(train)}")
    device = torch.device(device)
    size = image_size or min(train.images.shape[2:4])
    extract = dict(pool=preset.pool, image_size=size, batch_size=batch_size, device=device, cache_key=cache_key,
                   progress=progress, crop=TEST_CROP)
    xte, yte = extract_tap_features(backbone, test, taps, **extract)
    yte = yte if test_classes is None else test_classes[yte]
    ytr = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    num_classes = int(max(ytr.max(), yte.max())) + 1
    g = torch.Generator().manual_seed(seed)
    heads = make_heads({tap: xte[tap].shape[1] for tap in taps}, num_classes, g).to(device)

    if augment:
        view_g = torch.Generator(device=device).manual_seed(seed)
        views = ViewMaker([ViewSpec(size, flip_prob=0.5, jitter_prob=0.0, gray_prob=0.0)])   # crop (0.08, 1) + flip

        @torch.no_grad()
        def features_of(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            images = torch.from_numpy(np.asarray(train.images[idx.numpy()])).to(device)
            x = views(images, view_g)[0].contiguous(memory_format=torch.channels_last)
            fmaps = backbone.forward_taps(x, taps)
            return {tap: pool_features(fmaps[tap].float(), preset.pool) for tap in taps}
    else:
        xtr, _ = extract_tap_features(backbone, train, taps, **extract)
        xtr = {tap: xtr[tap].to(device) for tap in taps}

        def features_of(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            idx = idx.to(device)
            return {tap: xtr[tap][idx] for tap in taps}

    was_training = backbone.training
    backbone.eval().to(device, memory_format=torch.channels_last)
    try:
        losses = fit_heads(heads, features_of, ytr.to(device), epochs, lr, g, preset, history, progress)
    finally:
        backbone.train(was_training)
    per_tap = {tap: {**topk_accuracy(_scores(heads[tap], xte[tap], device), yte), "train_loss": losses[tap],
                     "feature_dim": xte[tap].shape[1]} for tap in taps}
    return {"preset": preset.name, "augment": bool(augment), "epochs": epochs, "lr": lr,
            "milestones": milestones(preset, epochs), "weight_decay": preset.weight_decay,
            "batch_size": preset.batch_size, "pool": preset.pool, "taps": per_tap}


def format_layerwise(result: dict) -> str:
    """One markdown table of the test top-1 (%) per tap, a column per tap, as Goyal et al.'s tables:

    | layer-wise top-1 (%) | conv1 | res2 |
    |---|---|---|
    | goyal, augmented, 14 epochs, lr 0.01 | 12.3 | 20.1 |
    """
    taps = list(result["taps"])
    variant = "augmented" if result["augment"] else "cached features"
    label = f"{result['preset']}, {variant}, {result['epochs']} epochs, lr {result['lr']:g}"
    cells = [f"{100 * result['taps'][tap]['top1']:.1f}" for tap in taps]
    return "\n".join(["| layer-wise top-1 (%) | " + " | ".join(taps) + " |",
                      "|---|" + "---|" * len(taps),
                      f"| {label} | " + " | ".join(cells) + " |"])


__all__ = ["layerwise_linear_probe", "format_layerwise", "fit_heads", "make_heads", "make_head", "goyal_optimizer"]
