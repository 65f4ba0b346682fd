"""Sweeps: ``selfsup sweep FILE.yaml``, a grid of pretraining runs, each evaluated, then tabulated and plotted.

Goyal et al. 2019 study three axes: data size (the fraction of the pretraining set), model capacity
(the network) and problem complexity (|P| of Jigsaw, K of Colorization), and plot a metric against each
axis on a log x axis, one line per network or layer (their Figs. 1-3). A sweep file names the runs:

    name: jigsaw_permutations
    base:                        # settings of every cell: any `selfsup pretrain` key (dotted or nested)
      config: jigsaw_cifar10     # optional: a shipped config's name or a YAML file, as `--config` takes it;
                                 # the other keys and the grid's values override it (method: may be left out)
      method: jigsaw
      backbone: convnet
      epochs: 2
      data: "cifar10-train-jpg.tar?val_per_class=500&part=train"
    grid:                        # the axes: every combination is a cell
      jigsaw.permutations: [100, 701, 2000]
      width: [0.5, 1, 2]         # data.OPTION sets an option of the data spec, e.g. data.fraction: [0.1, 1]
    zip: [[data.fraction, epochs]]   # optional: axes whose values go together, i-th with i-th (e.g. equal steps:
                                     # fraction 0.1, 0.3, 1 with epochs 20, 7, 2), not every combination
                                     # (config can be an axis too: zip: [[backbone, config]] with
                                     # config: [jigsaw_alexnet_imagenet, jigsaw_imagenet])
    evals:                       # run on each cell's checkpoint; other keys: options of the protocol's evaluation
      - {protocol: knn, train_data: SPEC, test_data: SPEC, taps: [conv3, conv4]}
      - {protocol: svm, train_data: "voc07:DIR?split=trainval", test_data: "voc07:DIR?split=test"}
      - {name: goyal, protocol: linear, preset: goyal, train_data: SPEC, test_data: SPEC}   # a row per tap
    plot: {x: jigsaw.permutations, lines: [width, tap]}    # default: the first axis; the others and the tap

Each cell resolves exactly as ``selfsup pretrain METHOD [--config CONFIG] key=value ...`` with the base's and the
cell's settings as the key=value overrides (``resolve_cell``); a config of another method than the cell's, and a
value given twice in an axis (compared by value: 1 and 1.0 are one cell), are refused when the file is read. ``selfsup sweep FILE key=value ...`` overrides the base's settings: ``data=PATH``
moves the data (the base's spec and every eval spec on the same path get PATH, each keeping its own
options; ``data=PATH?OPTIONS`` sets the base's spec whole) and ``eval_data=PATH`` the evals' one other path
(the VOC07 folder of the ImageNet sweeps), so a shipped sweep runs from any directory.

Every eval's settings are checked when the file is read, before any cell trains, by the checks its
evaluation runs (k, temperature, probe epochs and lr, pool, SVM costs, jobs and solver, ...), and its
``taps``/``tap`` against each cell's backbone where that is a registered one (not a timm model or an
``init`` checkpoint's); a refusal names the file, the eval's label and the setting.

Each cell pretrains in ``OUT/cells/NAME`` and keeps its evaluations in ``evals.json`` there, each with the
content hash of the checkpoint it scored, so a rerun skips what is finished, resumes an interrupted run
exactly, and evaluates again a cell whose checkpoint changed (resumed to more epochs, retrained). A cell
whose settings changed is refused, as ``selfsup pretrain`` refuses a resume with other settings, unless
``resume_with_changes=true`` follows the sweep file.
``evals.json`` and ``cell.json`` are written atomically; an ``evals.json`` that does not read is said on
stderr and its evals run again. Each eval is labelled by its ``name``, else its protocol (numbered, knn-1
and knn-2, where two evals share one). The sweep writes ``results.csv`` (one row per cell, eval and tap, with
the eval's label), ``results.md`` (a table per eval and metric, cells by rows) and one log-x plot per eval and
metric (``LABEL_METRIC_vs_X.png``).
``--parallel N`` runs N cells at once, in processes sharing the cores; SIGTERM or Ctrl-C to the sweep stops
them too (a training cell saves its checkpoint first, as ``selfsup pretrain`` does), and on Linux they end
when the sweep is killed, so a rerun resumes every cell.
Each cell records its wall time and the part spent outside its training and evaluations (the
sweep's own overhead).
"""
from __future__ import annotations

