"""selfsup against lightly side by side: throughput per method and backbone, SimCLR kNN after equal time.

In one run: the training throughput of both libraries per method and backbone, then SimCLR trained
by both for the same wall-clock time and scored by the same kNN evaluator.

Both libraries read the same pixels: the CIFAR-10 training split of ``--data`` (a tar of JPEGs in
class folders; ``val_per_class=500&part=train``, 45,000 images), decoded once by selfsup into a uint8
array. selfsup trains through its engine (``selfsup.engine.trainer.Trainer``, as ``selfsup bench``),
its views drawn on whole batches in the loader's thread; lightly gets the same array as a torch
Dataset of PIL images, its per-image PIL transform and a DataLoader with ``--workers`` workers, as
its tutorials. Per method the two sides share the backbone, batch, image size, optimiser (SGD,
momentum 0.9, weight decay 5e-4, constant lr 0.12), temperature, projector and view parameters:
those of selfsup's 32 px recipe of the method (``selfsup pretrain METHOD --print-config``), copied
into lightly's heads, loss and transform.

1. Throughput, for each of simclr, byol, vicreg, swav (``--multicrop``: SwAV with 2x32+4x16 crops)
   and each backbone (torchvision resnet18 with the ImageNet stem, ``cifar_stem=false`` in selfsup,
   ``nn.Sequential(*list(resnet18().children())[:-1])`` in lightly; selfsup's small ``convnet``,
   the same module in both): pairs/s end to end (data loading + augmentation + step, ``--steps``
   steps after ``--warmup``) and model-only (the same steps on views already in memory).
   Targets: selfsup end to end >= 1.6x lightly's; selfsup end to end >= 85% of its model-only rate.
2. ``--budget SECONDS``: SimCLR ResNet-18 (ImageNet stem for lightly) trained by each library for
   the same wall-clock time, then kNN top-1 (k=200, T=0.1) on the 5,000 held-out images by selfsup's
   evaluator for both (lightly's backbone saved as a torchvision resnet18 state dict). The selfsup
   run is a subprocess stopped by SIGTERM at the deadline (the engine saves and exits between steps).
   ``--recipe peer``: lightly's tutorial recipe on both sides (``PEER_RECIPE``). ``--recipe selfsup``:
   ``configs/simclr_cifar10.yaml`` for selfsup, its schedule compressed to the epochs that fit the
   budget at its measured rate; lightly keeps its tutorial recipe (the same lightly run serves
   both). Targets: selfsup ahead by >= 3 points with the peer's recipe, >= 5 with its own config.
   ``--variants``: more selfsup runs of the same budget, each the peer's recipe with one set of settings
   (what lightly does differently, one option at a time: its projector's last BatchNorm, per-view
   passes, crops that never read outside their box), against the same lightly run.
3. ``--curve N``: SimCLR ResNet-18 with the peer's recipe for N epochs on both sides (and each ``--variants``
   run), the backbone scored by kNN after every epoch: what each library learns per epoch, whatever its speed.
   ``--jobs J`` runs J of them at a time, each with its share of the cores. Skips 1. and 2.
   ``--view-stats N``: the two views of N images through both pipelines, as pixel statistics.

    python benchmarks/peer.py [--data ../shared/data/cifar10-train-jpg.tar] [--methods simclr,byol,vicreg,swav]
        [--backbones resnet18,convnet] [--batch-size 256] [--steps 20] [--warmup 3] [--workers N]
        [--multicrop] [--budget 900] [--recipe peer,selfsup] [--device auto] [--precision fp32|bf16]
        [--variants 'simclr.proj_last_bn=true;simclr.joint_pass=false;simclr.crop_inside=true']
        [--curve 4 --jobs 2] [--skip-throughput] [--skip-budget] [--smoke]

``--smoke``: tiny sizes (batch 32, 2 steps, a budget of 5 s on 520 images, kNN on 200 images) to
check the whole script in a couple of minutes. Needs ``pip install -e '.[bench]'`` (lightly).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup.errors import script_main

DEFAULT_DATA = str(Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.tar")
HOLDOUT = "val_per_class=500"
METHODS = ("simclr", "byol", "vicreg", "swav")
BACKBONES = ("resnet18", "convnet")

# The optimiser both sides use in the throughput tables and in --recipe peer (lightly's SimCLR
# tutorial recipe as issue 20 states it: SGD lr 0.12 constant, momentum 0.9, weight decay 5e-4).
OPTIM = {"lr": 0.12, "momentum": 0.9, "weight_decay": 5e-4}
# The throughput tables' lr where 0.12 without warmup diverges within their steps (both sides alike):
# VICReg's loss on ResNet-18 is non-finite by step 7 at 0.12.
THROUGHPUT_LR = {"vicreg": 0.01}


def throughput_optim(method: str) -> dict:
    """The throughput tables' SGD settings for ``method``, the same on both sides."""
    return {**OPTIM, "lr": THROUGHPUT_LR.get(method, OPTIM["lr"])}
# --recipe peer: SimCLR as lightly's CIFAR-10 tutorial, on both sides.
PEER_RECIPE = {**OPTIM, "batch_size": 256, "temperature": 0.2, "proj_hidden_dim": 512, "proj_dim": 128,
               "min_scale": 0.2, "cj_strength": 0.5, "gaussian_blur": 0.0}
SELFSUP_CONFIG = "simclr_cifar10"          # --recipe selfsup (selfsup/configs/simclr_cifar10.yaml)

TARGET_E2E_RATIO = 1.6                      # selfsup end to end / lightly end to end
TARGET_OWN_SHARE = 0.85                     # selfsup end to end / selfsup model-only
TARGET_AHEAD = {"peer": 3.0, "selfsup": 5.0}   # kNN top-1 points selfsup - lightly, per recipe


