"""The training loop shared by every method.

One process per device: plain ``python`` or ``torchrun`` (DDP, gloo on CPU, NCCL
on CUDA) through the same code. Per-iteration warmup + cosine learning rate,
autocast on CUDA, checkpoints written atomically every epoch and on SIGTERM /
SIGINT, exact resume. The run directory receives ``config.yaml``,
``metrics.jsonl``, TensorBoard events and ``last.pt``.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from selfsup import distributed as dist
from selfsup.distributed import resolve_device
from selfsup.data.datasets import load_dataset
from selfsup.data.loader import BatchLoader
from selfsup.checkpoint import load_checkpoint, save_atomic
from selfsup.engine.optim import build_optimizer, lr_at
from selfsup.errors import SelfSupError
from selfsup.methods import get_method
from selfsup.models import build_backbone


def autocast_dtype(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise SelfSupError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if table[precision] is not None and device.type != "cuda":
        raise SelfSupError(f"precision={precision} needs a CUDA device: use precision=fp32 on CPU")
    return table[precision]


def _rng_state() -> dict:
    """The RNG states as tensors and plain lists (``weights_only`` loads them; no numpy objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    """Turns SIGTERM / SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Pretrains ``cfg.method`` on ``cfg.data`` as the resolved config says."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.distributed = dist.init_from_env("cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
        self.device = resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        if cfg.batch_size % self.world:
            raise SelfSupError(f"batch_size {cfg.batch_size} is not divisible by the {self.world} processes: pick a multiple")
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

        method_cls = get_method(cfg.method)
        method_cfg = OmegaConf.to_object(cfg[cfg.method])
        self.backbone_options = method_cls.backbone_options(method_cfg, cfg.backbone)
        self.backbone = build_backbone(cfg.backbone, cifar_stem=cfg.cifar_stem, **self.backbone_options)
        self.dataset = load_dataset(cfg.data)
        image_size = cfg.image_size or self.dataset.images.shape[-1]
        if len(self.dataset) < cfg.batch_size:
            raise SelfSupError(f"the dataset has {len(self.dataset)} images, fewer than batch_size={cfg.batch_size}: lower --batch-size")
        self.method = method_cls(self.backbone, method_cfg, image_size).to(self.device)
        if cfg.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.method
        if self.distributed:
            if cfg.sync_bn and self.device.type == "cuda":     # PyTorch's SyncBatchNorm is CUDA-only
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
                self.backbone = self.method.backbone
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        optim_cfg = cfg.optim
        self.peak_lr = optim_cfg.lr * (cfg.batch_size / 256 if optim_cfg.scale_lr else 1.0)
        self.optimizer = build_optimizer(self.method, optim_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loader = BatchLoader(self.dataset, cfg.batch_size // self.world, self.method.view_maker(),
                                  device=self.device, seed=cfg.seed, rank=self.rank, world_size=self.world)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(optim_cfg.warmup_epochs * self.steps_per_epoch)
        self.epoch, self.step_in_epoch = 0, 0

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "backbone": self.cfg.backbone, "cifar_stem": self.cfg.cifar_stem, "backbone_options": self.backbone_options,
            "backbone_state": self.backbone.state_dict(), "method": self.cfg.method,
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "rng": _rng_state(), "config": OmegaConf.to_container(self.cfg),
        }

    def save(self) -> None:
        if dist.is_main():
            save_atomic(self.state(), self.out / "last.pt")
            if self.cfg.save_every and self.step_in_epoch == 0 and self.epoch % self.cfg.save_every == 0:
                save_atomic(self.state(), self.out / f"epoch_{self.epoch}.pt")
        dist.barrier()

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get("method") != self.cfg.method or ckpt.get("backbone") != self.cfg.backbone:
            raise SelfSupError(f"{path} is a {ckpt.get('method')}/{ckpt.get('backbone')} run, not {self.cfg.method}/{self.cfg.backbone}: "
                               f"resume with the same method and backbone, or use another --out")
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        _set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------ the loop
    def fit(self, on_epoch_end=None) -> str:
        """Train to ``cfg.epochs``; returns "done" or "interrupted" (after saving)."""
        cfg, main = self.cfg, dist.is_main()
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "last.pt"
        if cfg.resume and last.exists():
            self.restore(last)
        elif cfg.resume:
            raise SelfSupError(f"--resume was given but {last} does not exist: drop --resume or point --out at the run to continue")
        elif last.exists():
            raise SelfSupError(f"{self.out} already holds a run (last.pt): pass --resume to continue it or choose another --out")
        if main:
            OmegaConf.save(self.cfg, self.out / "config.yaml")
        if cfg.epochs == 0:
            self.save()
            return "done"
        writer = _tensorboard(self.out) if main else None
        metrics = open(self.out / "metrics.jsonl", "a") if main else None
        try:
            with _StopFlag() as stop:
                while self.epoch < cfg.epochs:
                    status = self._run_epoch(stop, writer, metrics)
                    if status == "interrupted":
                        return status
                    if on_epoch_end is not None:
                        on_epoch_end(self)
            return "done"
        finally:
            if writer is not None:
                writer.close()
            if metrics is not None:
                metrics.close()

    def _run_epoch(self, stop, writer, metrics) -> str:
        cfg, main = self.cfg, dist.is_main()
        self.method.train()
        if self.step_in_epoch == 0:
            self.method.on_epoch_start(self.epoch, self.loader)
        bar = _progress(self.steps_per_epoch, self.step_in_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}",
                        enabled=main and cfg.progress)
        window_images, t0 = 0, time.perf_counter()
        for batch in self.loader.epoch(self.epoch, self.step_in_epoch):
            step = self.epoch * self.steps_per_epoch + self.step_in_epoch
            lr = lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, cfg.optim.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if cfg.channels_last:
                batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
            autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                        else contextlib.nullcontext())
            with autocast:
                out = self.model(batch)
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.method.on_after_backward(step)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.on_step_end(step, self.total_steps)
            self.step_in_epoch += 1
            window_images += len(batch.indices) * self.world
            if self.step_in_epoch % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise SelfSupError(f"the loss became {value} at step {step}: lower optim.lr, or use precision=fp32")
                elapsed = time.perf_counter() - t0
                record = {"epoch": self.epoch, "step": step + 1, "loss": value, "lr": lr,
                          "images_per_s": window_images / elapsed}
                record.update({k: float(v.detach()) for k, v in out.items() if k != "loss"})
                if main:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    for k, v in record.items():
                        if k not in ("epoch", "step"):
                            writer.add_scalar(f"train/{k}", v, step + 1)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{record['images_per_s']:.0f}")
                window_images, t0 = 0, time.perf_counter()
            bar.update(1)
            if stop.signal is not None:
                bar.close()
                self.save()
                return "interrupted"
        bar.close()
        summary = self.method.on_epoch_end(self.epoch)
        if summary and main:
            metrics.write(json.dumps({"epoch": self.epoch, "epoch_end": True, **summary}) + "\n")
            metrics.flush()
            for k, v in summary.items():
                writer.add_scalar(f"epoch/{k}", v, self.epoch + 1)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.save()
        return "done"


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def pretrain(cfg) -> tuple[Path, str]:
    """Run ``cfg`` to completion (or interruption); returns (run dir, status)."""
    trainer = Trainer(cfg)
    status = trainer.fit()
    return trainer.out, status
