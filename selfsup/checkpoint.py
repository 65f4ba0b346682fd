"""Checkpoint files: written atomically, read without running code.

Every ``.pt`` file selfsup reads (its own checkpoints, a torchvision / timm state
dict, its feature caches) goes through ``safe_load``: ``torch.load`` with
``weights_only=True``, which rebuilds tensors and plain containers only, so a
crafted file is refused instead of running its payload. This module sits below
the engine, evaluation and visualisation, so one loader serves them all.
"""
from __future__ import annotations

import copy
import os
import pickle
import re
import secrets
import sys
import zipfile
from collections import Counter
from pathlib import Path

import torch

from selfsup.config import MAX_IMAGE_SIZE, MAX_WIDTH
from selfsup.errors import SelfSupError
from selfsup.tempfiles import writer_suffix

# The largest sizes a checkpoint may claim, those a run may set (selfsup.config), checked before anything is built
# from them: a convnet of width 16 has 384-768-1536-3072 channels; a side of 4096 px is 64x the pixels of 512 px.
MAX_DEPTH = 64            # containers within containers: selfsup's checkpoints nest 5 deep


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Where ``save_atomic`` writes before the rename: ``.NAME.RANDOM.HOST.PID.tmp`` beside ``path``
    (``selfsup.tempfiles``: a killed writer's are found by the next)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{writer_suffix()}")


class SaveError(SelfSupError):
    """A write that failed (disk full, read-only folder): the previous file is intact."""

    def __init__(self, path: Path, reason: str, kept: str):
        super().__init__(f"cannot write {path} ({reason}): {kept}; free disk space or choose a writable location")
        self.path, self.reason = path, reason


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder.

    A kill at any point leaves either the old file or the new one, never a partial
    one. The file's mode follows the umask, as any file the user writes. A failed
    write (disk full, read-only folder) is a one-line ``SaveError`` and keeps the
    previous file.
    """
    write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(path: str | Path, write) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, then as ``save_atomic``: fsync,
    rename, fsync the folder; a failed write is a ``SaveError`` and keeps the previous file."""
    path = Path(path)
    kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise SaveError(path, exc.strerror or str(exc), kept) from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) into ``path`` as ``write_atomic`` writes: a kill or a full disk keeps the previous file."""
    write_atomic(path, lambda f: f.write(text.encode()))


class UnreadableFile(SelfSupError):
    """A file that is not a PyTorch file or is truncated (not one that would run code: that is refused apart)."""


def safe_load(path: str | Path, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    Tensors, numbers, strings and containers load; anything that would import or
    call Python code while unpickling is refused, and nothing of it runs.
    """
    path = Path(path)
    if path.is_dir():          # most often a run directory: name its checkpoint
        hint = f"pass {path / 'last.pt'}" if (path / "last.pt").is_file() else "pass the path of a .pt file"
        raise SelfSupError(f"{what} {path} is a directory: {hint}")
    if path.exists() and not path.is_file():        # a FIFO, a device (/dev/zero), a socket: reading may never end
        raise SelfSupError(f"{what} {path} is not a regular file: pass the path of a .pt file")
    if not path.is_file():
        raise SelfSupError(f"{what} {path} does not exist: pass the path of a .pt file")
    _check_zip(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise UnreadableFile(f"cannot read {what} {path}: it is not a PyTorch file or it is truncated") from None
        raise SelfSupError(f"refusing to load {what} {path}: it would call {found.group(1)}, and loading it could run "
                           f"code; selfsup reads only tensors and plain data: re-save it as a state dict of tensors") from None
    except Exception as exc:
        raise UnreadableFile(f"cannot read {what} {path} ({type(exc).__name__}): it is not a PyTorch file or it is "
                             f"truncated") from None


def _check_zip(path: Path, what: str) -> None:
    """A one-line error for a zip file (torch.save's format) that is not what torch.save writes: its records
    are stored, never compressed, so together they hold no more bytes than the file. A record deflated from
    gigabytes of zeros (a zip bomb) would be inflated in memory by ``torch.load`` before anything is checked."""
    try:                          # torch.load's own test: a zip starts with a local file header (is_zipfile looks
        with open(path, "rb") as f:        # for a directory at the end, which a legacy file's weights may mimic)
            head = f.read(4)
    except OSError as exc:
        raise SelfSupError(f"cannot read {what} {path} ({exc.strerror}): pass a readable .pt file") from None
    if head != b"PK\x03\x04":
        return                    # torch's legacy format, or not a PyTorch file: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UnreadableFile(f"cannot read {what} {path}: it is not a PyTorch file or it is truncated") from None
    compressed = any(r.compress_type != zipfile.ZIP_STORED for r in records)
    if compressed or sum(r.file_size for r in records) > path.stat().st_size:
        raise SelfSupError(f"{what} {path} holds {'compressed' if compressed else 'overlapping'} records (a zip "
                           f"bomb?): not a file torch.save wrote; re-save its weights with torch.save, or pass "
                           f"another file")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint as a dict (``safe_load``): a ``selfsup pretrain`` file or a state dict."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise SelfSupError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict: pass a file written by `selfsup pretrain` or a state dict")
    if any(depth > MAX_DEPTH for _, depth in _containers(ckpt)):
        raise SelfSupError(f"checkpoint {path} is damaged: it nests containers over {MAX_DEPTH} levels deep; pass a "
                           f"file written by `selfsup pretrain`, or the state dict of a network")
    if ckpt.get("config") is not None:
        _expect(path, ckpt, "config", dict)
        _check_config(path, ckpt["config"])
    pretraining_size(ckpt, path)
    return ckpt


