"""Optimisers (SGD, LARS) and the per-iteration warmup + cosine (or step) schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.errors import SelfSupError


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_norm: bool, bias_lr_mult: float = 1.0,
                 head_lr_mult: float = 1.0) -> list[dict]:
    """Parameter groups: regular weights; biases; normalisation parameters.

    With ``exclude_bias_norm`` biases and norm parameters get no weight decay and, under
    LARS, no trust-ratio adaptation (as in SimCLR, BYOL and VICReg); without it they are
    treated like the weights (as SwAV's LARC and MoCo's SGD). ``bias_lr_mult`` scales the
    biases' learning rate (``lr_scale``; Caffe's ``lr_mult: 2`` of the CFN), ``head_lr_mult``
    that of every parameter outside ``model.backbone`` (a fine-tuned classifier's head: SwAV's
    ``lr_last_layer``). Groups with the same settings are merged.
    """
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    merged: dict[tuple, list] = {}
    for module in model.modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            bias = name == "bias" and not is_norm
            excluded = exclude_bias_norm and (is_norm or bias)
            scale = (bias_lr_mult if bias else 1.0) * (1.0 if id(p) in in_backbone or backbone is None else head_lr_mult)
            key = (0.0 if excluded else weight_decay, excluded, scale)
            merged.setdefault(key, []).append(p)
    return [{"params": params, "weight_decay": wd, "lars_exclude": excluded, "lr_scale": scale}
            for (wd, excluded, scale), params in merged.items()]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    For every parameter not in a ``lars_exclude`` group the update
    g + wd * w is rescaled by eta * ||w|| / ||g + wd * w|| before momentum.
    ``larc=True`` uses the denominator of apex's LARC (clip=False), which SwAV
    trains with: eta * ||w|| / (||g|| + wd * ||w||). ``clip=True`` is LARC's
    clipping (apex ``clip=True``, solo-learn's ``clip_lr``): the trust becomes
    min(trust / lr, 1), so a layer never steps faster than plain SGD at lr.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 larc: bool = False, foreach: bool = False, clip: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))
        self.larc, self.foreach, self.clip = larc, foreach, clip

    def _clip(self, trust: torch.Tensor, lr: float) -> torch.Tensor:
        return trust.div(lr).clamp_(max=1.0) if self.clip and lr > 0 else trust

    @torch.no_grad()
    def step(self, closure=None):
        if self.foreach:
            return self._step_foreach()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    if self.larc:
                        d_norm = torch.linalg.vector_norm(p.grad) + group["weight_decay"] * w_norm
                    trust = torch.where((w_norm > 0) & (d_norm > 0), self._clip(group["eta"] * w_norm / d_norm, group["lr"]),
                                        torch.ones_like(w_norm))
                    d.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])

    def _step_foreach(self):
        """The same update with multi-tensor kernels (``torch._foreach_*``): a few launches per group instead of
        several per parameter, which is what a GPU step spends its time on for small models."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd = group["weight_decay"]
            d = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
            if not group["lars_exclude"]:
                w_norm = torch._foreach_norm(params)
                d_norm = (torch._foreach_add(torch._foreach_norm(grads), torch._foreach_mul(w_norm, wd))
                          if self.larc else torch._foreach_norm(d))
                w, n = torch.stack(w_norm), torch.stack(d_norm)
                trust = torch.where((w > 0) & (n > 0), self._clip(group["eta"] * w / n, group["lr"]), torch.ones_like(w))
                torch._foreach_mul_(d, list(trust.unbind()))
            bufs, steps = [], []
            for p, step in zip(params, d):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = step
                else:
                    bufs.append(self.state[p]["momentum_buffer"])
                    steps.append(step)
            if bufs:
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, steps)
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    head_mult = 1.0 if cfg.head_lr is None else cfg.head_lr / cfg.lr
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bias_norm, cfg.bias_lr_mult, head_mult)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=cfg.fused or None)
    if cfg.name in ("lars", "larc"):
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, eta=cfg.lars_eta, larc=cfg.name == "larc",
                    foreach=cfg.fused, clip=cfg.lars_clip)
    raise SelfSupError(f"unknown optimiser {cfg.name!r}: set optim.name to sgd, lars or larc")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0, start: float = 0.0,
          milestones: tuple[int, ...] | None = None, gamma: float = 0.1) -> float:
    """Linear warmup from ``start`` to ``peak`` over ``warmup_steps``, then cosine decay to ``final``,
    or, given ``milestones`` (steps), ``peak`` x ``gamma`` per milestone passed (the step schedule of
    the fine-tuning and linear-probe recipes: MultiStepLR).

    Warmup: lr = start + (peak - start) step / warmup_steps, as SimCLR's and BYOL's code
    (from 0) and SwAV's (from ``start_warmup``; its ``np.linspace`` reaches the peak one step
    earlier). Then lr = final + (peak - final)(1 + cos(pi t / T)) / 2 over the T steps after
    warmup (SwAV, METHODS.md 5.7)."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    if milestones is not None:
        return peak * gamma ** sum(step >= m for m in milestones)
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * min(1.0, t)))
