"""Datasets from a user path, decoded once into a uint8 array.

A dataset SPEC is ``[FORMAT:]PATH[?key=value&...]``; the format is detected from
the path when not given. Every dataset becomes an ``ImageArrayDataset``: uint8
images N x C x H x W (C = 1 for grayscale sources, 3 for colour) plus int64
labels (-1 = unlabeled). Image files are decoded once, in parallel, into a
memory-mapped ``.npy`` cache; the binary formats (CIFAR, STL-10, IDX) are read
directly. Augmentation happens later, on batches of tensors.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.subsets import fraction_per_class, holdout_split
from selfsup.errors import SelfSupError

FORMATS = ("imagefolder", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "filelist", "synthetic")
OPTIONS = ("split", "size", "val_per_class", "val_fraction", "part", "fraction", "seed", "classes", "channels")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class IndexedArray:
    """Rows ``index`` of a (memory-mapped) array, read lazily: a subset of a dataset
    on disk stays on disk. Supports ``len``, ``shape``, ``dtype`` and row indexing."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape, self.dtype, self.ndim = (len(self.index),) + tuple(base.shape[1:]), base.dtype, base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        return self.base[self.index[key]]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.base[self.index], dtype=dtype)


@dataclass
class ImageArrayDataset:
    images: np.ndarray        # uint8 N x C x H x W (possibly memory-mapped, or an IndexedArray of one)
    labels: np.ndarray        # int64 N, -1 where unlabeled
    classes: list[str]
    fingerprint: str          # identifies source, options and contents, for caches

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, indices) -> "ImageArrayDataset":
        indices = np.asarray(indices, dtype=np.int64)
        tag = hashlib.sha1(indices.tobytes()).hexdigest()[:12]
        if isinstance(self.images, IndexedArray):
            images = IndexedArray(self.images.base, self.images.index[indices])
        elif isinstance(self.images, np.memmap):
            images = IndexedArray(self.images, indices)
        else:
            images = self.images[indices]
        return ImageArrayDataset(images, self.labels[indices], self.classes, f"{self.fingerprint}-{tag}")


