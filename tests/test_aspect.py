"""Small image sets keep each image's aspect ratio (issue 13, item 5): decoded at a short side of S, padded
into one array with their true sizes; training crops are drawn from the whole image, evaluation and the
fixed-size view makers see the centre S x S crop (the old cache's pixels, exactly)."""
import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.datasets import MAX_ASPECT, CenterCrops, _decode, kept_size, load_dataset
from selfsup.data.loader import BatchLoader
from selfsup.data.views import ViewMaker, ViewSpec


def striped(w, h):
    """Red in the left quarter, blue elsewhere: a centre crop of a wide image holds no red."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, :, 2] = 255
    a[:, : w // 4] = (255, 0, 0)
    return a


def make(root, sizes):
    for i, (w, h) in enumerate(sizes):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(striped(w, h)).save(d / f"{i:02d}.png")


SIZES = [(64, 32), (48, 32), (32, 40), (32, 32), (100, 30), (40, 64)]


def test_kept_sizes_and_centre_crops_equal_the_cropping_decode(tmp_path):
    make(tmp_path / "f", SIZES)
    data = load_dataset(f"{tmp_path / 'f'}?size=32")
    assert data.full is not None and data.images.shape == (6, 3, 32, 32) and data.image_size == 32
    files = sorted((tmp_path / "f").glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    for i, f in enumerate(files):
        w, h = Image.open(f).size
        assert tuple(data.sizes[i]) == kept_size(w, h, 32)
        assert max(data.sizes[i]) <= MAX_ASPECT * 32 and min(data.sizes[i]) == 32
        blob = f.read_bytes()
        assert np.array_equal(data.images[i], _decode(blob, 32, "RGB", "crop"))     # eval pixels unchanged
        kept = _decode(blob, 32, "RGB", "keep")
        assert np.array_equal(data.full[i][:, :kept.shape[1], :kept.shape[2]], kept)
    sub = data.subset([4, 1])
    assert np.array_equal(sub.sizes, data.sizes[[4, 1]]) and np.array_equal(sub.images[0], data.images[4])
    assert np.array_equal(np.asarray(sub.images), np.stack([data.images[4], data.images[1]]))


def test_square_sets_are_stored_as_before(tmp_path):
    make(tmp_path / "sq", [(32, 32)] * 4)
    data = load_dataset(str(tmp_path / "sq"))
    assert data.full is None and data.sizes is None and isinstance(data.images, np.ndarray)


def test_training_crops_reach_beyond_the_centre_square(tmp_path):
    """The wide images' red left quarter lies outside their centre crop: views drawn from the whole image
    show red, the centre crops never do; a fixed-size transform gets the centre crops."""
    make(tmp_path / "f", [(96, 32)] * 8)
    data = load_dataset(f"{tmp_path / 'f'}?size=32")
    assert (np.asarray(data.images)[:, 0] < 128).all()                 # no red in the centre crops
    spec = ViewSpec(16, scale=(0.05, 0.2), flip_prob=0, jitter_prob=0, gray_prob=0)
    maker = ViewMaker([spec], mean=(0, 0, 0), std=(1, 1, 1))
    loader = BatchLoader(data, 8, maker, device="cpu", seed=0)
    assert loader.padded
    views = torch.cat([b.views[0] for e in range(6) for b in loader.epoch(e)])
    assert (views[:, 0] > 0.9).flatten(1).any(1).any()

    class Fixed:
        def __call__(self, images, g):
            return [images.clone()]

    fixed = BatchLoader(data, 8, Fixed(), device="cpu", shuffle=False)
    assert not fixed.padded
    assert torch.equal(next(iter(fixed.epoch(0))).views[0], torch.from_numpy(np.asarray(data.images)))


def test_a_corrupt_file_drops_its_size_row_too(tmp_path):
    make(tmp_path / "f", SIZES)
    (tmp_path / "f" / "c0" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken")
    with pytest.warns(UserWarning, match="corrupt"):
        data = load_dataset(f"{tmp_path / 'f'}?size=32")
    assert len(data) == 6 and len(data.sizes) == 6 and data.full.shape[0] == 6


def test_center_crops_index_like_an_array():
    full = np.arange(2 * 1 * 4 * 6, dtype=np.uint8).reshape(2, 1, 4, 6)
    crops = CenterCrops(full, np.array([[4, 6], [2, 4]]), 2)
    assert crops.shape == (2, 1, 2, 2) and len(crops) == 2
    assert np.array_equal(crops[0], full[0, :, 1:3, 2:4]) and np.array_equal(crops[1], full[1, :, 0:2, 1:3])
    assert np.array_equal(np.asarray(crops), np.stack([crops[0], crops[1]]))
    assert np.array_equal(crops[np.array([1])][0], crops[1]) and np.array_equal(crops[0:1][0], crops[0])
