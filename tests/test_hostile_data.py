"""Hostile or broken data files: each is refused in one line (SelfSupError), never a traceback, a hang, a
memory blow-up from a tiny file, or a silently wrong data set. Memory bombs are small crafted files whose
headers claim a huge size: the test checks the refusal, nothing is allocated."""
import gzip
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import datasets as D
from selfsup.data import shards as S
from selfsup.data.datasets import load_dataset
from selfsup.errors import SelfSupError


def images(root, n=3, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def refused(spec, fragment, cache=None):
    with pytest.raises(SelfSupError, match=fragment) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset(str(spec), cache_dir=cache)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ 1. sparse and huge tar members

def test_sparse_tar_member_is_refused_unread(tmp_path):
    """A 8 GiB sparse file packs into a tar of a few KB; read whole it is 8 GiB of zeros."""
    if not shutil.which("tar"):
        pytest.skip("needs GNU tar")
    root = images(tmp_path / "sp")
    with open(root / "a" / "z.png", "wb") as f:
        f.truncate(8 << 30)
    tar = tmp_path / "bomb.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(tar), "a", "b"], cwd=root, check=True)
    assert tar.stat().st_size < 1 << 20
    refused(tar, r"a/z.png is a sparse tar member \(8.0 GiB unpacked\)", tmp_path / "c")
    refused(f"{tar}?stream=1&workers=0", r"a/z.png is a sparse tar member", tmp_path / "c")


def test_tar_member_over_the_image_bound_is_refused(tmp_path, monkeypatch):
    root = images(tmp_path / "sp")
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root / "a", "a")
        t.add(root / "b", "b")
    monkeypatch.setattr(D, "MAX_IMAGE_BYTES", 100)        # the PNGs are ~250 bytes: each stands for a huge member
    refused(tar, r"is 2\d\d bytes, over the 100 bytes that any image file stays under", tmp_path / "c")


def test_file_just_over_the_image_bound_says_by_how_much(tmp_path):
    """Sizes are said in bytes: in GiB a file one byte over would read "1.0 GiB, over the 1 GiB"."""
    root = images(tmp_path / "img")
    with open(root / "a" / "big.png", "wb") as f:
        f.truncate(D.MAX_IMAGE_BYTES + 1)                  # sparse: takes no disk
    refused(root, r"big.png is 1,073,741,825 bytes, over the 1,073,741,824 bytes that any image", tmp_path / "c")
    member = tarfile.TarInfo("a/big.png")
    member.size = D.MAX_IMAGE_BYTES + 1
    assert "is 1,073,741,825 bytes, over the 1,073,741,824 bytes" in str(D.tar_member_problem("t.tar:a/big.png", member))
    root = mnist(tmp_path / "m", bytes([0, 0, 8, 3]) + struct.pack(">III", 1, 1, 2 ** 30 + 1), gz=True)
    refused(f"mnist:{root}", r"\(1,073,741,825 bytes unpacked\), over the 1,073,741,824 bytes that a gzipped IDX")
    refused("synthetic:699051", r"would take 2,147,484,672 bytes: .* under 2,147,483,648 \(fewer images")


def shard(path, entries, fmt=tarfile.GNU_FORMAT):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def png_bytes(seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_sparse_cls_in_a_shard_is_refused_unread(tmp_path):
    if not shutil.which("tar"):
        pytest.skip("needs GNU tar")
    src = tmp_path / "src"
    src.mkdir()
    (src / "k0.png").write_bytes(png_bytes())
    with open(src / "k0.cls", "wb") as f:
        f.truncate(8 << 30)
    (tmp_path / "s").mkdir()
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(tmp_path / "s" / "s0.tar"), "k0.png", "k0.cls"],
                   cwd=src, check=True)
    refused(f"shards:{tmp_path / 's'}", r"k0.cls is 8589934592 bytes \(sparse\), not a label", tmp_path / "c")


