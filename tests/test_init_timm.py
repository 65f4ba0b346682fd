"""pretrain init= with timm's own weights (a timm state dict, or selfsup export --format timm) on --backbone timm:NAME."""
import pytest
import torch

from conftest import tiny_overrides
from selfsup.checkpoint import save_atomic
from selfsup.config import resolve_config
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.export import export
from selfsup.methods import get_method

timm = pytest.importorskip("timm")


def make_cfg(out, **kw):
    return resolve_config(get_method("simclr"), flags={"method": "simclr"},
                          overrides=tiny_overrides(out, backbone="timm:resnet10t", **kw))


def same_weights(trainer, timm_state):
    own = trainer.backbone.state_dict()
    return all(torch.equal(own[f"model.{k}"], v) for k, v in timm_state.items() if not k.startswith("fc."))


@pytest.mark.parametrize("wrap", [False, True])
def test_timm_state_dict_starts_a_timm_run(tmp_path, wrap):
    sd = timm.create_model("resnet10t", pretrained=False).state_dict()
    save_atomic({"state_dict": sd} if wrap else sd, tmp_path / "t.pt")
    trainer = Trainer(make_cfg(tmp_path / "run", init=tmp_path / "t.pt"))
    assert same_weights(trainer, sd)


def test_timm_export_comes_back_with_init(tmp_path):
    Trainer(make_cfg(tmp_path / "a", epochs=0)).fit()
    export(tmp_path / "a" / "last.pt", "timm", tmp_path / "t.pt")
    sd = torch.load(tmp_path / "t.pt", weights_only=True)
    trainer = Trainer(make_cfg(tmp_path / "b", init=tmp_path / "t.pt"))
    assert same_weights(trainer, sd)


def test_timm_state_dict_of_another_model_is_one_line(tmp_path):
    save_atomic(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(SelfSupError, match="does not fit timm model resnet10t"):
        Trainer(make_cfg(tmp_path / "run", init=tmp_path / "r18.pt"))
    sd = timm.create_model("resnet10t", pretrained=False).state_dict()
    del sd["layer4.0.conv1.weight"]
    save_atomic(sd, tmp_path / "cut.pt")
    with pytest.raises(SelfSupError, match=r"1 missing key\(s\) \['layer4.0.conv1.weight'\], 0 unexpected"):
        Trainer(make_cfg(tmp_path / "run", init=tmp_path / "cut.pt"))