import contextlib
import csv
import inspect
import io
import itertools
import json
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from selfsup.checkpoint import write_text_atomic
from selfsup.config import find_config, flatten
from selfsup.errors import SelfSupError

PROTOCOLS = ("knn", "linear", "svm")
FILE_KEYS = {"name", "out", "base", "grid", "zip", "evals", "plot"}


class _AliasFound(Exception):
    pass


class _PlainLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: a file of a few lines of nested ``*name`` references expands
    exponentially when the sweep walks its settings (a "billion laughs"), and a sweep file needs none."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A sweep file (a path, or the name of a shipped sweep), checked: a grid of non-empty lists, configs of
    the cells' method and evaluations of a known protocol. ``overrides``: ``key=value`` settings over the
    base (``apply_overrides``)."""
    given, path = str(path), find_config(str(path), "sweeps", "sweep file")
    try:
        spec = yaml.load(Path(path).read_text(), Loader=_PlainLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise SelfSupError(f"cannot read sweep file {path}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise SelfSupError(f"cannot read sweep file {path}: it is nested too deeply for a sweep") from None
    except _AliasFound as exc:
        raise SelfSupError(f"sweep file {path} line {exc.args[0]}: YAML aliases (*name) are not read in sweep "
                           f"files (a few nested ones can expand to gigabytes): write the values out") from None
    if not isinstance(spec, dict):
        raise SelfSupError(f"sweep file {path} must be a mapping with base, grid and evals")
    unknown = sorted(set(spec) - FILE_KEYS)
    if unknown:
        raise SelfSupError(f"unknown key {unknown[0]!r} in sweep file {path}: use {', '.join(sorted(FILE_KEYS))}")
    base = flatten(spec.get("base") or {})
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise SelfSupError(f"sweep file {path}: grid must map each axis to a non-empty list, e.g. width: [0.5, 1, 2]")
    for axis, values in grid.items():
        for i, v in enumerate(values):
            if v in values[:i]:                     # by value: 1 and 1.0 are one cell (one row, one folder)
                raise SelfSupError(f"sweep file {path}: grid axis {axis} lists {v!r} twice (as "
                                   f"{values[values.index(v)]!r} and {v!r}): give each value once")
    if "data" not in base or not ({"method", "config"} & (set(base) | set(grid))):
        raise SelfSupError(f"sweep file {path}: base needs data, and method or a config that names it")
    zipped = _zip_groups(spec.get("zip"), grid, path)
    evals = spec.get("evals") or []
    if not isinstance(evals, list):
        raise SelfSupError(f"sweep file {path}: evals must be a list of evaluations")
    for e in evals:
        if not isinstance(e, dict) or e.get("protocol") not in PROTOCOLS or not {"train_data", "test_data"} <= set(e):
            raise SelfSupError(f"sweep file {path}: each eval needs protocol ({', '.join(PROTOCOLS)}), train_data "
                               f"and test_data, got {e!r}")
        if isinstance(e.get("taps"), str):          # taps: conv3, one tap written without a list
            e["taps"] = [e["taps"]]
        _check_eval_keys(e, path)
    labels = eval_labels(evals, path)
    for e, label in zip(evals, labels):
        _check_eval_values(e, label, path)
    name = spec.get("name") or Path(path).stem
    plot = spec.get("plot") or {}
    axes = list(grid)
    x = plot.get("x", axes[0])
    if x not in grid:
        raise SelfSupError(f"sweep file {path}: plot.x {x!r} is not an axis of the grid ({', '.join(axes)})")
    with_x = next((g for g in zipped if x in g), [x])          # axes that move with x draw no lines of their own
    lines = plot.get("lines", [a for a in axes if a not in with_x] + ["tap"])
    lines = [lines] if isinstance(lines, str) else list(lines)
    spec = {"name": name, "out": spec.get("out") or f"runs/sweeps/{name}", "base": base, "grid": grid,
            "zip": zipped, "evals": evals, "labels": labels, "x": x, "lines": lines, "file": str(path),
            "given": given}
    apply_overrides(spec, overrides or [])
    for cell in cells(spec):
        _cell_method(spec, cell)                    # a config of another method is refused here, in one line
    _check_eval_taps(spec, path)
    return spec


def apply_overrides(spec: dict, overrides: list[str]) -> None:
    """``key=value`` settings over the sweep's base (``selfsup sweep FILE key=value ...``; the value read as
    YAML, as ``selfsup pretrain`` reads an override). ``data=PATH`` moves the data: the base's spec and every
    eval's train_data / test_data on the base's path get PATH in its place, each keeping its options
    (``?val_per_class=500&part=val``); ``data=PATH?OPTIONS`` sets the base's spec whole (the evals still
    only move). A grid axis is refused (the grid sets it per cell)."""
    where = f"sweep {spec['name']}"
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SelfSupError(f"cannot parse sweep override {item!r}: write key=value, e.g. "
                               f"data=/path/to/cifar10-train-jpg.tar or epochs=1")
        if key in spec["grid"]:
            raise SelfSupError(f"{where}: {key}={text} sets an axis of its grid, which gives each cell its own "
                               f"{key}: copy {spec['file']} and edit its grid")
        if key.startswith("data."):
            raise SelfSupError(f"{where}: {key}={text}: give a data option in the spec, data=PATH?{key[5:]}={text}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if key == "eval_data":
            _move_eval_data(spec, text)
            continue
        if key != "data":
            spec["base"][key] = text if value is None else value
            continue
        old = str(spec["base"]["data"])
        old_path, new_path, has_options = old.partition("?")[0], text.partition("?")[0], "?" in text
        spec["base"]["data"] = text if has_options else new_path + old[len(old_path):]
        _move_paths(spec, old_path, new_path)


def _move_paths(spec: dict, old_path: str, new_path: str) -> None:
    """Every eval's train_data / test_data on ``old_path`` gets ``new_path``, keeping its options."""
    for entry in spec["evals"]:
        for k in ("train_data", "test_data"):
            given = str(entry[k])
            if _data_path(given) == old_path:            # the path sits between its format: and its ?options
                start = len(given.partition("?")[0]) - len(old_path)
                entry[k] = given[:start] + new_path + given[start + len(old_path):]


