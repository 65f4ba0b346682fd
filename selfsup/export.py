"""``selfsup export``: a checkpoint's backbone as a plain file other libraries load.

``export(CKPT, FORMAT, OUT)`` reads a ``selfsup pretrain`` checkpoint (or a torchvision
ResNet state dict) with ``weights_only`` loading, so nothing in it can run, takes its
backbone out of any input stage (Colorization's ``LChannel`` and Jigsaw++'s ``TileNorm``
wrap the network as ``net.``; the exported keys are the network's own) and writes it as

- ``torchvision``: a ``torch.save`` file of a plain state dict of tensors with
  torchvision's ResNet key names (``conv1.weight``, ``bn1.*``, ``layer1.*`` .. ``layer4.*``;
  no ``fc.*``): ``torchvision.models.resnet50().load_state_dict(sd, strict=False)``
  reports only ``fc.weight`` and ``fc.bias`` missing;
- ``timm``: the same file for timm, whose ResNets (``timm.create_model("resnet50")``)
  use the same module names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``); a
  ``timm:NAME`` backbone is written under the keys of ``timm.create_model(NAME)``
  (selfsup's ``model.`` and a ``features_only`` net's flattened names undone);
- ``safetensors``: the tensors in a ``.safetensors`` file (any backbone; keys as
  torchvision's for ResNets, timm's for ``timm:NAME``, else selfsup's modules), with the
  sidecar's fields as its string metadata (each as JSON text; ``format`` is ``pt``, the
  safetensors convention); needs the optional ``safetensors`` package.

Beside ``OUT`` goes ``OUT.json``, the sidecar: architecture and options, stem, input
stage, normalisation, image size, method, evaluation tap, the sha256 of the
checkpoint's config, the selfsup version and the sha256 of ``OUT``. The file is
written atomically (``save_atomic`` for ``.pt``; a temporary name and a rename for the
others), then the sidecar, likewise. See ``docs/export.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from selfsup import __version__
from selfsup.checkpoint import (_expect, backbone_spec, load_backbone, load_checkpoint, pretraining_size,
                                save_atomic, write_atomic)
from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD
from selfsup.errors import SelfSupError
from selfsup.models.backbones import InputStage, ResNet, TileNorm

FORMATS = ("torchvision", "timm", "safetensors")
TIMM_PREFIX = "timm:"        # timm:NAME backbones (selfsup.models.timm_backbone)

# What each input stage computes from the normalised RGB images selfsup's data produce,
# i.e. what the exported network itself (without the stage) must be given.
INPUT_STAGES = {
    "rgb": "the network takes the normalised RGB image as it is: (rgb - mean) / std per channel, rgb in [0, 1]",
    "L": "Colorization's L channel: the RGB in [0, 1] (un-normalised, clipped to [0, 1]) converted to CIE Lab "
         "(sRGB, D65 white, 2 degree observer; selfsup.data.color.rgb_to_lab), and the network's one input channel "
         "is L - 50 (about -50 .. 50); no mean/std normalisation reaches the network",
    "tile_norm": "Jigsaw++'s per-image standardisation (Caffe MVN across channels, then Power scale 50): the RGB "
                 "(un-normalised, not clipped) minus its mean over C x H x W, divided by (its standard deviation "
                 "over C x H x W, unbiased, + 1e-5), times 50; applied to every tile in pretraining and to the "
                 "whole image in evaluation; no mean/std normalisation reaches the network",
}
RESNET_MISSING = ["fc.weight", "fc.bias"]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_sha256(config: dict | None) -> str | None:
    """sha256 of a checkpoint's config: ``json.dumps(config, sort_keys=True, separators=(",", ":"))``
    encoded as UTF-8 (non-JSON values as ``str``); None for a checkpoint without a config."""
    if not config:
        return None
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_bytes_atomic(data: bytes, path: Path) -> None:
    """``data`` written atomically (``checkpoint.write_atomic``)."""
    write_atomic(path, lambda f: f.write(data))


def _conv_spec(conv: nn.Conv2d) -> dict:
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": list(conv.kernel_size),
            "stride": list(conv.stride), "padding": list(conv.padding), "bias": conv.bias is not None}


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)


def _resnet_fields(net: ResNet) -> dict:
    """How to build the torchvision (or timm) ResNet these weights fit: the model name and the
    statements that turn ``model = torchvision.models.NAME()`` into selfsup's network."""
    bottleneck = hasattr(net.layer1[0], "conv3")
    blocks = len(net.layer3)
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50}[(bottleneck, blocks)]
    changes = []
    c = net.conv1
    if (c.in_channels, tuple(c.kernel_size), tuple(c.stride), tuple(c.padding)) != (3, (7, 7), (2, 2), (3, 3)):
        changes.append(f"model.conv1 = nn.Conv2d({c.in_channels}, {c.out_channels}, kernel_size={c.kernel_size[0]}, "
                       f"stride={c.stride[0]}, padding={c.padding[0]}, bias=False)")
    if isinstance(net.maxpool, nn.Identity):
        changes.append("model.maxpool = nn.Identity()")
    first = net.layer4[0]
    strided = first.conv2 if bottleneck else first.conv1
    if tuple(strided.stride) != (2, 2):
        s = strided.stride[0]
        changes.append(f"model.layer4[0].{'conv2' if bottleneck else 'conv1'}.stride = ({s}, {s})")
        changes.append(f"model.layer4[0].downsample[0].stride = ({s}, {s})")
    return {"torchvision_model": f"resnet{depth}", "timm_model": f"resnet{depth}", "resnet_changes": changes,
            "missing_keys": list(RESNET_MISSING)}


