import json
import os
import signal

import pytest
import torch

from conftest import tiny_overrides
from selfsup.config import resolve_config
from selfsup.checkpoint import load_checkpoint, save_atomic
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.methods import get_method


def make_cfg(out, **kw):
    return resolve_config(get_method("simclr"), overrides=tiny_overrides(out, **kw))


def backbone_state(path):
    return load_checkpoint(path)["backbone_state"]


def test_run_directory_contents(tmp_path):
    Trainer(make_cfg(tmp_path / "run", epochs=1)).fit()
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "last.pt").exists()
    assert any((run / "tb").iterdir())
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert len(records) == 4 and {"loss", "lr", "images_per_s"} <= set(records[0])
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_killed_after_first_epoch_resumes_exactly(tmp_path):
    """SIGTERM after epoch 1: the run saves and stops; --resume ends with the same weights."""
    Trainer(make_cfg(tmp_path / "straight")).fit()

    def kill_after_first_epoch(trainer):
        if trainer.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    assert Trainer(make_cfg(tmp_path / "cut")).fit(on_epoch_end=kill_after_first_epoch) == "interrupted"
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 1      # stopped at the next step boundary
    cfg = make_cfg(tmp_path / "cut")
    cfg.resume = True
    assert Trainer(cfg).fit() == "done"
    a, b = backbone_state(tmp_path / "straight" / "last.pt"), backbone_state(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epochs_zero_saves_initial_weights(tmp_path):
    Trainer(make_cfg(tmp_path / "r0", epochs=0)).fit()
    Trainer(make_cfg(tmp_path / "r1", epochs=0)).fit()
    a, b = backbone_state(tmp_path / "r0" / "last.pt"), backbone_state(tmp_path / "r1" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)          # same seed, same random init
    assert load_checkpoint(tmp_path / "r0" / "last.pt")["epoch"] == 0


def test_existing_run_needs_resume(tmp_path):
    Trainer(make_cfg(tmp_path / "run", epochs=0)).fit()
    with pytest.raises(SelfSupError, match="--resume"):
        Trainer(make_cfg(tmp_path / "run", epochs=0)).fit()


def test_save_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"a": 1}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError):
        save_atomic({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_training_lowers_the_loss(tmp_path):
    Trainer(make_cfg(tmp_path / "run", epochs=8, batch_size=32, data="synthetic:128?classes=4&size=16",
                     **{"optim.lr": 0.3})).fit()
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_cifar_stem_auto_follows_the_input_size(tmp_path, capsys):
    from selfsup.models.backbones import auto_cifar_stem

    assert auto_cifar_stem("resnet18", 32) and auto_cifar_stem("resnet50", 64)
    assert not auto_cifar_stem("resnet18", 96) and not auto_cifar_stem("convnet", 32)
    trainer = Trainer(make_cfg(tmp_path / "run", epochs=0, backbone="resnet18"))
    assert trainer.cfg.cifar_stem is None and trainer.cifar_stem is True
    assert "cifar_stem auto" in capsys.readouterr().out
    trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["cifar_stem"] is True     # evaluation rebuilds the same stem
    assert Trainer(make_cfg(tmp_path / "r2", epochs=0, backbone="resnet18", cifar_stem="false")).cifar_stem is False


def test_convnet_width_scales_the_channels_and_the_checkpoint_rebuilds_it(tmp_path):
    """``width`` multiplies the convnet's channels (the capacity axis); the checkpoint records it, so
    evaluation rebuilds the same network; other backbones refuse it in one line."""
    from selfsup.checkpoint import load_backbone
    from selfsup.models import build_backbone

    assert build_backbone("convnet", width=0.5).tap_dims == {"conv1": 12, "conv2": 24, "conv3": 48, "conv4": 96}
    assert build_backbone("convnet", width=2).out_dim == 384
    Trainer(make_cfg(tmp_path / "run", epochs=0, width=0.5)).fit()
    backbone = load_backbone(tmp_path / "run" / "last.pt")
    assert backbone.out_dim == 96 and torch.equal(backbone.state_dict()["blocks.0.0.weight"],
                                                  backbone_state(tmp_path / "run" / "last.pt")["blocks.0.0.weight"])
    with pytest.raises(SelfSupError, match="applies to the convnet only"):
        Trainer(make_cfg(tmp_path / "r18", epochs=0, width=2, backbone="resnet18"))
    with pytest.raises(SelfSupError, match="width=0"):
        Trainer(make_cfg(tmp_path / "zero", epochs=0, width=0))