def _move_eval_data(spec: dict, new_path: str) -> None:
    """``eval_data=PATH``: the evals' one data path other than the base's (a shipped ImageNet sweep's VOC07
    folder, ``voc07:VOCdevkit?split=...``) moves to PATH, each spec keeping its format and options."""
    base_path = _data_path(spec["base"]["data"])
    others = sorted({p for e in spec["evals"] for k in ("train_data", "test_data")
                     if (p := _data_path(e[k])) is not None and p != base_path})
    where = f"sweep {spec['name']}: eval_data={new_path}"
    if "?" in new_path:
        raise SelfSupError(f"{where}: give the path alone (each eval keeps its own options), "
                           f"e.g. eval_data=/data/VOCdevkit")
    if len(others) != 1:
        found = f"{len(others)} ({', '.join(others)})" if others else "none"
        raise SelfSupError(f"{where} moves the evals' one data path other than the base's; {spec['file']} has "
                           f"{found}: copy it and set each eval's train_data / test_data")
    _move_paths(spec, others[0], new_path)


def _data_path(data: str) -> str | None:
    """The local path a data spec reads (None: synthetic data, shards, or a spec that does not parse)."""
    from selfsup.data.datasets import parse_spec

    try:
        fmt, body, _ = parse_spec(str(data))
    except SelfSupError:
        return None
    return None if fmt in ("shards", "synthetic") else body