def describe(ckpt: dict, backbone: nn.Module, name: str, cifar_stem: bool, options: dict, path: Path) -> dict:
    """The sidecar's fields that describe ``backbone`` (built from checkpoint ``ckpt`` by
    ``load_backbone``): all but ``format``, ``file``, ``sha256``, ``tensors`` and ``keys``, and
    the timm fields of a ``timm:NAME`` backbone."""
    net = backbone.net if isinstance(backbone, InputStage) else backbone
    input_stage = options.get("input", "rgb")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    first = _first_conv(net)
    if isinstance(net, ResNet):
        stem = {"conv1": _conv_spec(net.conv1), "maxpool": None if isinstance(net.maxpool, nn.Identity) else
                {"kernel_size": net.maxpool.kernel_size, "stride": net.maxpool.stride, "padding": net.maxpool.padding}}
    else:
        stem = {first[0]: _conv_spec(first[1])} if first else {}
    fields = {
        "architecture": {"backbone": name, "options": {k: v for k, v in options.items() if k != "input"},
                         "in_channels": first[1].in_channels if first else None, "out_dim": backbone.out_dim,
                         "taps": list(backbone.taps), "default_tap": backbone.default_tap},
        "cifar_stem": bool(cifar_stem),
        "stem": stem,
        "input_stage": {"name": input_stage, "computes": INPUT_STAGES[input_stage]},
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "applies_to": "RGB in [0, 1], per channel: (rgb - mean) / std; what selfsup's data give "
                                        "the backbone, before its input stage"},
        "image_size": pretraining_size(ckpt, path),
        "method": ckpt.get("method") or (config or {}).get("method"),
        "eval_tap": ckpt.get("eval_tap") or backbone.default_tap,
        "config_sha256": config_sha256(config),
        "selfsup_version": __version__,
        "source": {"checkpoint": path.name, "epoch": ckpt.get("epoch")},
    }
    if input_stage == "tile_norm":
        fields["input_stage"]["scale"] = TileNorm.scale
    if isinstance(net, ResNet):
        fields.update(_resnet_fields(net))
    return fields


