"""Any installed timm model as a backbone: ``build_backbone("timm:NAME")``, ``--backbone timm:NAME``.

timm is an optional extra (``pip install 'selfsup[timm]'``), imported only when a ``timm:`` name
is built. Models are always created with ``pretrained=False``: nothing downloads; pretrained
weights come in through ``--init`` like any checkpoint. Two kinds of models, two kinds of taps:

- Convnets and hierarchical models (everything timm builds with ``features_only``; resnet*,
  mobilenetv3_*, efficientnet_*, convnext_*, ...): taps ``stage1 .. stageN``, the feature maps
  timm's ``feature_info`` lists, in its order (``tap_modules`` names timm's module of each, and
  ``tap_strides`` its reduction; a timm ResNet: ``stage1`` = act1 at stride 2, ``stage2 .. stage5``
  = layer1 .. layer4 at strides 4 .. 32). The default tap is the last stage.
- Plain vision transformers (one grid of patch tokens: vit_*, deit_*, eva*, ...): taps
  ``block{i}``, the tokens after the i-th block (counted from 1) for i at 1/4, 1/2 and 3/4 of the
  depth (``block3, block6, block9`` on a 12-block ViT), and ``norm``, the last block's tokens after
  the model's final norm (the default tap). The class, distillation and register tokens are
  dropped and the patch tokens reshaped to B x C x H/p x W/p (p the patch size). The model is built
  without its classifier and with ``dynamic_img_size``: the position embeddings are resampled to the
  input's grid, so one state dict serves every image size (a ViT/16 gives a 2 x 2 grid at 32 px,
  14 x 14 at 224 px), and a side that is not a multiple of the patch is zero-padded to the next one
  (``dynamic_img_pad``). ``img_size`` sets the grid of the stored position embeddings (timm's
  default: the model's native size).

``forward`` is the default tap globally average-pooled (the mean patch token of a ViT). The
state dict's keys are timm's own under ``model.``, stable across builds.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from selfsup.errors import SelfSupError
from selfsup.models.backbones import Backbone

PREFIX = "timm:"
EXTRA = "pip install 'selfsup[timm]'"


def import_timm(name: str):
    """The timm module, or a one-line error naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise SelfSupError(f"backbone {PREFIX}{name} needs timm: {EXTRA}") from None
    return timm


def _is_token_model(model: nn.Module) -> bool:
    """A plain ViT: patch tokens on one grid after prefix tokens, blocks, ``forward_intermediates``."""
    return (hasattr(model, "patch_embed") and isinstance(getattr(model, "blocks", None), nn.Sequential)
            and isinstance(getattr(model, "num_prefix_tokens", None), int) and hasattr(model, "forward_intermediates"))


