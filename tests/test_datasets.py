import gzip
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import datasets as D
from selfsup.data.datasets import load_dataset, parse_spec
from selfsup.errors import SelfSupError

SHARED_TAR = Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.tar"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def rand_images(n, c=3, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)


def write_png(path, chw):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    """root/<class>/<i>.png, 3 classes x 4 images, lossless."""
    images = rand_images(12)
    for i, im in enumerate(images):
        write_png(tmp_path / "root" / f"c{i % 3}" / f"{i:02d}.png", im)
    return tmp_path / "root", images


def test_imagefolder_round_trip(folder, tmp_path):
    root, images = folder
    d = load_dataset(str(root), cache_dir=tmp_path / "cache")
    assert d.images.shape == (12, 3, 8, 8) and d.classes == ["c0", "c1", "c2"]
    # files are sorted per class: c0 holds 0, 3, 6, 9
    order = [i for c in range(3) for i in range(12) if i % 3 == c]
    assert np.array_equal(np.asarray(d.images), images[order])
    assert list(d.labels) == [i % 3 for i in order]


def test_imagefolder_cache_is_reused(folder, tmp_path, monkeypatch):
    root, _ = folder
    first = load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache")

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(D, "_decode", no_decode)
    again = load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache")
    assert again.fingerprint == first.fingerprint and np.array_equal(again.images, first.images)


def test_tar_with_single_top_folder_and_split(folder, tmp_path):
    root, images = folder
    tar_path = tmp_path / "data.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname="train")
    d = load_dataset(str(tar_path), cache_dir=tmp_path / "cache")
    e = load_dataset(f"{tar_path}?split=train", cache_dir=tmp_path / "cache2")
    ref = load_dataset(str(root), cache_dir=tmp_path / "cache3")
    assert np.array_equal(d.images, ref.images) and np.array_equal(e.images, ref.images)
    assert d.classes == ref.classes
    with pytest.raises(SelfSupError, match="no split folder"):
        load_dataset(f"{tar_path}?split=val", cache_dir=tmp_path / "cache4")


def test_corrupt_image_skipped_with_warning(folder, tmp_path):
    root, _ = folder
    (root / "c1" / "bad.png").write_bytes(b"this is not a png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_dataset(str(root), cache_dir=tmp_path / "cache")
    assert len(d) == 12
    msgs = [str(w.message) for w in caught]
    assert any("skipped 1 corrupt" in m and "bad.png" in m for m in msgs)


def test_mixed_sizes_resized_and_grayscale_kept(tmp_path):
    for i, size in enumerate([(10, 12), (20, 16), (9, 9)]):
        p = tmp_path / "g" / "a" / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size, 100 + i, dtype=np.uint8)).save(p)
    d = load_dataset(str(tmp_path / "g") + "?size=6", cache_dir=tmp_path / "cache")
    assert d.images.shape == (3, 1, 6, 6) and d.channels == 1


def write_cifar(root, n_per_batch=5):
    root.mkdir(parents=True)
    all_images, all_labels = [], []
    for i in range(1, 6):
        x = rand_images(n_per_batch, size=32, seed=i)
        y = list(np.arange(n_per_batch) % 10)
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x.reshape(n_per_batch, -1), "labels": y}, f)
        all_images.append(x)
        all_labels += y
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": rand_images(3, size=32, seed=9).reshape(3, -1), "labels": [1, 2, 3]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"n{i}" for i in range(10)]}, f)
    return np.concatenate(all_images), np.array(all_labels)


def test_cifar10_batches(tmp_path):
    images, labels = write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_dataset(str(tmp_path))                           # parent folder, detected
    assert np.array_equal(d.images, images) and np.array_equal(d.labels, labels)
    t = load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}?split=test")
    assert len(t) == 3 and list(t.labels) == [1, 2, 3] and t.classes[0] == "n0"


def test_cifar100(tmp_path):
    root = tmp_path / "c100"
    root.mkdir()
    x = rand_images(4, size=32)
    for split in ("train", "test"):
        with open(root / split, "wb") as f:
            pickle.dump({"data": x.reshape(4, -1), "fine_labels": [0, 5, 99, 5]}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f)
    d = load_dataset(str(root))
    assert np.array_equal(d.images, x) and list(d.labels) == [0, 5, 99, 5] and len(d.classes) == 100