def _timm_key(key: str, reference: dict) -> str | None:
    """The key of timm's own model for a key of selfsup's timm wrapper (``model.`` removed): the same,
    or under a ``FeatureGetterNet``'s ``model.``, or a ``features_only`` net's flattened first module
    (``stages_0.blocks`` -> ``stages.0.blocks``); None when none exists."""
    if key in reference:
        return key
    if key.startswith("model.") and key[len("model."):] in reference:
        return key[len("model."):]
    first, _, rest = key.partition(".")
    for i, ch in enumerate(first):
        if ch == "_":
            candidate = f"{first[:i]}.{first[i + 1:]}" + (f".{rest}" if rest else "")
            if candidate in reference:
                return candidate
    return None


def _timm_state(name: str, options: dict, in_channels: int, state: dict, path: Path) -> tuple[dict, dict]:
    """A ``timm:NAME`` backbone's tensors under the keys of ``timm.create_model(NAME, **timm_kwargs)``,
    and the sidecar's fields that say so (``timm_model``, ``timm_kwargs``, ``missing_keys``).
    The keys are checked against a freshly built model (no weights, nothing downloads)."""
    model_name = name[len(TIMM_PREFIX):]
    try:
        import timm
    except ImportError:
        raise SelfSupError(f"exporting backbone {name} needs timm: pip install 'selfsup[timm]'") from None
    own = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    base = {k: v for k, v in options.items() if k != "input"}
    base["in_chans"] = in_channels
    tries = [base, {k: v for k, v in base.items() if k != "img_size"},
             {**base, "num_classes": 0, "global_pool": ""}]       # a ViT built as selfsup builds it
    for kwargs in tries:
        try:
            reference = timm.create_model(model_name, pretrained=False, **kwargs).state_dict()
        except Exception:                     # timm's many argument errors: try the next set
            continue
        mapped = {}
        for key, value in own.items():
            target = _timm_key(key, reference)
            if target is None or target in mapped or reference[target].shape != value.shape:
                break
            mapped[target] = value
        else:
            missing = [k for k in reference if k not in mapped]
            return mapped, {"timm_model": model_name, "timm_kwargs": kwargs, "missing_keys": missing}
    raise SelfSupError(f"{path} holds backbone {name}, whose keys match no timm.create_model({model_name!r}) "
                       f"(timm {timm.__version__}): export it with --format safetensors and selfsup's key names")


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict as detached, contiguous CPU tensors with no shared storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