def _containers(obj):
    """Each dict, list and tuple within ``obj`` (``obj`` too) and its depth, found without recursion (a
    container nested 100000 deep would overflow any recursive walk, such as ``json.dumps`` or ``deepcopy``)."""
    stack = [(obj, 0)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, dict):
            stack.extend((item, depth + 1) for item in (*obj.keys(), *obj.values()))
        elif isinstance(obj, (list, tuple)):
            stack.extend((item, depth + 1) for item in obj)
        else:
            continue
        yield obj, depth


def _check_config(path, config: dict) -> None:
    """A one-line error unless a checkpoint's config is as ``selfsup pretrain`` writes it: string keys, the
    method's name a string, and its section (e.g. ``simclr``) a dict."""
    if not all(isinstance(key, str) for obj, _ in _containers(config) if isinstance(obj, dict) for key in obj):
        raise SelfSupError(f"checkpoint {path} is damaged: its 'config' has keys that are not strings; pass a file "
                           f"written by `selfsup pretrain`")
    method = config.get("method")
    if method is not None and not isinstance(method, str):
        raise SelfSupError(f"checkpoint {path} is damaged: its config's 'method' is a {type(method).__name__}, not "
                           f"a str; pass a file written by `selfsup pretrain`")
    if method is not None and config.get(method) is not None and not isinstance(config[method], dict):
        raise SelfSupError(f"checkpoint {path} is damaged: its config's {method!r} is a "
                           f"{type(config[method]).__name__}, not a dict; pass a file written by `selfsup pretrain`")