def check_data_paths(spec: dict) -> None:
    """Refuse, before any cell trains, a base or eval data path that does not exist, in one line naming the
    directory a relative path is read from and the fix (``data=PATH``, which the evals on that path follow)."""
    cwd = Path.cwd()
    base_path = _data_path(spec["base"]["data"])
    checks = [("its data", base_path)] + [(f"eval {label}'s {k}", _data_path(e[k]))
                                          for e, label in zip(spec["evals"], spec["labels"])
                                          for k in ("train_data", "test_data")]
    for what, data_path in checks:
        if data_path is None or Path(data_path).expanduser().exists():
            continue
        relative = "" if Path(data_path).expanduser().is_absolute() else f" (relative to the working directory {cwd})"
        if data_path == base_path:
            command = f"selfsup sweep {spec.get('given', spec['name'])} data=/path/to/{Path(data_path).name}"
            fix = (f"pass the dataset's location, `{command}` (the evals on the same path follow it), or run from "
                   f"a directory where {data_path} exists")
        elif len({p for _, p in checks[1:] if p is not None and p != base_path}) == 1:   # eval_data= moves it
            command = f"selfsup sweep {spec.get('given', spec['name'])} eval_data=/path/to/{Path(data_path).name}"
            fix = (f"pass its location, `{command}` (every eval on that path follows), or run from a directory "
                   f"where {data_path} exists")
        else:
            fix = f"run from a directory where {data_path} exists, or copy {spec['file']} and set the evals' paths"
        raise SelfSupError(f"sweep {spec['name']}: {what} path {data_path} does not exist{relative}: {fix}")


SWEEP_EVAL_KEYS = ("name", "protocol", "train_data", "test_data", "taps", "tap")   # read by the sweep itself


def _eval_options(protocol: str) -> list[str]:
    """The options an eval entry may pass on: the parameters of the evaluate function of its protocol."""
    if protocol == "svm":
        from selfsup.eval.suite import evaluate_svm as fn
    else:
        from selfsup.eval.run import evaluate as fn
    own = ("protocol", "checkpoint", "train_spec", "test_spec", "taps", "tap")
    return [p for p in inspect.signature(fn).parameters if p not in own]


def _check_eval_keys(entry: dict, path) -> None:
    """Refuse an eval key its protocol's evaluate function does not take, and an unknown linear preset,
    when the sweep file is read (before any cell trains)."""
    options = _eval_options(entry["protocol"])
    for key in entry:
        if key not in SWEEP_EVAL_KEYS and key not in options:
            raise SelfSupError(f"sweep file {path}: unknown key {key!r} in the {entry['protocol']} eval: use "
                               f"{', '.join(list(SWEEP_EVAL_KEYS) + options)}")
    if entry["protocol"] == "linear" and entry.get("preset") is not None:
        from selfsup.eval.linear import get_preset

        get_preset(entry["preset"])


def _check_eval_values(entry: dict, label: str, path) -> None:
    """Refuse, when the sweep file is read, an eval setting its evaluation would refuse after the first
    cell has trained: the same checks, run before anything is read (``evaluation_settings``,
    ``check_svm_settings``)."""
    from selfsup.eval.linear import get_preset

    if entry["protocol"] == "svm":
        from selfsup.eval.suite import check_svm_settings as check
    else:
        from selfsup.eval.run import evaluation_settings as check
    accepted = inspect.signature(check).parameters
    kw = {k: v for k, v in entry.items() if k in accepted and k not in SWEEP_EVAL_KEYS}
    try:
        if entry["protocol"] == "svm":
            check(**kw)
        else:                           # as _evaluate calls it: taps go to layer-wise probes, else one tap a call
            layerwise = entry["protocol"] == "linear" and get_preset(kw.get("preset") or "fast").layerwise
            check(entry["protocol"], taps=entry.get("taps") if layerwise else None, **kw)
    except SelfSupError as exc:
        raise SelfSupError(f"sweep file {path}, eval {label}: {exc}") from None


def _cell_backbone(spec: dict, cell: dict) -> str | None:
    """The registered backbone a cell builds (its resolved config's ``backbone``), or None where its taps are
    not known before it runs: a timm model, an ``init`` checkpoint's backbone, or settings that do not
    resolve (the cell itself says why when it runs)."""
    from selfsup.models.backbones import BACKBONES

    try:
        with contextlib.redirect_stderr(io.StringIO()):     # its notes (a short run's schedule) come when it runs
            cfg = resolve_cell(spec, cell)
    except SelfSupError:
        return None
    return cfg.backbone if cfg.backbone in BACKBONES and not cfg.init else None


