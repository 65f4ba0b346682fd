"""`selfsup export`: a backbone leaves selfsup as a plain state dict that torchvision, timm and
safetensors load, with a sidecar; the examples of docs/export.md run as written."""
import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import TINY, one_line_error, run
from selfsup.checkpoint import load_backbone, load_checkpoint
from selfsup.errors import SelfSupError
from selfsup.export import add_parser, export
from selfsup.models import build_backbone
from selfsup.models.backbones import LChannel, TileNorm

DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"


class Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def doc_example(name: str) -> str:
    """The python block of docs/export.md under ``<!-- test: NAME -->``, verbatim."""
    found = re.search(rf"<!-- test: {re.escape(name)} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"docs/export.md has no example {name}"
    return found.group(1)


def run_doc_example(name: str, folder: Path, monkeypatch) -> dict:
    """Run an example of docs/export.md in ``folder``; its variables."""
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "docs_export"}
    exec(compile(doc_example(name), f"docs/export.md:{name}", "exec"), namespace)
    return namespace


def randomise_bn(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine weights, so eval-mode features depend on them."""
    g = torch.Generator().manual_seed(seed)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            m.num_batches_tracked.fill_(7)
    return backbone


def make_checkpoint(path: Path, name="resnet18", cifar_stem=False, method="simclr", image_size=32, **options):
    """A checkpoint with the fields ``selfsup pretrain`` writes that export reads; (path, backbone)."""
    torch.manual_seed(0)
    backbone = randomise_bn(build_backbone(name, cifar_stem=cifar_stem, **options)).eval()
    config = {"method": method, "backbone": name, "image_size": image_size, "seed": 0, method: {"temperature": 0.1}}
    torch.save({"backbone": name, "cifar_stem": cifar_stem, "backbone_options": options,
                "backbone_state": backbone.state_dict(), "method": method, "epoch": 3, "image_size": image_size,
                "eval_tap": backbone.default_tap, "config": config}, path)
    return path, backbone


def torchvision_features(model: nn.Module) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-1]).eval()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.flatten(1) - b.flatten(1)).abs().max().item()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ torchvision round trips

def test_resnet18_round_trips_into_torchvision_to_1e_6(tmp_path):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet18", image_size=64)
    out = tmp_path / "model.pt"
    meta = export(ckpt, "torchvision", out)
    state = torch.load(out, map_location="cpu", weights_only=True)            # tensors only
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith(("fc.", "net.")) for k in state)
    model = torchvision.models.resnet18(weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = max_abs_diff(torchvision_features(model)(x), backbone(x))
    print(f"round trip resnet18 -> torchvision: max abs diff {diff:.3g}")
    assert diff <= 1e-6
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    assert sidecar == meta
    assert sidecar["sha256"] == sha256(out) and sidecar["tensors"] == len(state)                     # (g)
    assert sidecar["architecture"]["backbone"] == "resnet18" and sidecar["cifar_stem"] is False
    assert sidecar["stem"]["conv1"]["kernel_size"] == [7, 7] and sidecar["stem"]["maxpool"]["stride"] == 2
    assert sidecar["input_stage"]["name"] == "rgb" and sidecar["method"] == "simclr"
    assert sidecar["normalization"] == {**sidecar["normalization"], "mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225]}
    assert sidecar["image_size"] == 64 and sidecar["eval_tap"] == "res5" and sidecar["source"]["epoch"] == 3
    assert sidecar["torchvision_model"] == "resnet18" and sidecar["resnet_changes"] == []
    assert sidecar["missing_keys"] == ["fc.weight", "fc.bias"]


def test_the_config_hash_is_the_sha256_of_the_sorted_config(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "last.pt")
    config = load_checkpoint(ckpt)["config"]
    meta = export(ckpt, "torchvision", tmp_path / "model.pt")
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    assert meta["config_sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    shuffled = dict(reversed(list(config.items())))                     # key order does not change it
    torch.save({**load_checkpoint(ckpt), "config": shuffled}, tmp_path / "again.pt")
    again = export(tmp_path / "again.pt", "torchvision", tmp_path / "again_model.pt")
    assert again["config_sha256"] == meta["config_sha256"]


def test_doc_example_torchvision_resnet50(tmp_path, monkeypatch):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet50", image_size=224)
    export(ckpt, "torchvision", tmp_path / "model.pt")
    ns = run_doc_example("torchvision-resnet50", tmp_path, monkeypatch)
    with torch.no_grad():
        expected = backbone(ns["x"])
    assert ns["f"].shape == (2, 2048) and max_abs_diff(ns["f"], expected) <= 1e-6


def test_doc_example_cifar_stem(tmp_path, monkeypatch):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet18", cifar_stem=True)
    meta = export(ckpt, "torchvision", tmp_path / "model.pt")
    assert meta["cifar_stem"] is True and meta["stem"]["maxpool"] is None
    assert meta["stem"]["conv1"]["kernel_size"] == [3, 3] and meta["stem"]["conv1"]["stride"] == [1, 1]
    assert meta["resnet_changes"] == ["model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                                      "model.maxpool = nn.Identity()"]
    ns = run_doc_example("torchvision-cifar-stem", tmp_path, monkeypatch)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert max_abs_diff(torchvision_features(ns["model"])(x), backbone(x)) <= 1e-6


def test_doc_example_faster_rcnn_backbone(tmp_path, monkeypatch):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet50", image_size=224)
    export(ckpt, "torchvision", tmp_path / "model.pt")
    ns = run_doc_example("faster-rcnn", tmp_path, monkeypatch)
    (detections,) = ns["detections"]
    assert set(detections) == {"boxes", "labels", "scores"} and detections["boxes"].shape[-1] == 4
    body = ns["backbone"].body                                    # the exported weights, frozen batch norm
    assert torch.equal(body.conv1.weight, backbone.conv1.weight)
    assert torch.equal(body.layer4[2].bn3.running_var, backbone.layer4[2].bn3.running_var)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # frozen batch norm folds the statistics into a scale and a shift: equal up to float rounding,
        # which 50 layers accumulate (relative to the map's largest value)
        got, expected = body(x)["3"], backbone.forward_map(x)
        assert max_abs_diff(got, expected) <= 1e-5 * expected.abs().max().item()


def test_a_torchvision_state_dict_exports_without_its_fc(tmp_path):
    model = randomise_bn(torchvision.models.resnet34(weights=None))
    torch.save(model.state_dict(), tmp_path / "tv.pt")
    meta = export(tmp_path / "tv.pt", "torchvision", tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict()) - {"fc.weight", "fc.bias"}
    assert meta["architecture"]["backbone"] == "resnet34" and meta["method"] is None and meta["config_sha256"] is None


# ------------------------------------------------------------------ input stages

def test_a_colorization_checkpoint_exports_its_network_without_the_input_stage(tmp_path, capsys):
    code, _, err = run(capsys, "pretrain", "colorization", "--data", TINY, "--backbone", "resnet18", "--epochs", 0,
                       "--batch-size", 16, "--out", tmp_path / "run", "progress=false", "device=cpu")
    assert code == 0, err
    ckpt = tmp_path / "run" / "last.pt"
    assert all(k.startswith("net.") for k in load_checkpoint(ckpt)["backbone_state"])
    meta = export(ckpt, "torchvision", tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(k.startswith("net.") for k in state) and state["conv1.weight"].shape[1] == 1
    assert meta["input_stage"]["name"] == "L" and "L - 50" in meta["input_stage"]["computes"]
    assert meta["method"] == "colorization" and meta["architecture"]["in_channels"] == 1
    assert meta["architecture"]["options"] == {"last_stride": 1}
    # the sidecar's resnet_changes build the matching torchvision model
    model = torchvision.models.resnet18(weights=None)
    for statement in meta["resnet_changes"]:
        exec(statement, {"model": model, "nn": nn})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    backbone = load_backbone(ckpt)
    assert isinstance(backbone, LChannel)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert max_abs_diff(torchvision_features(model)(LChannel.lightness(x)), backbone(x)) <= 1e-6


def test_an_imagenet_stem_colorization_backbone_gets_a_one_channel_conv1(tmp_path):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet50", method="colorization", input="L", last_stride=1)
    meta = export(ckpt, "torchvision", tmp_path / "model.pt")
    assert meta["resnet_changes"] == ["model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)",
                                      "model.layer4[0].conv2.stride = (1, 1)",
                                      "model.layer4[0].downsample[0].stride = (1, 1)"]
    model = torchvision.models.resnet50(weights=None)
    for statement in meta["resnet_changes"]:
        exec(statement, {"model": model, "nn": nn})
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(torchvision_features(model)(LChannel.lightness(x)), backbone(x)) <= 1e-6


def test_a_jigsaw_pp_backbone_says_tile_norm(tmp_path):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet18", method="jigsaw_pp", input="tile_norm")
    meta = export(ckpt, "torchvision", tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(k.startswith("net.") for k in state)
    assert meta["input_stage"]["name"] == "tile_norm" and meta["input_stage"]["scale"] == 50.0
    assert "standard deviation" in meta["input_stage"]["computes"]
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(torchvision_features(model)(TileNorm.standardize(x) * 50), backbone(x)) <= 1e-6


# ------------------------------------------------------------------ timm, safetensors, other backbones

def test_timm_format_has_torchvisions_keys(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "last.pt", "resnet50")
    meta = export(ckpt, "timm", tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    reference = set(torchvision.models.resnet50(weights=None).state_dict()) - {"fc.weight", "fc.bias"}
    assert set(state) == reference and meta["format"] == "timm" and meta["timm_model"] == "resnet50"
    assert meta["sha256"] == sha256(tmp_path / "model.pt")


def test_doc_example_timm(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet18")
    export(ckpt, "timm", tmp_path / "model.pt")
    ns = run_doc_example("timm", tmp_path, monkeypatch)
    model = ns["model"].eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        assert max_abs_diff(f, backbone(x)) <= 1e-6


def test_safetensors_round_trip_and_doc_example(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "resnet18")
    meta = export(ckpt, "safetensors", tmp_path / "model.safetensors")
    export(ckpt, "torchvision", tmp_path / "model.pt")
    assert meta["sha256"] == sha256(tmp_path / "model.safetensors")
    ns = run_doc_example("safetensors", tmp_path, monkeypatch)
    reference = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(ns["state"]) == set(reference) and all(torch.equal(ns["state"][k], v) for k, v in reference.items())
    expected = {k: v for k, v in meta.items() if k not in ("sha256", "tensors", "format")}
    assert ns["meta"] == expected
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(ns["state"], strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(torchvision_features(model)(x), backbone(x)) <= 1e-6


@pytest.mark.parametrize("name, options", [("convnet", {"width": 0.5}), ("alexnet", {"input": "tile_norm"})])
def test_non_resnets_are_refused_by_torchvision_and_exported_by_safetensors(tmp_path, name, options):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", name, **options)
    for fmt in ("torchvision", "timm"):
        refused = f"--format {fmt} holds torchvision-style ResNets( and timm models)? only.*--format safetensors"
        with pytest.raises(SelfSupError, match=refused) as info:
            export(ckpt, fmt, tmp_path / "model.pt")
        assert "\n" not in str(info.value) and not (tmp_path / "model.pt").exists()
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    meta = export(ckpt, "safetensors", tmp_path / "model.safetensors")
    assert meta["architecture"]["backbone"] == name and "torchvision_model" not in meta
    assert meta["architecture"]["options"] == {k: v for k, v in options.items() if k != "input"}
    rebuilt = build_backbone(name, input=meta["input_stage"]["name"], **meta["architecture"]["options"])
    (getattr(rebuilt, "net", rebuilt)).load_state_dict(load_file(tmp_path / "model.safetensors"))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert max_abs_diff(rebuilt.eval()(x), backbone(x)) <= 1e-6


def test_safetensors_without_the_package_names_the_install(tmp_path, monkeypatch):
    ckpt, _ = make_checkpoint(tmp_path / "last.pt")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(SelfSupError, match=r"pip install .selfsup\[export\]."):
        export(ckpt, "safetensors", tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


# ------------------------------------------------------------------ safety and errors

def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "last.pt")
    evil = load_checkpoint(ckpt)
    target = tmp_path / "pwned"
    evil["config"]["payload"] = Payload(target)
    torch.save(evil, tmp_path / "evil.pt")
    with pytest.raises(SelfSupError, match="refusing to load checkpoint .*open") as info:
        export(tmp_path / "evil.pt", "torchvision", tmp_path / "model.pt")
    assert "\n" not in str(info.value)
    assert not target.exists() and not (tmp_path / "model.pt").exists()


def cli(*argv) -> int:
    """``selfsup export ARGV`` through ``add_parser`` and ``run``, as cli.py wires them."""
    parser = argparse.ArgumentParser(prog="selfsup")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *map(str, argv)])
    return args.func(args)


def test_command_line_and_its_one_line_errors(tmp_path, capsys):
    ckpt, _ = make_checkpoint(tmp_path / "last.pt")
    out = tmp_path / "model.pt"
    assert cli(ckpt, "--format", "torchvision", "--out", out) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("exported resnet18 (input rgb, method simclr) as torchvision") and str(out) in line
    first = sha256(out)
    cases = [((ckpt, "--format", "torchvision", "--out", out), "refusing to overwrite"),
             ((ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx"), "unknown export format 'onnx'"),
             ((tmp_path / "missing.pt", "--format", "torchvision", "--out", tmp_path / "m.pt"), "does not exist"),
             ((ckpt, "--format", "torchvision", "--out", ckpt, "--force"), "is the checkpoint itself"),
             ((ckpt, "--format", "torchvision", "--out", tmp_path), "is a folder: give a file name")]
    torch.save({"epoch": 1, "note": "no weights"}, tmp_path / "empty.pt")
    cases.append(((tmp_path / "empty.pt", "--format", "torchvision", "--out", tmp_path / "m.pt"),
                  "neither a selfsup checkpoint nor a ResNet state dict"))
    for argv, fragment in cases:
        with pytest.raises(SelfSupError, match=re.escape(fragment)) as info:
            cli(*argv)
        assert "\n" not in str(info.value), argv
    assert sha256(out) == first and not (tmp_path / "m.pt").exists()
    assert cli(ckpt, "--format", "torchvision", "--out", out, "--force", "--json") == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "model.pt.json").read_text()) and printed["sha256"] == sha256(out)


def test_selfsup_export_through_the_main_command_line(tmp_path, capsys):
    from selfsup.cli import build_parser

    if "export" not in build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("selfsup.cli does not wire `selfsup export` yet")
    ckpt, _ = make_checkpoint(tmp_path / "last.pt")
    code, out, err = run(capsys, "export", ckpt, "--format", "torchvision", "--out", tmp_path / "model.pt")
    assert code == 0 and "exported resnet18" in out, err
    code, _, err = run(capsys, "export", ckpt, "--format", "torchvision", "--out", tmp_path / "model.pt")
    assert one_line_error(code, err, "refusing to overwrite")
    code, _, err = run(capsys, "export", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert one_line_error(code, err, "unknown export format")


# ------------------------------------------------------------------ timm:NAME backbones

@pytest.fixture
def timm():
    pytest.importorskip("selfsup.models.timm_backbone")
    return pytest.importorskip("timm")


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])      # convnext: features_only flattens stem.0 -> stem_0
def test_a_timm_convnet_exports_under_timms_own_keys(tmp_path, timm, name):
    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", f"timm:{name}")
    with pytest.raises(SelfSupError, match="--format torchvision holds torchvision-style ResNets only.*--format timm"):
        export(ckpt, "torchvision", tmp_path / "model.pt")
    meta = export(ckpt, "timm", tmp_path / "model.pt")
    assert meta["keys"] == "timm" and meta["timm_model"] == name and meta["timm_kwargs"] == {"in_chans": 3}
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    model = timm.create_model(name, pretrained=False, **meta["timm_kwargs"]).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == sorted(meta["missing_keys"])
    assert all(k.startswith(("fc.", "head.")) for k in missing), missing                    # the classifier only
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(model.forward_features(x), backbone.forward_map(x)) <= 1e-6


def test_a_timm_vit_exports_to_safetensors_under_timms_keys(tmp_path, timm):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    ckpt, backbone = make_checkpoint(tmp_path / "last.pt", "timm:vit_tiny_patch16_224", depth=2, img_size=32)
    meta = export(ckpt, "safetensors", tmp_path / "model.safetensors")
    assert meta["keys"] == "timm" and meta["timm_kwargs"] == {"depth": 2, "img_size": 32, "in_chans": 3}
    assert sorted(meta["missing_keys"]) == ["head.bias", "head.weight"]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **meta["timm_kwargs"]).eval()
    missing, unexpected = model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert not unexpected and sorted(missing) == ["head.bias", "head.weight"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)[:, model.num_prefix_tokens:].mean(1)
        assert max_abs_diff(tokens, backbone(x)) <= 1e-5