def pretraining_size(ckpt: dict, path: str | Path | None = None) -> int | None:
    """The image size a checkpoint was pretrained at: its ``image_size`` (older checkpoints: its config's),
    None when it records none. A one-line error unless it is a whole number of pixels from 1 to
    ``MAX_IMAGE_SIZE`` (100000 would have an evaluation resize its images to terabytes)."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    for field, size in (("'image_size'", ckpt.get("image_size")), ("config's 'image_size'", config.get("image_size"))):
        if size is None:
            continue
        if not _whole(size, 1, MAX_IMAGE_SIZE):
            raise SelfSupError(f"{_name(path)} is damaged: its {field} is {_shown(size)}, not a whole number of "
                               f"pixels from 1 to {MAX_IMAGE_SIZE}; pass a file written by `selfsup pretrain`")
        return size
    return None


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _name(path) -> str:
    return f"checkpoint {path}" if path is not None else "the checkpoint"


def _shown(value) -> str:
    """A value of a checkpoint in a one-line error: a number or short string as written, else its type."""
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    return f"a {type(value).__name__}"


def _expect(path, ckpt: dict, key: str, kind: type) -> None:
    """A one-line error unless ``ckpt[key]`` (a field of a ``selfsup pretrain`` checkpoint) is a ``kind``."""
    if key not in ckpt or not isinstance(ckpt[key], kind):
        held = f"a {type(ckpt[key]).__name__}" if key in ckpt else "missing"
        raise SelfSupError(f"{_name(path)} is damaged: its {key!r} is {held}, not a {kind.__name__}; pass a file "
                           f"written by `selfsup pretrain`, or the state dict of a network")


def load_backbone(path: str | Path, ckpt: dict | None = None):
    """The backbone of a checkpoint, ready for evaluation (eval mode, on CPU).

    Accepts a ``selfsup pretrain`` checkpoint (which records the backbone's name)
    or a plain torchvision ResNet state dict (its depth is inferred from the keys),
    such as an official release: the heads it holds beside the ResNet (``RELEASE_HEADS``)
    are left out and said on stderr. Pass ``ckpt`` when the file is already loaded.
    """
    from selfsup.models import build_backbone

    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    name, cifar_stem, options = backbone_spec(path, ckpt)
    state = ckpt["backbone_state"] if "backbone_state" in ckpt else _without_release_heads(path, plain_state(ckpt))
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    _check_weights(path, state)
    _check_size(path, name, cifar_stem, options, state)
    backbone = build_backbone(name, cifar_stem=cifar_stem, **options)
    _check_dtypes(path, state, backbone.state_dict())
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise SelfSupError(f"checkpoint {path} does not fit backbone {name} ({first[:120]}): pass a checkpoint of that architecture") from None
    return backbone.eval()


# The heads that official releases hold beside the ResNet, by the name of their module. facebookresearch/swav's
# ResNet (src/resnet50.py; the SwAV, DeepCluster-v2 and SeLa-v2 files) has ``projection_head`` (Linear, or
# Linear, BatchNorm1d, ReLU, Linear) and ``prototypes`` (one Linear ``prototypes.weight``, or MultiPrototypes'
# ``prototypes.prototypes0.weight``, ``prototypes.prototypes1.weight``, ...); the ResNet of
# dvlab-research/JigsawClustering has ``fc_clu`` (Linear, ReLU, Linear) and ``fc_loc`` (Linear).
RELEASE_HEADS = ("projection_head", "prototypes", "fc_clu", "fc_loc")


def _check_size(path, name: str, cifar_stem: bool, options: dict, state: dict) -> None:
    """A timm backbone's options (depth, embed_dim, ...) are only type-checked (``_check_options``): before it is
    built, its parameters are counted on the meta device (nothing allocated) and a network far larger than the
    weights the file holds is refused in one line (depth=10000 in a small file would allocate hundreds of GB)."""
    from selfsup.models import build_backbone
    from selfsup.models.backbones import TIMM_PREFIX

    if not name.startswith(TIMM_PREFIX):         # selfsup's own backbones: their options are bounded already
        return
    try:
        with torch.device("meta"):
            wanted = sum(t.numel() for t in build_backbone(name, cifar_stem=cifar_stem, **options).state_dict().values())
    except Exception:                             # a model that cannot be built on the meta device: built as it is
        return
    held = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    if wanted > 2 * held + 1_000_000:
        raise SelfSupError(f"checkpoint {path} is damaged: its backbone options {options} describe {name} with "
                           f"{wanted:,} weights, but it holds {held:,}; pass a file written by `selfsup pretrain`")


def _without_release_heads(path, state: dict) -> dict:
    """``state`` without the tensors of ``RELEASE_HEADS``; how many were left out, of which heads, goes to stderr."""
    head = lambda key: str(key).split(".", 1)[0]       # noqa: E731
    left_out = Counter(head(k) for k in state if head(k) in RELEASE_HEADS)
    if left_out and os.environ.get("RANK", "0") == "0":      # once under torchrun, not once per process
        heads = ", ".join(f"{name} ({count})" for name, count in left_out.items())
        print(f"checkpoint {path}: left out {sum(left_out.values())} head tensors of its pretraining, not part of the "
              f"backbone: {heads}", file=sys.stderr)
    return {k: v for k, v in state.items() if head(k) not in RELEASE_HEADS}


def _check_weights(path, state: dict) -> None:
    """A one-line error unless every value of ``state`` is a tensor of finite numbers that holds its own
    elements: a view that repeats them (zero strides, overlapping windows) claims any size over a tiny
    storage, and the first computation on it would allocate that size."""
    for key, value in state.items():
        if not isinstance(key, str):
            raise SelfSupError(f"{_name(path)} is damaged: its weight named {_shown(key)} has a name that is not "
                               f"a string; pass a file written by `selfsup pretrain`, or the state dict of a network")
        if not isinstance(value, torch.Tensor):
            raise SelfSupError(f"{_name(path)} is damaged: its weight {key!r} is a {type(value).__name__}, not a "
                               f"tensor; pass a file written by `selfsup pretrain`, or the state dict of a network")
        if value.layout != torch.strided:
            raise SelfSupError(f"{_name(path)} is damaged: its weight {key!r} is a {value.layout} tensor, not a "
                               f"dense one; pass a file written by `selfsup pretrain`, or the state dict of a network")
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise SelfSupError(f"{_name(path)} is damaged: its weight {key!r} is a view of {value.numel()} "
                               f"elements over a storage of {value.untyped_storage().nbytes() // value.element_size()} "
                               f"(zero or overlapping strides); pass a file written by `selfsup pretrain`, or the "
                               f"state dict of a network")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SelfSupError(f"{_name(path)} holds NaN or infinite weights in {key}: the run diverged before it "
                               f"was saved; pass a checkpoint from before it diverged")


def _check_dtypes(path, state: dict, held: dict) -> None:
    """A one-line error for a weight of ``state`` that is not floating point (complex, integer) where the network's
    own state ``held`` has floats: ``load_state_dict`` would cast it, dropping imaginary parts or fractions."""
    for key, value in state.items():
        own = held.get(key)
        if isinstance(value, torch.Tensor) and isinstance(own, torch.Tensor) and own.is_floating_point() \
                and not value.is_floating_point():
            raise SelfSupError(f"{_name(path)} is damaged: its weight {key!r} holds {str(value.dtype)[6:]} values "
                               f"where the network has floating point ones; pass a file written by `selfsup "
                               f"pretrain`, or the state dict of a network")


def load_timm_weights(path: str | Path, ckpt: dict, name: str, options: dict):
    """Backbone ``name`` (``timm:MODEL``, built with ``options``) holding the weights of timm's own state dict
    (``timm.create_model(MODEL).state_dict()``, bare or under ``state_dict``, as ``selfsup export --format timm``
    writes it). The weights must load strictly into timm's model, its classifier aside (the backbone has none)."""
    from selfsup.export import _timm_key          # the key mapping of --format timm, undone
    from selfsup.models import build_backbone
    from selfsup.models.timm_backbone import import_timm

    model = name.split(":", 1)[1]
    timm = import_timm(model)
    state = plain_state(ckpt)
    if not isinstance(state, dict) or not state:
        raise SelfSupError(f"checkpoint {path} is neither a selfsup checkpoint nor a timm state dict: pass a file "
                           f"written by `selfsup pretrain`, or timm.create_model({model!r}).state_dict()")
    _check_weights(path, state)
    backbone = build_backbone(name, **options)
    kwargs = {k: v for k, v in options.items() if k != "input"}
    kwargs["in_chans"] = 1 if options.get("input") == "L" else 3
    try:
        reference = timm.create_model(model, pretrained=False, **kwargs)
    except TypeError:                               # a convnet: no img_size
        reference = timm.create_model(model, pretrained=False, **{k: v for k, v in kwargs.items() if k != "img_size"})
    head = reference.pretrained_cfg.get("classifier") or "fc"
    is_head = lambda key: key == head or key.startswith(f"{head}.")        # noqa: E731
    _check_dtypes(path, state, reference.state_dict())
    try:
        missing, unexpected = reference.load_state_dict({k: v for k, v in state.items() if not is_head(k)}, strict=False)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))[:160]
        raise SelfSupError(f"checkpoint {path} does not fit timm model {model} ({first}): pass weights of that "
                           f"model") from None
    missing = [k for k in missing if not is_head(k)]
    if missing or unexpected:
        raise SelfSupError(f"checkpoint {path} does not fit timm model {model}: {len(missing)} missing key(s) "
                           f"{missing[:3]}, {len(unexpected)} unexpected {list(unexpected)[:3]}; pass "
                           f"timm.create_model({model!r}).state_dict() of that model")
    loaded = reference.state_dict()
    net = getattr(backbone, "net", backbone)      # inside LChannel / TileNorm
    mapped = {}
    for key in net.state_dict():
        target = _timm_key(key[len("model."):], loaded)
        if target is None:
            raise SelfSupError(f"timm model {model} has no weight for selfsup's {key}: export the backbone with "
                               f"--format safetensors instead, and start from that run's checkpoint")
        mapped[key] = loaded[target]
    net.load_state_dict(mapped)
    return backbone


