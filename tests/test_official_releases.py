"""The official releases of the methods selfsup implements load as backbones: their heads are left out (said on
stderr), their ResNet is loaded strictly, and any other stray key is still refused in one line.

The key layouts are those of the reference code: facebookresearch/swav (src/resnet50.py; the releases hubconf.py
reads are bare state dicts with a ``module.`` prefix, main_swav.py / main_deepclusterv2.py save ``{"epoch",
"state_dict", "optimizer"}``), dvlab-research/JigsawClustering (main.py saves ``{"epoch", "arch", "state_dict",
"optimizer"}`` of DDP around ``JigClu``, whose ``encoder`` is the ResNet), facebookresearch/vicreg (hubconf's
``resnet50.pth`` is the bare backbone, main_vicreg.py's full checkpoint ``{"epoch", "model", "optimizer"}``) and
facebookresearch/moco (``encoder_q`` / ``encoder_k`` / ``queue`` under ``state_dict``). Bodies are torchvision
ResNet-18s (the releases are ResNet-50s with the same keys); heads are small, as they are left out anyway.
"""
import json

import pytest
import torch
import torchvision
from torch import nn

from conftest import one_line_error, run
from selfsup.checkpoint import load_backbone, load_checkpoint
from selfsup.errors import SelfSupError

DATA = "synthetic:16?classes=2&size=16"
OPTIMIZER = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}


def body() -> dict:
    """A torchvision ResNet-18's weights without its classifier: what every release holds of the backbone."""
    torch.manual_seed(0)
    return {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}


def prefixed(prefix: str, module: nn.Module) -> dict:
    return {f"{prefix}{k}": v for k, v in module.state_dict().items()}


def swav_heads(prototypes, hidden_mlp=16, dim=8) -> dict:
    """facebookresearch/swav's ResNet heads: ``projection_head`` (Linear, or Linear, BatchNorm1d, ReLU, Linear when
    hidden_mlp > 0) and ``prototypes`` (one Linear, or MultiPrototypes' ``prototypes0``, ``prototypes1``, ...)."""
    if hidden_mlp:
        head = nn.Sequential(nn.Linear(512, hidden_mlp), nn.BatchNorm1d(hidden_mlp), nn.ReLU(inplace=True),
                             nn.Linear(hidden_mlp, dim))
    else:
        head = nn.Linear(512, dim)
    state = prefixed("projection_head.", head)
    if isinstance(prototypes, list):
        for i, k in enumerate(prototypes):
            state.update(prefixed(f"prototypes.prototypes{i}.", nn.Linear(dim, k, bias=False)))
    else:
        state.update(prefixed("prototypes.", nn.Linear(dim, prototypes, bias=False)))
    return state


def module(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


def release(name: str, sd: dict) -> tuple[dict, str]:
    """(the file's content, the note it gets) of official release ``name`` around the body ``sd``."""
    if name == "swav":                        # swav_800ep_pretrain.pth.tar: bare, module., 3000 prototypes
        return module({**sd, **swav_heads(30)}), "left out 10 head tensors"
    if name == "swav linear head":            # hidden_mlp=0: projection_head is one Linear
        return module({**sd, **swav_heads(30, hidden_mlp=0)}), "left out 3 head tensors"
    if name == "swav training checkpoint":    # main_swav.py's checkpoint.pth.tar
        return {"epoch": 800, "state_dict": module({**sd, **swav_heads(30)}), "optimizer": OPTIMIZER}, \
            "left out 10 head tensors"
    if name == "deepclusterv2":               # deepclusterv2_800ep_pretrain.pth.tar: three prototype heads
        return module({**sd, **swav_heads([30, 30, 30])}), "left out 12 head tensors"
    if name == "deepclusterv2 training checkpoint":
        return {"epoch": 800, "state_dict": module({**sd, **swav_heads([30, 30, 30])}), "optimizer": OPTIMIZER}, \
            "left out 12 head tensors"
    if name == "selav2":                      # selav2_400ep_pretrain.pth.tar: the same ResNet class, several heads
        return module({**sd, **swav_heads([30, 20])}), "left out 11 head tensors"
    if name == "jigclu":                      # JigClu_200e.pth: DDP around JigClu, its ResNet as `encoder`
        encoder = {**sd, **prefixed("fc_clu.", nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))),
                   **prefixed("fc_loc.", nn.Linear(512, 4))}
        return {"epoch": 200, "arch": "resnet18", "state_dict": module({f"encoder.{k}": v for k, v in encoder.items()}),
                "optimizer": OPTIMIZER}, "left out 6 head tensors"
    if name == "vicreg":                      # hubconf's resnet50.pth: the backbone alone, no fc
        return dict(sd), None
    if name == "vicreg full checkpoint":      # resnet50_fullckpt.pth: DDP around VICReg, under `model`
        projector = nn.Sequential(nn.Linear(512, 16), nn.BatchNorm1d(16), nn.ReLU(True), nn.Linear(16, 16))
        model = {**{f"backbone.{k}": v for k, v in sd.items()}, **prefixed("projector.", projector)}
        return {"epoch": 1000, "model": module(model), "optimizer": OPTIMIZER}, None
    if name == "moco v2":                     # moco_v2_800ep_pretrain.pth.tar: MLP head as encoder_q.fc
        mlp = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
        inner = {**{f"encoder_q.{k}": v for k, v in sd.items()}, **prefixed("encoder_q.fc.", mlp),
                 **{f"encoder_k.{k}": v for k, v in sd.items()}, **prefixed("encoder_k.fc.", mlp),
                 "queue": torch.zeros(128, 16), "queue_ptr": torch.zeros(1, dtype=torch.long)}
        return {"epoch": 800, "arch": "resnet50", "state_dict": module(inner), "optimizer": OPTIMIZER}, None
    raise AssertionError(name)