def cache_root(cache_dir=None) -> Path:
    """Where selfsup caches decoded images, features and permutation sets: SELFSUP_CACHE or ~/.cache/selfsup."""
    return Path(cache_dir or os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def parse_spec(spec: str) -> tuple[str | None, str, dict[str, str]]:
    """``"cifar10:/data/c10?split=test"`` -> ("cifar10", "/data/c10", {"split": "test"})."""
    body, _, query = spec.partition("?")
    fmt = None
    head, sep, rest = body.partition(":")
    if sep and head and "/" not in head and len(head) > 1:       # not a Windows drive, not a path
        fmt, body = head.lower(), rest
        if fmt not in FORMATS:
            raise SelfSupError(f"unknown format {head!r} in {spec!r}: use one of {', '.join(FORMATS)}")
    options = dict(item.partition("=")[::2] for item in query.split("&") if item)   # no URL decoding: '+' stays
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SelfSupError(f"unknown data option {unknown[0]!r} in {spec!r}: valid options are {', '.join(OPTIONS)}")
    return fmt, body, options


def _number(options: dict, key: str, kind=int, default=None):
    if key not in options:
        return default
    try:
        return kind(options[key])
    except ValueError:
        raise SelfSupError(f"data option {key}={options[key]!r} is not a {kind.__name__}: give a number") from None


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_file():
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            return "imagefolder"
        if name.endswith((".txt", ".lst", ".list")):
            return "filelist"
        raise SelfSupError(f"cannot tell the format of file {path}: give FORMAT:PATH with one of {', '.join(FORMATS)}")
    entries = {p.name for p in path.iterdir()}
    if not entries:
        raise SelfSupError(f"data folder {path} is empty: point --data at a folder that holds the images")
    if "data_batch_1" in entries or "cifar-10-batches-py" in entries:
        return "cifar10"
    if {"train", "meta"} <= entries and (path / "train").is_file() or "cifar-100-python" in entries:
        return "cifar100"
    if "train_X.bin" in entries or "unlabeled_X.bin" in entries or "stl10_binary" in entries:
        return "stl10"
    if any("idx3-ubyte" in e for e in entries):
        return "fashion-mnist" if "fashion" in str(path).lower() else "mnist"
    if any((path / e).is_dir() for e in entries):
        return "imagefolder"
    raise SelfSupError(f"no known dataset layout in {path}: use class subfolders of images or give FORMAT:PATH "
                       f"with one of {', '.join(FORMATS)}")


def load_dataset(spec: str, cache_dir: str | Path | None = None) -> ImageArrayDataset:
    """Load the dataset a SPEC names (see the module docstring and the README)."""
    fmt, path_str, options = parse_spec(spec)
    if fmt == "synthetic":
        data = synthetic(path_str, options)
    else:
        path = Path(path_str).expanduser()
        if not path_str or not path.exists():
            raise SelfSupError(f"data path {path_str or '(empty)'} does not exist: pass an existing folder, .tar "
                               f"file, or FORMAT:PATH")
        fmt = fmt or detect_format(path)
        split = options.get("split")
        if fmt in ("cifar10", "cifar100"):
            data = read_cifar(path, fmt, split or "train")
        elif fmt == "stl10":
            data = read_stl10(path, split or "train")
        elif fmt in ("mnist", "fashion-mnist"):
            data = read_idx(path, split or "train", fashion=fmt == "fashion-mnist" or "fashion" in str(path).lower())
        elif fmt == "imagefolder":
            data = read_imagefolder(path, split, _number(options, "size"), cache_root(cache_dir))
        else:
            data = read_filelist(path, _number(options, "size"), cache_root(cache_dir))
    return _apply_subsets(data, options)


def _apply_subsets(data: ImageArrayDataset, options: dict) -> ImageArrayDataset:
    seed = _number(options, "seed", int, 0)
    vpc, vfr = _number(options, "val_per_class"), _number(options, "val_fraction", float)
    part = options.get("part")
    if vpc is not None or vfr is not None:
        if part not in ("train", "val"):
            raise SelfSupError("a holdout (val_per_class / val_fraction) needs part=train or part=val in the data spec")
        train_idx, val_idx = holdout_split(data.labels, val_per_class=vpc, val_fraction=vfr, seed=seed)
        data = data.subset(train_idx if part == "train" else val_idx)
    elif part is not None:
        raise SelfSupError("part= needs a holdout: add val_per_class=N or val_fraction=F to the data spec")
    fraction = _number(options, "fraction", float)
    if fraction is not None:
        data = data.subset(fraction_per_class(data.labels, fraction, seed=seed))
    return data


# ------------------------------------------------------------------ binary formats

def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def read_cifar(path: Path, fmt: str, split: str) -> ImageArrayDataset:
    sub = "cifar-10-batches-py" if fmt == "cifar10" else "cifar-100-python"
    if (path / sub).is_dir():
        path = path / sub
    if split not in ("train", "test"):
        raise SelfSupError(f"{fmt} has no split {split!r}: use split=train or split=test")
    if fmt == "cifar10":
        files = [path / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [path / "test_batch"]
        meta, label_key, names_key = path / "batches.meta", "labels", "label_names"
    else:
        files, meta, label_key, names_key = [path / split], path / "meta", "fine_labels", "fine_label_names"
    missing = [f.name for f in files + [meta] if not f.exists()]
    if missing:
        raise SelfSupError(f"{path} lacks the {fmt} file {missing[0]}: point at the folder with the python batches")
    batches = [_unpickle(f) for f in files]
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return ImageArrayDataset(images, labels, list(_unpickle(meta)[names_key]),
                             _short_hash(f"{fmt}|{path.resolve()}|{split}|{_stat(files)}"))


def _stat(files) -> str:
    return ",".join(f"{Path(f).stat().st_size}:{Path(f).stat().st_mtime_ns}" for f in files)


def read_stl10(path: Path, split: str) -> ImageArrayDataset:
    if (path / "stl10_binary").is_dir():
        path = path / "stl10_binary"
    parts = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"], "train+unlabeled": ["train", "unlabeled"]}
    if split not in parts:
        raise SelfSupError(f"stl10 has no split {split!r}: use one of {', '.join(parts)}")
    images, labels, files = [], [], []
    for part in parts[split]:
        xf = path / f"{part}_X.bin"
        if not xf.exists():
            raise SelfSupError(f"{path} lacks {xf.name}: point at the stl10_binary folder")
        x = np.memmap(xf, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
        images.append(np.transpose(x, (0, 1, 3, 2)))            # stored column-major
        files.append(xf)
        if part == "unlabeled":
            labels.append(np.full(len(x), -1, dtype=np.int64))
        else:
            labels.append(np.fromfile(path / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1)
    names_file = path / "class_names.txt"
    classes = names_file.read_text().split() if names_file.exists() else [str(i) for i in range(10)]
    images = images[0] if len(images) == 1 else np.concatenate(images)
    return ImageArrayDataset(images, np.concatenate(labels), classes,
                             _short_hash(f"stl10|{path.resolve()}|{split}|{_stat(files)}"))


def _read_idx_file(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SelfSupError(f"{path} is not an unsigned-byte IDX file: check the file or re-install the dataset")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SelfSupError(f"{path} is truncated ({data.size} of {int(np.prod(dims))} bytes): re-install the dataset")
    return data.reshape(*dims)


def read_idx(path: Path, split: str, fashion: bool) -> ImageArrayDataset:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise SelfSupError(f"MNIST-style data has no split {split!r}: use split=train or split=test")

    def find(kind):
        for name in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"):
            if (path / name).exists():
                return path / name
        raise SelfSupError(f"{path} lacks {prefix}-{kind}[.gz]: point at the folder with the IDX files")

    image_file, label_file = find("images-idx3-ubyte"), find("labels-idx1-ubyte")
    images = _read_idx_file(image_file)[:, None]
    labels = _read_idx_file(label_file).astype(np.int64)
    classes = FASHION_CLASSES if fashion else [str(i) for i in range(10)]
    return ImageArrayDataset(images, labels, classes,
                             _short_hash(f"idx|{path.resolve()}|{split}|{_stat([image_file, label_file])}"))


# ------------------------------------------------------------------ image files

class _Source:
    """Reads the bytes of image files from a folder or, in place, from a tar."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = None
        if path.is_file():
            try:
                self.tar = tarfile.open(path)
            except (tarfile.TarError, OSError) as exc:
                raise SelfSupError(f"cannot open {path} as a tar file ({exc}): check the file") from None
            self.members = {m.name.lstrip("./"): m for m in self.tar.getmembers() if m.isfile()}

    def files(self) -> list[str]:
        if self.tar is not None:
            return sorted(self.members)
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        if self.tar is not None:
            return self.tar.extractfile(self.members[name]).read()
        return (self.path / name).read_bytes()

    def read_order(self, names: list[str]) -> list[int]:
        if self.tar is None:
            return list(range(len(names)))
        return sorted(range(len(names)), key=lambda i: self.members[names[i]].offset_data)

    def display(self, name: str) -> str:
        return f"{self.path}:{name}" if self.tar is not None else str(self.path / name)


def _decode(data: bytes, size: int | None, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            scale = size / min(im.size)
            w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
            im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_all(source: _Source, names: list[str], labels: list[int], classes: list[str], size: int | None,
                cache: Path, fingerprint: str) -> ImageArrayDataset:
    """Decode every image once into ``cache/<fingerprint>.npy`` (memory-mapped), skipping corrupt files."""
    images_file, labels_file = cache / f"{fingerprint}.npy", cache / f"{fingerprint}.labels.npy"
    cached = _cached(cache, fingerprint)
    if cached is not None:
        return cached

    def probe(name):
        try:
            with Image.open(io.BytesIO(source.read(name))) as im:
                return im.mode, im.size
        except Exception:
            return None

    # the first decodable images fix the channels and the size
    first = next((p for p in map(probe, names[:50]) if p is not None), None)
    if first is None:
        raise SelfSupError(f"no readable image among the first files of {source.path}: check the data")
    mode = "L" if first[0] in ("L", "1", "I;16", "I") else "RGB"
    if size is None:
        size_checks = [p for p in map(probe, names[:: max(1, len(names) // 50)]) if p is not None]
        if any(s[1] != first[1] for s in size_checks) or first[1][0] != first[1][1]:
            size = 256
        else:
            size = first[1][0]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = images_file.with_name(f".{images_file.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(names), 1 if mode == "L" else 3, size, size))
    ok = np.zeros(len(names), dtype=bool)

    def decode(item):
        i, blob = item
        try:
            out[i] = _decode(blob, size, mode)
            ok[i] = True
        except Exception:
            pass

    # read serially (a tar handle is not thread-safe; tar members in archive order), decode in threads
    order = source.read_order(names)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for start in range(0, len(order), 1024):
            chunk = order[start:start + 1024]
            list(pool.map(decode, [(i, source.read(names[i])) for i in chunk]))
    bad = np.flatnonzero(~ok)
    if len(bad) == len(names):
        tmp.unlink()
        raise SelfSupError(f"every image in {source.path} failed to decode: check that the files are images")
    if len(bad):
        warnings.warn(f"skipped {len(bad)} corrupt image(s) in {source.path} (first: {source.display(names[bad[0]])})")
        keep = np.flatnonzero(ok)
        compact = np.lib.format.open_memmap(tmp.with_suffix(".2.tmp"), mode="w+", dtype=np.uint8,
                                            shape=(len(keep),) + out.shape[1:])
        for start in range(0, len(keep), 4096):
            compact[start:start + 4096] = out[keep[start:start + 4096]]
        compact.flush()
        del out
        os.replace(tmp.with_suffix(".2.tmp"), tmp)
        labels = [labels[i] for i in keep]
    else:
        out.flush()
        del out
    np.save(labels_file.with_name(labels_file.name + ".tmp.npy"), np.asarray(labels, dtype=np.int64))
    os.replace(labels_file.with_name(labels_file.name + ".tmp.npy"), labels_file)
    classes_file = cache / f"{fingerprint}.classes.json"
    classes_file.with_suffix(".tmp").write_text(json.dumps(classes))
    os.replace(classes_file.with_suffix(".tmp"), classes_file)
    os.replace(tmp, images_file)                  # last: its presence marks a complete cache entry
    return _cached(cache, fingerprint)


def _cached(cache: Path, fingerprint: str) -> ImageArrayDataset | None:
    images_file = cache / f"{fingerprint}.npy"
    if not images_file.exists():
        return None
    classes = json.loads((cache / f"{fingerprint}.classes.json").read_text())
    return ImageArrayDataset(np.load(images_file, mmap_mode="r"), np.load(cache / f"{fingerprint}.labels.npy"),
                             classes, fingerprint)


def read_imagefolder(path: Path, split: str | None, size: int | None, cache_root: Path) -> ImageArrayDataset:
    if path.is_file():                      # a tar: its size and time identify it, no need to list it again
        st = path.stat()
        early = _short_hash(f"imagefolder-tar|{path.resolve()}|{split}|{size}|{st.st_size}|{st.st_mtime_ns}")
        cached = _cached(cache_root / "arrays", early)
        if cached is not None:
            return cached
    source = _Source(path)
    files = [f for f in source.files() if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise SelfSupError(f"no images found in {path}: expected class subfolders holding image files")
    parts = [f.split("/") for f in files]
    if split is not None:
        if not any(p[0] == split for p in parts if len(p) > 2):
            raise SelfSupError(f"{path} has no split folder {split!r}: drop split= or use one of its top folders")
        parts = [p[1:] for p in parts if p[0] == split and len(p) > 2]
        prefix = split + "/"
    else:
        prefix = ""
        tops = {p[0] for p in parts}
        if len(tops) == 1 and all(len(p) > 2 for p in parts):       # a single top folder holding the classes
            prefix = parts[0][0] + "/"
            parts = [p[1:] for p in parts]
    parts = [p for p in parts if len(p) >= 2]
    if not parts:
        raise SelfSupError(f"no images inside class subfolders of {path}: put each class's images in a folder of its own")
    classes = sorted({p[0] for p in parts})
    index = {c: i for i, c in enumerate(classes)}
    names = [prefix + "/".join(p) for p in parts]
    labels = [index[p[0]] for p in parts]
    if path.is_file():
        fingerprint = early
    else:
        st = [(path / n).stat() for n in names[:: max(1, len(names) // 64)]]
        fingerprint = _short_hash(f"imagefolder|{path.resolve()}|{split}|{size}|{len(names)}|{names[0]}|{names[-1]}|"
                                  + ",".join(f"{s.st_size}:{s.st_mtime_ns}" for s in st))
    return _decode_all(source, names, labels, classes, size, cache_root / "arrays", fingerprint)


def read_filelist(path: Path, size: int | None, cache_root: Path) -> ImageArrayDataset:
    names, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item, _, label = line.rpartition(" ")
        try:
            labels.append(int(label))
        except ValueError:
            raise SelfSupError(f"{path} line {number}: expected 'path label' with an integer label, got {line!r}") from None
        file = Path(item.strip())
        names.append(str(file if file.is_absolute() else path.parent / file))
    if not names:
        raise SelfSupError(f"file list {path} names no images: write one 'path label' per line")
    distinct = sorted(set(labels))
    if distinct != list(range(len(distinct))):
        raise SelfSupError(f"labels in {path} must be 0..K-1, found {distinct[:5]}...: renumber the classes")
    source = _Source(Path("/"))
    st = path.stat()
    fingerprint = _short_hash(f"filelist|{path.resolve()}|{size}|{st.st_size}|{st.st_mtime_ns}")
    return _decode_all(source, [n.lstrip("/") for n in names], labels, [str(c) for c in distinct], size,
                       cache_root / "arrays", fingerprint)


# ------------------------------------------------------------------ synthetic

def synthetic(count: str, options: dict) -> ImageArrayDataset:
    """``synthetic:N?classes=10&size=32&channels=3&seed=0``: N images, each class a
    distinct oriented grating with its own colour, random phase, position and noise."""
    try:
        n = int(count)
    except ValueError:
        raise SelfSupError(f"synthetic data needs a count, e.g. synthetic:1000, got {count!r}") from None
    k, size = _number(options, "classes", int, 10), _number(options, "size", int, 32)
    channels, seed = _number(options, "channels", int, 3), _number(options, "seed", int, 0)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * labels / k
    freq = 2 + (labels % 3)
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.sin(2 * np.pi * freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
                  + phase[:, None, None])
    hue = (labels / k)[:, None]
    colour = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])[None]))[:, :channels]
    img = 0.5 + 0.35 * wave[:, None] * colour[:, :, None, None] + 0.08 * rng.standard_normal((n, channels, size, size))
    images = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return ImageArrayDataset(images, labels.astype(np.int64), [f"class{i}" for i in range(k)],
                             _short_hash(f"synthetic|{n}|{k}|{size}|{channels}|{seed}"))