def spec_of(data: str, part: str, fraction: float | None = None) -> str:
    spec = f"{data}?{HOLDOUT}&part={part}"
    return spec if fraction is None or fraction >= 1 else f"{spec}&fraction={fraction:.6g}"


def fraction_for(images: int, total: int = 45000, classes: int = 10) -> float | None:
    """A per-class fraction of the training split holding at least ``images`` images (None: all)."""
    per_class = images // classes + 1
    f = per_class / (total // classes)
    return None if f >= 1 else f


def quiet():
    """Silence the one-line recipe notes of resolve_config and the collapse warnings of short runs."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


# ------------------------------------------------------------------ the selfsup side

def optim_overrides(lr: float, momentum: float, weight_decay: float) -> list[str]:
    """A constant-lr SGD in the engine, weight decay on every parameter (as torch.optim.SGD over
    ``model.parameters()`` in lightly's tutorials)."""
    return ["optim.name=sgd", f"optim.lr={lr}", f"optim.min_lr={lr}", "optim.scale_lr=false",
            f"optim.momentum={momentum}", f"optim.weight_decay={weight_decay}", "optim.warmup_epochs=0",
            "optim.exclude_bias_norm=false"]


def selfsup_config(method: str, data_spec: str, out: Path, overrides: list[str], config_file: str | None = None):
    from selfsup.config import resolve_config
    from selfsup.data.datasets import load_dataset
    from selfsup.methods import get_method

    with quiet():
        return resolve_config(get_method(method), file=config_file, overrides=[f"method={method}", f"data={data_spec}",
                              f"out={out}", "progress=false"] + overrides,
                              image_size_of=lambda spec: load_dataset(spec).image_size)


def throughput_overrides(method: str, backbone: str, args) -> list[str]:
    items = [f"backbone={backbone}", f"batch_size={args.batch_size}", "epochs=1", "log_every=1",
             f"device={args.device}", f"precision={args.precision}"]
    items += optim_overrides(**throughput_optim(method))
    if backbone.startswith("resnet"):
        items.append("cifar_stem=false")
    if method == "swav" and args.multicrop:
        items.append("swav.crops=2x32+4x16")
    return items


def rates_from_metrics(path: Path, batch: int, warmup: int, steps: int) -> float:
    """Images/s over the timed steps: total images / total seconds (one metrics record per step)."""
    rates = [json.loads(line)["images_per_s"] for line in path.read_text().splitlines() if '"images_per_s"' in line]
    timed = rates[warmup:warmup + steps]
    if not timed:
        raise SystemExit(f"selfsup logged no timed step in {path}: use more images or fewer --warmup steps")
    return len(timed) * batch / sum(batch / r for r in timed)


class MemoryLoader:
    """The engine's loader with its batches already made: ``Trainer.fit`` then times the step alone."""

    def __init__(self, loader, batches):
        self.base, self.batches = loader, batches

    def __len__(self):
        return len(self.base)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def epoch(self, epoch: int, start_step: int = 0):
        yield from self.batches[start_step:]


def selfsup_rates(cfg, warmup: int, steps: int, memory: bool = True) -> tuple[float, float | None, object]:
    """(end-to-end images/s, model-only images/s, the model-only trainer) of one engine config: one
    ``Trainer.fit`` reading and augmenting batches as ``selfsup pretrain`` does, then (``memory``) one
    on the same first batches made beforehand."""
    from selfsup.engine.trainer import Trainer

    base = Path(cfg.out)
    cfg.out = str(base / "e2e")
    torch.manual_seed(0)
    with quiet():
        Trainer(cfg).fit()
    e2e = rates_from_metrics(base / "e2e" / "metrics.jsonl", cfg.batch_size, warmup, steps)
    if not memory:
        cfg.out = str(base)
        return e2e, None, None
    cfg.out = str(base / "memory")
    torch.manual_seed(0)
    with quiet():
        trainer = Trainer(cfg)
        loader = trainer.loader
        batches = [loader.load(0, s, idx) for s, idx in enumerate(loader.batch_indices(0)[:warmup + steps])]
        trainer.loader = MemoryLoader(loader, batches)
        trainer.fit()
    memory = rates_from_metrics(base / "memory" / "metrics.jsonl", cfg.batch_size, warmup, steps)
    cfg.out = str(base)
    return e2e, memory, trainer


# ------------------------------------------------------------------ the lightly side

class ArrayImages(torch.utils.data.Dataset):
    """The uint8 N x 3 x H x W array selfsup decoded, as PIL images through a per-image transform."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, np.asarray(labels), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(np.asarray(self.images[i]).transpose(1, 2, 0)))
        return self.transform(image), int(self.labels[i])


def _view_kwargs(spec) -> dict:
    """lightly's per-view transform arguments for one selfsup ViewSpec."""
    if spec.scale[1] != 1.0 or tuple(spec.ratio) != (3 / 4, 4 / 3) or spec.patch is not None:
        raise SystemExit(f"lightly's transforms cannot express the view {spec}")
    b, c, s, h = spec.jitter
    return {"input_size": spec.size, "cj_prob": spec.jitter_prob, "cj_strength": 1.0, "cj_bright": b, "cj_contrast": c,
            "cj_sat": s, "cj_hue": h, "min_scale": spec.scale[0], "random_gray_scale": spec.gray_prob,
            "gaussian_blur": spec.blur_prob, "sigmas": tuple(spec.blur_sigma), "hf_prob": spec.flip_prob}


def peer_transform(method: str, specs):
    """lightly's transform of ``method`` set to selfsup's view specs (the same crops, jitter, grayscale,
    blur, solarize and flip probabilities)."""
    from lightly import transforms as LT

    if method == "simclr":
        if len(specs) != 2 or specs[0] != specs[1]:
            raise SystemExit("lightly's SimCLRTransform makes two identical views: use two-view SimCLR")
        return LT.SimCLRTransform(**_view_kwargs(specs[0]))
    if method == "byol":
        v1, v2 = specs
        return LT.BYOLTransform(
            view_1_transform=LT.BYOLView1Transform(**_view_kwargs(v1), solarization_prob=v1.solarize_prob),
            view_2_transform=LT.BYOLView2Transform(**_view_kwargs(v2), solarization_prob=v2.solarize_prob))
    if method == "vicreg":
        # lightly's VICRegTransform applies one view transform twice: selfsup's two BYOL views differ only
        # in solarize (p=0 / 0.2), so both views get their mean (0.1), the same expected work
        kw = _view_kwargs(specs[0])
        return LT.VICRegTransform(**kw, solarize_prob=sum(v.solarize_prob for v in specs) / len(specs))
    if method == "swav":
        groups: list[list] = []
        for spec in specs:
            if groups and groups[-1][0] == spec:
                groups[-1][1] += 1
            else:
                groups.append([spec, 1])
        kw = _view_kwargs(specs[0])
        for key in ("input_size", "min_scale"):
            kw.pop(key)
        return LT.SwaVTransform(crop_sizes=tuple(g[0].size for g in groups), crop_counts=tuple(g[1] for g in groups),
                                crop_min_scales=tuple(g[0].scale[0] for g in groups),
                                crop_max_scales=tuple(g[0].scale[1] for g in groups), **kw)
    raise SystemExit(f"no lightly counterpart for {method}")


def peer_backbone(name: str):
    """(backbone returning N x D (x 1 x 1) features, D, the torchvision resnet or None)."""
    import torchvision

    if name == "resnet18":
        resnet = torchvision.models.resnet18()
        return nn.Sequential(*list(resnet.children())[:-1]), 512, resnet     # lightly's tutorial backbone
    from selfsup.models import build_backbone

    net = build_backbone(name)          # selfsup's module itself: its forward already pools and flattens
    return net, net.out_dim, None


class PeerSimCLR(nn.Module):
    """lightly's SimCLR example: one backbone pass per view, SimCLRProjectionHead, NTXentLoss."""

    def __init__(self, backbone, dim, cfg, total_steps):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_loss(self, views, step):
        return self.criterion(self(views[0]), self(views[1]))


class PeerBYOL(nn.Module):
    """lightly's BYOL example: momentum copies updated with cosine_schedule, NegativeCosineSimilarity."""

    def __init__(self, backbone, dim, cfg, total_steps):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prediction_head = BYOLPredictionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.base_momentum, self.total_steps = cfg.base_momentum, total_steps

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_loss(self, views, step):
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, max(1, self.total_steps), self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        x0, x1 = views
        p0, z0, p1, z1 = self(x0), self.forward_momentum(x0), self(x1), self.forward_momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class PeerVICReg(nn.Module):
    """lightly's VICReg example: VICRegProjectionHead, VICRegLoss."""

    def __init__(self, backbone, dim, cfg, total_steps):
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = VICRegProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)
        self.criterion = VICRegLoss(lambda_param=cfg.sim_weight, mu_param=cfg.var_weight, nu_param=cfg.cov_weight)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_loss(self, views, step):
        return self.criterion(self(views[0]), self(views[1]))


class PeerSwAV(nn.Module):
    """lightly's SwaV example: one pass per crop, SwaVPrototypes (frozen for the first steps), SwaVLoss."""

    def __init__(self, backbone, dim, cfg, total_steps, frozen_steps=0):
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        super().__init__()
        self.backbone = backbone
        self.projection_head = SwaVProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = SwaVPrototypes(cfg.proj_dim, n_prototypes=cfg.nmb_prototypes,
                                         n_steps_frozen_prototypes=frozen_steps)
        self.criterion = SwaVLoss(temperature=cfg.temperature, sinkhorn_iterations=cfg.sinkhorn_iterations,
                                  sinkhorn_epsilon=cfg.epsilon)

    def forward(self, x, step):
        z = nn.functional.normalize(self.projection_head(self.backbone(x).flatten(start_dim=1)), dim=1, p=2)
        return self.prototypes(z, step)

    def training_loss(self, views, step):
        self.prototypes.normalize()
        outputs = [self(v, step) for v in views]
        return self.criterion(outputs[:2], outputs[2:])


PEERS = {"simclr": PeerSimCLR, "byol": PeerBYOL, "vicreg": PeerVICReg, "swav": PeerSwAV}


def build_peer(method: str, backbone: str, cfg, steps_per_epoch: int, total_steps: int):
    """(lightly model, torchvision resnet or None) with selfsup's method config ``cfg``."""
    net, dim, resnet = peer_backbone(backbone)
    if method == "swav":
        from selfsup.methods.swav import frozen_steps
        return PeerSwAV(net, dim, cfg, total_steps, frozen_steps(cfg, steps_per_epoch)), resnet
    return PEERS[method](net, dim, cfg, total_steps), resnet


def peer_loader(dataset, batch_size: int, workers: int, device: torch.device, seed: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(seed))


def peer_step(model, optimizer, views, step, amp_dtype, device):
    views = [v.to(device, non_blocking=True) for v in views]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with autocast:
        loss = model.training_loss(views, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peer_rates(model, loader, lr, momentum, weight_decay, warmup, steps, batch, amp_dtype, device):
    """(end-to-end images/s, model-only images/s) of the lightly model: the first ``warmup + steps``
    batches of one epoch through the DataLoader, then the same steps again on those batches in memory."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    times, ready = [], []
    t = time.perf_counter()
    for i, (views, _) in enumerate(loader):
        if i == warmup + steps:
            break
        peer_step(model, optimizer, views, i, amp_dtype, device)
        _sync(device)
        now = time.perf_counter()
        times.append(now - t)
        t = now
        ready.append([v.to(device) for v in views])
    if len(times) <= warmup:
        raise SystemExit("lightly ran no timed step: use more images or fewer --warmup steps")
    e2e = batch * len(times[warmup:]) / sum(times[warmup:])
    times = []
    for i, views in enumerate(ready):
        t = time.perf_counter()
        peer_step(model, optimizer, views, warmup + steps + i, amp_dtype, device)
        _sync(device)
        times.append(time.perf_counter() - t)
    memory = batch * len(times[warmup:]) / sum(times[warmup:])
    return e2e, memory


# ------------------------------------------------------------------ 1. throughput

def throughput(args, device, amp_dtype, tmp: Path) -> list[dict]:
    from selfsup.data.datasets import load_dataset

    need = (args.warmup + args.steps) * args.batch_size
    spec = spec_of(args.data, "train", fraction_for(need))
    data = load_dataset(spec)
    rows = []
    for backbone in args.backbones:
        for method in args.methods:
            t0 = time.perf_counter()
            cfg = selfsup_config(method, spec, tmp / f"{method}-{backbone}", throughput_overrides(method, backbone, args))
            s_e2e, s_mem, trainer = selfsup_rates(cfg, args.warmup, args.steps)
            mcfg, specs = trainer.method.cfg, trainer.loader.base.transform.specs
            torch.manual_seed(0)
            model, _ = build_peer(method, backbone, mcfg, len(data) // args.batch_size, len(data) // args.batch_size)
            loader = peer_loader(ArrayImages(data.images, data.labels, peer_transform(method, specs)),
                                 args.batch_size, args.workers, device)
            sgd = throughput_optim(method)
            with quiet():
                p_e2e, p_mem = peer_rates(model, loader, sgd["lr"], sgd["momentum"], sgd["weight_decay"],
                                          args.warmup, args.steps, args.batch_size, amp_dtype, device)
            views = "+".join(f"{s.size}" for s in specs)
            rows.append({"method": method, "backbone": backbone, "views": views, "selfsup_e2e": s_e2e,
                         "selfsup_memory": s_mem, "peer_e2e": p_e2e, "peer_memory": p_mem})
            print(f"  {method} {backbone}: selfsup {s_e2e:.0f} / {s_mem:.0f}, lightly {p_e2e:.0f} / {p_mem:.0f} pairs/s "
                  f"(end to end / model only, {time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def throughput_table(rows: list[dict], args) -> str:
    lines = [f"batch {args.batch_size}, 32 px, {args.steps} timed steps after {args.warmup}, "
             f"{torch.get_num_threads()} torch threads, lightly DataLoader workers {args.workers}, "
             f"device {args.device_name}, {args.precision}; pairs/s = images/s (each image gives its pair of views)",
             "",
             "| method | backbone | views | selfsup e2e | selfsup model-only | selfsup share | lightly e2e | "
             "lightly model-only | lightly share | e2e selfsup / lightly | >= 1.6x | >= 85% own |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio, share = r["selfsup_e2e"] / r["peer_e2e"], r["selfsup_e2e"] / r["selfsup_memory"]
        lines.append(f"| {r['method']} | {r['backbone']} | {r['views']} | {r['selfsup_e2e']:.0f} | "
                     f"{r['selfsup_memory']:.0f} | {share:.0%} | {r['peer_e2e']:.0f} | {r['peer_memory']:.0f} | "
                     f"{r['peer_e2e'] / r['peer_memory']:.0%} | {ratio:.2f}x | {'met' if ratio >= TARGET_E2E_RATIO else 'NOT met'} | "
                     f"{'met' if share >= TARGET_OWN_SHARE else 'NOT met'} |")
    met_ratio = sum(r["selfsup_e2e"] / r["peer_e2e"] >= TARGET_E2E_RATIO for r in rows)
    met_share = sum(r["selfsup_e2e"] / r["selfsup_memory"] >= TARGET_OWN_SHARE for r in rows)
    lines += ["", f"target: selfsup end to end >= {TARGET_E2E_RATIO}x lightly's: met in {met_ratio} of {len(rows)}",
              f"target: selfsup end to end >= {TARGET_OWN_SHARE:.0%} of its model-only rate: met in {met_share} of {len(rows)}"]
    return "\n".join(lines)


# ------------------------------------------------------------------ 2. the same wall-clock budget

def peer_recipe_views():
    """selfsup ViewSpecs equal to lightly's SimCLRTransform of PEER_RECIPE (no selfsup recipe names them)."""
    from selfsup.data.views import ViewSpec, color_distortion

    r = PEER_RECIPE
    return [ViewSpec(32, scale=(r["min_scale"], 1.0), jitter=color_distortion(r["cj_strength"]), jitter_prob=0.8,
                     gray_prob=0.2, blur_prob=r["gaussian_blur"])] * 2


def peer_recipe_overrides(batch: int) -> list[str]:
    """selfsup's settings for PEER_RECIPE at ``batch`` (its views come from ``peer_recipe_views``)."""
    r = PEER_RECIPE
    return ["backbone=resnet18", "cifar_stem=false", "image_size=32", f"batch_size={batch}",
            f"simclr.temperature={r['temperature']}", f"simclr.proj_hidden_dim={r['proj_hidden_dim']}",
            f"simclr.proj_dim={r['proj_dim']}"] + optim_overrides(r["lr"], r["momentum"], r["weight_decay"])


def job_views(views: list[dict], crop_inside: bool):
    """The ViewSpecs of a job file (JSON lists back to tuples), inside their boxes when the run's
    ``crop_inside`` asks for it, as the method's own views would be."""
    from selfsup.data.views import ViewSpec

    return [ViewSpec(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()},
                        "inside": s["inside"] or crop_inside}) for s in views]