def backbone_spec(path: str | Path, ckpt: dict) -> tuple[str, bool, dict]:
    """(name, cifar_stem, options) of the backbone a checkpoint holds: recorded by ``selfsup
    pretrain``, inferred from the keys of a torchvision ResNet state dict."""
    if "backbone_state" in ckpt:
        _expect(path, ckpt, "backbone", str)
        _expect(path, ckpt, "backbone_state", dict)
        for key, kind in (("backbone_options", dict), ("cifar_stem", bool)):
            if ckpt.get(key) is not None:
                _expect(path, ckpt, key, kind)
        options = dict(ckpt.get("backbone_options") or {})
        _check_options(path, ckpt["backbone"], options)
        return ckpt["backbone"], bool(ckpt.get("cifar_stem", False)), options
    return (*_guess_torchvision_resnet(plain_state(ckpt), path), {})


def _check_options(path, name: str, options: dict) -> None:
    """A one-line error unless each backbone option of a checkpoint is one its backbone takes, of a sane value
    (what ``selfsup pretrain`` records): checked before anything is built, as width=100000 would allocate
    hundreds of TB."""
    from selfsup.models.backbones import INPUTS, TIMM_PREFIX

    takes = {"input": (lambda v: isinstance(v, str) and v in INPUTS, f"one of {', '.join(INPUTS)}")}
    if name.startswith("resnet"):
        takes["last_stride"] = (lambda v: _whole(v, 1, 2), "1 or 2")
    if name == "convnet":
        takes["width"] = (lambda v: type(v) in (int, float) and 0 < v <= MAX_WIDTH,
                          f"a number above 0 and at most {MAX_WIDTH}")
    if name.startswith(TIMM_PREFIX):            # timm.create_model's arguments, e.g. depth: numbers, strings, flags
        takes["img_size"] = (lambda v: _whole(v, 1, MAX_IMAGE_SIZE), f"a whole number from 1 to {MAX_IMAGE_SIZE}")
        plain = (lambda v: v is None or isinstance(v, (bool, int, float, str)), "a number, string or flag")
        takes.update({key: plain for key in options if isinstance(key, str) and key not in takes})
    for key, value in options.items():
        if key not in takes:
            raise SelfSupError(f"checkpoint {path} is damaged: its backbone {name} takes no option {_shown(key)} "
                               f"(it takes {', '.join(takes)}); pass a file written by `selfsup pretrain`")
        valid, expected = takes[key]
        if not valid(value):
            raise SelfSupError(f"checkpoint {path} is damaged: its backbone option {key} is {_shown(value)}, not "
                               f"{expected}; pass a file written by `selfsup pretrain`")


