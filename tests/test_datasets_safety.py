"""Datasets: unsafe pickles, set-wide colour and size, stale caches, bad specs, leaked temporary files."""
import os
import pickle
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import datasets as D
from selfsup.data.datasets import load_dataset
from selfsup.errors import SelfSupError


def rand(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def load(spec, cache):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_dataset(str(spec), cache_dir=cache)
    return d, [str(w.message) for w in caught]


# ------------------------------------------------------------------ 1. CIFAR batches are unpickled safely

def write_cifar(root, first_batch=None):
    root.mkdir(parents=True)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rand((2, 3072), i), "labels": [0, 1]}, f)
    if first_batch is not None:
        (root / "data_batch_1").write_bytes(first_batch)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"n{i}" for i in range(10)]}, f)


class _Touch:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("call", ["system", "open"])
def test_crafted_cifar_batch_runs_no_code(tmp_path, call):
    victim = tmp_path / "pwned"
    reduce = (os.system, (f"touch {victim}",)) if call == "system" else (open, (str(victim), "w"))
    write_cifar(tmp_path / "c10", pickle.dumps({"data": _Touch(reduce), "labels": [0]}))
    with pytest.raises(SelfSupError, match=r"refusing to unpickle \w+\.(system|open) from .*: not a CIFAR batch") as info:
        load_dataset(f"cifar10:{tmp_path / 'c10'}")
    assert not victim.exists() and "\n" not in str(info.value)


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("numpy_core", ["numpy._core", "numpy.core"])
def test_cifar_batch_formats_load(tmp_path, protocol, numpy_core):
    """Real batches: a dict of a uint8 array, int lists, byte or str names; numpy 1 or 2 module paths."""
    x = rand((3, 3072))
    batch = {b"batch_label": b"training batch 1 of 5", "data": x, "labels": list(np.arange(3) % 10),
             "filenames": ["a.png", "b.png", "c.png"]}
    blob = pickle.dumps(batch, protocol=protocol)
    if numpy_core == "numpy.core" and protocol < 4:      # as written by numpy < 2 (protocol >= 4 names by frame)
        blob = blob.replace(b"numpy._core", b"numpy.core")
    write_cifar(tmp_path / "c10", blob)
    d = load_dataset(f"cifar10:{tmp_path / 'c10'}")
    assert np.array_equal(d.images[:3], x.reshape(3, 3, 32, 32)) and list(d.labels[:3]) == [0, 1, 2]