def export(checkpoint_path: str | Path, fmt: str, out_path: str | Path, force: bool = False) -> dict:
    """Write the backbone of ``checkpoint_path`` to ``out_path`` in format ``fmt`` (torchvision,
    timm or safetensors) and its sidecar to ``out_path`` + ``.json``; returns the sidecar.

    An existing output (or sidecar) is refused unless ``force``. Every bad input is a one-line
    ``SelfSupError``: an unknown format, a file that is not a checkpoint, one without a backbone,
    a non-ResNet backbone in a ResNet-only format, safetensors not installed.
    """
    if fmt not in FORMATS:
        raise SelfSupError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    checkpoint_path, out = Path(checkpoint_path), Path(out_path)
    sidecar_path = out.with_name(out.name + ".json")
    if out.exists() and out.resolve() == checkpoint_path.resolve():
        raise SelfSupError(f"--out {out} is the checkpoint itself: choose another file")
    if out.is_dir():                  # before the overwrite check: --force cannot help here
        raise SelfSupError(f"--out {out} is a folder: give a file name, e.g. {out / 'model.pt'}")
    if not force:
        for p in (out, sidecar_path):
            if p.exists():
                raise SelfSupError(f"refusing to overwrite {p}: choose another --out, or pass --force")
    if fmt == "safetensors":
        try:
            from safetensors.torch import save as save_file
        except ImportError:
            raise SelfSupError("--format safetensors needs the safetensors package: pip install 'selfsup[export]'") from None

    ckpt = load_checkpoint(checkpoint_path)
    for key, kind in (("method", str), ("eval_tap", str), ("epoch", int)):       # the sidecar's JSON holds them
        if ckpt.get(key) is not None:
            _expect(checkpoint_path, ckpt, key, kind)
    name, cifar_stem, options = backbone_spec(checkpoint_path, ckpt)
    backbone = load_backbone(checkpoint_path, ckpt)
    net = backbone.net if isinstance(backbone, InputStage) else backbone       # drop the ``net.`` prefix
    is_timm = name.startswith(TIMM_PREFIX)
    fits = isinstance(net, ResNet) or (fmt == "timm" and is_timm)
    if fmt in ("torchvision", "timm") and not fits:
        held = "torchvision-style ResNets and timm models" if fmt == "timm" else "torchvision-style ResNets"
        other = "--format timm or --format safetensors" if is_timm else "--format safetensors"
        raise SelfSupError(f"--format {fmt} holds {held} only, and {checkpoint_path} holds a {name} backbone: "
                           f"export it with {other}")
    fields = describe(ckpt, backbone, name, cifar_stem, options, checkpoint_path)
    state = _state(net)
    if is_timm:                      # timm's own key names, in every format: what timm's files hold
        state, timm_fields = _timm_state(name, options, fields["architecture"]["in_channels"] or 3, state,
                                         checkpoint_path)
        fields.update(timm_fields)
    fields["keys"] = "torchvision" if isinstance(net, ResNet) else "timm" if is_timm else "selfsup"

    head = {"format": fmt, "file": out.name}
    if fmt == "safetensors":
        # every field as JSON text, except "format": "pt", the safetensors convention for torch tensors
        metadata = {k: json.dumps(v) for k, v in {"file": out.name, **fields}.items()}
        metadata["format"] = "pt"
        _write_bytes_atomic(save_file(state, metadata=metadata), out)
    else:
        save_atomic(state, out)
    sidecar = {**head, "sha256": _sha256_file(out), "tensors": len(state), **fields}
    _write_bytes_atomic((json.dumps(sidecar, indent=2) + "\n").encode("utf-8"), sidecar_path)
    return sidecar


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``selfsup export`` to the subcommands ``sub`` (what ``add_subparsers`` returned)."""
    p = sub.add_parser("export", help="write a checkpoint's backbone for torchvision, timm or safetensors",
                       description="Write the backbone of CKPT as a plain state dict (torchvision's ResNet key names, "
                                   "no fc; timm's keys for timm:NAME backbones) in --out, and beside it --out.json: "
                                   "architecture, stem, input stage, normalisation, method, evaluation tap, config "
                                   "hash, file sha256. The checkpoint is read with weights_only loading: nothing in "
                                   "it runs. See docs/export.md.")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a .pt file from `selfsup pretrain` (or a torchvision ResNet state dict)")
    p.add_argument("--format", required=True, metavar="{" + ",".join(FORMATS) + "}",
                   help="torchvision: a torch.save state dict of a ResNet; timm: the same, or a timm:NAME backbone "
                        "under timm's keys; safetensors: any backbone, with the sidecar as metadata (the export "
                        "extra)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. model.pt or model.safetensors")
    p.add_argument("--force", action="store_true", help="overwrite FILE and FILE.json if they exist")
    p.add_argument("--json", action="store_true", help="print the sidecar as one JSON object on the last line")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """``selfsup export``: export, then print one line (or the sidecar with ``--json``)."""
    sidecar = export(args.checkpoint, args.format, args.out, force=args.force)
    if args.json:
        print(json.dumps(sidecar))
    else:
        arch = sidecar["architecture"]
        stem = ", CIFAR stem" if sidecar["cifar_stem"] else ""
        print(f"exported {arch['backbone']}{stem} (input {sidecar['input_stage']['name']}, method "
              f"{sidecar['method'] or 'unknown'}) as {args.format}: {args.out} ({sidecar['tensors']} tensors, sha256 "
              f"{sidecar['sha256'][:12]}), sidecar {args.out}.json")
    return 0
