"""Run configuration: typed dataclasses resolved with OmegaConf.

Precedence, lowest first: these dataclass defaults, the method's recommended
settings (``Method.defaults``), then, for images of 64 px or less, the method's
``small_image_defaults`` (a CIFAR recipe), a YAML file (``--config``), command-line flags,
then ``key=value`` overrides (e.g. ``optim.lr=0.5 simclr.temperature=0.2``).
Unknown keys and values of the wrong type are errors that name the valid keys.
The method's own hyperparameters live under a key named after the method.
"""
from __future__ import annotations

import inspect
import json
import re
import shlex
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.errors import SelfSupError


@dataclass
class OptimConfig:
    name: str = "sgd"                 # sgd | lars | larc (apex LARC, clip=False: SwAV)
    lr: float = 0.05                  # peak learning rate (per 256 images if scale_lr)
    scale_lr: bool = False            # lr x global_batch / 256 (linear scaling rule)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0        # linear warmup from warmup_start_lr, per iteration
    warmup_start_lr: float = 0.0      # where the warmup starts (per 256 images if scale_lr, like lr)
    min_lr: float = 0.0               # cosine decay to this value (per 256 images if scale_lr, like lr)
    per_epoch: bool = False           # the schedule steps once per epoch (JigClu's code), not per iteration
    exclude_bias_norm: bool = True    # biases and norm parameters: no weight decay, no LARS adaptation
    bias_lr_mult: float = 1.0         # biases' lr = this x lr (Caffe's lr_mult: 2 in the Jigsaw CFN)
    lars_eta: float = 0.001           # LARS trust coefficient
    lars_clip: bool = False           # LARC's clipping: trust min(trust / lr, 1), never above plain SGD at lr
    schedule: str = "cosine"          # cosine (to min_lr) | steps (x gamma at each of milestones, in epochs)
    milestones: list[float] = field(default_factory=list)   # steps: epochs at which the lr is multiplied by gamma
    gamma: float = 0.1                # steps: the factor at each milestone
    head_lr: Optional[float] = None   # lr of the parameters outside the backbone (a classifier head), like lr; None: lr
    fused: bool = False               # sgd: torch's fused kernel; lars / larc: multi-tensor (foreach) updates


@dataclass
class MonitorConfig:
    knn: str = ""                     # labelled dataset SPEC: kNN top-1 on a subset of it during pretraining
    every: int = 1                    # epochs between measurements
    images: int = 2000                # images of the subset (half memory, half queries)


@dataclass
class TrainConfig:
    method: str = "simclr"
    data: str = ""                    # dataset SPEC: [FORMAT:]PATH[?options]
    backbone: str = "resnet18"
    cifar_stem: Optional[bool] = None # 3x3 stride-1 stem without max-pool; None (auto): on ResNets for images of 64 px or less
    image_size: Optional[int] = None  # view size; default: the dataset's image size
    width: float = 1.0                # channel multiplier of the convnet (the capacity axis of a sweep)
    init: str = ""                    # a checkpoint (selfsup, or a torchvision ResNet state dict) whose backbone starts the run
    epochs: int = 100
    batch_size: int = 256             # global batch (split across processes)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    out: str = "runs/latest"
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    precision: str = "auto"           # auto (bf16 on CUDA and on CPUs with AMX, else fp32) | fp32 | bf16 | fp16
    channels_last: bool = True
    loader_threads: int = 0           # intra-op threads of the loader's thread that makes the views (0: torch's, as the step)
    compile: str = "false"            # torch.compile the backbone: false | true | auto (on CUDA only); pays on GPUs
    data_on_device: bool = False      # the whole uint8 dataset copied to the device once (in-memory sets)
    sync_bn: bool = True              # SyncBatchNorm when distributed on CUDA (per-process BN on CPU)
    log_every: int = 10               # steps between metrics.jsonl records
    save_every: int = 0               # also keep epoch_N.pt every N epochs (0: only last.pt)
    save_every_steps: int = 0         # also write last.pt every N steps (0: at epoch ends and on SIGTERM only)
    resume: bool = False
    resume_with_changes: bool = False # resume although the config differs from the run's (the change is recorded)
    progress: bool = True             # progress output: a bar on a terminal, plain lines in a log


