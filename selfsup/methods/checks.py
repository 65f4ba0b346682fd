"""Range checks of the methods' own settings: one table (``METHOD_CHECKS``), run by ``build_method``
(the library) and by ``selfsup.config.check_config`` (the CLI and the Trainer), so each rule has one copy.

A setting outside its range is refused in one line that names the setting, its value and what it must
be, e.g. ``swav.epsilon=0 is not valid: it must be positive (...) (set swav.epsilon)``. Every setting
is also held to two generic rules (``check_number``): a number must be finite, and a temperature (any
setting whose name holds ``temperature``) positive. Rules that need the run's settings as well (SwAV's
queue against the global batch) stay with the run's checks in ``selfsup.config``.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Callable

from omegaconf import OmegaConf

from selfsup.errors import SelfSupError

# (key under the method, test of (value, the method's settings), what it must be)
Check = tuple[str, Callable[[Any, Any], bool], str]


def check_number(key: str, value) -> None:
    """Refuse a float that is inf or nan, and a temperature (a key whose last part holds
    ``temperature``) of 0 or below, naming ``key``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SelfSupError(f"{key}={value} is not valid: it must be a finite number (set {key})")
    if "temperature" in key.rpartition(".")[2] and isinstance(value, (int, float)) and value <= 0:
        raise SelfSupError(f"{key}={value} is not valid: a temperature must be positive (set {key})")


