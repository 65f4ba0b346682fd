"""Hostile checkpoints: small files that claim huge sizes, fields of the wrong type or range, views that
overlap. Each is refused in one line before anything large is allocated or built (no GB is allocated here:
the files only claim it)."""
import io
import os
import re
import sys
import zipfile

import pytest
import torch

from conftest import TINY, one_line_error, run
from selfsup.checkpoint import load_backbone, safe_load
from selfsup.errors import SelfSupError


def state_dict_zip(data: bytes = None, deflate: bool = False) -> bytes:
    """torch.save of a small state dict, its storage record replaced by ``data`` (deflated with ``deflate``)."""
    saved = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(16)}, saved)
    original, out = zipfile.ZipFile(saved), io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in original.namelist():
            info = zipfile.ZipInfo(name)
            if name.endswith("/data/0") and data is not None:
                info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                archive.writestr(info, data)
            else:
                archive.writestr(info, original.read(name))
    return out.getvalue()


def test_compressed_records_are_refused_before_loading(tmp_path, capsys):
    """A record deflated from zeros (4e9 bytes in the auditor's 3.9 MB file) was inflated by torch.load."""
    path = tmp_path / "bomb.pt"
    path.write_bytes(state_dict_zip(bytes(1 << 20), deflate=True))
    assert path.stat().st_size < 10_000
    with pytest.raises(SelfSupError, match="holds compressed records \\(a zip bomb\\?\\): not a file torch.save"):
        safe_load(path)
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", path, "--train-data", TINY, "--test-data", TINY)
    assert one_line_error(code, err, "holds compressed records")


def test_records_larger_than_the_file_are_refused(tmp_path):
    data = bytearray(state_dict_zip(bytes(64)))
    at = data.index(b"PK\x01\x02")                     # the central directory: find the storage record's entry
    while not bytes(data[at + 46:at + 46 + int.from_bytes(data[at + 28:at + 30], "little")]).endswith(b"/data/0"):
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 24:at + 28] = (4_000_000_000).to_bytes(4, "little")        # its uncompressed size: 4 GB
    path = tmp_path / "big.pt"
    path.write_bytes(data)
    with pytest.raises(SelfSupError, match="holds overlapping records \\(a zip bomb\\?\\)"):
        safe_load(path)


def test_a_plain_torch_save_still_loads(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(safe_load(tmp_path / "ok.pt")["w"], torch.ones(3))


def test_a_legacy_file_whose_weights_mimic_a_zip_directory_loads(tmp_path):
    """zipfile.is_zipfile looks for an end-of-directory signature in the last 64 KB: a legacy (non-zip) file
    whose last weight's bytes are PK\\x05\\x06 was refused as a damaged zip."""
    import struct

    as_float = lambda b: struct.unpack("<f", b)[0]                # noqa: E731
    weight = torch.tensor([as_float(b"PK\x05\x06"), 0.0, as_float(b"\x01\x00\x01\x00"),   # one record, whose
                           as_float(b"\x00\x00\x00\x7f"), 0.0, 0.0])                       # directory is 2 GB
    torch.save({"w": weight}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(tmp_path / "legacy.pt")["w"], weight)


def test_a_zip_that_zipfile_cannot_open_is_one_line(tmp_path, capsys):
    """A zip64 locator claiming several disks made zipfile.is_zipfile raise (a BadZipFile traceback)."""
    import struct

    (tmp_path / "md.pt").write_bytes(b"PK\x03\x04" + bytes(100) + struct.pack("<4sIQI", b"PK\x06\x07", 1, 0, 2)
                                     + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0))
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "md.pt", "--train-data", TINY,
                       "--test-data", TINY)
    assert one_line_error(code, err, "md.pt: it is not a PyTorch file or it is truncated"), err


