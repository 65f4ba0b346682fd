"""Checkpoints that are damaged, diverged or wrapped: one-line errors, or the weights they hold."""
import pytest
import torch
import torchvision

from conftest import TINY, one_line_error, run
from selfsup.checkpoint import load_backbone, save_atomic
from selfsup.errors import SelfSupError
from selfsup.models import build_backbone


def selfsup_ckpt(**changes):
    ckpt = {"backbone": "convnet", "cifar_stem": True, "backbone_options": {},
            "backbone_state": build_backbone("convnet", cifar_stem=True).state_dict(),
            "config": {"method": "simclr", "image_size": 16}}
    ckpt.update(changes)
    return {k: v for k, v in ckpt.items() if v != "DROP"}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    good = selfsup_ckpt()
    state = {k: v.clone() for k, v in good["backbone_state"].items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = value
    save_atomic(selfsup_ckpt(backbone_state=state), tmp_path / "a.pt")
    with pytest.raises(SelfSupError, match=f"{tmp_path / 'a.pt'} holds NaN or infinite weights in {key}"):
        load_backbone(tmp_path / "a.pt")
    tv = torchvision.models.resnet18().state_dict()
    tv["layer4.1.bn2.running_var"][3] = value
    save_atomic(tv, tmp_path / "b.pt")
    with pytest.raises(SelfSupError, match="holds NaN or infinite weights in layer4.1.bn2.running_var"):
        load_backbone(tmp_path / "b.pt")