def _check_eval_taps(spec: dict, path) -> None:
    """Refuse a tap an eval names (``taps`` or ``tap``) that a cell's backbone lacks, with the backbone's own
    ``check_taps``, per cell (the grid may vary the backbone); ``taps: [all]`` of an svm or layer-wise linear
    eval means every tap."""
    from selfsup.eval.linear import get_preset
    from selfsup.models import build_backbone

    named = [(e, label) for e, label in zip(spec["evals"], spec["labels"]) if e.get("taps") or e.get("tap")]
    if not named:
        return
    built: dict = {}
    for cell in cells(spec):
        name = _cell_backbone(spec, cell)
        if name is None:
            continue
        if name not in built:
            built[name] = build_backbone(name)
        for e, label in named:
            key = "taps" if e.get("taps") else "tap"
            taps = list(e["taps"]) if key == "taps" else [e["tap"]]
            every = e["protocol"] == "svm" or (e["protocol"] == "linear"
                                               and get_preset(e.get("preset") or "fast").layerwise)
            if every and taps == ["all"]:
                continue
            try:
                built[name].check_taps(taps)
            except SelfSupError as exc:
                raise SelfSupError(f"sweep file {path}, eval {label} ({key}: {e[key]!r}), cell {cell_name(cell)} "
                                   f"(backbone {name}): {exc}") from None


def eval_labels(evals: list[dict], path="") -> list[str]:
    """The label of each eval in the results: its ``name``, else its protocol, numbered (knn-1, knn-2)
    where several evals share the protocol."""
    protocols = [e["protocol"] for e in evals]
    labels: list[str] = []
    for i, e in enumerate(evals):
        p = e["protocol"]
        label = str(e.get("name") or (p if protocols.count(p) == 1 else f"{p}-{protocols[:i + 1].count(p)}"))
        if label in labels:
            raise SelfSupError(f"sweep file {path}: two evals are labelled {label!r}: give each a distinct name")
        labels.append(label)
    return labels


def _zip_groups(zipped, grid: dict, path) -> list[list[str]]:
    """The ``zip`` groups of a sweep file: lists of grid axes of equal length, each axis in one group."""
    if not zipped:
        return []
    groups = [zipped] if all(isinstance(a, str) for a in zipped) else zipped
    seen: set = set()
    for g in groups:
        if not isinstance(g, list) or len(g) < 2 or any(a not in grid or a in seen for a in g):
            raise SelfSupError(f"sweep file {path}: zip must list groups of two or more grid axes, each axis "
                               f"in one group, e.g. zip: [[data.fraction, epochs]]; got {g!r}")
        if len({len(grid[a]) for a in g}) != 1:
            raise SelfSupError(f"sweep file {path}: the zipped axes {', '.join(g)} need lists of one length, got "
                               + ", ".join(str(len(grid[a])) for a in g))
        seen.update(g)
    return [list(g) for g in groups]


def cells(spec: dict) -> list[dict]:
    """Every combination of the grid's values, in file order (the last axis varies fastest); the axes
    of a ``zip`` group move together, as one axis at the place of the group's first axis."""
    zipped = spec.get("zip") or []
    units = []                                              # each unit: the axes it sets, and its list of values
    for axis in spec["grid"]:
        group = next((g for g in zipped if axis in g), None)
        if group is None:
            units.append(([axis], [(v,) for v in spec["grid"][axis]]))
        elif axis == group[0]:
            units.append((group, list(zip(*(spec["grid"][a] for a in group)))))
    out = []
    for combo in itertools.product(*(values for _, values in units)):
        cell = {a: v for (names, _), vals in zip(units, combo) for a, v in zip(names, vals)}
        out.append({a: cell[a] for a in spec["grid"]})
    return out


def cell_name(cell: dict) -> str:
    safe = lambda v: "".join(c if c.isalnum() or c in ".-" else "_" for c in str(v))   # noqa: E731
    return ",".join(f"{k}={safe(v)}" for k, v in cell.items())


def cell_settings(spec: dict, cell: dict) -> dict:
    """The pretraining settings of a cell: base, then the cell's values; ``data.OPTION`` axes become
    options of the data spec (``data.fraction: 0.1`` -> ``SPEC?...&fraction=0.1``)."""
    settings = {**spec["base"], **{k: v for k, v in cell.items() if not k.startswith("data.")}}
    options = [f"{k[len('data.'):]}={v}" for k, v in cell.items() if k.startswith("data.")]
    if options:
        data = str(settings["data"])
        settings["data"] = data + ("&" if "?" in data else "?") + "&".join(options)
    return settings


