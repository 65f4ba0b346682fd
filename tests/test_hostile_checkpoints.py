"""Hostile checkpoints: small files that claim huge sizes, fields of the wrong type or range, views that
overlap. Each is refused in one line before anything large is allocated or built (no GB is allocated here:
the files only claim it)."""
import io
import os
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