def _plain(value):
    """An OmegaConf list or mapping as plain Python (the config path hands those in)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def check_method_rules(name: str, options) -> None:
    """Run ``METHOD_CHECKS[name]`` on ``options`` (the method's Config, or its part of a run config)."""
    for key, ok, must in METHOD_CHECKS.get(name, []):
        value = _plain(getattr(options, key))
        try:
            good = ok(value, options)
        except (TypeError, ValueError):      # a list where a number goes, a number where a list goes
            good = False
        if not good:
            raise SelfSupError(f"{name}.{key}={value} is not valid: it must be {must} (set {name}.{key})")


def check_method_options(name: str, options) -> None:
    """Every check that needs only the method's own settings (``options``, its Config dataclass):
    the generic rules on each field, then the method's table."""
    if is_dataclass(options):
        for f in fields(options):
            check_number(f"{name}.{f.name}", getattr(options, f.name))
    check_method_rules(name, options)


def _scale(v) -> bool:
    return len(v) == 2 and 0 < v[0] <= v[1] <= 1


def _views(v) -> int:
    from selfsup.data.views import view_recipe
    return len(view_recipe(v, 224))       # the number of views is the same at every size


def _jigclu_overlap(v, c) -> bool:
    """A cell reaches ``ext`` of a side past each interior boundary (data/jigclu.py split_boxes): ext < 0 can
    leave a zero-area patch, and a cell that reaches 1/m past a boundary covers the whole image."""
    ext = v if c.overlap_mode == "code" else v / 2
    return 0 <= ext < 1 / c.m


def _jigclu_weights(v, c) -> bool:
    return (c.alpha if c.branches != "location" else 0) + (c.beta if c.branches != "clustering" else 0) > 0


_PROBABILITY = "a probability in [0, 1]"
_POSITIVE_INT = "at least 1"
_SCALE = "[min, max] area fractions with 0 < min <= max <= 1, e.g. [0.14, 1]"
_JOINT_EMBEDDING: list[Check] = [
    ("views", lambda v, c: _views(v) >= 2, "a recipe of 2 or more views (its loss pairs views), e.g. patch:14x2 or multicrop:2x32+4x16"),
    ("proj_dim", lambda v, c: v is None or v >= 1, _POSITIVE_INT),
]
_JOINT_VIEWS: list[Check] = [
    ("crop_min_scale", lambda v, c: v is None or 0 < v <= 1, "null (the recipe's) or an area fraction in (0, 1], e.g. 0.2"),
    ("view_size", lambda v, c: v is None or (isinstance(v, int) and v >= 1), "null (the image size) or a side in pixels, e.g. 16"),
]
_PROTOTYPES: list[Check] = [
    ("proj_dim", lambda v, c: v >= 1, _POSITIVE_INT),
    ("global_scale", lambda v, c: v is None or _scale(v), "null (the crops' official scale) or " + _SCALE),
    ("local_scale", lambda v, c: _scale(v), _SCALE.replace("[0.14, 1]", "[0.05, 0.14]")),
    ("crops_for_assign", lambda v, c: len(v) >= 1 and len(set(v)) == len(v) and min(v) >= 0,
     "a list of distinct crop numbers, e.g. [0, 1] (the two global crops)"),
    ("color_strength", lambda v, c: 0 <= v <= 2.5, "in [0, 2.5]"),
    ("blur_prob", lambda v, c: 0 <= v <= 1, _PROBABILITY),
]
_SINKHORN: list[Check] = [
    ("epsilon", lambda v, c: v > 0, "positive (Sinkhorn divides the scores by it), e.g. 0.05"),
    ("sinkhorn_iterations", lambda v, c: v >= 1, _POSITIVE_INT),
    ("freeze_prototypes_epochs", lambda v, c: v >= 0, "0 or more"),
    ("freeze_prototypes_niters", lambda v, c: v is None or v >= 0, "null (freeze_prototypes_epochs) or 0 or more"),
]
# one prototype takes every assignment: the loss is exactly 0 (ln 1) and nothing is learnt, with no collapse to warn of
_ONE_PROTOTYPE = "one prototype takes every sample: loss 0, nothing learnt"
_HEADS: Check = ("nmb_prototypes", lambda v, c: len(v) >= 1 and all(k >= 2 for k in v),
                 f"a list of one or more prototype counts of 2 or more (one head each; {_ONE_PROTOTYPE}), "
                 "e.g. [3000,3000,3000], about 10x the classes")
_JIGSAW: list[Check] = [
    ("permutations", lambda v, c: not str(v).isdigit() or int(v) >= 2, "2 or more permutations (the puzzle's classes), "
     "e.g. 100, or a set's name or file"),
    ("tile_pool", lambda v, c: v is None or v >= 1, "null (2 on alexnet, else 1) or at least 1"),
    ("tile_dim", lambda v, c: v is None or v >= 1, "null or at least 1"),
    ("hidden_dim", lambda v, c: v >= 1, _POSITIVE_INT),
    ("dropout", lambda v, c: 0 <= v < 1, "in [0, 1)"),
    ("conv1_stride", lambda v, c: v >= 1, _POSITIVE_INT),
    ("jitter_255", lambda v, c: v >= 0, "0 or more pixels"),
    ("channel_shift_255", lambda v, c: v >= 0, "0 or more pixels"),
    ("gray_prob", lambda v, c: 0 <= v <= 1, _PROBABILITY),
    ("projection_prob", lambda v, c: 0 <= v <= 1, _PROBABILITY),
    ("max_substitute", lambda v, c: 0 <= v <= 8, "in 0 .. 8 (slots of the 9 given another image's tiles; one at least stays)"),
]
# per method: (key under the method, test of (value, the method's settings), what it must be)
METHOD_CHECKS: dict[str, list[Check]] = {
    "simclr": _JOINT_EMBEDDING + _JOINT_VIEWS,
    "vicreg": _JOINT_EMBEDDING + _JOINT_VIEWS,
    "tcr": _JOINT_EMBEDDING + _JOINT_VIEWS,
    "spectral_contrastive": _JOINT_EMBEDDING + _JOINT_VIEWS,
    "byol": _JOINT_EMBEDDING + [
        ("base_momentum", lambda v, c: 0 <= v <= 1, "in [0, 1], e.g. 0.99")],
    "moco_v2": [
        ("views", lambda v, c: _views(v) == 2, "a recipe of exactly 2 views (query and key), e.g. mocov2 or patch:14"),
        ("proj_dim", lambda v, c: v >= 1, _POSITIVE_INT),
        ("queue_size", lambda v, c: v >= 1, "at least 1 (the negatives' queue), e.g. 65536"),
        ("momentum", lambda v, c: 0 <= v <= 1, "in [0, 1], e.g. 0.999")],
    "swav": _PROTOTYPES + _SINKHORN + [
        ("nmb_prototypes", lambda v, c: v >= 2, f"at least 2 ({_ONE_PROTOTYPE}), e.g. 3000 (100 at 64 px or less)"),
        # the run's checks also want it 0 or at least the global batch (selfsup.config.RUN_METHOD_CHECKS)
        ("queue_length", lambda v, c: v >= 0, "0 (no queue) or more (in total over processes), e.g. 3840"),
        ("epoch_queue_starts", lambda v, c: v >= 0, "0 or more")],
    "deepcluster_v2": _PROTOTYPES + [_HEADS, ("kmeans_iterations", lambda v, c: v >= 1, _POSITIVE_INT)],
    "sela_v2": _PROTOTYPES + _SINKHORN + [_HEADS, (
        "kmeans_iterations", lambda v, c: v == 10, "10, its default: SeLa-v2's assignments come from Sinkhorn, not "
        "k-means (drop it)")],
    "jigsaw": _JIGSAW,
    "jigsaw_pp": _JIGSAW,
    "colorization": [
        ("sigma", lambda v, c: v > 0, "positive (the soft encoding's Gaussian, in ab units), e.g. 5"),
        ("lam", lambda v, c: 0 <= v <= 1, "in [0, 1] (the mix with the uniform distribution, eq. 4), e.g. 0.5"),
        ("scale_min", lambda v, c: 0 < v <= 1, "a crop scale in (0, 1], e.g. 0.25")],
    "jigclu": [
        ("m", lambda v, c: v >= 2, "at least 2 (patches per side)"),
        ("overlap", _jigclu_overlap, "in [0, 1/m) with overlap_mode=code, [0, 2/m) with paper (0.3 in the paper): "
         "outside it a patch has no area or covers the whole image"),
        ("alpha", lambda v, c: v >= 0 and (v == 1.0 or c.branches != "location"),
         "0 or more, and left at 1 with branches=location (it weighs the clustering branch)"),
        ("beta", lambda v, c: v >= 0 and (v == 1.0 or c.branches != "clustering"),
         "0 or more, and left at 1 with branches=clustering (it weighs the location branch)"),
        ("alpha", _jigclu_weights, "positive for the branches in use (alpha: clustering, beta: location), else the "
         "loss is always 0"),
        ("proj_dim", lambda v, c: v >= 1, _POSITIVE_INT),
        ("proj_hidden_dim", lambda v, c: v >= 0, "0 (the backbone's width) or more")],
}