def _config_method(name: str) -> tuple[Path, str | None]:
    """A config's file (``find_config``: a shipped config's name or a YAML file) and the method it names."""
    file = find_config(str(name))
    try:
        loaded = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SelfSupError(f"cannot read config file {file}: {str(exc).splitlines()[0]}") from None
    return file, (loaded.get("method") if isinstance(loaded, dict) else None)


def _cell_method(spec: dict, cell: dict) -> tuple[str, Path | None]:
    """A cell's method and config file: its ``method``, else its config's ``method:``; a config that names
    another method is refused in one line."""
    settings = cell_settings(spec, cell)
    where = f"sweep file {spec.get('file', spec['name'])}" + (f", cell {cell_name(cell)}" if cell else "")
    file, named = (None, None)
    if settings.get("config") is not None:
        try:
            file, named = _config_method(settings["config"])
        except SelfSupError as exc:
            raise SelfSupError(f"{where}: {exc}") from None
    method = settings.get("method") or named
    if not method:
        raise SelfSupError(f"{where}: no method: set method, or name a config that has `method:`")
    if named and named != method:
        raise SelfSupError(f"{where}: config {settings['config']} is a {named} recipe (method: {named}), but the "
                           f"cell's method is {method}: name a {method} config, or drop method")
    return str(method), file


def resolve_cell(spec: dict, cell: dict, extra: list[str] | None = None, image_size_of=None):
    """The resolved run config of a cell: as ``selfsup pretrain METHOD [--config CONFIG] key=value ...`` with
    the base's and the cell's settings (``cell_settings``, less method and config) as the overrides, then
    ``extra``; its config (base or axis) is the ``--config`` layer, under them."""
    from selfsup.config import resolve_config
    from selfsup.methods import get_method

    method, file = _cell_method(spec, cell)
    settings = cell_settings(spec, cell)
    items = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in settings.items()
             if k not in ("method", "config")]
    return resolve_config(get_method(method), str(file) if file else None, flags={"method": method},
                          overrides=items + list(extra or []), image_size_of=image_size_of)


def _evaluate(entry: dict, checkpoint: str) -> list[dict]:
    """Rows (protocol, tap, metric, value) of one evaluation of a checkpoint."""
    kw = {k: v for k, v in entry.items() if k not in SWEEP_EVAL_KEYS}
    taps = entry.get("taps") or ([entry["tap"]] if entry.get("tap") else None)
    if entry["protocol"] == "svm":
        from selfsup.eval.suite import evaluate_svm

        result = evaluate_svm(checkpoint, entry["train_data"], entry["test_data"], taps=taps, **kw)
        return [{"protocol": "svm", "tap": tap, "metric": "mAP", "value": r["map"]} for tap, r in result["per_tap"].items()]
    from selfsup.eval.linear import get_preset
    from selfsup.eval.run import evaluate

    if entry["protocol"] == "linear" and get_preset(kw.get("preset") or "fast").layerwise:   # one head per tap
        result = evaluate("linear", checkpoint, entry["train_data"], entry["test_data"], taps=taps, **kw)
        return [{"protocol": "linear", "tap": tap, "metric": "top1", "value": r["top1"]}
                for tap, r in result["taps"].items()]
    rows = []
    for tap in taps or [None]:
        result = evaluate(entry["protocol"], checkpoint, entry["train_data"], entry["test_data"], tap=tap, **kw)
        rows.append({"protocol": entry["protocol"], "tap": result["tap"], "metric": "top1", "value": result["top1"]})
    return rows


