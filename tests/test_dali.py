"""loader=dali (selfsup.data.dali): DALI decodes and resizes the crops of the streaming path; selfsup draws
the boxes and makes the rest of the views. Skipped where DALI is not installed, but for its errors."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error, run
from selfsup.data import dali as dali_mod
from selfsup.data.datasets import load_dataset
from selfsup.data.stream import StreamLoader, stream_loader
from selfsup.data.views import ViewMaker, simclr_views
from selfsup.errors import SelfSupError
from test_stream import _pattern, check_resume_is_exact, make_folder, make_mixed

needs_dali = pytest.mark.skipif(not dali_mod.dali_available(), reason="NVIDIA DALI is not installed")


def _jpegs(root, n=24, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        Image.fromarray(_pattern(w, h, seed * 1000 + i)).save(root / f"c{i % 2}" / f"{i:03d}.jpg", quality=95)


@needs_dali
def test_dali_batches_are_functions_of_the_step_and_close_to_torchs_crops(tmp_path):
    """Same (epoch, step): the same views from the epoch iterator and from load(); every crop has the view's
    size; the crops of the JPEGs match cut_and_resize on PIL's decode within JPEG decoder rounding."""
    from selfsup.data.views import cut_and_resize, spec_boxes

    _jpegs(tmp_path / "f")
    data = load_dataset(f"{tmp_path / 'f'}?loader=dali&workers=0")
    assert data.loader == "dali"
    maker = ViewMaker(simclr_views(24))
    loader = stream_loader(data, 8, maker, image_size=24, device="cpu", seed=3)
    assert isinstance(loader, dali_mod.DaliStreamLoader)
    it = loader.epoch(1)
    batches = [next(it) for _ in range(2)]
    it.close()
    again = loader.load(1, 1, loader.batch_indices(1)[1])
    assert [v.shape for v in again.views] == [(8, 3, 24, 24)] * 2
    assert all(torch.equal(a, b) for a, b in zip(batches[1].views, again.views))
    assert torch.equal(batches[1].indices, again.indices)
    # the crops DALI decodes against PIL's decode of the same boxes
    idx = loader.batch_indices(1)[0]
    blobs = [np.frombuffer(data.read(int(i)), dtype=np.uint8) for i in idx]
    sizes = torch.tensor([dali_mod._size(b) for b in blobs])
    boxes = [spec_boxes(s, len(idx), sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(0), "cpu")
             for s in maker.specs]
    made = loader._dali_crops(blobs, boxes)
    for k, i in enumerate(idx):
        image = torch.from_numpy(np.asarray(Image.open(data.name(int(i))).convert("RGB")).transpose(2, 0, 1).copy())
        want = cut_and_resize(image[None], boxes[0][k:k + 1], 24)[0]
        assert (made[0][k].int() - want.int()).abs().float().mean() < 4, k


@needs_dali
def test_dali_takes_the_mixed_folder_and_names_bad_files(tmp_path):
    """PNG, CMYK and rotated JPEGs go through PIL, the plain JPEGs through DALI; the bad files are named once."""
    make_mixed(tmp_path / "m")
    data = load_dataset(f"{tmp_path / 'm'}?loader=dali&workers=0&size=16")
    loader = stream_loader(data, len(data), ViewMaker(simclr_views(16)), image_size=16, device="cpu", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = next(loader.epoch(0))
    assert [v.shape for v in batch.views] == [(len(data), 3, 16, 16)] * 2
    assert torch.isfinite(batch.views[0]).all()
    said = " ".join(str(w.message) for w in caught)
    assert "corrupt.jpg" in said and "empty.jpg" in said


@needs_dali
def test_dali_training_resumes_exactly(tmp_path):
    _jpegs(tmp_path / "f", n=32)
    check_resume_is_exact(tmp_path, f"{tmp_path / 'f'}?loader=dali&workers=1")


def test_loader_dali_errors_are_one_line(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "f", n=8)
    with pytest.raises(SelfSupError, match="exclude each other"):
        load_dataset(f"{tmp_path / 'f'}?loader=dali&stream=0")
    with pytest.raises(SelfSupError, match="loader=torch"):
        load_dataset(f"{tmp_path / 'f'}?loader=pillow")
    with pytest.raises(SelfSupError, match="applies to image files"):
        load_dataset("synthetic:x?loader=dali")
    data = load_dataset(f"{tmp_path / 'f'}?loader=dali&workers=0")
    assert data.streaming                                         # loader=dali streams
    monkeypatch.setattr(dali_mod, "dali_available", lambda: False)
    code, _, err = run(capsys, "pretrain", "simclr", "--data", f"{tmp_path / 'f'}?loader=dali", "--backbone",
                       "convnet", "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "r", "--device", "cpu",
                       "progress=false", "image_size=16")
    assert one_line_error(code, err, "pip install nvidia-dali")
    monkeypatch.setattr(dali_mod, "dali_available", lambda: True)
    code, _, err = run(capsys, "pretrain", "jigclu", "--data", f"{tmp_path / 'f'}?loader=dali", "--backbone",
                       "convnet", "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "r2", "--device", "cpu",
                       "progress=false", "image_size=32")
    assert one_line_error(code, err, "drop loader=dali")
    assert isinstance(stream_loader(load_dataset(f"{tmp_path / 'f'}?stream=1&workers=0"), 4,
                                    ViewMaker(simclr_views(16)), device="cpu"), StreamLoader)