RELEASES = ["swav", "swav linear head", "swav training checkpoint", "deepclusterv2",
            "deepclusterv2 training checkpoint", "selav2", "jigclu", "vicreg", "vicreg full checkpoint", "moco v2"]
HEADS = {"swav": "projection_head (9), prototypes (1)", "swav linear head": "projection_head (2), prototypes (1)",
         "swav training checkpoint": "projection_head (9), prototypes (1)",
         "deepclusterv2": "projection_head (9), prototypes (3)",
         "deepclusterv2 training checkpoint": "projection_head (9), prototypes (3)",
         "selav2": "projection_head (9), prototypes (2)", "jigclu": "fc_clu (4), fc_loc (2)"}


@pytest.mark.parametrize("name", RELEASES)
def test_release_loads_its_backbone_and_names_the_heads_left_out(tmp_path, capsys, name):
    sd = body()
    content, note = release(name, sd)
    torch.save(content, tmp_path / "release.pth.tar")
    backbone = load_backbone(tmp_path / "release.pth.tar")
    loaded = backbone.state_dict()
    assert set(loaded) == set(sd)
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key
    err = capsys.readouterr().err
    if note is None:
        assert "head tensors" not in err
    else:
        lines = [line for line in err.splitlines() if "head tensors" in line]
        assert len(lines) == 1 and note in lines[0] and HEADS[name] in lines[0], err


@pytest.mark.parametrize("name", ["swav", "deepclusterv2 training checkpoint", "jigclu"])
def test_eval_knn_on_a_release_in_one_command(tmp_path, capsys, name):
    content, _ = release(name, body())
    torch.save(content, tmp_path / "release.pth.tar")
    code, out, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "release.pth.tar", "--train-data", DATA,
                         "--test-data", DATA, "--k", 3, "--no-cache", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["feature_dim"] == 512
    assert HEADS[name] in err


@pytest.mark.parametrize("name", ["swav", "jigclu"])
def test_pretrain_init_from_a_release(tmp_path, capsys, name):
    sd = body()
    content, _ = release(name, sd)
    torch.save(content, tmp_path / "release.pth.tar")
    code, _, err = run(capsys, "pretrain", "simclr", "--data", DATA, "--backbone", "resnet18", "--epochs", 0,
                       "--batch-size", 4, "--out", tmp_path / "run", f"init={tmp_path / 'release.pth.tar'}",
                       "progress=false", "device=cpu")
    assert code == 0, err
    assert HEADS[name] in err
    state = load_checkpoint(tmp_path / "run" / "last.pt")["backbone_state"]
    for key, value in sd.items():
        assert torch.equal(state[key], value), key


def test_a_stray_key_beside_the_release_heads_is_refused_in_one_line(tmp_path, capsys):
    content, _ = release("swav", body())
    content["module.queue_head.weight"] = torch.zeros(4, 4)
    torch.save(content, tmp_path / "stray.pth.tar")
    with pytest.raises(SelfSupError, match="does not fit backbone resnet18.*queue_head.weight") as raised:
        load_backbone(tmp_path / "stray.pth.tar")
    assert "\n" not in str(raised.value)
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "stray.pth.tar", "--train-data", DATA,
                       "--test-data", DATA, "--no-cache", "--device", "cpu")
    assert one_line_error(code, err, "does not fit backbone resnet18"), err


def test_the_note_is_said_once_under_torchrun(tmp_path, capsys, monkeypatch):
    """Every torchrun process loads init=: only rank 0 says which heads were left out."""
    content, _ = release("swav", body())
    torch.save(content, tmp_path / "release.pth.tar")
    monkeypatch.setenv("RANK", "1")
    load_backbone(tmp_path / "release.pth.tar")
    assert "head tensors" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    load_backbone(tmp_path / "release.pth.tar")
    assert "head tensors" in capsys.readouterr().err
