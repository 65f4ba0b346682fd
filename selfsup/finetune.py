"""Fine-tuning a pretrained backbone with labels: the semi-supervised and transfer protocols.

``selfsup finetune --init CKPT --data TRAIN --test-data TEST [--recipe NAME]`` trains the
``supervised`` method (a linear head on the backbone, cross-entropy) with the backbone
initialised from CKPT, a ``selfsup pretrain`` checkpoint or a torchvision ResNet state
dict, then scores the whole network (backbone and head) on TEST: top-1 and top-5. It
runs on the engine, so DDP, mixed precision and exact resume come with it; rerunning the
same command resumes the run in ``--out`` (or only re-scores it when it is finished).

Semi-supervised (SwAV Table 1, JigClu Table 3): TRAIN is a seeded per-class fraction of the
labels, ``DATA?fraction=0.01`` or ``0.1``; the backbone and the head get their own learning
rates. Transfer: TRAIN and TEST are another labelled set. Recipes (SGD, momentum 0.9, no
weight decay, batch 256, RandomResizedCrop + flip, step decay):

- ``swav-10pct`` / ``swav-1pct``: SwAV's ``eval_semisup.py`` and README: trunk lr 0.01 / 0.02,
  head lr 0.2 / 5, 20 epochs, lr x 0.2 at epochs 12 and 16;
- ``jigclu-10pct`` / ``jigclu-1pct``: JigClu's README (METHODS.md 1.4): the same learning
  rates, steps x 0.1 at epochs 30, 60 and 90; 100 epochs [A] (the length is not given).

The recipes are ImageNet's: on a small subset an epoch is a few steps, so give ``--epochs``
(and ``--batch-size``) that fit it; the steps keep their share of the run (12 and 16 of 20 epochs
become 60 and 80 of 100); the result names the recipe and every change to it, and every resumption with
changed settings (``--resume-with-changes``): the epoch and step it continued from and each setting's
values before and after, e.g. ``{"epoch": 3, "step": 18, "changes": {"epochs": [3, 4], ...}}``.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from selfsup.checkpoint import backbone_spec, load_backbone, load_checkpoint, write_text_atomic
from selfsup.config import resolve_config
from selfsup.data.datasets import load_dataset
from selfsup.distributed import resolve_device
from selfsup.engine.rundir import prepare_out
from selfsup.engine.trainer import pretrain
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, eval_image_size
from selfsup.eval.features import extract_features, file_hash
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.run import class_map, labelled
from selfsup.methods import get_method
from selfsup.methods.supervised import classifier_head

_SGD = {"optim.name": "sgd", "optim.momentum": 0.9, "optim.weight_decay": 0.0, "optim.scale_lr": False,
        "optim.warmup_epochs": 0, "optim.exclude_bias_norm": False, "optim.schedule": "steps", "batch_size": 256}
RECIPES: dict[str, dict] = {
    "swav-10pct": {**_SGD, "optim.lr": 0.01, "optim.head_lr": 0.2, "epochs": 20, "optim.milestones": [12, 16],
                   "optim.gamma": 0.2},
    "swav-1pct": {**_SGD, "optim.lr": 0.02, "optim.head_lr": 5.0, "epochs": 20, "optim.milestones": [12, 16],
                  "optim.gamma": 0.2},
    "jigclu-10pct": {**_SGD, "optim.lr": 0.01, "optim.head_lr": 0.2, "epochs": 100, "optim.milestones": [30, 60, 90],
                     "optim.gamma": 0.1},
    "jigclu-1pct": {**_SGD, "optim.lr": 0.02, "optim.head_lr": 5.0, "epochs": 100, "optim.milestones": [30, 60, 90],
                    "optim.gamma": 0.1},
}


def finetune_config(init: str, data: str, recipe: str = "swav-10pct", epochs: int | None = None,
                    batch_size: int | None = None, out: str | None = None, device: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()):
    """The run config of a fine-tuning: the supervised method on ``data`` with ``init``'s backbone (its
    architecture, stem and options, its pretraining view size), the recipe, then the user's settings."""
    if recipe not in RECIPES:
        raise SelfSupError(f"unknown fine-tuning recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    at_least_one("--epochs", epochs, RECIPES[recipe]["epochs"])
    ckpt = load_checkpoint(init)
    name, _, options = backbone_spec(init, ckpt)
    size = eval_image_size(ckpt)
    settings = dict(RECIPES[recipe])
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value is not None:
            settings[key] = value
    if settings["epochs"] != RECIPES[recipe]["epochs"]:        # the steps keep their share of the run
        share = settings["epochs"] / RECIPES[recipe]["epochs"]
        settings["optim.milestones"] = [round(m * share, 4) for m in RECIPES[recipe]["optim.milestones"]]
    items = [f"{k}={json.dumps(v)}" if isinstance(v, list) else f"{k}={v}" for k, v in settings.items()]
    if size:
        items.append(f"image_size={size}")
    if "width" in options:
        items.append(f"width={options['width']}")
    flags = {"method": "supervised", "data": data, "backbone": name, "init": str(init), "out": out, "device": device}
    cfg = resolve_config(get_method("supervised"), flags=flags, overrides=items + list(overrides))
    if (Path(cfg.out) / "last.pt").exists():
        cfg.resume = True              # the same command again: continue (or re-score) the run
    return cfg


@torch.no_grad()
def score(run_checkpoint: str | Path, test_spec: str, train_spec: str, device: str = "cpu",
          batch_size: int = 256) -> dict:
    """The training-set size, top-1 and top-5 of a fine-tuned network (backbone and head of a ``supervised`` run) on ``test_spec``,
    centre view at the run's size; test classes matched to the training classes by name."""
    ckpt = load_checkpoint(run_checkpoint)
    config = ckpt.get("config") or {}
    if config.get("method") != "supervised":
        raise SelfSupError(f"{run_checkpoint} is not a fine-tuned network (method {config.get('method')!r})")
    backbone = load_backbone(run_checkpoint, ckpt)
    sup = config["supervised"]
    head = classifier_head(backbone.out_dim, sup["num_classes"], sup["head"], sup["hidden_dim"])
    head.load_state_dict({k[len("head."):]: v for k, v in ckpt["model"].items() if k.startswith("head.")})
    train = load_dataset(train_spec)
    test = labelled(load_dataset(test_spec), test_spec)
    to_train = class_map(train, test, train_spec, test_spec)
    device = resolve_device(device)
    feats, labels = extract_features(backbone, test, image_size=ckpt.get("image_size"), batch_size=batch_size,
                                     device=device)
    logits = head.eval()(feats)
    labels = labels if to_train is None else to_train[labels]
    return {"n_train": len(train), "classes": int(sup["num_classes"]),
            **{k: round(v, 4) for k, v in topk_accuracy(logits, labels).items()}}


def chance_warning(top1: float, classes: int, head_lr: float) -> str | None:
    """A one-line warning when a fine-tuned network scores at chance level (under 1.5 / classes): the run
    learned nothing, most often because the head's learning rate diverged (swav-1pct's 5.0 does on the small
    convnet: loss 190 after 7 steps, top-1 10% on CIFAR-10)."""
    if classes < 2 or top1 >= 1.5 / classes:
        return None
    return (f"top-1 {top1 * 100:.1f}% is chance level for {classes} classes: the run learned nothing; check "
            f"the training loss in metrics.jsonl and lower the head's learning rate (optim.head_lr={head_lr:g}, "
            f"e.g. optim.head_lr={head_lr / 10:g})")


def finetune(init: str, data: str, test_data: str, recipe: str = "swav-10pct", epochs: int | None = None,
             batch_size: int | None = None, out: str | None = None, device: str | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Fine-tune ``init`` on ``data`` with ``recipe``, score it on ``test_data``; the result (with the
    recipe, the changes to it and the run's checkpoint) is also written to ``OUT/finetune.json``. The test
    classes are checked against the training classes before training."""
    cfg = finetune_config(init, data, recipe, epochs, batch_size, out, device, overrides)
    class_map(load_dataset(data), labelled(load_dataset(test_data), test_data), data, test_data)
    # a rerun continues (or re-scores) the run in OUT: only if it started from these weights, not from another
    # file or from other weights that have since been written to the same --init path; the same file under
    # another spelling (absolute, relative) keeps the run's spelling (the same weights moved or copied elsewhere
    # continue with --resume-with-changes: the trainer builds the backbone from the file --init names)
    last, mark, digest = Path(cfg.out) / "last.pt", Path(cfg.out) / "init.sha1", file_hash(init)
    started = (load_checkpoint(last).get("config") or {}).get("init") if last.exists() else None
    same_file = started is not None and Path(started).resolve() == Path(init).resolve()
    if mark.exists() and mark.read_text().strip() != digest:
        if started is not None and not same_file:
            raise SelfSupError(f"{cfg.out} holds a fine-tuning of {started}, not of {init} (other weights): choose "
                               f"another --out, or remove {cfg.out} to fine-tune {init}")
        raise SelfSupError(f"{cfg.out} holds a fine-tuning of other weights than {init} holds now (the file changed "
                           f"since): choose another --out, or remove {cfg.out} to fine-tune again")
    if same_file:
        cfg.init = started
    # a new fine-tuning marks its folder; a folder holding another run is left as it is (the engine refuses it,
    # or resumes it); a refused start (a batch larger than the data, ...) leaves nothing behind
    new, created = not mark.exists() and not last.exists(), not Path(cfg.out).exists()
    if new:
        prepare_out(Path(cfg.out))           # a file as --out, an uncreatable folder: one line, before writing
        write_text_atomic(mark, digest + "\n")
    try:
        run_dir, status = pretrain(cfg)
    except SelfSupError:                     # refused before any run took the folder (no .lock: not "in use")
        if new and not last.exists() and not (Path(cfg.out) / ".lock").exists():
            mark.unlink(missing_ok=True)
            if created:                      # the folder this call made, if nothing else is in it
                with contextlib.suppress(OSError):
                    Path(cfg.out).rmdir()
        raise
    if status != "done":
        return {"status": status, "checkpoint": str(run_dir / "last.pt")}
    recipe_values = RECIPES[recipe]
    changes = {k: v for k, v in ((k, _select(cfg, k)) for k in recipe_values) if v != recipe_values[k]}
    result = {"protocol": "finetune", "recipe": recipe, "changes": changes,
              "resumed_with_changes": resumed_with_changes(run_dir), "init": str(init), "train_data": data,
              "test_data": test_data, "epochs": cfg.epochs,
              **score(run_dir / "last.pt", test_data, data, cfg.device),
              "checkpoint": str(run_dir / "last.pt")}
    head_lr = _select(cfg, "optim.head_lr")
    warning = chance_warning(result["top1"], result["classes"], cfg.optim.lr if head_lr is None else head_lr)
    if warning:
        result["warning"] = warning
        warnings.warn(warning, stacklevel=2)
    write_text_atomic(run_dir / "finetune.json", json.dumps(result, indent=1) + "\n")
    return result


def resumed_with_changes(run_dir: Path) -> list[dict]:
    """The resumptions with changed settings of the run in ``run_dir``, as the engine logged them in its
    ``metrics.jsonl`` (``metrics_records``: its own records only): [{"epoch", "step", "changes"}], oldest first."""
    from selfsup.engine.rundir import metrics_records

    return [{"epoch": r["epoch"], "step": r["step"], "changes": r["resumed_with_changes"]}
            for r in metrics_records(run_dir / "metrics.jsonl") if "resumed_with_changes" in r]


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