def test_oversized_cls_and_image_members_in_a_shard(tmp_path, monkeypatch):
    shard(tmp_path / "s" / "s0.tar", [("k0.png", png_bytes()), ("k0.cls", b"0" + b" " * 70000)])
    refused(f"shards:{tmp_path / 's'}", r"k0.cls is 70001 bytes, not a label: a .cls holds the class index as "
                                        r"text \(at most 65536 bytes\)", tmp_path / "c")
    shard(tmp_path / "t" / "s0.tar", [("k0.png", png_bytes()), ("k0.cls", b"0")])
    monkeypatch.setattr(D, "MAX_IMAGE_BYTES", 100)
    refused(f"shards:{tmp_path / 't'}", r"k0.png is \d+ bytes, over the 100 bytes", tmp_path / "c")


@pytest.mark.parametrize("spec", ["synthetic:1?size=4097", "IMG?size=100000", "shards:IMG?size=5000"])
def test_size_over_what_a_checkpoint_records_is_refused(tmp_path, spec):
    """Trained at size=5000, the run's own checkpoint (image sizes read within 4096) would be refused as damaged."""
    spec = spec.replace("IMG", str(images(tmp_path / "img")))
    refused(spec, r"data option size=\d+ is over 4096 px, the largest image size a checkpoint records: give "
                  r"size=4096 or less", tmp_path / "c")


def test_size_at_the_checkpoint_bound_is_accepted():
    for fmt in ("synthetic", "imagefolder", "filelist", "shards", "voc07"):
        D._check_options({"size": "4096"}, fmt)


# ------------------------------------------------------------------ 2. devices and FIFOs are no images

@pytest.mark.parametrize("stream", ["", "?stream=1&workers=0"])
def test_link_to_dev_zero_is_refused(tmp_path, stream):
    root = images(tmp_path / "img")
    (root / "a" / "z.png").symlink_to("/dev/zero")
    refused(f"{root}{stream}", r"z.png is a character device, not an image file", tmp_path / "c")


@pytest.mark.parametrize("stream", ["", "?stream=1&workers=0"])
def test_fifo_image_is_refused_without_waiting(tmp_path, stream):
    root = images(tmp_path / "img")
    os.mkfifo(root / "a" / "f.png")
    refused(f"{root}{stream}", r"f.png is a FIFO, not an image file", tmp_path / "c")


def test_streamed_fifo_outside_the_probe_is_skipped_as_unreadable(tmp_path):
    root = images(tmp_path / "img")
    data = load_dataset(f"{root}?stream=1&workers=0", cache_dir=tmp_path / "c")
    os.mkfifo(root / "a" / "x.png")
    data.names[0] = b"a/x.png"                       # listed, but never probed
    image, j, bad = data.load(0, ("center", 8, 1.0))
    assert j != 0 and bad.endswith("a/x.png") and image.shape == (3, 8, 8)


@pytest.mark.parametrize("stream", ["", "?stream=1"])
def test_file_list_naming_a_device_is_refused(tmp_path, stream):
    root = images(tmp_path / "img")
    (tmp_path / "l.txt").write_text(f"{root / 'a' / '0.png'} 0\n/dev/zero 1\n")
    refused(f"{tmp_path / 'l.txt'}{stream}", r"l.txt line 2: /dev/zero is a character device", tmp_path / "c")


def test_file_list_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "l.txt")
    refused(f"filelist:{tmp_path / 'l.txt'}", r"file list .*l.txt is a FIFO, not a file", tmp_path / "c")
    refused(f"{tmp_path / 'l.txt'}", r"data path .*l.txt is a FIFO", tmp_path / "c")


def refused_in_time(spec, fragment, tmp_path):
    """refused(), in a child process killed after 60 s: a reader blocked on a FIFO fails the test, never hangs it."""
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"
            "from selfsup.data.datasets import load_dataset\n"
            "from selfsup.errors import SelfSupError\n"
            "try:\n    load_dataset(sys.argv[1], cache_dir=sys.argv[2])\n"
            "except SelfSupError as exc:\n    print(exc)\n    sys.exit(2)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(spec), str(tmp_path / "c")], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{spec}: still reading after 60 s (blocked on a FIFO or reading a device)")
    assert done.returncode == 2 and done.stdout.count("\n") == 1, done.stdout + done.stderr
    assert re.search(fragment, done.stdout), done.stdout