def parse_variants(text: str) -> list[list[str]]:
    """"a=1,b=2;c=3" -> [["a=1", "b=2"], ["c=3"]]: the settings of each --variants run."""
    variants = [[kv.strip() for kv in v.split(",") if kv.strip()] for v in text.split(";") if v.strip()]
    bad = [kv for v in variants for kv in v if "=" not in kv]
    if bad:
        raise SystemExit(f"cannot read variant setting {bad[0]!r}: write key=value, e.g. simclr.proj_last_bn=true")
    return variants


def worker(job_file: str) -> None:
    """The selfsup side of a budget run, in its own process: the engine until SIGTERM (it saves and exits)."""
    from selfsup.data.views import ViewMaker
    from selfsup.engine.trainer import Trainer

    job = json.loads(Path(job_file).read_text())
    cfg = selfsup_config("simclr", job["data"], Path(job["out"]), job["overrides"], job.get("config"))
    trainer = Trainer(cfg)
    if job.get("views"):
        trainer.loader.transform = ViewMaker(job_views(job["views"], cfg.simclr.crop_inside))
    print(f"READY {trainer.steps_per_epoch}", flush=True)
    print(f"STATUS {trainer.fit()}", flush=True)


def run_selfsup_budget(name: str, data_spec: str, overrides: list[str], config: str | None, views, budget: float,
                       tmp: Path) -> dict:
    from selfsup.checkpoint import load_checkpoint

    out = tmp / f"selfsup-{name}"
    job = tmp / f"job-{name}.json"
    job.write_text(json.dumps({"data": data_spec, "out": str(out), "overrides": overrides, "config": config,
                               "views": [asdict(v) for v in views] if views else None}))
    log = tmp / f"selfsup-{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, __file__, "_worker", str(job)], stdout=fh, stderr=subprocess.STDOUT)
    while "READY" not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"selfsup run {name} failed before training:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    t0 = time.perf_counter()
    try:
        proc.wait(timeout=budget)
        stopped = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)           # the engine finishes its step, saves last.pt, exits
        stopped = True
        proc.wait()
    train_s = time.perf_counter() - t0             # until the process ended: its last step and the save included
    if proc.returncode != 0 or not (out / "last.pt").exists():
        raise SystemExit(f"selfsup run {name} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    steps_per_epoch = int(log.read_text().split("READY ")[1].split()[0])
    ckpt = load_checkpoint(out / "last.pt")
    return {"checkpoint": str(out / "last.pt"), "train_s": train_s, "stopped": stopped,
            "epochs": ckpt["epoch"] + ckpt["step_in_epoch"] / steps_per_epoch, "batch": ckpt["config"]["batch_size"]}


def peer_simclr_transform():
    """lightly's SimCLRTransform with PEER_RECIPE's views (32 px)."""
    from lightly.transforms import SimCLRTransform

    r = PEER_RECIPE
    return SimCLRTransform(input_size=32, cj_strength=r["cj_strength"], min_scale=r["min_scale"],
                           gaussian_blur=r["gaussian_blur"])


def peer_simclr(data, batch: int, workers: int, device):
    """lightly's SimCLR tutorial with PEER_RECIPE on ``data``: (model, its torchvision resnet18, DataLoader, SGD)."""
    from types import SimpleNamespace

    r = PEER_RECIPE
    torch.manual_seed(0)
    model, resnet = build_peer("simclr", "resnet18", SimpleNamespace(proj_hidden_dim=r["proj_hidden_dim"],
                               proj_dim=r["proj_dim"], temperature=r["temperature"]), 1, 1)
    model.to(device).train()
    loader = peer_loader(ArrayImages(data.images, data.labels, peer_simclr_transform()), batch, workers, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"])
    return model, resnet, loader, optimizer


def save_resnet(resnet, path: Path) -> None:
    """lightly's backbone as a torchvision resnet18 state dict (torchvision's keys, without fc)."""
    torch.save({k: v.cpu() for k, v in resnet.state_dict().items() if not k.startswith("fc.")}, path)


def run_peer_budget(data, budget: float, args, device, amp_dtype, tmp: Path) -> dict:
    """lightly's SimCLR tutorial with PEER_RECIPE until the deadline; the backbone saved as a torchvision
    resnet18 state dict (torchvision's keys, without fc)."""
    batch = args.budget_batch
    model, resnet, loader, optimizer = peer_simclr(data, batch, args.workers, device)
    steps, t0 = 0, time.perf_counter()
    deadline = t0 + budget
    with quiet():
        while time.perf_counter() < deadline:
            for views, _ in loader:
                peer_step(model, optimizer, views, steps, amp_dtype, device)
                steps += 1
                if time.perf_counter() >= deadline:
                    break
    _sync(device)
    train_s = time.perf_counter() - t0
    path = tmp / "lightly-resnet18.pt"
    save_resnet(resnet, path)
    return {"checkpoint": str(path), "train_s": train_s, "stopped": True, "epochs": steps / len(loader), "batch": batch}


def knn_top1(checkpoint: str, train_spec: str, val_spec: str, device: str) -> float:
    from selfsup.eval.run import evaluate

    with quiet():
        result = evaluate("knn", checkpoint, train_spec, val_spec, k=200, temperature=0.1, device=device, cache=False)
    return 100 * result["top1"]


def epochs_that_fit(budget: float, rate: float, n_images: int) -> int:
    """The whole number of epochs nearest to what ``budget`` seconds hold at ``rate`` images/s, at least 1.
    A schedule that overruns the budget a little is stopped at the deadline (flooring 1.98 epochs to 1 left
    half the budget unused)."""
    return max(1, round(budget * rate / n_images))


def selfsup_epochs_for(budget: float, n_images: int, config: str, extra: list[str], args, tmp: Path) -> tuple[int, float]:
    """The epochs of ``config`` that fit ``budget`` (``epochs_that_fit``) at its end-to-end rate, measured by
    a short run of the same config (``--warmup`` + ``--steps`` batches)."""
    from selfsup.data.datasets import load_dataset

    batch = selfsup_config("simclr", spec_of(args.data, "train"), tmp / "calibrate", extra, config).batch_size
    fraction = args.train_fraction if args.smoke else fraction_for((args.warmup + args.steps) * batch)
    spec = spec_of(args.data, "train", fraction)
    available = len(load_dataset(spec)) // batch
    steps = max(1, min(args.steps, available - args.warmup))
    warmup = max(0, min(args.warmup, available - steps))
    cfg = selfsup_config("simclr", spec, tmp / "calibrate", extra + ["epochs=1", "log_every=1"], config)
    rate = selfsup_rates(cfg, warmup, steps, memory=False)[0]
    return epochs_that_fit(budget, rate, n_images), rate


def budget_runs(args, device, amp_dtype, tmp: Path) -> list[dict]:
    from omegaconf import OmegaConf

    from selfsup.config import find_config
    from selfsup.data.datasets import load_dataset

    train_spec = spec_of(args.data, "train", args.train_fraction)
    val_spec = spec_of(args.data, "val", args.val_fraction)
    data = load_dataset(train_spec)
    n = len(data)
    common = [f"device={args.device}", f"precision={args.precision}", "log_every=50"]
    results = []
    print(f"budget {args.budget:.0f} s per run, {n} training images, kNN on {len(load_dataset(val_spec))} "
          f"held-out images", flush=True)
    if "peer" in args.recipes or "selfsup" in args.recipes:
        peer = run_peer_budget(data, args.budget, args, device, amp_dtype, tmp)
        peer["top1"] = knn_top1(peer["checkpoint"], train_spec, val_spec, args.device)
        print(f"  lightly (its tutorial recipe): {peer['epochs']:.2f} epochs in {peer['train_s']:.0f} s, "
              f"kNN top-1 {peer['top1']:.2f}", flush=True)
    if "peer" in args.recipes:
        overrides = common + ["epochs=1000"] + peer_recipe_overrides(args.budget_batch)
        ours = run_selfsup_budget("peer", train_spec, overrides, None, peer_recipe_views(), args.budget, tmp)
        ours["top1"] = knn_top1(ours["checkpoint"], train_spec, val_spec, args.device)
        print(f"  selfsup (lightly's recipe): {ours['epochs']:.2f} epochs in {ours['train_s']:.0f} s, "
              f"kNN top-1 {ours['top1']:.2f}", flush=True)
        results.append({"recipe": "peer", "selfsup": ours, "peer": peer, "note": "lightly's recipe on both sides"})
        for variant in args.variants:               # what the peer does differently, one option at a time
            name = "peer+" + "+".join(variant)
            ours = run_selfsup_budget(name, train_spec, overrides + variant, None, peer_recipe_views(), args.budget,
                                      tmp)
            ours["top1"] = knn_top1(ours["checkpoint"], train_spec, val_spec, args.device)
            print(f"  selfsup (lightly's recipe, {' '.join(variant)}): {ours['epochs']:.2f} epochs in "
                  f"{ours['train_s']:.0f} s, kNN top-1 {ours['top1']:.2f}", flush=True)
            results.append({"recipe": name, "selfsup": ours, "peer": peer,
                            "note": f"lightly's recipe on both sides, selfsup with {' '.join(variant)}"})
    if "selfsup" in args.recipes:
        config = str(find_config(SELFSUP_CONFIG))
        file_cfg = OmegaConf.load(config)
        # selfsup's own settings, its precision default included (bf16 on CUDA and on CPUs with AMX tiles)
        extra = [c for c in common if not c.startswith("precision=")] + ["precision=auto"]
        extra += [f"batch_size={args.budget_batch}"] if args.smoke else []
        if args.selfsup_epochs:
            epochs, rate = args.selfsup_epochs, None
        else:
            epochs, rate = selfsup_epochs_for(args.budget, n, config, extra, args, tmp)
        warmup = round(file_cfg.optim.warmup_epochs * epochs / file_cfg.epochs, 3)
        ours = run_selfsup_budget("selfsup", train_spec, extra + [f"epochs={epochs}", f"optim.warmup_epochs={warmup}"],
                                  config, None, args.budget, tmp)
        ours["top1"] = knn_top1(ours["checkpoint"], train_spec, val_spec, args.device)
        measured = f"measured {rate:.0f} images/s, " if rate else ""
        note = (f"{SELFSUP_CONFIG}.yaml, schedule compressed to the budget: epochs {file_cfg.epochs} -> {epochs}, "
                f"warmup {file_cfg.optim.warmup_epochs} -> {warmup} ({measured}batch {ours['batch']})")
        print(f"  selfsup ({note}): {ours['epochs']:.2f} epochs in {ours['train_s']:.0f} s, "
              f"kNN top-1 {ours['top1']:.2f}", flush=True)
        results.append({"recipe": "selfsup", "selfsup": ours, "peer": peer, "note": note})
    return results


def budget_table(results: list[dict], args) -> str:
    lines = [f"SimCLR ResNet-18, {args.budget:.0f} s of training each, kNN top-1 (k=200, T=0.1, selfsup's evaluator, "
             f"res5 average-pooled) on the held-out split; train s: from the first step to the end of the step that "
             f"crossed the deadline (selfsup: to the end of its process, the save included)", "",
             "| recipe | library | batch | epochs | train s | kNN top-1 |", "|---|---|---|---|---|---|"]
    for res in results:
        for lib in ("selfsup", "peer"):
            r = res[lib]
            name = "selfsup" if lib == "selfsup" else "lightly"
            lines.append(f"| {res['recipe']} | {name} | {r['batch']} | {r['epochs']:.2f} | {r['train_s']:.0f} | "
                         f"{r['top1']:.2f} |")
    lines.append("")
    for res in results:
        ahead, target = res["selfsup"]["top1"] - res["peer"]["top1"], TARGET_AHEAD.get(res["recipe"])
        if target is None:
            lines.append(f"{res['recipe']} ({res['note']}): selfsup ahead by {ahead:+.2f} points")
        else:
            lines.append(f"target (--recipe {res['recipe']}: {res['note']}): selfsup ahead by >= {target:.0f} "
                         f"points: {ahead:+.2f} points, {'met' if ahead >= target else 'NOT met'}")
    return "\n".join(lines)


# ------------------------------------------------------------------ 3. the same epochs

def curve_worker(job_file: str) -> None:
    """One side of a --curve run, in its own process with ``threads`` torch threads: SimCLR ResNet-18 with the
    peer's recipe for ``epochs`` epochs, the backbone kept after every epoch, then kNN top-1 of each."""
    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(job["threads"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    epochs, cpu = job["epochs"], torch.device("cpu")
    if job["side"] == "lightly":
        from selfsup.data.datasets import load_dataset

        model, resnet, loader, optimizer = peer_simclr(load_dataset(job["train"]), job["batch"], job["workers"], cpu)
        with quiet():
            for epoch in range(epochs):
                for step, (views, _) in enumerate(loader):
                    peer_step(model, optimizer, views, step, None, cpu)
                save_resnet(resnet, out / f"epoch_{epoch + 1}.pt")
    else:
        from selfsup.data.views import ViewMaker
        from selfsup.engine.trainer import Trainer

        cfg = selfsup_config("simclr", job["train"], out, job["overrides"] + [f"epochs={epochs}", "save_every=1"])
        trainer = Trainer(cfg)
        trainer.loader.transform = ViewMaker(job_views([asdict(v) for v in peer_recipe_views()],
                                                       cfg.simclr.crop_inside))
        trainer.fit()
    top1 = [knn_top1(str(out / f"epoch_{e + 1}.pt"), job["train"], job["val"], "cpu") for e in range(epochs)]
    (out / "curve.json").write_text(json.dumps(top1))


def curve_runs(args, tmp: Path) -> list[dict]:
    """lightly, selfsup and each --variants run for ``args.curve`` epochs of the peer's recipe (CPU), ``args.jobs``
    processes at a time, each with its share of the cores: kNN top-1 after every epoch. At equal epochs the views
    and steps are the same work, so this measures what each library learns per epoch, whatever its speed."""
    train_spec = spec_of(args.data, "train", args.train_fraction)
    val_spec = spec_of(args.data, "val", args.val_fraction)
    overrides = ["device=cpu", "precision=fp32", "log_every=50"] + peer_recipe_overrides(args.budget_batch)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    runs = [("lightly", "lightly", [])] + [("selfsup", "selfsup", [])] + \
           [("selfsup+" + "+".join(v), "selfsup", v) for v in args.variants]
    pending, running, results = list(runs), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, side, variant = pending.pop(0)
            out = tmp / ("curve-" + name.replace("=", "-").replace("+", "_"))
            job = tmp / f"{out.name}.json"
            job.write_text(json.dumps({"side": side, "epochs": args.curve, "out": str(out), "train": train_spec,
                                       "val": val_spec, "batch": args.budget_batch, "threads": threads,
                                       "workers": max(1, args.workers // args.jobs),
                                       "overrides": overrides + variant}))
            log = open(tmp / f"{out.name}.log", "w")
            proc = subprocess.Popen([sys.executable, __file__, "_curve", str(job)], stdout=log,
                                    stderr=subprocess.STDOUT)
            running.append((name, out, proc, time.perf_counter(), log))
        time.sleep(1)
        for item in [x for x in running if x[2].poll() is not None]:
            name, out, proc, t0, log = item
            running.remove(item)
            log.close()
            if proc.returncode != 0:
                raise SystemExit(f"curve run {name} failed:\n{Path(log.name).read_text()[-3000:]}")
            top1 = json.loads((out / "curve.json").read_text())
            results.append({"name": name, "top1": top1, "seconds": time.perf_counter() - t0})
            print(f"  {name}: kNN top-1 per epoch {', '.join(f'{t:.2f}' for t in top1)}", flush=True)
    return results


def view_stats(args) -> str:
    """The peer recipe's two views of the first ``args.view_stats`` training images through both pipelines
    (selfsup's batched ViewMaker, lightly's per-image SimCLRTransform), as pixel statistics in [0, 1]: what
    each augmentation does on average, side by side."""
    from PIL import Image

    from selfsup.data.datasets import load_dataset
    from selfsup.data.views import ViewMaker, unnormalize

    data = load_dataset(spec_of(args.data, "train", args.train_fraction))
    images = torch.as_tensor(np.asarray(data.images[:args.view_stats]))
    ours = [unnormalize(v) for v in ViewMaker(peer_recipe_views())(images, torch.Generator().manual_seed(0))]
    transform = peer_simclr_transform()
    torch.manual_seed(0)                  # lightly's transforms draw from torch's and Python's global generators
    random.seed(0)
    pairs = [transform(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images]
    theirs = [unnormalize(torch.stack([p[k] for p in pairs])) for k in (0, 1)]
    lines = [f"the peer recipe's views of {len(images)} training images, pixels in [0, 1]", "",
             "| library | mean | std | grayscale share | mean abs(view 1 - view 2) |", "|---|---|---|---|---|"]
    for name, (a, b) in (("selfsup", ours), ("lightly", theirs)):
        gray = (a.std(1).mean((1, 2)) < 1e-3).float().mean()
        lines.append(f"| {name} | {a.mean():.3f} | {a.std():.3f} | {gray:.3f} | {(a - b).abs().mean():.3f} |")
    return "\n".join(lines)


def curve_table(results: list[dict], args) -> str:
    head = " | ".join(f"epoch {e + 1}" for e in range(args.curve))
    lines = [f"SimCLR ResNet-18, the peer's recipe on both sides, {args.curve} epochs each, {args.jobs} run(s) at a "
             f"time; kNN top-1 (k=200, T=0.1, selfsup's evaluator) on the held-out split after each epoch", "",
             f"| run | {head} | seconds (training and kNN) |", "|---|" + "---|" * (args.curve + 1)]
    for res in results:
        lines.append(f"| {res['name']} | " + " | ".join(f"{t:.2f}" for t in res["top1"]) + f" | {res['seconds']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 training tar (or any cifar10/imagefolder path)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--batch-size", type=int, default=256, help="batch of the throughput tables")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lightly's DataLoader workers")
    parser.add_argument("--multicrop", action="store_true", help="SwAV with 2x32+4x16 crops on both sides")
    parser.add_argument("--budget", type=float, default=900, help="seconds of SimCLR training per library")
    parser.add_argument("--recipe", default="peer,selfsup", help="peer, selfsup or both")
    parser.add_argument("--variants", default="",
                        help="--recipe peer: more selfsup runs, each the peer's recipe with one set of settings; "
                             "sets split by ';', settings by ',', e.g. 'simclr.proj_last_bn=true;simclr.joint_pass=false"
                             ";simclr.crop_inside=true'")
    parser.add_argument("--selfsup-epochs", type=int, default=0,
                        help="--recipe selfsup: epochs of the schedule (0: those that fit the budget, measured)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="both sides, except --recipe selfsup, which keeps selfsup's precision=auto")
    parser.add_argument("--curve", type=int, default=0,
                        help="SimCLR ResNet-18 with the peer's recipe for this many epochs on both sides (and each "
                             "--variants run), kNN after every epoch: learning per epoch (CPU); skips 1. and 2.")
    parser.add_argument("--view-stats", type=int, default=0,
                        help="the peer recipe's views of this many images through both pipelines, as pixel "
                             "statistics; skips 1. and 2.")
    parser.add_argument("--jobs", type=int, default=1, help="--curve: runs at a time, the cores shared between them")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-budget", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script in a couple of minutes")
    args = parser.parse_args()
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise SystemExit("lightly is not installed: pip install -e '.[bench]'") from None
    from selfsup.distributed import resolve_device

    args.methods = [m for m in args.methods.split(",") if m]
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.recipes = [r for r in args.recipe.split(",") if r]
    args.variants = parse_variants(args.variants)
    if args.variants and "peer" not in args.recipes and not args.curve:
        raise SystemExit("--variants change the peer's recipe on selfsup's side: add --recipe peer")
    bad = [m for m in args.methods if m not in METHODS] + [b for b in args.backbones if b not in BACKBONES] + \
          [r for r in args.recipes if r not in TARGET_AHEAD]
    if bad:
        raise SystemExit(f"unknown {bad[0]!r}: methods {', '.join(METHODS)}; backbones {', '.join(BACKBONES)}; "
                         f"recipes peer, selfsup")
    args.budget_batch, args.train_fraction, args.val_fraction = PEER_RECIPE["batch_size"], None, None
    if args.smoke:
        args.batch_size, args.steps, args.warmup, args.budget = 32, 2, 1, min(args.budget, 5)
        args.budget_batch, args.train_fraction, args.val_fraction = 64, fraction_for(512), 0.04
    device = resolve_device(args.device)
    args.device = device.type
    args.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    amp_dtype = torch.bfloat16 if args.precision == "bf16" else None
    with tempfile.TemporaryDirectory() as tmp:
        if args.view_stats:
            print(view_stats(args), flush=True)
            return
        if args.curve:
            print("3. the same epochs", flush=True)
            print(curve_table(curve_runs(args, Path(tmp)), args), flush=True)
            return
        if not args.skip_throughput:
            print("1. throughput", flush=True)
            print(throughput_table(throughput(args, device, amp_dtype, Path(tmp)), args), flush=True)
        if not args.skip_budget:
            print("\n2. the same wall-clock budget", flush=True)
            print(budget_table(budget_runs(args, device, amp_dtype, Path(tmp)), args), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        script_main(worker, sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "_curve":
        script_main(curve_worker, sys.argv[2])
    else:
        script_main(main)
