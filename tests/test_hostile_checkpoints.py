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