def test_stl10_binary(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    hwc = rand_images(2, size=96)                           # the true images, N x 3 x H x W
    np.transpose(hwc, (0, 1, 3, 2)).tofile(root / "train_X.bin")   # stored column-major
    np.array([1, 10], dtype=np.uint8).tofile(root / "train_y.bin")
    rand_images(3, size=96, seed=1).tofile(root / "unlabeled_X.bin")
    (root / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    d = load_dataset(str(tmp_path))
    assert np.array_equal(np.asarray(d.images), hwc) and list(d.labels) == [0, 9]
    both = load_dataset(f"stl10:{root}?split=train+unlabeled")
    assert len(both) == 5 and list(both.labels) == [0, 9, -1, -1, -1]


def write_idx(path, array, gz=True):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx(tmp_path, gz):
    root = tmp_path / "fashion"
    root.mkdir()
    x = rand_images(6, c=1, size=28)[:, 0]
    write_idx(root / "train-images-idx3-ubyte", x, gz)
    write_idx(root / "train-labels-idx1-ubyte", np.arange(6), gz)
    write_idx(root / "t10k-images-idx3-ubyte", x[:2], gz)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(2), gz)
    d = load_dataset(str(root))
    assert d.images.shape == (6, 1, 28, 28) and np.array_equal(d.images[:, 0], x)
    assert d.classes[0] == "T-shirt/top"                     # "fashion" in the path
    assert len(load_dataset(f"mnist:{root}?split=test")) == 2


def test_filelist(folder, tmp_path):
    root, images = folder
    lines = ["# path label", f"{root}/c0/00.png 1", "", "root/c1/01.png 0"]
    (tmp_path / "list.txt").write_text("\n".join(lines))
    d = load_dataset(str(tmp_path / "list.txt"), cache_dir=tmp_path / "cache")
    assert list(d.labels) == [1, 0] and np.array_equal(d.images[0], images[0]) and np.array_equal(d.images[1], images[1])


def test_synthetic_is_deterministic():
    a, b = load_dataset("synthetic:50?classes=5&size=12"), load_dataset("synthetic:50?classes=5&size=12")
    assert np.array_equal(a.images, b.images) and a.images.shape == (50, 3, 12, 12)
    assert sorted(np.bincount(a.labels)) == [10] * 5


def test_holdout_and_fraction_options():
    full = load_dataset("synthetic:200?classes=4")
    train = load_dataset("synthetic:200?classes=4&val_per_class=5&part=train")
    val = load_dataset("synthetic:200?classes=4&val_per_class=5&part=val")
    assert len(val) == 20 and len(train) == 180 and np.bincount(val.labels).tolist() == [5] * 4
    assert train.fingerprint != val.fingerprint != full.fingerprint
    few = load_dataset("synthetic:200?classes=4&fraction=0.1&seed=3")
    assert np.bincount(few.labels).tolist() == [5] * 4


def test_parse_spec():
    assert parse_spec("cifar10:/d/c?split=test") == ("cifar10", "/d/c", {"split": "test"})
    assert parse_spec("/d/x.tar") == (None, "/d/x.tar", {})


@pytest.mark.parametrize("spec, fragment", [
    ("/no/such/dir", "does not exist"),
    ("", "does not exist"),
    ("png:/tmp", "unknown format"),
    ("synthetic:10?colour=red", "unknown data option"),
    ("synthetic:10?size=big", "is not a int"),
    ("synthetic:20?classes=2&val_per_class=2", "part=train or part=val"),
    ("synthetic:20?classes=2&val_per_class=2&part=trian", r"part=train or part=val in the data spec \(got part=trian\)"),
])
def test_bad_specs(spec, fragment):
    with pytest.raises(SelfSupError, match=fragment) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value)


def test_empty_and_unrecognised_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelfSupError, match="is empty"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "notes.md").write_text("x")
    with pytest.raises(SelfSupError, match="no known dataset layout"):
        load_dataset(str(tmp_path / "flat"))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.txt").write_text("x")
    with pytest.raises(SelfSupError, match="no images found"):
        load_dataset(str(tmp_path / "noimg"), cache_dir=tmp_path / "c")
    (tmp_path / "allbad" / "a").mkdir(parents=True)
    (tmp_path / "allbad" / "a" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(SelfSupError, match="no readable image"):
        load_dataset(str(tmp_path / "allbad"), cache_dir=tmp_path / "c")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist():
    d = load_dataset(str(FASHION))
    assert d.images.shape == (60000, 1, 28, 28) and len(d.classes) == 10
    assert np.bincount(d.labels).tolist() == [6000] * 10
    assert len(load_dataset(f"{FASHION}?split=test")) == 10000


@pytest.mark.skipif(not SHARED_TAR.is_file(), reason="the shared CIFAR-10 tar is not present")
def test_shared_cifar10_tar(tmp_path):
    d = load_dataset(f"{SHARED_TAR}?val_per_class=500&part=val", cache_dir=tmp_path)
    assert d.images.shape == (5000, 3, 32, 32) and d.classes[0] == "airplane"
    assert np.bincount(d.labels).tolist() == [500] * 10


def test_subset_of_cached_dataset_stays_on_disk(folder, tmp_path):
    root, _ = folder
    d = load_dataset(str(root), cache_dir=tmp_path / "cache")
    sub = d.subset([1, 5, 7]).subset([0, 2])
    assert isinstance(sub.images, D.IndexedArray) and sub.images.shape == (2, 3, 8, 8)
    assert np.array_equal(np.asarray(sub.images), np.asarray(d.images)[[1, 7]])
    assert np.array_equal(sub.images[[1]], np.asarray(d.images)[[7]]) and list(sub.labels) == list(d.labels[[1, 7]])


def test_filelist_accepts_any_integer_labels_as_pseudo_labels(folder, tmp_path, capsys):
    """Pseudo-labels of a clustering may leave a cluster empty: labels 0 and 3 give 4 classes, said once;
    -1 is unlabeled; other negative labels are refused in one line."""
    root, images = folder
    (tmp_path / "list.txt").write_text(f"{root}/c0/00.png 3\n{root}/c1/01.png 0\n")
    d = load_dataset(str(tmp_path / "list.txt"), cache_dir=tmp_path / "cache")
    assert list(d.labels) == [3, 0] and d.classes == ["0", "1", "2", "3"]
    assert "2 of the 4 classes 0..3 have no image (e.g. 1, 2)" in capsys.readouterr().out
    (tmp_path / "bad.txt").write_text(f"{root}/c0/00.png -2\n")
    with pytest.raises(SelfSupError, match="must be 0 or more"):
        load_dataset(str(tmp_path / "bad.txt"), cache_dir=tmp_path / "cache")