def test_a_fifo_or_device_is_not_a_regular_file(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.pt")
    for path in (tmp_path / "fifo.pt", "/dev/zero"):
        with pytest.raises(SelfSupError, match=f"checkpoint {path} is not a regular file: pass the path of a .pt"):
            safe_load(path)
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", "/dev/zero", "--train-data", TINY, "--test-data", TINY)
    assert one_line_error(code, err, "/dev/zero is not a regular file")


def selfsup_ckpt(random_ckpt, **changes) -> dict:
    """The checkpoint of ``pretrain simclr --epochs 0`` (a convnet) with ``changes``."""
    ckpt = torch.load(random_ckpt, weights_only=True)
    ckpt.update(changes)
    return ckpt


def with_weight(ckpt: dict, key: str, value, where: str = "backbone_state") -> dict:
    return {**ckpt, where: {**ckpt[where], key: value}}


def first_weight(ckpt: dict, where: str = "backbone_state") -> str:
    return next(k for k, v in ckpt[where].items() if v.is_floating_point() and v.dim() > 1)


@pytest.mark.parametrize("view", [
    lambda: torch.zeros(1).as_strided((100_000, 100_000), (0, 0)),        # 40 GB for torch.isfinite
    lambda: torch.zeros(2000).as_strided((1000, 1000), (1, 1)),
    lambda: torch.zeros(1, 1).expand(50_000, 50_000),
])
def test_views_that_repeat_their_elements_are_refused(tmp_path, capsys, random_ckpt, view):
    ckpt = selfsup_ckpt(random_ckpt)
    key = first_weight(ckpt)
    path = tmp_path / "view.pt"
    torch.save(with_weight(ckpt, key, view()), path)
    assert path.stat().st_size < random_ckpt.stat().st_size + 10_000         # claims GBs, holds bytes
    with pytest.raises(SelfSupError, match=f"is damaged: its weight '{key}' is a view of .* elements over a storage "
                                           f"of .* \\(zero or overlapping strides\\)"):
        load_backbone(path)
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", path, "--train-data", TINY, "--test-data", TINY)
    assert one_line_error(code, err, "(zero or overlapping strides)")
    code, _, err = run(capsys, "pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", "1",
                       "--batch-size", "16", "--out", tmp_path / "ft", f"init={path}", "device=cpu", "progress=false")
    assert one_line_error(code, err, "(zero or overlapping strides)")


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_a_sparse_weight_is_refused(tmp_path, random_ckpt):
    ckpt = selfsup_ckpt(random_ckpt)
    key = first_weight(ckpt)
    torch.save(with_weight(ckpt, key, ckpt["backbone_state"][key].to_sparse()), tmp_path / "s.pt")
    with pytest.raises(SelfSupError, match=f"its weight '{key}' is a torch.sparse_coo tensor, not a dense one"):
        load_backbone(tmp_path / "s.pt")


@pytest.mark.parametrize("options, fragment", [
    ({"width": 100000.0}, "its backbone option width is 100000.0, not a number above 0 and at most 16"),  # 414 TB
    ({"width": -1.0}, "its backbone option width is -1.0, not a number above 0"),
    ({"width": float("nan")}, "its backbone option width is nan, not a number above 0"),
    ({"width": "abc"}, "its backbone option width is 'abc', not a number above 0"),
    ({"width": True}, "its backbone option width is True, not a number"),
    ({"input": "x" * 100}, "its backbone option input is a str, not one of rgb, L, tile_norm"),
    ({"last_stride": 1}, "its backbone convnet takes no option 'last_stride' (it takes input, width)"),
    ({"depth": 1000}, "its backbone convnet takes no option 'depth'"),
])
def test_backbone_options_are_checked_before_building(tmp_path, capsys, random_ckpt, options, fragment):
    path = tmp_path / "opts.pt"
    torch.save(selfsup_ckpt(random_ckpt, backbone_options=options), path)
    with pytest.raises(SelfSupError, match=f"checkpoint {path} is damaged: {re.escape(fragment)}"):
        load_backbone(path)
    for argv in (("eval", "knn", "--checkpoint", path, "--train-data", TINY, "--test-data", TINY),
                 ("export", path, "--format", "safetensors", "--out", tmp_path / "x.safetensors"),
                 ("finetune", "--init", path, "--data", TINY, "--test-data", TINY, "--epochs", 1, "--out",
                  tmp_path / "ft", "--device", "cpu")):
        code, _, err = run(capsys, *argv)
        assert one_line_error(code, err, fragment), (argv, err)


@pytest.mark.parametrize("last_stride", [0, -1, 3, "x", 2.0])
def test_resnet_last_stride_is_1_or_2(tmp_path, random_ckpt, last_stride):
    from selfsup.models import build_backbone

    path = tmp_path / "rn.pt"
    torch.save({"backbone": "resnet18", "cifar_stem": True, "backbone_options": {"last_stride": last_stride},
                "backbone_state": build_backbone("resnet18", cifar_stem=True).state_dict()}, path)
    fragment = f"is damaged: its backbone option last_stride is {last_stride!r}, not 1 or 2"
    with pytest.raises(SelfSupError, match=re.escape(fragment)):
        load_backbone(path)


@pytest.mark.parametrize("size", [100000, "big", -5, 32.7, 0, True])
@pytest.mark.parametrize("where", ["image_size", "config"])
def test_the_checkpoints_image_size_is_a_sane_whole_number(tmp_path, capsys, random_ckpt, size, where):
    """100000 had the evaluation resize to 3.8 TB; 'big', -5, 32.7 were tracebacks."""
    ckpt = selfsup_ckpt(random_ckpt)
    if where == "image_size":
        ckpt["image_size"] = size
        field = "'image_size'"
    else:
        ckpt.pop("image_size")
        ckpt["config"] = {**ckpt["config"], "image_size": size}
        field = "config's 'image_size'"
    path = tmp_path / "size.pt"
    torch.save(ckpt, path)
    fragment = f"checkpoint {path} is damaged: its {field} is {size!r}, not a whole number of pixels from 1 to 4096"
    for argv in (("eval", "knn", "--checkpoint", path, "--train-data", TINY, "--test-data", TINY),
                 ("viz", "heatmap", "--checkpoint", path, "--data", TINY, "--out", tmp_path / "h.png"),
                 ("export", path, "--format", "safetensors", "--out", tmp_path / "x.safetensors")):
        code, _, err = run(capsys, *argv)
        assert one_line_error(code, err, fragment), (argv, err)
    from selfsup.eval.checks import eval_image_size

    with pytest.raises(SelfSupError, match=re.escape(f"the checkpoint is damaged: its {field} is {size!r}")):
        eval_image_size(ckpt)
    assert eval_image_size(ckpt, 24) == 24            # --image-size: the checkpoint's size is not used


def test_timm_options_are_plain_values(tmp_path):
    from selfsup.checkpoint import backbone_spec

    ckpt = {"backbone": "timm:vit_tiny_patch16_224", "backbone_state": {}}
    for options, fragment in (({"img_size": 100000}, "option img_size is 100000, not a whole number from 1 to 4096"),
                              ({"depth": [1, 2]}, "option depth is a list, not a number, string or flag"),
                              ({3: 1}, "takes no option 3")):
        with pytest.raises(SelfSupError, match=re.escape(fragment)):
            backbone_spec("v.pt", {**ckpt, "backbone_options": options})
    assert backbone_spec("v.pt", {**ckpt, "backbone_options": {"depth": 2, "img_size": 32}})[2] == {"depth": 2,
                                                                                                    "img_size": 32}


def test_timm_options_describing_a_network_far_larger_than_the_file_are_refused_unbuilt(tmp_path, monkeypatch):
    """depth=10000 passed the type check, and timm then built (allocated) 10,000 blocks for a file of two."""
    pytest.importorskip("timm")
    import selfsup.models as models
    from selfsup.checkpoint import load_backbone
    from selfsup.models import build_backbone

    options = {"img_size": 32, "depth": 2}
    small = build_backbone("timm:vit_tiny_patch16_224", **options)
    ckpt = {"backbone": "timm:vit_tiny_patch16_224", "backbone_options": {**options, "depth": 500},
            "backbone_state": small.state_dict()}
    built = []
    real = models.build_backbone
    monkeypatch.setattr(models, "build_backbone", lambda *a, **k: built.append(torch.get_default_device().type)
                        or real(*a, **k))
    with pytest.raises(SelfSupError, match=r"its backbone options .* describe timm:vit_tiny_patch16_224 with "
                                           r"[\d,]+ weights, but it holds [\d,]+"):
        load_backbone(tmp_path / "v.pt", ckpt)
    assert built == ["meta"]                                      # counted on the meta device, never allocated
    assert load_backbone(tmp_path / "v.pt", {**ckpt, "backbone_options": options}) is not None


def nested(depth: int) -> list:
    deep = inner = []
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return deep


@pytest.mark.parametrize("change, fragment, commands", [
    (lambda c: with_weight(c, 5, torch.zeros(1)), "its weight named 5 has a name that is not a string", "eval"),
    (lambda c: {**c, "config": {**c["config"], "simclr": [1, 2]}}, "its config's 'simclr' is a list, not a dict",
     "eval viz"),
    (lambda c: {**c, "config": {**c["config"], "method": ["simclr"]}}, "its config's 'method' is a list, not a str",
     "eval viz"),
    (lambda c: {**c, "config": {**c["config"], 7: "x"}}, "its 'config' has keys that are not strings", "export"),
    (lambda c: {**c, "model": [1, 2]}, "its 'model' is a list, not a dict", "viz"),
    (lambda c: {**c, "model": dict(list(c["model"].items())[1:])}, "its 'model' does not fit method simclr",
     "viz"),
    (lambda c: {**c, "config": {**c["config"], "note": nested(3000)}}, "it nests containers over 64 levels deep",
     "eval viz export"),
    (lambda c: {**c, "deep": nested(100)}, "it nests containers over 64 levels deep", "eval"),
    (lambda c: {**c, "epoch": torch.tensor(1)}, "its 'epoch' is a Tensor, not a int", "export"),
    (lambda c: {**c, "method": 3}, "its 'method' is a int, not a str", "export"),
])
def test_fields_of_the_wrong_type_are_one_line(tmp_path, capsys, random_ckpt, change, fragment, commands):
    """An int weight name was an AttributeError in load_state_dict, config['simclr'] a list one in viz heatmap,
    model a list a TypeError, a config nested 100000 deep a RecursionError in export --format safetensors."""
    path = tmp_path / "bad.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)             # torch.save of the deep config
    try:
        torch.save(change(selfsup_ckpt(random_ckpt)), path)
    finally:
        sys.setrecursionlimit(limit)
    argvs = {"eval": ("eval", "knn", "--checkpoint", path, "--train-data", TINY, "--test-data", TINY),
             "viz": ("viz", "heatmap", "--checkpoint", path, "--data", TINY, "--out", tmp_path / "h.png"),
             "export": ("export", path, "--format", "safetensors", "--out", tmp_path / "x.safetensors")}
    for command in commands.split():
        code, _, err = run(capsys, *argvs[command])
        assert one_line_error(code, err, f"is damaged: {fragment}"), (command, err)


@pytest.mark.parametrize("value, fragment", [
    (float("nan"), "holds NaN or infinite weights in {key}"),
    (float("inf"), "holds NaN or infinite weights in {key}"),
])
def test_heads_are_checked_as_the_backbone_is(tmp_path, capsys, random_ckpt, value, fragment):
    """viz heatmap exited 0 with a NaN projection map from a checkpoint whose projector was NaN."""
    from selfsup.checkpoint import load_checkpoint, load_projector

    ckpt = selfsup_ckpt(random_ckpt)
    key = next(k for k in ckpt["model"] if k.startswith("projector.") and ckpt["model"][k].is_floating_point())
    path = tmp_path / "nan.pt"
    torch.save(with_weight(ckpt, key, torch.full_like(ckpt["model"][key], value), "model"), path)
    fragment = fragment.format(key=key)
    code, _, err = run(capsys, "viz", "heatmap", "--checkpoint", path, "--data", TINY, "--out", tmp_path / "h.png")
    assert one_line_error(code, err, fragment) and not (tmp_path / "h.png").exists()
    with pytest.raises(SelfSupError, match=f"checkpoint {path} {re.escape(fragment)}"):
        load_projector(load_checkpoint(path), load_backbone(path), path)


def test_head_weights_of_the_wrong_kind_are_one_line(tmp_path, capsys, random_ckpt):
    ckpt = selfsup_ckpt(random_ckpt)
    key = next(k for k in ckpt["model"] if k.startswith("projector."))
    for change, fragment in ((with_weight(ckpt, 3, torch.zeros(1), "model"), "its weight named 3 has a name"),
                             (with_weight(ckpt, key, torch.zeros(1).expand(100_000, 100_000), "model"),
                              f"its weight '{key}' is a view of 10000000000 elements over a storage of 1")):
        torch.save(change, tmp_path / "bad.pt")
        code, _, err = run(capsys, "viz", "heatmap", "--checkpoint", tmp_path / "bad.pt", "--data", TINY, "--out",
                           tmp_path / "h.png")
        assert one_line_error(code, err, f"bad.pt is damaged: {fragment}"), err


@pytest.mark.parametrize("patches", [False, True])
@pytest.mark.parametrize("entry", [
    {"features": 1, "labels": 2},
    [1, 2],
    {"features": torch.zeros(8, 3)},
    {"features": torch.zeros(8), "labels": torch.zeros(8, dtype=torch.long)},
    {"features": torch.zeros(8, 3), "labels": torch.zeros(7, dtype=torch.long)},
    {"features": torch.zeros(8, 3, dtype=torch.long), "labels": torch.zeros(8, dtype=torch.long)},
    {"features": torch.zeros(8, 3), "labels": torch.zeros(8)},
    {"features": torch.zeros(1).expand(8, 10_000_000), "labels": torch.zeros(8, dtype=torch.long)},
    b"PK\x03\x04 cut short",                                      # not a PyTorch file, or truncated: was a refusal
])
def test_a_tampered_feature_cache_is_recomputed(tmp_path, capsys, patches, entry):
    """{'features': 1, 'labels': 2} was a TypeError; the entry is now absent: recomputed and written over."""
    from selfsup.data.datasets import load_dataset
    from selfsup.eval.features import extract_features
    from selfsup.eval.patches import aggregated_features
    from selfsup.models import build_backbone

    data = load_dataset("synthetic:8?classes=2&size=16")
    net = build_backbone("convnet")
    extract = (lambda: aggregated_features(net, data, num_patches=2, cache_key="k", cache_dir=tmp_path)) if patches \
        else (lambda: extract_features(net, data, cache_key="k", cache_dir=tmp_path))
    features, labels = extract()
    (cache_file,) = (tmp_path / "features").iterdir()
    cache_file.write_bytes(entry) if isinstance(entry, bytes) else torch.save(entry, cache_file)
    capsys.readouterr()
    again, labels_again = extract()
    assert torch.allclose(again, features) and torch.equal(labels_again, labels)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"feature cache {cache_file} is damaged" in err
    assert torch.equal(torch.load(cache_file, weights_only=True)["features"], again)       # written over
    extract()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_weights_that_are_not_floats_are_refused(tmp_path, capsys, random_ckpt, dtype):
    """complex weights were cast to real with only a torch warning (integers silently)."""
    import torchvision

    ckpt = selfsup_ckpt(random_ckpt)
    key = first_weight(ckpt)
    name = str(dtype)[len("torch."):]
    torch.save(with_weight(ckpt, key, ckpt["backbone_state"][key].to(dtype)), tmp_path / "a.pt")
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "a.pt", "--train-data", TINY,
                       "--test-data", TINY)
    assert one_line_error(code, err, f"its weight '{key}' holds {name} values where the network has floating point")
    assert "warning" not in err
    head = next(k for k in ckpt["model"] if k.startswith("projector.") and ckpt["model"][k].is_floating_point())
    torch.save(with_weight(ckpt, head, ckpt["model"][head].to(dtype), "model"), tmp_path / "b.pt")
    code, _, err = run(capsys, "viz", "heatmap", "--checkpoint", tmp_path / "b.pt", "--data", TINY, "--out",
                       tmp_path / "h.png")
    assert one_line_error(code, err, f"its weight '{head}' holds {name} values")
    tv = torchvision.models.resnet18().state_dict()
    tv["layer1.0.conv1.weight"] = tv["layer1.0.conv1.weight"].to(dtype)
    torch.save(tv, tmp_path / "c.pt")
    with pytest.raises(SelfSupError, match=f"its weight 'layer1.0.conv1.weight' holds {name} values"):
        load_backbone(tmp_path / "c.pt")
