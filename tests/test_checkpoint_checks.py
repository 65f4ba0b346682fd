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


@pytest.mark.parametrize("changes, fragment", [
    ({"backbone": "DROP"}, "its 'backbone' is missing, not a str"),
    ({"backbone": None}, "its 'backbone' is a NoneType, not a str"),
    ({"backbone_options": [1]}, "its 'backbone_options' is a list, not a dict"),
    ({"backbone_state": [1, 2]}, "its 'backbone_state' is a list, not a dict"),
    ({"cifar_stem": "yes"}, "its 'cifar_stem' is a str, not a bool"),
    ({"config": "x"}, "its 'config' is a str, not a dict"),
    ({"backbone_state": {"conv1.weight": [1.0]}}, "its weight 'conv1.weight' is a list, not a tensor"),
])
def test_damaged_selfsup_checkpoint_is_one_line(tmp_path, capsys, changes, fragment):
    path = tmp_path / "bad.pt"
    save_atomic(selfsup_ckpt(**changes), path)
    with pytest.raises(SelfSupError, match=f"checkpoint {path} is damaged: {fragment}"):
        load_backbone(path)
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", path, "--train-data", TINY, "--test-data", TINY)
    assert one_line_error(code, err, fragment)


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


@pytest.mark.parametrize("wrap", ["module", "state_dict module", "moco"])
def test_prefixed_state_dicts_load(tmp_path, wrap):
    sd = torchvision.models.resnet18().state_dict()
    if wrap == "module":
        ckpt = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "state_dict module":
        ckpt = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    else:            # the official MoCo release: the query encoder with an MLP head, the key encoder, the queue
        inner = {f"module.encoder_q.{k}": v for k, v in sd.items()}
        inner.update({f"module.encoder_k.{k}": v for k, v in sd.items()})
        inner["module.queue"] = torch.zeros(128, 16)
        ckpt = {"state_dict": inner, "arch": "resnet18"}
    save_atomic(ckpt, tmp_path / "w.pt")
    backbone = load_backbone(tmp_path / "w.pt")
    assert torch.equal(backbone.conv1.weight, sd["conv1.weight"])
    assert torch.equal(backbone.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])


def test_resume_from_a_state_dict_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    save_atomic(torchvision.models.resnet18().state_dict(), out / "last.pt")
    code, _, err = run(capsys, "pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", 1,
                       "--batch-size", 16, "--out", out, "--resume", "device=cpu")
    errors = [line for line in err.splitlines() if line.startswith("selfsup: error:")]      # after the short-run note
    assert code == 2 and "Traceback" not in err and len(errors) == 1
    assert "last.pt is not the checkpoint of a selfsup run" in errors[0]
