"""pretrain init=: the checkpoint's backbone must be what the run's method and settings need."""
import pytest
import torch

from conftest import tiny_overrides
from selfsup.config import resolve_config
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.methods import get_method


def make_cfg(method, out, **kw):
    return resolve_config(get_method(method), flags={"method": method}, overrides=tiny_overrides(out, **kw))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Initial weights of a simclr convnet run and of a simclr resnet18 run with the ImageNet stem."""
    root = tmp_path_factory.mktemp("init")
    Trainer(make_cfg("simclr", root / "conv", epochs=0)).fit()
    Trainer(make_cfg("simclr", root / "r18", epochs=0, backbone="resnet18", cifar_stem=False)).fit()
    return root


def test_init_without_the_methods_input_stage_is_refused(saved, tmp_path):
    with pytest.raises(SelfSupError, match="holds a backbone with input=rgb, but colorization needs input=L"):
        Trainer(make_cfg("colorization", tmp_path / "c", init=saved / "conv" / "last.pt"))


def test_init_of_a_method_that_needs_nothing_keeps_the_checkpoints_options(saved, tmp_path):
    Trainer(make_cfg("colorization", tmp_path / "c", epochs=0)).fit()
    trainer = Trainer(make_cfg("simclr", tmp_path / "s", init=tmp_path / "c" / "last.pt"))
    assert trainer.backbone_options == {"input": "L"}


def test_init_stem_other_than_the_one_asked_for_is_refused(saved, tmp_path):
    with pytest.raises(SelfSupError, match="has cifar_stem=False, this run sets cifar_stem=True"):
        Trainer(make_cfg("simclr", tmp_path / "s", backbone="resnet18", cifar_stem=True, init=saved / "r18" / "last.pt"))


def test_init_with_cifar_stem_auto_takes_the_checkpoints(saved, tmp_path, capsys):
    trainer = Trainer(make_cfg("simclr", tmp_path / "s", backbone="resnet18", init=saved / "r18" / "last.pt"))
    assert trainer.cifar_stem is False and trainer.backbone.conv1.kernel_size == (7, 7)
    assert "cifar_stem auto: the ImageNet stem, as in the init checkpoint" in capsys.readouterr().out