def run_cell(spec: dict, cell: dict, threads: int | None = None) -> dict:
    """Pretrain one cell (resuming or skipping finished work), run its evaluations, return its record."""
    import torch

    from selfsup.data.datasets import load_dataset
    from selfsup.engine.trainer import pretrain
    from selfsup.eval.features import file_hash

    if _SWEEP_PID is not None and os.getppid() != _SWEEP_PID:    # a worker whose sweep died: no new cell
        _end_worker()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = Path(spec["out"]) / "cells" / cell_name(cell)
    cfg = resolve_cell(spec, cell, [f"out={out}", "progress=false"], image_size_of=lambda s: load_dataset(s).image_size)
    cfg.resume = (out / "last.pt").exists()
    t_train = time.perf_counter()
    try:
        _, status = pretrain(cfg)              # leaves a torchrun process group, as `selfsup pretrain` does
    except SelfSupError as exc:                # a changed cell: the trainer names pretrain's flag, not the override
        if "--resume-with-changes" not in str(exc):
            raise
        raise SelfSupError(str(exc).replace("--resume-with-changes", "resume_with_changes=true after the sweep file")
                           ) from None
    t_train = time.perf_counter() - t_train
    if status != "done":
        if _SWEEP_PID is not None:             # a worker stopped by its sweep: the checkpoint is saved, no other cell
            _end_worker()
        raise SelfSupError(f"cell {cell_name(cell)} stopped ({status}): run the sweep again to resume it")
    done_file = out / "evals.json"
    done = _read_evals(done_file)
    weights = file_hash(out / "last.pt")          # an eval of other weights (retrained, resumed further) runs again
    t_eval = 0.0
    for entry in spec["evals"]:
        key = json.dumps(entry, sort_keys=True)
        if not isinstance(done.get(key), dict) or done[key].get("checkpoint") != weights:
            t = time.perf_counter()
            done[key] = {"checkpoint": weights, "rows": _evaluate(entry, str(out / "last.pt"))}
            t_eval += time.perf_counter() - t
            _write_json(done_file, done)
    rows = [{**cell, "eval": label, **row} for e, label in zip(spec["evals"], spec["labels"])
            for row in done[json.dumps(e, sort_keys=True)]["rows"]]
    wall = time.perf_counter() - t0
    record = {"cell": cell, "rows": rows, "wall_s": round(wall, 3), "train_s": round(t_train, 3),
              "eval_s": round(t_eval, 3), "overhead_s": round(wall - t_train - t_eval, 3)}
    _write_json(out / "cell.json", record)
    return record


def _read_evals(path: Path) -> dict:
    """A cell's ``evals.json``, {eval's settings: {"checkpoint": hash of the last.pt it scored, "rows"}}; one that does not read (cut by a full disk) is said
    in one line on stderr and counts as no evaluation, so the cell's evals run again."""
    if not path.exists():
        return {}
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        done = None
    if not isinstance(done, dict):
        print(f"{path} is damaged (not readable JSON): the cell's evaluations run again", file=sys.stderr)
        return {}
    return done


def _write_json(path: Path, obj) -> None:
    """``obj`` as JSON, written atomically (a kill or a full disk keeps the previous file)."""
    write_text_atomic(path, json.dumps(obj, indent=1))


def run_sweep(path: str | Path, parallel: int = 1, out: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run every cell of the sweep file (``parallel`` at a time; ``overrides``: key=value settings over its
    base, ``data=PATH`` moving its data), then write the CSV, the markdown tables and the plots.
    Returns {"out", "records", "wall_s"}."""
    spec = load_sweep(path, overrides)
    if out:
        spec["out"] = out
    if parallel < 1:
        raise SelfSupError(f"--parallel {parallel}: run at least 1 cell at a time")
    check_data_paths(spec)
    root = Path(spec["out"])
    root.mkdir(parents=True, exist_ok=True)
    todo = cells(spec)
    t0 = time.perf_counter()
    records = [run_cell(spec, c) for c in todo] if parallel == 1 else _run_parallel(spec, todo, parallel)
    wall = time.perf_counter() - t0
    write_outputs(spec, records, root)
    summary = {"wall_s": round(wall, 1), "cells": len(records),
               "train_s": round(sum(r["train_s"] for r in records), 1),
               "eval_s": round(sum(r["eval_s"] for r in records), 1),
               "overhead_s": round(sum(r["overhead_s"] for r in records), 2)}
    _write_json(root / "sweep.json", summary)
    return {"out": str(root), "records": records, **summary}


_SWEEP_PID: int | None = None          # in a --parallel worker: the process id of its sweep


class _Stopped(Exception):
    """SIGTERM or SIGINT to a --parallel sweep."""


def _raise_stopped(signum, frame):
    raise _Stopped(signal.Signals(signum).name)


def _run_parallel(spec: dict, todo: list[dict], parallel: int) -> list[dict]:
    """``run_cell`` of each cell, ``parallel`` at a time in spawned processes sharing the cores. SIGTERM or SIGINT
    to the sweep stops its workers (a training cell saves its checkpoint first), then is said in one line."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // parallel)
    pool = ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    handlers, stopped = {}, False
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):          # not the main thread: no handler
            handlers[sig] = signal.signal(sig, _raise_stopped)
    try:
        try:
            return list(pool.map(run_cell, [spec] * len(todo), todo, [threads] * len(todo)))
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
    except _Stopped as exc:
        stopped = True
        for worker in multiprocessing.active_children():
            while worker.is_alive():                   # again each second: a signal the trainer took as it ended
                worker.terminate()
                worker.join(1)
        raise SelfSupError(f"sweep stopped ({exc}): its workers stopped, a training cell saving its checkpoint; "
                           f"run the same command again to resume") from None
    except BrokenProcessPool:
        raise SelfSupError("a worker of the sweep ended without its cell's result (killed, or out of memory?): "
                           "run the same command again to resume, with a lower --parallel if memory ran out") from None
    finally:
        pool.shutdown(cancel_futures=stopped)