def _format_error(exc: OmegaConfBaseException, where: str, method: str = "METHOD", key: str | None = None) -> SelfSupError:
    """One line for OmegaConf's error; ``key``: the override's key, where OmegaConf names none (2.4's tuple checks)."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or key
    msg = str(exc).splitlines()[0]
    if "Key" in type(exc).__name__ or "not in struct" in msg or "Could not override" in msg:
        return SelfSupError(f"unknown config key {key!r} in {where}: check the spelling (every key, with its default: "
                            f"`selfsup pretrain {method} --print-config`)")
    return SelfSupError(f"bad config value for {key!r} in {where}: {msg}")


CONFIG_DIR = Path(__file__).parent / "configs"      # the shipped configs (package data)


def shipped_configs(folder: str = "") -> list[str]:
    """Names of the shipped YAML configs (``folder="sweeps"``: the sweep files)."""
    return sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml"))


def find_config(name: str, folder: str = "", what: str = "config") -> Path:
    """``name`` itself when it is a file, else the shipped config of that name in ``CONFIG_DIR/folder``
    (``swav_cifar10``, ``swav_cifar10.yaml``; ``folder="sweeps"`` for sweep files)."""
    if Path(name).is_file():
        return Path(name)
    stem = name[:-5] if name.endswith(".yaml") else name
    if ".." not in stem.split("/") and (CONFIG_DIR / folder / f"{stem}.yaml").is_file():   # also speedrun/NAME
        return CONFIG_DIR / folder / f"{stem}.yaml"
    raise SelfSupError(f"{what} {name!r} is neither a file nor a shipped {what}: pass a YAML path or one of "
                       f"{', '.join(shipped_configs(folder))}")


SMALL_IMAGE = 64                      # px: images this small get the method's small_image_defaults


def resolve_config(method_cls, file: str | None = None, flags: dict[str, Any] | None = None,
                   overrides: list[str] | None = None, image_size_of=None) -> DictConfig:
    """Build the typed config for ``method_cls`` from the layers above. ``image_size_of(data
    spec)`` gives the dataset's image size when ``image_size`` is not set: images of
    ``SMALL_IMAGE`` px or less get the method's ``small_image_defaults`` (said in one line on stderr,
    as the short-run note: stdout keeps ``--print-config``'s YAML alone)."""
    base = OmegaConf.structured(TrainConfig)
    method_base = OmegaConf.structured(method_cls.Config)
    OmegaConf.set_struct(base, False)
    base[method_cls.name] = method_base
    OmegaConf.set_struct(base, True)
    layers: list[tuple[str, Any]] = [("method defaults", method_cls.defaults)]
    if file:
        given, file = file, str(find_config(file))
        try:
            loaded = OmegaConf.load(file)
        except (OSError, Exception) as exc:  # yaml errors are not OmegaConf errors
            raise SelfSupError(f"cannot read config file {file}: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):
            raise SelfSupError(f"config file {file} holds a list, not settings: write one `key: value` per line, "
                               f"e.g. `epochs: 100` (every key: `selfsup pretrain {method_cls.name} --print-config`)")
        _check_file_method(loaded, file, given, method_cls.name)
        layers.append((file, loaded))
    layers.append(("command-line flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    user_keys = {k for _, layer in layers[1:] for k in flatten(layer)}
    user_keys |= {item.partition("=")[0].strip() for item in overrides or []}
    cfg, recipe_epochs = _merge(base, layers, overrides, method_cls.name)
    small = method_cls.small_image_defaults
    size = cfg.image_size or (image_size_of(cfg.data) if small and image_size_of and cfg.data else None)
    if small and size is not None and size <= SMALL_IMAGE:
        layers.insert(1, (f"{method_cls.name}'s defaults for small images", small))
        before = cfg
        cfg, recipe_epochs = _merge(base, layers, overrides, method_cls.name)
        changed = {k: (OmegaConf.select(before, k), v) for k, v in flatten(small).items() if k not in user_keys}
        if changed:
            print(f"{size} px images: {method_cls.name}'s recipe for images of {SMALL_IMAGE} px or less, "
                  + ", ".join(f"{k} {repr(a) if a == '' else a} -> {b}" for k, (a, b) in changed.items())
                  + "; set them to keep the paper's", file=sys.stderr)
    if cfg.method != method_cls.name:
        raise SelfSupError(f"config says method {cfg.method!r} but {method_cls.name!r} was asked for: drop one of them")
    fit_schedule(cfg, recipe_epochs, user_keys)
    queue = OmegaConf.select(cfg, f"{cfg.method}.queue_length")
    starts = OmegaConf.select(cfg, f"{cfg.method}.epoch_queue_starts")
    if queue and starts is not None and starts >= cfg.epochs > 0:      # said once, where the schedule is fitted
        print(f"{cfg.method}.queue_length={queue} is never used: the queue starts at epoch "
              f"{cfg.method}.epoch_queue_starts={starts} and the run has {cfg.epochs} epochs; lower epoch_queue_starts",
              file=sys.stderr)
    return cfg


def _check_file_method(loaded: DictConfig, file: str, given: str, method: str) -> None:
    """Refuse, in one line, a ``--config`` file written for another method (its ``method:`` key), naming the
    command that runs it: its settings live under that method's key, which this method's config lacks (it was
    reported as a misspelt key). A file without ``method:`` is read for whichever method is asked for."""
    wanted = loaded.get("method") if "method" in loaded else None
    if isinstance(wanted, str) and wanted != method:
        raise SelfSupError(f"config file {file} is for `method: {wanted}`, not {method}: run "
                           f"`selfsup pretrain {wanted} --config {shlex.quote(given)}`")


def _merge(base, layers, overrides, method: str) -> tuple[DictConfig, int]:
    """``base`` with every layer, then the key=value overrides, merged in order; and the
    recipe's epochs (those after the method's layers, before the user's)."""
    recipe_epochs = base.epochs
    for where, layer in layers:
        _check_groups(base, layer, where, method)
        try:
            base = OmegaConf.merge(base, layer)
        except OmegaConfBaseException as exc:
            raise _format_error(exc, where, method) from None
        if where == "method defaults" or where.endswith("defaults for small images"):
            recipe_epochs = base.epochs
    for item in overrides or []:
        if "=" not in item:
            raise SelfSupError(f"cannot parse override {item!r}: write key=value, e.g. optim.lr=0.1")
        _check_groups(base, OmegaConf.from_dotlist([item]), f"override {item!r}", method)
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _format_error(exc, f"override {item!r}", method, item.partition("=")[0].strip()) from None
    return base, recipe_epochs


def _check_groups(base, layer, where: str, method: str) -> None:
    """Refuse a plain value given to a group of settings (``optim=3``), naming the group and its keys;
    and a plain value given to a list setting (``deepcluster_v2.nmb_prototypes=10``), showing a list."""
    for key, value in flatten(layer).items():
        group = OmegaConf.select(base, key, default=None)
        if isinstance(group, ListConfig) and not isinstance(value, (list, tuple, ListConfig)):
            example = _yaml_value(OmegaConf.to_container(group)).replace(" ", "") if len(group) else "[1,2]"
            raise SelfSupError(f"{key}={value} in {where} is not valid: {key} is a list, e.g. {key}={example}")
        if isinstance(group, DictConfig) and not isinstance(value, (dict, DictConfig)):
            raise SelfSupError(f"{key!r} in {where} is a group of settings, not a value: set its keys instead, "
                               f"e.g. {key}.{next(iter(group))} (every key: `selfsup pretrain {method} --print-config`)")


def _field_comments(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the source of a config dataclass and its bases."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if is_dataclass(k)]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for name, comment in re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$", source, flags=re.M):
            comments[name] = comment.strip()
    return comments


def _yaml_value(value) -> str:
    if isinstance(value, (tuple, list)):
        value = json.loads(json.dumps(value))      # tuples (nested too) as YAML lists
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


def describe_config(cfg: DictConfig, method_cls) -> str:
    """The resolved ``cfg`` as YAML that ``--config`` reads back: every key with its value, its
    meaning (the dataclass field's comment) and its default (the dataclass's), e.g.
    ``  lr: 0.3  # peak learning rate (per 256 images if scale_lr) [default 0.05]``."""
    lines = [f"# selfsup pretrain {method_cls.name}: the resolved settings; [default X] is the built-in default "
             "before the method's recipe"]

    def walk(instance, node, indent: str) -> None:
        comments = _field_comments(type(instance))
        for f in fields(instance):
            default, value = getattr(instance, f.name), node[f.name]
            if is_dataclass(default):
                lines.append(f"{indent}{f.name}:{'  # ' + comments[f.name] if f.name in comments else ''}")
                walk(default, value, indent + "  ")
                continue
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            note = " ".join(filter(None, [comments.get(f.name, ""), f"[default {_yaml_value(default)}]"]))
            lines.append(f"{indent}{f.name}: {_yaml_value(value)}  # {note}")

    walk(TrainConfig(), cfg, "")
    lines.append(f"{method_cls.name}:  # the method's own settings")
    walk(method_cls.Config(), cfg[method_cls.name], "  ")
    return "\n".join(lines) + "\n"


def flatten(tree, prefix: str = "") -> dict:
    """A nest of dicts (or configs) as {"optim.lr": value, ...}."""
    if isinstance(tree, (dict, DictConfig)):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def fit_schedule(cfg, recipe_epochs: int, user_keys: set[str]) -> dict[str, tuple]:
    """A run shorter than its recipe (``epochs`` < the recipe's) gets the recipe's schedule
    lengths scaled by epochs / recipe epochs: the warmup, the prototype freezing and, when a
    queue is on, the queue's start epoch. Settings the user gave stay as given; a run as long
    as the recipe keeps it exactly. Says in one line what it adapted; returns {key: (old, new)}."""
    if not 0 < cfg.epochs < recipe_epochs:
        return {}
    name, factor = cfg.method, cfg.epochs / recipe_epochs
    keys = ["optim.warmup_epochs", f"{name}.freeze_prototypes_epochs"]
    if (OmegaConf.select(cfg, f"{name}.queue_length") or 0) > 0:
        keys.append(f"{name}.epoch_queue_starts")
    changed = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if key in user_keys or not value:
            continue
        new = int(value * factor) if isinstance(value, int) else round(value * factor, 4)
        OmegaConf.update(cfg, key, new)
        changed[key] = (value, new)
    if changed:
        print(f"short run ({cfg.epochs} of the recipe's {recipe_epochs} epochs): "
              + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
              + "; set them to keep the recipe's", file=sys.stderr)
    return changed


MAX_WIDTH, MAX_IMAGE_SIZE = 16, 4096      # bounds a checkpoint's width and sizes are read within too

# (key, test, what it must be): the numbers a run cannot be meaningful without
_CHECKS = [
    ("epochs", lambda v: v >= 0, "0 or more"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("image_size", lambda v: v is None or 1 <= v <= MAX_IMAGE_SIZE, f"from 1 to {MAX_IMAGE_SIZE}"),
    ("width", lambda v: 0 < v <= MAX_WIDTH, f"above 0 and at most {MAX_WIDTH}"),
    ("optim.lr", lambda v: v > 0, "positive"),
    ("optim.min_lr", lambda v: v >= 0, "0 or more"),
    ("optim.warmup_start_lr", lambda v: v >= 0, "0 or more"),
    ("optim.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, "0 or more"),
    ("optim.warmup_epochs", lambda v: v >= 0, "0 or more"),
    ("optim.lars_eta", lambda v: v > 0, "positive"),
    ("optim.bias_lr_mult", lambda v: v > 0, "positive"),
    ("optim.head_lr", lambda v: v is None or v > 0, "positive"),
    ("optim.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim.schedule", lambda v: v in ("cosine", "steps"), "cosine or steps"),
    ("optim.milestones", lambda v: all(m > 0 for m in v) and list(v) == sorted(v), "increasing epochs above 0"),
    ("seed", lambda v: 0 <= v < 2**32, "in 0 .. 4294967295 (2**32 - 1, numpy's range)"),
    ("log_every", lambda v: v >= 1, "at least 1"),
    ("save_every", lambda v: v >= 0, "0 or more"),
    ("loader_threads", lambda v: v >= 0, "0 or more"),
    ("save_every_steps", lambda v: v >= 0, "0 or more"),
    ("monitor.every", lambda v: v >= 1, "at least 1"),
    ("monitor.images", lambda v: v >= 2, "at least 2"),
]


_CONTRASTS = "its loss contrasts each image with the others of the batch (one image gives loss 0 or nan)"
_HEAD_BN = "its head's batch norm needs two or more images"
# methods that cannot train on a batch of one image, and why (measured: README, Configuration)
_BATCH_OF_TWO = {"simclr": _CONTRASTS, "spectral_contrastive": _CONTRASTS, "byol": _HEAD_BN, "vicreg": _HEAD_BN,
                 "deepcluster_v2": _HEAD_BN, "sela_v2": _HEAD_BN}


def check_process_batch(cfg, world: int, synced_bn: bool) -> None:
    """Refuse one image per process under torchrun (``batch_size`` is split over the ``world`` processes) for
    the methods of ``_BATCH_OF_TWO`` when batch norm is per process (``synced_bn`` False: SyncBatchNorm is on
    CUDA with sync_bn=true only). Their losses gather the other processes' images (SimCLR's and spectral
    contrastive's negatives, VICReg's variance), but each process's projection head normalises its own
    samples: with one image, the views of that image against each other (SimCLR, spectral contrastive and the
    crops of one size of DC-v2 and SeLa-v2 go through it together: every feature comes out +-1, the two views
    pushed apart, measured: SimCLR's loss 5-6 at 2 x 1 images against 0.5-1.7 at 1 x 2), or one view alone, which
    fails (BYOL and VICReg forward each view apart: 'Expected more than 1 value per channel')."""
    per = cfg.batch_size // world
    if world < 2 or per >= 2 or synced_bn or cfg.method not in _BATCH_OF_TWO:
        return
    why = "on CPU: SyncBatchNorm is CUDA only" if cfg.sync_bn else "sync_bn=false"
    raise SelfSupError(f"batch_size={cfg.batch_size} over {world} processes gives each process {per} image, too few for "
                       f"{cfg.method}: its head's batch norm is per process ({why}) and normalises that one image's views "
                       f"against each other, or fails on a view alone; set --batch-size {2 * world} or more "
                       f"(at least 2 x {world} processes)")


def check_config(cfg) -> None:
    """Refuse, in one line, settings that would make a run meaningless (before anything is written):
    those of ``_CHECKS``; for every key, a number that is inf or nan, and a temperature (any key
    whose name holds ``temperature``) that is not positive (``selfsup.methods.checks.check_number``);
    the method's own settings outside their range (``selfsup.methods.checks.METHOD_CHECKS``, the table
    ``build_method`` runs too), then those that need the run's settings (``RUN_METHOD_CHECKS``)."""
    from selfsup.methods.checks import check_method_rules, check_number

    for key, value in flatten(cfg).items():
        check_number(key, value)
    for key, ok, must in _CHECKS:
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            flag = {"epochs": "--epochs", "batch_size": "--batch-size"}.get(key, key)
            raise SelfSupError(f"{key}={value} is not valid: it must be {must} (set {flag})")
    if cfg.batch_size < 2 and cfg.method in _BATCH_OF_TWO:
        raise SelfSupError(f"batch_size={cfg.batch_size} is too small for {cfg.method}: {_BATCH_OF_TWO[cfg.method]}; "
                           f"set --batch-size 2 or more")
    check_method_rules(cfg.method, OmegaConf.select(cfg, cfg.method))
    for key, ok, must in RUN_METHOD_CHECKS.get(cfg.method, []):
        value = OmegaConf.select(cfg, f"{cfg.method}.{key}")
        if not ok(value, cfg):
            raise SelfSupError(f"{cfg.method}.{key}={value} is not valid: it must be {must} (set {cfg.method}.{key})")


# per method: (key under the method, test of (value, whole config), what it must be): the rules on a method's
# setting that need the run's settings too; those that need the method's alone are selfsup.methods.checks's
RUN_METHOD_CHECKS: dict[str, list] = {
    "swav": [("queue_length", lambda v, c: v == 0 or v >= c.batch_size,
              "0 (no queue) or at least batch_size (it is trimmed to a multiple of the batch), e.g. 3840")],
}