def block_taps(depth: int) -> list[int]:
    """The blocks (counted from 1) whose tokens are taps: 1/4, 1/2 and 3/4 of the depth."""
    return sorted({max(1, (depth * k + 2) // 4) for k in (1, 2, 3)})


class TimmBackbone(Backbone):
    """timm model ``name`` with named taps (see the module docstring: ``stage1 .. stageN`` for
    convnets, ``block{i} .. norm`` for ViTs). ``in_channels=1`` builds it with one input channel
    (timm's ``in_chans``; Colorization's L). ``img_size`` sets a ViT's stored position-embedding
    grid (and the input size of models that fix one, e.g. Swin; convnets take any size and ignore
    it); ``kwargs`` go to ``timm.create_model`` (e.g. ``depth``, ``embed_dim``, ``drop_path_rate``).
    timm models keep their own stem: ``cifar_stem=True`` is refused."""

    def __init__(self, name: str, cifar_stem: bool = False, in_channels: int = 3, img_size: int | None = None,
                 **kwargs):
        super().__init__()
        if cifar_stem:
            raise SelfSupError(f"backbone {PREFIX}{name} has timm's own stem, there is no CIFAR stem: drop cifar_stem "
                               f"(auto leaves it off for timm models)")
        timm = import_timm(name)
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
            raise SelfSupError(f"timm has no model {name!r} (timm {timm.__version__}): {hint}")
        self.name = name
        model = self._create_token_model(timm, name, in_channels, img_size, kwargs)
        if model is not None:
            self.kind = "vit"
            self.model = model
            depth, dim = len(model.blocks), getattr(model, "embed_dim", None) or model.num_features
            patch = model.patch_embed.patch_size
            self.block_index = {f"block{i}": i - 1 for i in block_taps(depth)}
            self.taps = (*self.block_index, "norm")
            self.tap_dims = {t: dim for t in self.taps}
            self.tap_modules = {t: f"blocks.{i}" for t, i in self.block_index.items()}
            self.tap_modules["norm"] = self._final_norm_name()
            self.tap_strides = {t: patch[0] if isinstance(patch, (tuple, list)) else patch for t in self.taps}
        else:
            self.kind = "features"
            try:
                self.model = self._create_feature_model(timm, name, in_channels, img_size, kwargs)
            except (RuntimeError, AssertionError, NotImplementedError, AttributeError) as exc:
                why = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
                raise SelfSupError(f"timm model {name} gives neither feature maps (features_only: {why}) nor a grid "
                                   f"of patch tokens: pick a convnet or a plain ViT") from None
            info = self.model.feature_info
            self.taps = tuple(f"stage{i + 1}" for i in range(len(info)))
            self.tap_dims = dict(zip(self.taps, info.channels()))
            self.tap_modules = dict(zip(self.taps, info.module_name()))
            self.tap_strides = dict(zip(self.taps, info.reduction()))

    @staticmethod
    def _create_token_model(timm, name: str, in_channels: int, img_size: int | None, kwargs: dict):
        """The model as a ViT without classifier or attention pooling, resampling its position embeddings to
        any input size; None when ``name`` is not a plain ViT (it then takes no such arguments)."""
        vit_args = dict(num_classes=0, dynamic_img_size=True, dynamic_img_pad=True)
        if img_size is not None:
            vit_args["img_size"] = img_size
        try:
            model = timm.create_model(name, pretrained=False, in_chans=in_channels, **vit_args, **kwargs)
        except TypeError:                     # a convnet: no dynamic_img_size or img_size
            return None
        if not _is_token_model(model):
            return None
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool = None            # attention pooling of the classifier: the taps never use it
        return model

    @staticmethod
    def _create_feature_model(timm, name: str, in_channels: int, img_size: int | None, kwargs: dict):
        """The model with ``features_only``; at ``img_size`` where the model takes one (a Swin's
        window grid), else at any size."""
        args = dict(pretrained=False, features_only=True, in_chans=in_channels, **kwargs)
        if img_size is not None:
            try:
                return timm.create_model(name, img_size=img_size, **args)
            except TypeError:                 # a convnet: any input size, no img_size argument
                pass
        return timm.create_model(name, **args)

    def _final_norm_name(self) -> str:
        """timm's module of the final norm: ``norm``, or ``fc_norm`` where the model normalises after pooling."""
        norm, fc_norm = getattr(self.model, "norm", None), getattr(self.model, "fc_norm", None)
        if isinstance(norm, nn.Identity) and fc_norm is not None and not isinstance(fc_norm, nn.Identity):
            return "fc_norm"
        return "norm"

    def forward_taps(self, x: torch.Tensor, taps: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        taps = self.check_taps(taps)
        if self.kind == "features":
            return {t: m for t, m in zip(self.taps, self.model(x)) if t in taps}
        last = len(self.model.blocks) - 1
        indices = sorted({self.block_index[t] for t in taps if t != "norm"} | ({last} if "norm" in taps else set()))
        if "norm" in taps:
            final, maps = self.model.forward_intermediates(x, indices=indices, norm=False, output_fmt="NCHW")
        else:
            final, maps = None, self.model.forward_intermediates(x, indices=indices, norm=False, output_fmt="NCHW",
                                                                 stop_early=True, intermediates_only=True)
        by_index = dict(zip(indices, maps))
        out = {t: by_index[self.block_index[t]] for t in taps if t != "norm"}
        if final is not None:
            if self.tap_modules["norm"] == "fc_norm":
                final = self.model.fc_norm(final)
            b, c, h, w = by_index[last].shape
            out["norm"] = final[:, self.model.num_prefix_tokens:].transpose(1, 2).reshape(b, c, h, w)
        return {t: out[t] for t in taps}

    def extra_repr(self) -> str:
        return f"{PREFIX}{self.name}, taps {', '.join(self.taps)}"