def _start_worker(sweep_pid: int) -> None:
    """A --parallel worker ends with its sweep: SIGTERM (the sweep stopping it, or on Linux the sweep's death, by
    PR_SET_PDEATHSIG) ends it at once, or in a cell's training after the trainer saved its checkpoint; Ctrl-C
    is the sweep's to forward (the trainer still takes it during training)."""
    global _SWEEP_PID
    _SWEEP_PID = sweep_pid
    signal.signal(signal.SIGTERM, _end_worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG: SIGTERM when the sweep dies
    if os.getppid() != sweep_pid:                      # it died before that
        _end_worker()


def _end_worker(*_) -> None:
    """A worker's end, at once (its printed lines flushed), with the status of a SIGTERM."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signal.SIGTERM)


def write_outputs(spec: dict, records: list[dict], root: Path) -> None:
    """results.csv, and per eval and metric a table in results.md and a plot (``LABEL_METRIC_vs_X.png``)."""
    axes = list(spec["grid"])
    rows = [row for r in records for row in r["rows"]]
    columns = axes + ["eval", "protocol", "tap", "metric", "value"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(root / "results.csv", table.getvalue())
    lines = [f"# Sweep {spec['name']}", ""]
    for entry, label in zip(spec["evals"], spec["labels"]):
        for metric in dict.fromkeys(r["metric"] for r in rows if r["eval"] == label):
            group = [r for r in rows if r["eval"] == label and r["metric"] == metric]
            taps = sorted({r["tap"] for r in group}, key=str)
            lines += [f"## {label} {metric}", "", f"{entry['protocol']} trained on `{entry['train_data']}`, "
                      f"tested on `{entry['test_data']}`", "", "| " + " | ".join(axes + taps) + " |",
                      "|" + "---|" * (len(axes) + len(taps))]
            for rec in records:
                vals = {r["tap"]: r["value"] for r in group if all(r[a] == rec["cell"][a] for a in axes)}
                lines.append("| " + " | ".join([str(rec["cell"][a]) for a in axes]
                                               + [f"{vals[t] * 100:.1f}" if t in vals else "-" for t in taps]) + " |")
            lines.append("")
            safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in label)
            plot_axis(group, spec["x"], spec["lines"], f"{label} {metric}",
                      root / f"{safe}_{metric}_vs_{spec['x'].replace('.', '_')}.png")
    write_text_atomic(root / "results.md", "\n".join(lines))


def plot_axis(rows: list[dict], x: str, lines: list[str], title: str, png: Path) -> None:
    """The metric (in %) against axis ``x``, one line per combination of the ``lines`` keys."""
    from selfsup.report.plots import series_plot

    series: dict = {}
    for r in rows:
        label = ", ".join(f"{k}={r.get(k)}" for k in lines if k in r)
        series.setdefault(label, []).append((r[x], r["value"] * 100))
    series_plot(series, x, title, png)