def plain_state(ckpt: dict) -> dict:
    """The weights of a state dict file that is not a ``selfsup pretrain`` checkpoint: the dict itself, its
    ``state_dict`` (the training checkpoints of MoCo, SwAV, DeepCluster-v2 and JigClu: ``{"epoch", "state_dict",
    "optimizer", ...}``) or its ``model`` (VICReg's full checkpoint ``{"epoch", "model", "optimizer"}``), without
    the ``module.`` prefix of DDP (the official MoCo, SwAV, DeepCluster-v2, SeLa-v2, JigClu and VICReg full files
    have it); where the network is one part of a larger model (MoCo's ``encoder_q.``, VICReg's ``backbone.``,
    JigClu's ``encoder.``), that part alone."""
    state = ckpt.get("state_dict", ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt)
    if not isinstance(state, dict):
        return state
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    for part in ("encoder_q.", "backbone.", "encoder."):
        if "conv1.weight" not in state and f"{part}conv1.weight" in state:
            state = {k[len(part):]: v for k, v in state.items() if k.startswith(part)}
    return state


def load_method(ckpt: dict, backbone, path: str | Path | None = None):
    """The whole pretrained method (backbone and heads, eval mode) of a ``selfsup pretrain``
    checkpoint around ``backbone`` (from ``load_backbone``), or None for a plain state dict.
    ``path`` names the checkpoint in errors."""
    from selfsup.methods import build_method

    config = ckpt.get("config") or {}
    name = config.get("method")
    if "model" not in ckpt or not name:
        return None
    _expect(path, ckpt, "model", dict)
    _check_weights(path, {k: v for k, v in ckpt["model"].items() if not str(k).endswith("_extra_state")})  # queues
    # around a copy: building a method may change its backbone (Jigsaw runs AlexNet's conv1 at stride 2
    # on tiles), and the caller's backbone must stay exactly as the checkpoint records it
    size = pretraining_size(ckpt) or 224
    method = build_method(name, backbone=copy.deepcopy(backbone), image_size=size, **(config.get(name) or {}))
    _check_dtypes(path, ckpt["model"], method.state_dict())
    try:
        method.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise SelfSupError(f"{_name(path)} is damaged: its 'model' does not fit method {name} ({first[:120]}); pass "
                           f"a file written by `selfsup pretrain`") from None
    return method.eval()


def load_projector(ckpt: dict, backbone, path: str | Path | None = None):
    """The pretraining projector of a ``selfsup pretrain`` checkpoint (eval mode), or None when
    the checkpoint has none (a torchvision state dict, or a method without a projector)."""
    method = load_method(ckpt, backbone, path)
    return method.projector if method is not None and hasattr(method, "projector") else None


def _guess_torchvision_resnet(state: dict, path) -> tuple[str, bool]:
    if not isinstance(state, dict) or not isinstance(state.get("conv1.weight"), torch.Tensor):
        raise SelfSupError(f"checkpoint {path} is neither a selfsup checkpoint nor a ResNet state dict: pass a file written by `selfsup pretrain`")
    keys = [k for k in state if isinstance(k, str)]
    bottleneck = any(k.endswith("conv3.weight") for k in keys)
    blocks = len({k.split(".")[1] for k in keys if k.startswith("layer3.")})
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50}.get((bottleneck, blocks))
    if depth is None:
        raise SelfSupError(f"checkpoint {path} is a ResNet of unsupported depth: use resnet18, resnet34 or resnet50")
    return f"resnet{depth}", state["conv1.weight"].shape[-1] == 3