def fifo(path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def link_to_dev_zero(path):
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")
    return path


def cifar_with(tmp_path, name, spoil):
    root = cifar(tmp_path / "cifar")
    spoil(root / name)
    return f"cifar10:{root}"


def stl_with(tmp_path, name, spoil):
    spec = stl(tmp_path / "stl", names=[f"c{i}" for i in range(10)])
    spoil(tmp_path / "stl" / name)
    return spec


def folder(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("make, fragment", [
    (lambda t: cifar_with(t, "data_batch_3", fifo), r"CIFAR file .*data_batch_3 is a FIFO, not a file: re-download"),
    (lambda t: cifar_with(t, "batches.meta", fifo), r"CIFAR file .*batches.meta is a FIFO, not a file"),
    (lambda t: stl_with(t, "class_names.txt", fifo), r"STL-10 class names .*class_names.txt is a FIFO, not a file"),
    (lambda t: stl_with(t, "class_names.txt", folder), r"STL-10 class names .*class_names.txt is a folder, not a file"),
    (lambda t: stl_with(t, "train_X.bin", fifo), r"STL-10 file .*train_X.bin is a FIFO, not a file: re-download"),
    (lambda t: stl_with(t, "train_X.bin", link_to_dev_zero), r"STL-10 file .*train_X.bin is a character device"),
    (lambda t: f"mnist:{fifo(mnist(t / 'm') / 'train-labels-idx1-ubyte').parent}",
     r"IDX file .*train-labels-idx1-ubyte is a FIFO, not a file"),
    (lambda t: f"synthetic:8?labels={fifo(t / 'l.npz')}",
     r"label file .*l.npz is a FIFO, not a file: give the file `selfsup transfer` wrote"),
    (lambda t: f"synthetic:8?labels={link_to_dev_zero(t / 'l.npz')}", r"label file .*l.npz is a character device"),
    (lambda t: f"imagefolder:{fifo(t / 'f.tar')}", r"data path .*f.tar is a FIFO, not a file: pass a folder or a .tar"),
    (lambda t: f"unlabeled:{fifo(t / 'f.tar')}?stream=1", r"data path .*f.tar is a FIFO, not a file"),
    (lambda t: f"{fifo(t / 'f.tar')}", r"data path .*f.tar is a FIFO, not a file: pass a folder, a .tar or a file list"),
], ids=["cifar-batch", "cifar-meta", "stl-names", "stl-names-folder", "stl-x", "stl-x-device", "idx", "labels",
        "labels-device", "imagefolder-tar", "unlabeled-tar", "detected-tar"])
def test_fifo_or_device_in_place_of_a_data_file_is_refused_without_waiting(tmp_path, make, fragment):
    refused_in_time(make(tmp_path), fragment, tmp_path)


def test_write_shards_refuses_a_device(tmp_path):
    root = images(tmp_path / "img")
    (root / "a" / "z.png").symlink_to("/dev/zero")
    with pytest.raises(SelfSupError, match="z.png is a character device"):
        S.write_shards(root, tmp_path / "out", 10)


# ------------------------------------------------------------------ 3. huge class numbers

def test_file_list_label_beyond_the_class_bound(tmp_path):
    root = images(tmp_path / "img")
    (tmp_path / "l.txt").write_text(f"{root / 'a' / '0.png'} 0\n{root / 'a' / '1.png'} 3000000000\n")
    refused(tmp_path / "l.txt", r"l.txt line 2: label 3000000000 is not a class index: labels are 0 to 999,999",
            tmp_path / "c")


@pytest.mark.parametrize("label", [3000000000, 2 ** 70, -2 ** 70, -7])
def test_shard_label_beyond_the_class_bound(tmp_path, label):
    shard(tmp_path / "s" / "s0.tar", [("k0.png", png_bytes()), ("k0.cls", str(label).encode()),
                                      ("k1.png", png_bytes(1)), ("k1.cls", b"1")])
    refused(f"shards:{tmp_path / 's'}", rf"s0.tar:k0.cls holds label {label}: labels are class indices 0 to 999,999",
            tmp_path / "c")


# ------------------------------------------------------------------ 7. walking folders

def test_link_to_the_root_folder_is_a_loop(tmp_path):
    root = images(tmp_path / "img")
    (root / "b" / "everything").symlink_to("/")
    (root / "b" / "up").symlink_to("..")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = D._Source(root).files()
    assert sorted(files) == [f"{c}/{i}.png" for c in "ab" for i in range(3)]
    assert sum("(a loop)" in str(w.message) for w in caught) == 2


def test_linked_class_folder_is_still_followed(tmp_path):
    other = images(tmp_path / "other", classes=("c",))
    root = images(tmp_path / "img")
    (root / "c").symlink_to(other / "c")
    assert load_dataset(str(root), cache_dir=tmp_path / "c").classes == ["a", "b", "c"]


def test_folder_vanishing_during_the_walk_is_skipped(tmp_path, monkeypatch):
    root = images(tmp_path / "img")
    real = os.path.realpath

    def vanishing(path, *a, **k):
        if str(path).endswith("b"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(path, *a, **k)

    monkeypatch.setattr(D.os.path, "realpath", vanishing)
    assert D._Source(root).files() == [f"a/{i}.png" for i in range(3)]


# ------------------------------------------------------------------ 4, 8. CIFAR batches hold exactly a batch

def cifar(root, batch=None, meta=None):
    """A CIFAR-10 folder of 5 batches of 4 images; ``batch`` (a dict, or pickled bytes) replaces the first."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        good = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        blob = pickle.dumps(good if i > 1 or batch is None else batch, protocol=2)
        (root / f"data_batch_{i}").write_bytes(batch if i == 1 and isinstance(batch, bytes) else blob)
    (root / "batches.meta").write_bytes(pickle.dumps(meta or {"label_names": [f"c{i}" for i in range(10)]}))
    return root


def test_cifar_batch_of_shared_references_is_refused_at_once(tmp_path):
    """16 KB of pickle whose 'data' is 1000 x 2000 x 2000 x 3072 list items by reference: np.asarray never ends."""
    row = [0] * 3072
    bomb = pickle.dumps({"data": [[[row] * 2000] * 2000] * 1000, "labels": [0]}, protocol=2)
    assert len(bomb) < 20000
    refused(f"cifar10:{cifar(tmp_path / 'c', bomb)}", r"data_batch_1 holds 'data' of type list, not a uint8 N x 3072 "
                                                      r"array: re-download the dataset")


@pytest.mark.parametrize("batch, fragment", [
    ({"labels": [0]}, r"data_batch_1 lacks 'data', not a uint8 N x 3072 array"),
    ({"data": 5, "labels": 5}, r"data_batch_1 holds 'data' of type int, not a uint8"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, r"holds 'data' of float32 and shape \(2, 3072\)"),
    ({"data": np.zeros((2, 3072), np.uint8)}, r"data_batch_1 lacks 'labels', not a list of integer labels"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, r"holds 'labels' of type list, not a list of int"),
    ({"data": np.zeros((8, 3072), np.uint8), "labels": [0, 1, 2]}, r"holds 8 images and 3 labels"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 99]}, r"holds label 99 \(image 1\), outside the 10 classes "
                                                                  r"of batches.meta \(0 to 9\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [2 ** 70, 0]}, r"holds label 1180591620717411303424 \(image 0\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [-1, 0]}, r"holds label -1 \(image 0\)"),
])
def test_cifar_batch_not_a_batch_is_refused(tmp_path, batch, fragment):
    refused(f"cifar10:{cifar(tmp_path / 'c', batch)}", fragment)


@pytest.mark.parametrize("meta, fragment", [
    ({"x": 1}, r"batches.meta lacks 'label_names', not a list of class names"),
    ({"label_names": "abc"}, r"batches.meta holds 'label_names' of type str, not a list of class names"),
    ({"label_names": ["a", "b", "c"]}, r"data_batch_1 holds label 3 \(image 3\), outside the 3 classes of batches.meta"),
])
def test_cifar_meta_without_the_class_names_is_refused(tmp_path, meta, fragment):
    refused(f"cifar10:{cifar(tmp_path / 'c', meta=meta)}", fragment)


def test_cifar_batch_with_label_array_loads(tmp_path):
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": np.array([3, 1], np.uint8)}
    data = load_dataset(f"cifar10:{cifar(tmp_path / 'c', batch)}")
    assert len(data) == 18 and list(data.labels[:2]) == [3, 1] and data.labels.dtype == np.int64


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_repickled_with_bytes_keys_loads(tmp_path, protocol):
    """Mirrors re-pickle the batches under Python 3 as loaded with encoding="bytes": b"data", b"label_names"."""
    root = tmp_path / "c"
    root.mkdir()
    for i in range(1, 6):
        batch = {b"batch_label": b"training batch", b"data": np.full((4, 3072), i, np.uint8), b"labels": [0, 1, 2, 3],
                 b"filenames": [b"x.png"] * 4}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    data = load_dataset(f"cifar10:{root}")
    assert len(data) == 20 and data.classes == [f"c{i}" for i in range(10)] and list(data.labels[:4]) == [0, 1, 2, 3]


def test_cifar_meta_pickled_by_python_2_loads(tmp_path):
    """The meta file as distributed: Python 2 str keys and names (SHORT_BINSTRING), read as latin1 str."""
    names = b"".join(b"U" + bytes([len(n)]) + n for n in (b"c%d" % i for i in range(10)))
    meta = b"\x80\x02}(U\x0blabel_names](" + names + b"eU\x07num_visM\x00\x0cu."
    assert pickle.loads(meta, encoding="latin1") == {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    root = cifar(tmp_path / "c")
    (root / "batches.meta").write_bytes(meta)
    data = load_dataset(f"cifar10:{root}")
    assert len(data) == 20 and data.classes == [f"c{i}" for i in range(10)]


# ------------------------------------------------------------------ 5, 8. IDX files are read as far as their header says

def idx_bytes(array, dims=None):
    dims = array.shape if dims is None else dims
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes()


def mnist(root, images=None, labels=None, gz=False):
    root.mkdir(parents=True, exist_ok=True)
    images = idx_bytes(np.zeros((4, 28, 28), np.uint8)) if images is None else images
    labels = idx_bytes(np.arange(4, dtype=np.uint8)) if labels is None else labels
    (root / "train-labels-idx1-ubyte").write_bytes(labels)
    if gz:
        with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as f:
            f.write(images)
    else:
        (root / "train-images-idx3-ubyte").write_bytes(images)
    return root


def test_gzipped_idx_claiming_gigabytes_is_refused_unread(tmp_path, monkeypatch):
    """The header claims 100000 x 200 x 200 (3.7 GiB); a few zeros follow: what a 3.8 MB gzip bomb holds, whole."""
    read, original = [], D.gzip.GzipFile.read
    monkeypatch.setattr(D.gzip.GzipFile, "read", lambda self, n=-1: read.append(n) or original(self, n))
    root = mnist(tmp_path / "m", bytes([0, 0, 8, 3]) + struct.pack(">III", 100000, 200, 200) + bytes(1000), gz=True)
    refused(f"mnist:{root}", r"train-images-idx3-ubyte.gz claims a 100000 x 200 x 200 array \(4,000,000,000 bytes "
                             r"unpacked\), over the 1,073,741,824 bytes that a gzipped IDX file may unpack to")
    assert -1 not in read and max(read) <= 12


def test_idx_longer_than_its_header_is_refused(tmp_path):
    extra = idx_bytes(np.zeros((4, 28, 28), np.uint8)) + b"\0"
    refused(f"mnist:{mnist(tmp_path / 'm', extra, gz=True)}", r"holds more bytes than its header's 4 x 28 x 28")
    refused(f"mnist:{mnist(tmp_path / 'n', extra[:-10])}", r"is truncated \(3127 of 3136 bytes\)")


@pytest.mark.parametrize("dims", [(), (4 * 28 * 28,), (4, 1, 1, 28, 28), (4, 28, 28, 1)])
def test_idx_images_of_other_dimensions_are_refused(tmp_path, dims):
    images = idx_bytes(np.zeros(int(np.prod(dims)), np.uint8), dims)
    refused(f"mnist:{mnist(tmp_path / 'm', images)}", rf"holds an array of {len(dims)} dimensions, not 3 \(N x H x W "
                                                      rf"images\)")


def test_idx_counts_and_labels_must_match(tmp_path):
    refused(f"mnist:{mnist(tmp_path / 'a', labels=idx_bytes(np.zeros(3, np.uint8)))}",
            r"train-images-idx3-ubyte holds 4 images and train-labels-idx1-ubyte 3 labels: they must be the same")
    refused(f"mnist:{mnist(tmp_path / 'b', labels=idx_bytes(np.array([0, 1, 255, 2], np.uint8)))}",
            r"train-labels-idx1-ubyte holds label 255 \(image 2\), outside the 10 classes 0 to 9")
    refused(f"mnist:{mnist(tmp_path / 'c', labels=idx_bytes(np.zeros((4, 1), np.uint8)))}",
            r"train-labels-idx1-ubyte holds an array of 2 dimensions, not 1 \(N labels\)")
    assert len(load_dataset(f"mnist:{mnist(tmp_path / 'd', gz=True)}")) == 4


# ------------------------------------------------------------------ 6. label files are checked from their headers

def npz(path, **arrays):
    """An .npz of ``arrays``; an entry (shape, descr) is written as a bare .npy header claiming that shape."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, value in arrays.items():
            buf = io.BytesIO()
            if isinstance(value, tuple):
                np.lib.format.write_array_header_1_0(buf, {"descr": value[1], "fortran_order": False,
                                                           "shape": value[0]})
                buf.write(bytes(64))
            else:
                np.save(buf, value)
            z.writestr(f"{key}.npy", buf.getvalue())
    return path


def labelled(tmp_path, **change):
    data = load_dataset("synthetic:8?classes=4&size=8")
    arrays = dict(labels=np.arange(8) % 4, data_fingerprint=np.array(data.fingerprint), teacher=np.array("t"),
                  num_classes=np.array(4))
    arrays.update(change)
    return f"synthetic:8?classes=4&size=8&labels={npz(tmp_path / 'l.npz', **arrays)}"


def test_label_file_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """labels.npy claiming 4e9 int8: a 3.9 MB deflated zip of zeros would unpack to 3.7 GiB."""
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("read an array"))
    spec = labelled(tmp_path, labels=((4_000_000_000,), "|i1"))
    refused(spec, r"cannot read label file .*l.npz: it holds 4000000000 labels, more than the 8 images")
    with pytest.raises(SelfSupError, match=r"holds 4000000000 labels, more than the 134217728 images"):
        D.read_label_file(tmp_path / "l.npz")
    labelled(tmp_path, teacher=((), "<U2000000"))
    with pytest.raises(SelfSupError, match=r"its teacher has dtype <U2000000 and shape \(\), not a string"):
        D.read_label_file(tmp_path / "l.npz")


@pytest.mark.parametrize("change, fragment", [
    (dict(labels=np.zeros((8, 3))), r"its labels have dtype float64 and shape \(8, 3\), not one integer class"),
    (dict(labels=np.arange(8) % 4 + 0.5), r"its labels have dtype float64 and shape \(8,\)"),
    (dict(num_classes=np.array("four")), r"its num_classes has dtype <U4 and shape \(\), not a whole number"),
    (dict(num_classes=np.array(3_000_000_000)), r"claims 3000000000 classes: a label file has 1 to 1,000,000"),
    (dict(num_classes=np.array(0)), r"claims 0 classes"),
    (dict(labels=np.full(8, -7)), r"holds a negative label -7 \(image 0\), outside its 4 classes 0 to 3"),
    (dict(labels=np.full(8, 1000)), r"holds label 1000 \(image 0\), outside its 4 classes 0 to 3"),
    (dict(labels=np.full(8, 2 ** 64 - 1, np.uint64)), r"holds label 18446744073709551615 \(image 0\), outside its 4"),
    (dict(labels=np.full(8, 2 ** 32 - 1, np.uint32)), r"holds label 4294967295 \(image 0\), outside its 4"),
])
def test_label_file_not_of_labels_is_refused(tmp_path, change, fragment):
    refused(labelled(tmp_path, **change), fragment)


def test_label_file_that_breaks_the_zip_check_is_refused(tmp_path):
    """150 bytes whose zip64 locator claims several disks: zipfile.is_zipfile itself raises BadZipFile."""
    (tmp_path / "md.npz").write_bytes(b"PK\x03\x04" + bytes(100) + struct.pack("<4sIQI", b"PK\x06\x07", 1, 0, 2)
                                      + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0))
    refused(f"synthetic:8?classes=4&size=8&labels={tmp_path / 'md.npz'}", r"cannot read label file .*md.npz: ")


def test_label_file_of_labels_loads(tmp_path):
    data = load_dataset(labelled(tmp_path, labels=np.array([0, 1, 2, 3, -1, 0, 1, 2], np.int32)))
    assert list(data.labels) == [0, 1, 2, 3, -1, 0, 1, 2] and data.classes == ["0", "1", "2", "3"]
    data = load_dataset(labelled(tmp_path, labels=np.array([3, 1, 2, 0, 0, 0, 1, 2], np.uint64)))
    assert list(data.labels) == [3, 1, 2, 0, 0, 0, 1, 2] and data.labels.dtype == np.int64


# ------------------------------------------------------------------ 8. STL-10 and VOC07 files that do not add up

def stl(root, n=4, x_bytes=None, y=None, names=None):
    root.mkdir(parents=True)
    (root / "train_X.bin").write_bytes(bytes(n * 3 * 96 * 96) if x_bytes is None else bytes(x_bytes))
    (root / "train_y.bin").write_bytes(bytes([1, 2, 3, 4][:n] if y is None else y))
    if names is not None:
        (root / "class_names.txt").write_text("\n".join(names) + "\n")
    return f"stl10:{root}"


@pytest.mark.parametrize("kw, fragment", [
    (dict(x_bytes=3 * 96 * 96 + 5), r"train_X.bin is not whole 3 x 96 x 96 images \(27653 bytes\)"),
    (dict(y=[1, 2]), r"train_y.bin must hold one label byte for each of the 4 images of train_X.bin \(2 labels\)"),
    (dict(y=[1, 0, 2, 3]), r"train_y.bin holds label 0 \(image 1\): STL-10 labels are 1 to 10"),
    (dict(y=[1, 2, 200, 3]), r"train_y.bin holds label 200 \(image 2\)"),
    (dict(names=["cat", "dog"]), r"holds label 3 \(image 2\): STL-10 labels are 1 to 2, the classes of class_names.txt"),
])
def test_stl10_files_that_do_not_add_up_are_refused(tmp_path, kw, fragment):
    refused(stl(tmp_path / "s", **kw), fragment)


def test_stl10_that_adds_up_loads(tmp_path):
    data = load_dataset(stl(tmp_path / "s"))
    assert len(data) == 4 and list(data.labels) == [0, 1, 2, 3]


def test_voc_image_that_is_a_folder_is_refused(tmp_path):
    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main" / "cat_trainval.txt").write_text("000010 1\n000011 -1\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "JPEGImages" / "000010.jpg")
    (root / "JPEGImages" / "000011.jpg").mkdir()
    refused(f"voc07:{root}", r"JPEGImages/000011.jpg is a folder, not an image file", tmp_path / "c")
