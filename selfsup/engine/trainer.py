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
import random
import signal
import sys
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
from selfsup.checkpoint import SaveError, backbone_spec, load_backbone, load_checkpoint, load_timm_weights, save_atomic
from selfsup.engine.clock import NO_CLOCK
from selfsup.engine.optim import build_optimizer, lr_at
from selfsup.engine.rundir import (RunLock, config_changes, drop_logs, is_count, prepare_out, refuse_changes,
                                   remove_temporaries, truncate_metrics)
from selfsup.config import check_config, check_process_batch
from selfsup.errors import SelfSupError
from selfsup.malloc import keep_freed_memory
from selfsup.progress import line_every, progress
from selfsup.methods import get_method
from selfsup.methods.base import to_device
from selfsup.models import build_backbone
from selfsup.models.backbones import auto_cifar_stem, small_maps_on_cpu


def cpu_has_bf16_tiles() -> bool:
    """Whether this CPU multiplies bf16 in AMX tiles (Intel Sapphire Rapids and later), where bf16 autocast pays."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def autocast_dtype(precision: str, device: torch.device, cpu_bf16: bool = True):
    """The autocast dtype of ``precision`` on ``device`` (None: fp32). ``auto`` is bf16 on CUDA where supported and
    on CPUs with AMX tiles (a ResNet-18 step with the CIFAR stem 2.2x to 2.6x as fast, the convnet's 1.4x to 1.5x:
    README, "Distributed and mixed precision"), fp32 elsewhere and on a CPU where ``cpu_bf16`` is False (methods
    whose ``auto_bf16_on_cpu`` is False, and backbones whose maps are too small: ``small_maps_on_cpu``). fp16
    (with a gradient scaler) is CUDA only."""
    if precision == "auto":
        bf16 = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                else device.type == "cpu" and cpu_bf16 and cpu_has_bf16_tiles())
        precision = "bf16" if bf16 else "fp32"
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise SelfSupError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise SelfSupError("precision=fp16 needs a CUDA device: use precision=bf16 or fp32 on CPU")
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


def _held(ckpt: dict, key: str) -> str:
    return f"a {type(ckpt[key]).__name__}" if key in ckpt else "missing"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _damaged(path, what: str) -> SelfSupError:
    return SelfSupError(f"checkpoint {path} is damaged ({what}): resume from another checkpoint or start a new run")


# the settings that decide how the parameters are grouped (``param_groups``): a change fails the state's load (a
# changed weight decay or lr only changes the groups' values, which the resumed run takes from its own settings)
OPTIMIZER_GROUP_KEYS = {"optim.exclude_bias_norm", "optim.bias_lr_mult", "optim.head_lr"}
BACKBONE_DEFAULTS = {"input": "rgb", "last_stride": 2}     # build_backbone's, when an option is not given


def _check_init_options(path, method: str, held: dict, needed: dict) -> None:
    """Refuse an init checkpoint whose backbone lacks what ``method`` needs of it (Colorization's L input
    and res5 stride, Jigsaw's per-tile normalisation); options the method leaves free are the checkpoint's."""
    differ = [k for k in needed if k != "width" and held.get(k, BACKBONE_DEFAULTS.get(k)) != needed[k]]
    if differ:
        has = ", ".join(f"{k}={held.get(k, BACKBONE_DEFAULTS.get(k))}" for k in differ)
        wants = ", ".join(f"{k}={needed[k]}" for k in differ)
        raise SelfSupError(f"init checkpoint {path} holds a backbone with {has}, but {method} needs {wants}: "
                           f"start from a checkpoint of such a backbone (e.g. a {method} run), or drop init=")


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
        check_config(cfg)                                  # before anything is built or written
        self.cfg = cfg
        self.distributed = dist.init_from_env("cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        method_cls = get_method(cfg.method)
        autocast_dtype(cfg.precision, self.device)     # an impossible precision fails before the data loads
        self.rank, self.world = dist.rank(), dist.world_size()
        if cfg.batch_size % self.world:
            raise SelfSupError(f"batch_size {cfg.batch_size} is not divisible by the {self.world} processes: pick a multiple")
        # SyncBatchNorm when distributed on CUDA (it is CUDA-only) and neither the config nor the method declines it
        self.sync_bn = bool(self.distributed and cfg.sync_bn and method_cls.sync_bn and self.device.type == "cuda")
        check_process_batch(cfg, self.world, self.sync_bn)      # one image per process: before the data loads
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

        method_cfg = OmegaConf.to_object(cfg[cfg.method])
        self.backbone_options = method_cls.backbone_options(method_cfg, cfg.backbone)
        if cfg.width != 1.0:
            if cfg.backbone != "convnet":
                raise SelfSupError(f"width={cfg.width} applies to the convnet only: drop it, or pick a larger "
                                   f"{cfg.backbone.rstrip('0123456789')} (e.g. resnet18 -> resnet50)")
            self.backbone_options = {**self.backbone_options, "width": cfg.width}
        self.dataset = load_dataset(cfg.data)
        image_size = cfg.image_size or self.dataset.images.shape[-1]
        self.cifar_stem = cfg.cifar_stem
        if self.cifar_stem is None and not cfg.init:
            self.cifar_stem = auto_cifar_stem(cfg.backbone, image_size)
            if self.cifar_stem and dist.is_main():
                print(f"cifar_stem auto: the CIFAR stem (3x3 stride-1 conv, no max-pool) for {image_size} px images: "
                      f"every stage of {cfg.backbone} sees 16x the positions of the ImageNet stem, "
                      f"4x (bf16) to 10x (fp32) slower steps on a CPU; cifar_stem=false for speed")
        if cfg.init:                     # fine-tuning: the backbone exactly as the checkpoint holds it, with its weights
            init = load_checkpoint(cfg.init)
            if cfg.backbone.startswith("timm:") and "backbone_state" not in init:      # timm's own state dict
                init = {"backbone": cfg.backbone, "cifar_stem": False, "backbone_options": self.backbone_options,
                        "backbone_state": load_timm_weights(cfg.init, init, cfg.backbone, self.backbone_options).state_dict()}
            name, stem, options = backbone_spec(cfg.init, init)
            if name != cfg.backbone:
                raise SelfSupError(f"init checkpoint {cfg.init} holds a {name} backbone, not {cfg.backbone}: "
                                   f"set --backbone {name}")
            if cfg.width != options.get("width", 1.0):
                raise SelfSupError(f"init checkpoint {cfg.init} holds a convnet of width "
                                   f"{options.get('width', 1.0)}, not {cfg.width}: drop width=")
            _check_init_options(cfg.init, cfg.method, options, self.backbone_options)
            if self.cifar_stem is None:
                if stem != auto_cifar_stem(cfg.backbone, image_size) and dist.is_main():   # said when it differs
                    print(f"cifar_stem auto: {'the CIFAR' if stem else 'the ImageNet'} stem, as in the init checkpoint "
                          f"{cfg.init} (not the stem auto gives {image_size} px images)")
            elif self.cifar_stem != stem:
                raise SelfSupError(f"init checkpoint {cfg.init} has cifar_stem={stem}, this run sets "
                                   f"cifar_stem={self.cifar_stem}: drop cifar_stem= (the checkpoint's stem is kept)")
            self.cifar_stem, self.backbone_options = stem, options
            self.backbone = load_backbone(cfg.init, init).train()
        else:
            self.backbone = build_backbone(cfg.backbone, cifar_stem=self.cifar_stem, **self.backbone_options)
        if len(self.dataset) < cfg.batch_size:
            raise SelfSupError(f"the dataset has {len(self.dataset)} images, fewer than batch_size={cfg.batch_size}: lower --batch-size")
        small_maps = small_maps_on_cpu(cfg.backbone, self.cifar_stem, image_size)     # autocast_dtype: CPUs only
        self.amp_dtype = autocast_dtype(cfg.precision, self.device, method_cls.auto_bf16_on_cpu and not small_maps)
        if cfg.precision == "auto" and self.device.type == "cpu" and dist.is_main():
            if self.amp_dtype is not None:
                print("precision auto: bf16 autocast on this CPU's AMX tiles (up to 2.6x faster steps); "
                      "precision=fp32 for full precision")
            elif small_maps and cpu_has_bf16_tiles() and method_cls.auto_bf16_on_cpu:
                print(f"precision auto: fp32, as bf16 runs the ImageNet stem's small maps at {image_size} px no "
                      f"faster on a CPU (0.8x to 1.0x); precision=bf16 to use it anyway")
        before = dict(vars(method_cfg))
        method_cfg = method_cls.fit_dataset(method_cfg, self.dataset)
        for key, value in vars(method_cfg).items():           # what the data decided is recorded in config.yaml
            if value is not before[key]:
                OmegaConf.update(cfg, f"{cfg.method}.{key}", value)
        self.method = method_cls(self.backbone, method_cfg, image_size).to(self.device)
        if cfg.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        compile_mode = {"false": False, "off": False, "true": True, "on": True, "auto": self.device.type == "cuda"}
        if str(cfg.compile).lower() not in compile_mode:
            raise SelfSupError(f"compile={cfg.compile!r}: use false, true, or auto (on CUDA only)")
        if compile_mode[str(cfg.compile).lower()]:
            self.backbone.compile()          # in place: the state dict keeps its keys
        self.model: nn.Module = self.method
        if self.distributed:
            if self.sync_bn:
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
                self.backbone = self.method.backbone
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        optim_cfg = cfg.optim
        scale = cfg.batch_size / 256 if optim_cfg.scale_lr else 1.0      # the linear scaling rule, for all three
        self.peak_lr, self.final_lr = optim_cfg.lr * scale, optim_cfg.min_lr * scale
        self.start_lr = optim_cfg.warmup_start_lr * scale
        self.optimizer = build_optimizer(self.method, optim_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if getattr(self.dataset, "streaming", False):         # decoded in DataLoader workers (selfsup.data.stream)
            if cfg.data_on_device:
                raise SelfSupError("data_on_device=true needs an in-memory dataset, not a streamed one: drop it, or "
                                   "add stream=0 to the data spec if the decoded images fit in memory")
            from selfsup.data.stream import stream_loader
            self.loader = stream_loader(self.dataset, cfg.batch_size // self.world, self.method.view_maker(),
                                       image_size=image_size, device=self.device, seed=cfg.seed, rank=self.rank,
                                       world_size=self.world)
        else:
            self.loader = BatchLoader(self.dataset, cfg.batch_size // self.world, self.method.view_maker(),
                                      device=self.device, seed=cfg.seed, rank=self.rank, world_size=self.world,
                                      resident=cfg.data_on_device)
        self.loader.threads = cfg.loader_threads
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if dist.is_main():         # a method's notes on the run's length (SwAV: a queue that never fills)
            for note in self.method.run_notes(cfg.epochs, self.steps_per_epoch, cfg.batch_size):
                print(note, file=sys.stderr)
        self.warmup_steps = round(optim_cfg.warmup_epochs * self.steps_per_epoch)
        self.milestone_steps = (tuple(round(m * self.steps_per_epoch) for m in optim_cfg.milestones)
                                if optim_cfg.schedule == "steps" else None)
        self.epoch, self.step_in_epoch = 0, 0
        self.saved_step: int | None = None                # global step of the newest good checkpoint
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)   # any non-finite loss since the last check
        self.clock = NO_CLOCK            # `selfsup bench --profile` sets a StepClock: seconds per part of the step

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    # ------------------------------------------------------------ checkpoints
    def _rank_state(self) -> dict:
        """What differs between processes: RNG states and the methods' extra state
        (SwAV's queue, DeepCluster-v2's memory bank, prototype usage counts)."""
        extra = {k: v for k, v in self.method.state_dict().items() if k.endswith("_extra_state")}
        return to_device({"rng": _rng_state(), "extra": extra}, torch.device("cpu"))

    def state(self, ranks: list | None = None) -> dict:
        return {
            "backbone": self.cfg.backbone, "cifar_stem": self.cifar_stem, "backbone_options": self.backbone_options,
            "backbone_state": self.backbone.state_dict(), "method": self.cfg.method,
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "image_size": self.method.image_size, "eval_tap": self.method.evaluation_tap(),
            "ranks": ranks or [self._rank_state()], "world_size": self.world,      # each process's RNG and state
            "config": OmegaConf.to_container(self.cfg),
        }

    def _finite(self) -> bool:
        """No non-finite loss since the last check and finite weights (one host sync)."""
        weights = torch.stack([p.detach().isfinite().all() for p in self.method.parameters()]).all()
        return bool(weights & ~self.nonfinite)

    def _kept(self) -> str:
        return (f"last.pt from step {self.saved_step} is kept, not overwritten" if self.saved_step is not None
                else "no checkpoint was written")

    def _nonfinite_fix(self) -> str:
        """What to try after a non-finite loss: a lower lr, and full precision where the run was not in it."""
        return "lower optim.lr" + (", or use precision=fp32" if self.amp_dtype is not None else "")

    def save(self) -> None:
        """Write last.pt (every process's own state gathered into it) unless the weights
        went non-finite; every process agrees on the outcome, so none is left waiting."""
        (bad,) = dist.agree_any(not self._finite())
        if bad:
            raise SelfSupError(f"the loss or the weights became non-finite by step {self.global_step}: {self._kept()}; "
                               f"{self._nonfinite_fix()}")
        ranks = dist.gather_objects(self._rank_state())
        error = None
        if dist.is_main():
            try:
                state = self.state(ranks)
                save_atomic(state, self.out / "last.pt")
                if self.cfg.save_every and self.step_in_epoch == 0 and self.epoch % self.cfg.save_every == 0:
                    save_atomic(state, self.out / f"epoch_{self.epoch}.pt")
            except SaveError as exc:
                error = exc
        (failed,) = dist.agree_any(error is not None)
        if failed:
            reason = f"{error.path}: {error.reason}" if error else "on rank 0, see its message"
            raise SelfSupError(f"cannot save step {self.global_step} ({reason}): {self._kept()}; free disk space "
                               f"or choose a writable --out")
        self.saved_step = self.global_step

    def restore(self, path: Path) -> dict:
        """Load ``path`` into this process (its own rank's state); returns the settings that
        changed (refused unless ``resume_with_changes``)."""
        ckpt = load_checkpoint(path)
        if not {"method", "model", "backbone_state", "ranks"} <= set(ckpt):
            raise SelfSupError(f"{path} is not the checkpoint of a selfsup run (a network's weights only?): --resume "
                               f"continues a `selfsup pretrain` run; start a new run with init={path} in another --out")
        if ckpt.get("method") != self.cfg.method or ckpt.get("backbone") != self.cfg.backbone:
            raise SelfSupError(f"{path} is a {ckpt.get('method')}/{ckpt.get('backbone')} run, not {self.cfg.method}/{self.cfg.backbone}: "
                               f"resume with the same method and backbone, or use another --out")
        changes = config_changes(ckpt.get("config") or {}, OmegaConf.to_container(self.cfg))
        refuse_changes(changes, self.cfg.resume_with_changes, f"the run in {self.out}",
                       "resume with the run's settings, or pass --resume-with-changes to continue with the new ones")
        ranks = ckpt.get("ranks") or []
        if not isinstance(ranks, list):
            raise _damaged(path, f"its 'ranks' is a {type(ranks).__name__}, not a list")
        if len(ranks) != self.world:
            raise SelfSupError(f"{path} was written by {len(ranks)} process(es) and this run has {self.world}: resume "
                               f"with {len(ranks)} (each process's queues, memory bank and RNG are its own)")
        own = ranks[self.rank]
        self._check_fields(path, ckpt, own, changes)
        try:
            self.method.load_state_dict({**ckpt["model"], **own["extra"]})
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            tensors = all(isinstance(v, torch.Tensor) or str(k).endswith("_extra_state")
                          for k, v in ckpt["model"].items())
            if not (tensors and isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc)):
                raise _damaged(path, f"its model state: {_first_line(exc)}") from None
            changed = " / ".join(changes) or "the code that builds the model"    # tensors of other shapes or names
            raise SelfSupError(f"{changed} change the model's shapes: they cannot change on resume; resume with the "
                               f"run's settings, or start a new run (init={path} to keep the backbone)") from None
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            grouping = [k for k in changes if k in OPTIMIZER_GROUP_KEYS]
            if grouping:
                raise SelfSupError(f"{' / '.join(grouping)} change the optimiser's parameter groups: they cannot "
                                   f"change on resume; resume with the run's settings, or start a new run "
                                   f"(init={path} to keep the backbone)") from None
            raise _damaged(path, f"its optimiser state does not fit the model: {_first_line(exc)}") from None
        for param, state in self.optimizer.state.items():       # a buffer of another shape fails the first step
            if any(not (v is None or isinstance(v, (int, float, torch.Tensor)))
                   or isinstance(v, torch.Tensor) and v.dim() and v.shape != param.shape for v in state.values()):
                raise _damaged(path, "its optimiser state holds buffers of other shapes than the parameters")
        for group, own_settings in zip(self.optimizer.param_groups, settings):   # the run's settings, not the file's
            group.update(own_settings)                                     # (a changed weight decay or momentum)
        try:
            self.scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(own["rng"])
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise _damaged(path, f"its gradient scaler or RNG state: {_first_line(exc)}") from None
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.saved_step = self.global_step
        return changes

    def _check_fields(self, path: Path, ckpt: dict, own, changes: dict) -> None:
        """Refuse, as damaged, a checkpoint whose fields ``restore`` reads are not of the kinds ``state`` writes, or
        whose position (epoch, step of the epoch) is not one of the run's: ``state`` writes 0 <= step <= the steps
        of an epoch (0 at an epoch's end; all of them when a stop lands on its last step), and an epoch up to the
        run's length."""
        for key in ("model", "optimizer", "scaler"):
            if not isinstance(ckpt.get(key), dict):
                raise _damaged(path, f"its {key!r} is {_held(ckpt, key)}, not a dict")
        if not isinstance(own, dict) or not all(isinstance(own.get(k), dict) for k in ("rng", "extra")):
            raise _damaged(path, f"its 'ranks' entry of process {self.rank} is not a dict of an 'rng' and an 'extra'")
        if set(own["extra"]) != {k for k in self.method.state_dict() if k.endswith("_extra_state")}:
            raise _damaged(path, f"the extra state of process {self.rank} is not the {self.cfg.method} method's")
        epoch, step = ckpt.get("epoch"), ckpt.get("step_in_epoch")
        saved = (ckpt.get("config") or {}).get("epochs")
        epochs = max(self.cfg.epochs, saved if is_count(saved) else 0)
        # the steps of an epoch are known unless the settings that set them changed
        steps = None if {"batch_size", "data"} & set(changes) else self.steps_per_epoch
        if not (is_count(epoch) and is_count(step) and (epoch, step) <= (epochs, 0) and (steps is None or step <= steps)):
            of = f"{epochs} epochs" + (f" of {steps} steps" if steps is not None else "")
            shown = [repr(v)[:40] if isinstance(v, (int, float, str, type(None))) else f"a {type(v).__name__}"
                     for v in (epoch, step)]
            raise _damaged(path, f"its position, epoch {shown[0]} step {shown[1]}, is not one of a run of {of}")

    # ------------------------------------------------------------ the loop
    def fit(self, on_epoch_end=None, held: RunLock | None = None) -> str:
        """Train to ``cfg.epochs``; returns "done" or "interrupted" (after saving). ``held``: the run directory's
        lock, taken by the caller before it wrote there (``transfer``), kept by it: the run starts under it."""
        lock, error = None, None
        if dist.is_main() and held is None:
            try:
                prepare_out(self.out)
                lock = RunLock(self.out).acquire()
            except SelfSupError as exc:
                error = exc
        (failed,) = dist.agree_any(error is not None)
        if failed:
            raise error or SelfSupError(f"rank 0 could not take the run directory {self.out}: see its message")
        try:
            return self._fit(on_epoch_end)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, on_epoch_end) -> str:
        cfg, main = self.cfg, dist.is_main()
        last = self.out / "last.pt"
        if main:
            remove_temporaries(self.out)
        changes = {}
        if cfg.resume and last.exists():
            changes = self.restore(last)
        elif cfg.resume:
            raise SelfSupError(f"--resume was given but {last} does not exist: drop --resume or point --out at the run to continue")
        elif last.exists():
            raise SelfSupError(f"{self.out} already holds a run (last.pt): pass --resume to continue it or choose another --out")
        if main:
            OmegaConf.save(self.cfg, self.out / "config.yaml")
            if cfg.resume:
                truncate_metrics(self.out / "metrics.jsonl", self.epoch, self.global_step)
            else:                          # a start over a run killed before its first checkpoint: its logs go
                drop_logs(self.out)
        if cfg.epochs == 0:
            if not (cfg.resume and last.exists()):    # a rerun of a 0-epoch run: its last.pt stays as it is
                self.save()
            return "done"
        writer = _tensorboard(self.out, self.global_step + 1 if cfg.resume else None) if main else None
        metrics = open(self.out / "metrics.jsonl", "a") if main else None
        if changes and main:
            metrics.write(json.dumps({"epoch": self.epoch, "step": self.global_step, "resumed_with_changes": changes}) + "\n")
            print(f"resumed at step {self.global_step} with changed settings: "
                  + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items()))
        try:
            with _StopFlag() as stop:
                while self.epoch < cfg.epochs:
                    status = self._run_epoch(stop, writer, metrics)
                    if status == "interrupted":
                        return status
                    if on_epoch_end is not None:
                        measured = on_epoch_end(self)              # e.g. a kNN monitor: logged with the epoch
                        if measured and main:
                            self._log_epoch(metrics, writer, self.epoch - 1, measured)
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
                        enabled=main and cfg.progress, every=line_every(self.steps_per_epoch, cfg.log_every))
        try:
            return self._steps(stop, writer, metrics, bar)
        finally:
            bar.close()                      # before any message, so it prints on a line of its own

    def _steps(self, stop, writer, metrics, bar) -> str:
        cfg, main = self.cfg, dist.is_main()
        window_images, t0 = 0, time.perf_counter()
        clock = self.clock
        for batch in clock.iterate("data wait", self.loader.epoch(self.epoch, self.step_in_epoch)):
            step = self.global_step
            at = step - step % self.steps_per_epoch if cfg.optim.per_epoch else step
            lr = lr_at(at, self.total_steps, self.warmup_steps, self.peak_lr, self.final_lr, self.start_lr,
                       self.milestone_steps, cfg.optim.gamma)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if cfg.channels_last:
                batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
            autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                        else contextlib.nullcontext())
            with clock("forward and loss"), autocast:
                out = self.model(batch)
            loss = out["loss"]
            self.nonfinite |= ~loss.detach().isfinite()        # on the device: no host sync per step
            with clock("backward"):
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.method.on_after_backward(step)
            with clock("optimizer"):
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.method.on_step_end(step, self.total_steps)
            self.step_in_epoch += 1
            window_images += len(batch.indices) * self.world
            log = self.step_in_epoch % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch
            # every process takes the same decision at every step boundary: stop, or go on
            with clock("logging and host syncs"):
                nonfinite = bool(self.nonfinite) if log else False
                stopping, nonfinite = dist.agree_any(stop.signal is not None, nonfinite)
                if nonfinite:
                    raise SelfSupError(f"the loss became non-finite by step {step + 1}: {self._kept()}; "
                                       f"{self._nonfinite_fix()}")
                if log:
                    value = float(loss.detach())
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
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.4g}", img_s=f"{record['images_per_s']:.0f}")
                    window_images, t0 = 0, time.perf_counter()
            bar.update(1)
            if stopping:
                self.save()
                return "interrupted"
            if cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0 \
                    and self.step_in_epoch < self.steps_per_epoch:
                self.save()
        summary = self.method.on_epoch_end(self.epoch)
        if summary and main:
            self._log_epoch(metrics, writer, self.epoch, summary)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.save()
        return "done"


    @staticmethod
    def _log_epoch(metrics, writer, epoch: int, values: dict) -> None:
        """A per-epoch record of metrics.jsonl (``epoch_end``) and its TensorBoard scalars."""
        metrics.write(json.dumps({"epoch": epoch, "epoch_end": True, **values}) + "\n")
        metrics.flush()
        for k, v in values.items():
            writer.add_scalar(f"epoch/{k}", v, epoch + 1)


def _tensorboard(out: Path, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"), purge_step=purge_step)    # on resume: drop events past the checkpoint


def _progress(total: int, initial: int, desc: str, enabled: bool, every: int | None = None):
    """The epoch's progress: a tqdm bar on a terminal, plain lines in a log (``selfsup.progress``).
    ``every`` is a multiple of ``log_every``, so a line only falls on a step whose loss, lr and
    images/s the loop has already brought to the host."""
    return progress(total, initial, desc, enabled=enabled, every=every)


def pretrain(cfg, on_epoch_end=None, held: RunLock | None = None) -> tuple[Path, str]:
    """Run ``cfg`` to completion (or interruption); returns (run dir, status). ``on_epoch_end(trainer)``
    runs after every epoch's save; a dict it returns is logged with the epoch (``epoch_end`` record).
    ``held``: the run directory's lock, already taken by the caller (``Trainer.fit``)."""
    trainer = Trainer(cfg)
    finished = False
    try:
        status = trainer.fit(on_epoch_end, held)
        finished = True
    finally:
        dist.shutdown(finished)                 # under torchrun: every rank leaves the group before exiting
    return trainer.out, status