def test_truncated_cifar_batch(tmp_path):
    write_cifar(tmp_path / "c10", pickle.dumps({"data": rand((2, 3072)), "labels": [0, 1]})[:500])
    with pytest.raises(SelfSupError, match="cannot read CIFAR batch .*truncated or corrupt"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")


# ------------------------------------------------------------------ 2. colour and size are decided by every image

def test_gray_first_image_does_not_make_the_set_gray(tmp_path):
    gray, colour = rand((8, 8)), rand((3, 8, 8, 3), 1)
    save(tmp_path / "r/a/0.png", gray)
    for i, c in enumerate(colour):
        save(tmp_path / f"r/a/{i + 1}.png", c)
    d, _ = load(tmp_path / "r", tmp_path / "cache")
    assert d.channels == 3
    assert np.array_equal(np.asarray(d.images[1:]), colour.transpose(0, 3, 1, 2))      # colour kept
    assert all(np.array_equal(d.images[0][c], gray) for c in range(3))


def test_all_gray_is_one_channel_and_palette_is_colour(tmp_path):
    save(tmp_path / "g/a/0.png", rand((8, 8)))
    save(tmp_path / "g/a/1.png", rand((8, 8, 2)), "LA")
    save(tmp_path / "g/a/2.png", rand((8, 8)) > 127)                                    # mode "1"
    assert load(tmp_path / "g", tmp_path / "cache")[0].channels == 1
    Image.fromarray(rand((8, 8, 3))).convert("P").save(tmp_path / "g/a/3.png")
    assert load(tmp_path / "g", tmp_path / "cache")[0].channels == 3


def test_one_odd_size_does_not_resize_the_set(tmp_path):
    images = rand((5, 32, 32, 3))
    for i, im in enumerate(images):
        save(tmp_path / f"r/a/{i}.png", im)
    save(tmp_path / "r/a/9.png", rand((64, 64, 3)))
    d, msgs = load(tmp_path / "r", tmp_path / "cache")
    assert d.images.shape == (6, 3, 32, 32)
    assert np.array_equal(np.asarray(d.images[:5]), images.transpose(0, 3, 1, 2))       # not resampled
    size_msgs = [m for m in msgs if "differ in size" in m]
    assert len(size_msgs) == 1 and "\n" not in size_msgs[0]
    assert "2 distinct sizes" in size_msgs[0] and "32x32" in size_msgs[0] and "?size=N" in size_msgs[0]
    d, msgs = load(f"{tmp_path / 'r'}?size=16", tmp_path / "cache")
    assert d.images.shape == (6, 3, 16, 16) and msgs == []


def test_non_square_images_warn(tmp_path):
    for i in range(3):
        save(tmp_path / f"r/a/{i}.png", rand((20, 30, 3)))
    d, msgs = load(tmp_path / "r", tmp_path / "cache")
    assert d.images.shape == (3, 3, 20, 20) and any("are all 30x20, not square" in m for m in msgs)


# ------------------------------------------------------------------ 3, 4. a changed image is decoded again

def write_bmp(path, value):
    """Uncompressed: a new value changes the content but not the file size."""
    save(path, np.full((4, 4, 3), value, dtype=np.uint8))
    os.utime(path, ns=(10**18 + value, 10**18 + value))


def test_changed_image_in_folder_is_decoded_again(tmp_path):
    for i in range(200):
        write_bmp(tmp_path / f"r/a/{i:03d}.bmp", i)
    assert load(tmp_path / "r", tmp_path / "cache")[0].images[7].max() == 7
    write_bmp(tmp_path / "r/a/007.bmp", 250)                 # not among the ~64 files sampled before
    assert load(tmp_path / "r", tmp_path / "cache")[0].images[7].max() == 250


def write_list(tmp_path):
    for i in range(3):
        write_bmp(tmp_path / f"im/{i}.bmp", i + 1)
    (tmp_path / "list.txt").write_text("im/0.bmp 0\nim/1.bmp 1\nim/2.bmp 0\n")
    return tmp_path / "list.txt"


def test_changed_image_behind_file_list_is_decoded_again(tmp_path):
    listing = write_list(tmp_path)
    assert load(listing, tmp_path / "cache")[0].images[1].max() == 2
    write_bmp(tmp_path / "im/1.bmp", 99)                     # the list itself is unchanged
    assert load(listing, tmp_path / "cache")[0].images[1].max() == 99


def write_noise_bmp(path, seed):
    """16 x 16 noise, uncompressed (every seed the same file size), with a time of its own."""
    save(path, rand((16, 16, 3), seed))
    os.utime(path, ns=(10**18 + seed, 10**18 + seed))


def test_streamed_folder_and_file_list_features_follow_an_image_overwritten_in_place(tmp_path, monkeypatch):
    """Streamed sets key their feature cache by every file's name, size and time, as the in-memory path does:
    an image overwritten in place (same name, same size) gives new features, not the cached ones; the files
    are stat'ed only when the fingerprint is first needed (listing a streamed folder stats no image)."""
    import torch
    from selfsup.eval.features import extract_features
    from selfsup.models import build_backbone

    for i in range(8):
        write_noise_bmp(tmp_path / f"r/c{i % 2}/{i}.bmp", i)
    (tmp_path / "list.txt").write_text("".join(f"{tmp_path}/r/c{i % 2}/{i}.bmp {i % 2}\n" for i in range(8)))
    torch.manual_seed(0)
    net = build_backbone("convnet")
    specs = [f"{tmp_path / 'r'}?stream=1&workers=0&size=16", f"filelist:{tmp_path / 'list.txt'}?stream=1&workers=0&size=16",
             f"{tmp_path / 'r'}?stream=1&workers=0&size=16&val_per_class=1&part=val"]
    cached = {}
    for spec in specs:
        d = load(spec, tmp_path / "cache")[0]
        cached[spec] = d.fingerprint, extract_features(net, d, cache_key="ck", cache_dir=tmp_path / "cache")[0]
    stats = []
    real = D._stat_line
    monkeypatch.setattr(D, "_stat_line", lambda f, st=None: (stats.append(f), real(f, st))[1])
    write_noise_bmp(tmp_path / "r/c0/4.bmp", 99)       # same name, same size, new pixels and time; list unchanged
    for spec in specs:
        d = load(spec, tmp_path / "cache")[0]
        assert "filelist" in spec or not stats           # a streamed folder is listed without a stat per image
        fresh = extract_features(net, d, cache_key=None)[0]
        got = extract_features(net, d, cache_key="ck", cache_dir=tmp_path / "cache")[0]
        assert d.fingerprint != cached[spec][0], spec
        assert not torch.equal(fresh, cached[spec][1]) and torch.equal(got, fresh), spec
        stats.clear()


def test_relative_file_list_path(tmp_path, monkeypatch):
    write_list(tmp_path)
    monkeypatch.chdir(tmp_path)
    d = load("list.txt", tmp_path / "cache")[0]
    assert len(d) == 3 and [int(d.images[i].max()) for i in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("stream", ["", "?stream=0", "?stream=1", "?stream=auto"])
def test_file_list_with_a_missing_image_or_a_folder(tmp_path, stream):
    """Refused in one line on both paths (stream=1 used to warn and stand another image of the class in, so
    stream=auto's choice by RAM changed what was accepted)."""
    write_bmp(tmp_path / "im/0.bmp", 1)
    write_bmp(tmp_path / "im/1.bmp", 2)
    (tmp_path / "list.txt").write_text("# path label\nim/0.bmp 0\nim/gone.bmp 0\nim/1.bmp 1\n")
    with pytest.raises(SelfSupError, match=r"list.txt line 3: image .*gone\.bmp does not exist: fix the path or "
                                           r"drop the line") as info:
        load_dataset(f"filelist:{tmp_path / 'list.txt'}{stream}", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    (tmp_path / "list.txt").write_text("im/0.bmp 0\nim 1\n")
    with pytest.raises(SelfSupError, match=r"list.txt line 2: .*im is a folder, not an image") as info:
        load_dataset(f"filelist:{tmp_path / 'list.txt'}{stream}", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ 5. bad specs

@pytest.mark.parametrize("spec, fragment", [
    ("synthetic:-5", "positive count"),
    ("synthetic:0", "positive count"),
    ("synthetic:10?size=0", "size=0 must be a positive whole number"),
    ("synthetic:10?size=-4", "size=-4 must be a positive whole number"),
    ("synthetic:10?classes=0", "classes=0 must be a positive whole number"),
    ("synthetic:10?channels=2", "channels=2 must be 1 .* or 3"),
    ("synthetic:10?channels=0", "channels=0 must be 1 .* or 3"),
])
def test_bad_synthetic_specs(spec, fragment):
    with pytest.raises(SelfSupError, match=fragment) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value)


def test_bad_size_for_image_folder(tmp_path):
    save(tmp_path / "r/a/0.png", rand((8, 8)))
    with pytest.raises(SelfSupError, match="size=0 must be a positive whole number"):
        load_dataset(f"{tmp_path / 'r'}?size=0", cache_dir=tmp_path / "cache")


def write_tar(tmp_path, suffix, mode):
    for i in range(4):
        save(tmp_path / f"r/c{i % 2}/{i}.png", rand((16, 16, 3), i))
    with tarfile.open(tmp_path / f"data{suffix}", mode) as tar:
        tar.add(tmp_path / "r", arcname="r")
    return (tmp_path / f"data{suffix}").read_bytes()


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_truncated_tar(tmp_path, suffix, mode):
    raw = write_tar(tmp_path, suffix, mode)
    (tmp_path / f"cut{suffix}").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(SelfSupError, match=r"cannot read tar .*cut.*: truncated or corrupt \(.*\): re-create") as info:
        load_dataset(str(tmp_path / f"cut{suffix}"), cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_tar_cut_at_a_member_boundary(tmp_path):
    raw = write_tar(tmp_path, ".tar", "w")
    with tarfile.open(tmp_path / "data.tar") as tar:
        m = [m for m in tar.getmembers() if m.isfile()][-2]
    end = m.offset_data + -(-m.size // 512) * 512                      # just after the second-last image
    (tmp_path / "cut.tar").write_bytes(raw[:end])
    with pytest.raises(SelfSupError, match="truncated or corrupt .no end-of-archive marker"):
        load_dataset(str(tmp_path / "cut.tar"), cache_dir=tmp_path / "cache")


def test_tar_with_a_damaged_member_header(tmp_path):
    """tarfile stops without a word at a damaged header in the middle and drops every member after it."""
    raw = bytearray(write_tar(tmp_path, ".tar", "w"))
    with tarfile.open(tmp_path / "data.tar") as tar:
        m = [m for m in tar.getmembers() if m.isfile()][1]
    raw[m.offset:m.offset + 100] = b"x" * 100                          # the second image's header
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(SelfSupError, match=r"truncated or corrupt \(a damaged member header at byte"):
        load_dataset(str(tmp_path / "bad.tar"), cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------ 6. temporary files of killed writers

def test_stale_temporary_files_are_removed(tmp_path, monkeypatch):
    save(tmp_path / "r/a/0.png", rand((8, 8, 3)))
    fp = load_dataset(str(tmp_path / "r"), cache_dir=tmp_path / "first").fingerprint
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    arrays = tmp_path / "cache" / "arrays"
    arrays.mkdir(parents=True)
    from selfsup.tempfiles import HOST as host
    stale = [arrays / f".{fp}.{what}.{host}.{dead.pid}.tmp" for what in ("npy", "npy2", "labels.npy", "classes.json")]
    kept = [arrays / f".{fp}.npy.{host}.{os.getppid()}.tmp",       # a live writer
            arrays / f".{fp}.old.{host}.{os.getpid()}.tmp",       # ours: maybe another thread's, left alone
            arrays / f".{fp}.npy.otherhost.{dead.pid}.tmp",        # another machine's pid means nothing here
            arrays / f".0123456789abcdef.npy.{host}.{dead.pid}.tmp"]   # another entry: its own load cleans it
    for f in stale + kept:
        f.write_bytes(b"x")
    written = []
    real_replace = os.replace
    monkeypatch.setattr(D.os, "replace", lambda a, b: (written.append(Path(a).name), real_replace(a, b)))
    d = load_dataset(str(tmp_path / "r"), cache_dir=tmp_path / "cache")
    assert len(d) == 1 and not any(f.exists() for f in stale) and all(f.exists() for f in kept)
    assert written and all(name.endswith(f".{host}.{os.getpid()}.tmp") for name in written)
    assert sorted(f.name for f in arrays.glob(f".{fp}.*")) == sorted(f.name for f in kept[:3])
