"""Datasets from a user path, decoded once into a uint8 array.

A dataset SPEC is ``[FORMAT:]PATH[?key=value&...]``; the format is detected from
the path when not given. Every dataset becomes an ``ImageArrayDataset``: uint8
images N x C x H x W (C = 1 when every image is grayscale, else 3) plus int64
labels (-1 = unlabeled). Image files are decoded once, in parallel, into a
memory-mapped ``.npy`` cache keyed by every file's name, size and time; the
binary formats (CIFAR, STL-10, IDX) are read directly. Augmentation happens later, on batches of tensors.

Image files too many to decode into memory (or ``stream=1``), ``unlabeled:DIR`` trees and ``shards:`` tars
can instead stream: ``selfsup.data.stream.StreamImageSet`` (same interface, decoded in DataLoader workers).

Multi-label sets (``voc07:DIR``, see ``selfsup.data.voc07``) also carry ``targets``: int8 N x C with
1 present, 0 absent, -1 difficult (the convention of Goyal et al.'s code, METHODS.md 6.1); their labels are -1.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import stat
import tarfile
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.config import MAX_IMAGE_SIZE
from selfsup.data.subsets import fraction_per_class, holdout_split
from selfsup.errors import SelfSupError
from selfsup.tempfiles import remove_dead_temporaries, writer_suffix

FORMATS = ("imagefolder", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "filelist", "voc07", "synthetic",
           "unlabeled", "shards")
OPTIONS = ("split", "size", "val_per_class", "val_fraction", "part", "val_seed", "fraction", "seed", "classes", "channels",
           "labels", "stream", "shrink", "workers", "buffer", "decode", "loader")
STREAM_OPTIONS = ("loader", "stream", "shrink", "workers", "buffer", "decode")     # the streaming path's (selfsup.data.stream)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
MAX_CLASSES = 1_000_000      # labels are class indices below this: a larger one is a typo or a hostile file
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


class CenterCrops:
    """The side x side centre crops of images stored at their own aspect ratio: row i of ``full`` holds an
    image of ``sizes[i]`` = (h, w) in its top-left corner (zero padding after it). Read lazily, row by row,
    like ``IndexedArray``: what evaluation and the fixed-size view makers see of such a set."""

    def __init__(self, full, sizes: np.ndarray, side: int):
        self.full, self.sizes, self.side = full, np.asarray(sizes, dtype=np.int64), side
        self.shape, self.dtype, self.ndim = (len(self.sizes), full.shape[1], side, side), full.dtype, 4

    def __len__(self) -> int:
        return len(self.sizes)

    def _crop(self, image: np.ndarray, size) -> np.ndarray:
        top, left = (int(size[0]) - self.side) // 2, (int(size[1]) - self.side) // 2
        return image[:, top:top + self.side, left:left + self.side]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return np.ascontiguousarray(self._crop(np.asarray(self.full[key]), self.sizes[key]))
        rows, sizes = np.asarray(self.full[key]), self.sizes[key]
        out = np.empty((len(sizes),) + self.shape[1:], dtype=self.dtype)
        for j in range(len(sizes)):
            out[j] = self._crop(rows[j], sizes[j])
        return out

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[np.arange(len(self))], dtype=dtype)


@dataclass
class ImageArrayDataset:
    images: np.ndarray        # uint8 N x C x H x W (possibly memory-mapped, or an IndexedArray / CenterCrops of one)
    labels: np.ndarray        # int64 N, -1 where unlabeled
    classes: list[str]
    fingerprint: str          # identifies source, options and contents, for caches
    targets: np.ndarray | None = None   # int8 N x len(classes) for multi-label sets: 1 present, 0 absent, -1 difficult
    full: np.ndarray | None = None      # images at their own aspect ratio, padded (``images`` = their centre crops)
    sizes: np.ndarray | None = None     # int64 N x 2: the true (h, w) of each row of ``full``

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def with_labels(self, labels: np.ndarray, classes: list[str], tag: str) -> "ImageArrayDataset":
        """These images with other labels (a label file's): no multi-label targets, fingerprint ``FP-TAG``."""
        return replace(self, labels=labels, classes=classes, fingerprint=f"{self.fingerprint}-{tag}", targets=None)

    def subset(self, indices) -> "ImageArrayDataset":
        indices = np.asarray(indices, dtype=np.int64)
        tag = hashlib.sha1(indices.tobytes()).hexdigest()[:12]
        targets = None if self.targets is None else np.asarray(self.targets[indices])
        if self.full is not None:
            full, sizes = _rows(self.full, indices), self.sizes[indices]
            return ImageArrayDataset(CenterCrops(full, sizes, self.images.side), self.labels[indices], self.classes,
                                     f"{self.fingerprint}-{tag}", targets, full, sizes)
        return ImageArrayDataset(_rows(self.images, indices), self.labels[indices], self.classes,
                                 f"{self.fingerprint}-{tag}", targets)


def _rows(array, indices: np.ndarray):
    """Rows ``indices`` of an array: lazily when it is on disk (a memmap, or an IndexedArray of one)."""
    if isinstance(array, IndexedArray):
        return IndexedArray(array.base, array.index[indices])
    if isinstance(array, np.memmap):
        return IndexedArray(array, indices)
    return array[indices]


def label_matrix(dataset: ImageArrayDataset) -> np.ndarray:
    """int8 N x len(classes): 1 present, 0 absent, -1 difficult (METHODS.md 6.1), for one-vs-rest SVMs.

    A multi-label set's ``targets``; for a single-label set, 1 in each row's class column and 0 elsewhere."""
    if dataset.targets is not None:
        return np.asarray(dataset.targets, dtype=np.int8)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if (labels < 0).any():
        raise SelfSupError(f"{int((labels < 0).sum())} of {len(labels)} images are unlabeled (label -1): "
                           f"a label matrix needs labelled data, use a labelled split (e.g. split=train)")
    if len(labels) and labels.max() >= len(dataset.classes):
        raise SelfSupError(f"label {labels.max()} is out of range for {len(dataset.classes)} classes: "
                           f"renumber the labels 0..K-1")
    matrix = np.zeros((len(labels), len(dataset.classes)), dtype=np.int8)
    matrix[np.arange(len(labels)), labels] = 1
    return matrix


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
    items = [item.partition("=")[::2] for item in query.split("&") if item]        # no URL decoding: '+' stays
    options = dict(items)
    if len(options) < len(items):
        twice = next(k for k, _ in items if [key for key, _ in items].count(k) > 1)
        raise SelfSupError(f"data option {twice}= is given twice in {spec!r}: keep one")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SelfSupError(f"unknown data option {unknown[0]!r} in {spec!r}: valid options are {', '.join(OPTIONS)}")
    if options.get("loader", "torch") not in ("torch", "dali"):
        raise SelfSupError(f"data option loader={options['loader']!r}: use loader=torch (DataLoader workers and "
                           f"selfsup's crops) or loader=dali (NVIDIA DALI decodes and resizes the crops)")
    if options.get("loader") == "dali":               # DALI reads the files: the streaming path
        if options.get("stream") == "0":
            raise SelfSupError(f"data options loader=dali and stream=0 in {spec!r} exclude each other: DALI decodes "
                               f"from the files while training; drop one")
        options["stream"] = "1"
    return fmt, body, options


def _number(options: dict, key: str, kind=int, default=None):
    if key not in options:
        return default
    try:
        return kind(options[key])
    except ValueError:
        raise SelfSupError(f"data option {key}={options[key]!r} is not a {kind.__name__}: give a number") from None


def _seed(options: dict, key: str) -> int:
    """A seed option (default 0): a whole number 0 .. 2**32 - 1, what numpy's generators take."""
    value = _number(options, key, int, 0)
    if not 0 <= value < 2 ** 32:
        raise SelfSupError(f"data option {key}={options[key]} is out of range: give a whole number from 0 to "
                           f"{2 ** 32 - 1}, e.g. {key}=1")
    return value


def channel_mode(options: dict) -> str | None:
    """The colour mode that ``channels=`` asks for: "L" (1), "RGB" (3), or None (chosen from the images)."""
    value = options.get("channels")
    if value is not None and value not in ("1", "3"):
        raise SelfSupError(f"data option channels={value} must be 1 (grayscale) or 3 (colour)")
    return None if value is None else "L" if value == "1" else "RGB"


def _positive(options: dict, key: str, default=None, example=32):
    """An int option that must be at least 1 (a size in pixels, a number of classes)."""
    value = _number(options, key, int, default)
    if value is not None and value < 1:
        raise SelfSupError(f"data option {key}={options[key]} must be a positive whole number: e.g. {key}={example}")
    return value


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if not path.is_dir():
        regular_file(path, "data path", "pass a folder, a .tar or a file list")
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            return "imagefolder"
        if name.endswith((".txt", ".lst", ".list")):
            return "filelist"
        raise SelfSupError(f"cannot tell the format of file {path}: give FORMAT:PATH with one of {', '.join(FORMATS)}")
    entries = {p.name for p in path.iterdir()}
    if not entries:
        raise SelfSupError(f"data folder {path} is empty: point --data at a folder that holds the images")
    if {"JPEGImages", "ImageSets"} <= entries or "VOC2007" in entries or "VOCdevkit" in entries:
        return "voc07"
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
    raise SelfSupError(f"no known dataset layout in {path}: use class subfolders of images, unlabeled:{path} for "
                       f"images without classes, or FORMAT:PATH with one of {', '.join(FORMATS)}")


def load_dataset(spec: str, cache_dir: str | Path | None = None):
    """Load the dataset a SPEC names (see the module docstring and the README): an ``ImageArrayDataset``, or
    for image files that stream (``stream=1``, or too many to decode into memory) a
    ``selfsup.data.stream.StreamImageSet`` with the same interface."""
    fmt, path_str, options = parse_spec(spec)
    if fmt not in ("shards", "synthetic"):
        path = Path(path_str).expanduser()
        if not path_str or not path.exists():
            raise SelfSupError(f"data path {path_str or '(empty)'} does not exist: pass an existing folder, .tar "
                               f"file, or FORMAT:PATH")
        fmt = fmt or detect_format(path)
    _check_options(options, fmt)
    if fmt == "shards":
        from selfsup.data.shards import read_shards
        return _apply_subsets(read_shards(path_str, options, cache_root(cache_dir)), options)
    if fmt == "synthetic":
        data = synthetic(path_str, options)
    else:
        split = options.get("split")
        if fmt in ("cifar10", "cifar100"):
            data = read_cifar(path, fmt, split or "train")
        elif fmt == "stl10":
            data = read_stl10(path, split or "train")
        elif fmt in ("mnist", "fashion-mnist"):
            data = read_idx(path, split or "train", fashion=fmt == "fashion-mnist" or "fashion" in str(path).lower())
        elif fmt in ("imagefolder", "unlabeled"):
            data = read_imagefolder(path, split, _positive(options, "size"), cache_root(cache_dir),
                                    unlabeled=fmt == "unlabeled", options=options)
        elif fmt == "voc07":
            from selfsup.data.voc07 import read_voc07          # here: voc07 builds on this module
            data = read_voc07(path, split or "trainval", _positive(options, "size", example=224), cache_root(cache_dir))
        else:
            data = read_filelist(path, _positive(options, "size"), cache_root(cache_dir), options=options)
    return _apply_subsets(data, options)


IMAGE_FILES = ("imagefolder", "unlabeled", "filelist")
OPTION_FORMATS = {       # the formats that take these options; the others refuse them (the rest apply to all)
    "split": ("imagefolder", "unlabeled", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "voc07", "synthetic"),
    "size": IMAGE_FILES + ("voc07", "shards", "synthetic"),
    "channels": IMAGE_FILES + ("shards", "synthetic"),
    "classes": ("synthetic",),
    "buffer": ("shards",),
}


def _check_options(options: dict, fmt: str) -> None:
    """Refuse, in one line, an option that the format would ignore, and a size= that the run's checkpoints could
    not record (over MAX_IMAGE_SIZE: the run would train, then refuse its own checkpoint as damaged)."""
    size = _positive(options, "size")
    if size is not None and size > MAX_IMAGE_SIZE:
        raise SelfSupError(f"data option size={size} is over {MAX_IMAGE_SIZE} px, the largest image size a checkpoint "
                           f"records: give size={MAX_IMAGE_SIZE} or less")
    used = [k for k in STREAM_OPTIONS if k in options]
    if used and fmt not in IMAGE_FILES + ("shards",):
        raise SelfSupError(f"data option {used[0]}= applies to image files (imagefolder, unlabeled, filelist, "
                           f"shards), not to {fmt}: drop it")
    for key, formats in OPTION_FORMATS.items():
        if key in options and fmt not in formats:
            raise SelfSupError(f"data option {key}= applies to {', '.join(formats)}, not to {fmt}: drop it")
    if options.get("stream") == "0":
        used = [k for k in STREAM_OPTIONS if k in options and k != "stream"]
        if fmt == "shards" or used:
            why = "shards always stream" if fmt == "shards" else f"{used[0]}= applies to the streaming path only"
            raise SelfSupError(f"data option stream=0 (decode into memory): {why}; drop one of them")


def _apply_subsets(data: ImageArrayDataset, options: dict) -> ImageArrayDataset:
    seed = _seed(options, "seed")                # fraction= (and synthetic images)
    val_seed = _seed(options, "val_seed")        # the holdout: the same on both sides whatever seed= is
    vpc, vfr = _number(options, "val_per_class"), _number(options, "val_fraction", float)
    part = options.get("part")
    if data.targets is not None:                 # the holdout and fraction samplers draw per single label
        for key in ("val_per_class", "val_fraction", "fraction", "part"):
            if key in options:
                raise SelfSupError(f"{key} needs single labels and this data set is multi-label: VOC07 has its own "
                                   f"splits, use split=trainval|test|train|val instead")
    drawn = [k for k in ("val_per_class", "val_fraction", "fraction") if k in options]
    if drawn and not (np.asarray(data.labels) >= 0).any():
        raise SelfSupError(f"data option {drawn[0]}= draws per class and these {len(data)} images are unlabeled "
                           f"(labels -1): fraction= and the holdout need labelled data; drop the option")
    if vpc is not None or vfr is not None:
        if part not in ("train", "val"):
            given = f" (got part={part})" if part is not None else ""
            raise SelfSupError(f"a holdout (val_per_class / val_fraction) needs part=train or part=val in the data spec{given}")
        train_idx, val_idx = holdout_split(data.labels, val_per_class=vpc, val_fraction=vfr, seed=val_seed)
        data = data.subset(train_idx if part == "train" else val_idx)
    elif part is not None or "val_seed" in options:
        raise SelfSupError(f"{'part' if part is not None else 'val_seed'}= needs a holdout: add val_per_class=N or "
                           f"val_fraction=F to the data spec")
    fraction = _number(options, "fraction", float)
    if fraction is not None:
        data = data.subset(fraction_per_class(data.labels, fraction, seed=seed))
    if "labels" in options:
        data = with_label_file(data, Path(options["labels"]).expanduser())
    return data


# ------------------------------------------------------------------ label files (pseudo-labels)

LABEL_FILE_KEYS = ("labels", "data_fingerprint", "teacher", "num_classes")


def write_label_file(path: str | Path, labels, data: ImageArrayDataset, teacher: str, num_classes: int) -> None:
    """A label file for the images of ``data`` (in its order): an ``.npz`` of plain arrays (no pickle)
    with the labels, the dataset's fingerprint, the teacher that made them and the number of classes."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(data):
        raise SelfSupError(f"{len(labels)} labels for {len(data)} images")
    path = Path(path)                  # a temporary of this process's own (O_EXCL: never a planted link), renamed
    tmp = path.with_name(f".{path.name}.{writer_suffix()}")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, labels=labels, data_fingerprint=np.array(data.fingerprint), teacher=np.array(teacher),
                     num_classes=np.array(num_classes))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SelfSupError(f"cannot write the label file {path} ({exc.strerror}): free disk space or choose a "
                           f"writable location") from None


LABEL_FILE_LIMIT = 1 << 27      # the most labels a label file may hold when the images are not counted
LABEL_FILE_TEXT = 1 << 20       # the most characters of its fingerprint and teacher strings


def _npy_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of ``KEY.npy`` in an .npz, from its header alone: nothing of the array is unpacked."""
    with archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"{key} is an .npy of format version {version}")
        shape, _, dtype = read(f)
    return shape, dtype


def _label_file_problem(key: str, shape: tuple, dtype: np.dtype, count: int | None) -> str | None:
    """What is wrong with array ``key`` of a label file (its shape and dtype), or None."""
    if key == "labels":
        most = LABEL_FILE_LIMIT if count is None else count
        if len(shape) != 1 or dtype.kind not in "iu":
            return f"its labels have dtype {dtype} and shape {shape}, not one integer class index per image"
        if shape[0] > most:
            return f"it holds {shape[0]} labels, more than the {most} images they are for"
    elif key == "num_classes":
        if shape != () or dtype.kind not in "iu":
            return f"its num_classes has dtype {dtype} and shape {shape}, not a whole number"
    elif shape != () or dtype.kind != "U" or dtype.itemsize > 4 * LABEL_FILE_TEXT:
        return f"its {key} has dtype {dtype} and shape {shape}, not a string"
    return None


def read_label_file(path: Path, count: int | None = None) -> dict:
    """The arrays of a label file (``write_label_file``), each checked from its .npy header before it is read:
    integer labels, at most ``count`` of them (the images they label; else LABEL_FILE_LIMIT), an integer
    number of classes, strings of at most LABEL_FILE_TEXT characters. Anything else is refused in one line."""
    regular_file(path, "label file", "give the file `selfsup transfer` wrote")
    try:
        if not zipfile.is_zipfile(path):      # np.load would try a pickle, and advise allowing it
            raise SelfSupError(f"label file {path} is not an .npz archive: give the file `selfsup transfer` wrote")
        with zipfile.ZipFile(path) as archive:
            missing = [k for k in LABEL_FILE_KEYS if f"{k}.npy" not in archive.namelist()]
            if missing:
                raise SelfSupError(f"label file {path} lacks {missing[0]!r}: write it with `selfsup transfer`")
            for key in LABEL_FILE_KEYS:
                problem = _label_file_problem(key, *_npy_header(archive, key), count)
                if problem:
                    raise SelfSupError(f"cannot read label file {path}: {problem}; give the file `selfsup transfer` "
                                       f"wrote")
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k].item() if f[k].ndim == 0 else f[k] for k in LABEL_FILE_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise SelfSupError(f"cannot read label file {path}: {str(exc).splitlines()[0]}") from None


def with_label_file(data: ImageArrayDataset, path: Path) -> ImageArrayDataset:
    """``SPEC?labels=FILE``: the images of SPEC with the labels of FILE (pseudo-labels), which must have
    been written for exactly these images (the dataset's fingerprint is in the file)."""
    f = read_label_file(path, len(data))
    if str(f["data_fingerprint"]) != data.fingerprint or len(f["labels"]) != len(data):
        raise SelfSupError(f"label file {path} was written for other images ({len(f['labels'])} labels, data "
                           f"{f['data_fingerprint']}) than this spec's {len(data)} ({data.fingerprint}): give the "
                           f"spec the labels were made for, or make them again")
    k = int(f["num_classes"])
    if not 1 <= k <= MAX_CLASSES:
        raise SelfSupError(f"label file {path} claims {k} classes: a label file has 1 to {MAX_CLASSES:,}; make "
                           f"the labels again")
    labels = f["labels"]                 # checked in its own dtype: cast first, uint64 2**64-1 would become -1
    wrong = np.flatnonzero((labels < -1) | (labels >= k))
    if len(wrong):
        what = "a negative label" if labels[wrong[0]] < 0 else "label"
        raise SelfSupError(f"label file {path} holds {what} {labels[wrong[0]]} (image {wrong[0]}), outside its {k} "
                           f"classes 0 to {k - 1} (-1: unlabeled): make the labels again")
    labels = labels.astype(np.int64)
    tag = hashlib.sha1(labels.tobytes()).hexdigest()[:12]
    return data.with_labels(labels, [str(i) for i in range(k)], f"labels-{tag}")


# ------------------------------------------------------------------ binary formats

class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR python batches hold: dicts, lists, strings, numbers and uint8/int numpy arrays.

    A pickle can name any callable and so run any code; a batch needs only these."""

    ALLOWED = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
                                         "str", "int", "float", "complex")} | {
        ("_codecs", "encode"),                                  # bytes in protocol 0-2 pickles made by Python 3
        ("numpy", "ndarray"), ("numpy", "dtype"),
        *{(f"numpy.{core}.{mod}", name) for core in ("core", "_core")      # numpy < 2 and >= 2 module paths
          for mod, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise SelfSupError(f"refusing to unpickle {module}.{name} from {self.path}: not a CIFAR batch (a crafted "
                               f"pickle can run code); re-download the dataset from its official source")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    regular_file(path, "CIFAR file", "re-download the dataset")
    with open(path, "rb") as f:
        unpickler = _CifarUnpickler(f, encoding="latin1")
        unpickler.path = path
        try:
            batch = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise SelfSupError(f"cannot read CIFAR batch {path} ({type(exc).__name__}: {exc}): the file is truncated "
                               f"or corrupt; re-download the dataset") from None
    if not isinstance(batch, dict):
        raise SelfSupError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict: re-download the dataset")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}   # b"data": re-pickled


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
    classes = _cifar_classes(meta, _unpickle(meta), names_key)
    parts = [_cifar_batch(f, _unpickle(f), label_key, classes, meta) for f in files]
    images = np.concatenate([x.reshape(-1, 3, 32, 32) for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    return ImageArrayDataset(images, labels, classes, _short_hash(f"{fmt}|{path.resolve()}|{split}|{_stat(files)}"))


def _cifar_classes(meta: Path, batch: dict, names_key: str) -> list[str]:
    """The class names of a CIFAR meta file: a list of strings under ``names_key``, else refused in one line."""
    names = batch.get(names_key)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        what = f"lacks {names_key!r}" if names is None else f"holds {names_key!r} of type {type(names).__name__}"
        raise SelfSupError(f"CIFAR meta file {meta} {what}, not a list of class names: re-download the dataset")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _cifar_batch(file: Path, batch: dict, label_key: str, classes: list[str], meta: Path):
    """(uint8 N x 3072 images, int64 N labels) of one CIFAR batch: exactly what a batch holds (a uint8 array,
    N integer labels of the meta file's classes), anything else refused in one line, never converted."""
    data, labels = batch.get("data"), batch.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        what = ("lacks 'data'" if data is None else f"holds 'data' of {data.dtype} and shape {data.shape}"
                if isinstance(data, np.ndarray) else f"holds 'data' of type {type(data).__name__}")
        raise SelfSupError(f"CIFAR batch {file} {what}, not a uint8 N x 3072 array: re-download the dataset")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.astype(np.int64)
    elif isinstance(labels, list) and all(isinstance(v, (int, np.integer)) for v in labels):
        labels = np.array([v if 0 <= v < len(classes) else -1 for v in labels], dtype=np.int64).reshape(-1)
    else:
        what = f"lacks {label_key!r}" if labels is None else f"holds {label_key!r} of type {type(labels).__name__}"
        raise SelfSupError(f"CIFAR batch {file} {what}, not a list of integer labels: re-download the dataset")
    if len(labels) != len(data):
        raise SelfSupError(f"CIFAR batch {file} holds {len(data)} images and {len(labels)} labels: the file is "
                           f"damaged; re-download the dataset")
    wrong = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(wrong):
        value = batch[label_key][wrong[0]]
        raise SelfSupError(f"CIFAR batch {file} holds label {value} (image {wrong[0]}), outside the {len(classes)} "
                           f"classes of {meta.name} (0 to {len(classes) - 1}): re-download the dataset")
    return data, labels


def _stat(files) -> str:
    return ",".join(f"{Path(f).stat().st_size}:{Path(f).stat().st_mtime_ns}" for f in files)


def read_stl10(path: Path, split: str) -> ImageArrayDataset:
    if (path / "stl10_binary").is_dir():
        path = path / "stl10_binary"
    parts = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"], "train+unlabeled": ["train", "unlabeled"]}
    if split not in parts:
        raise SelfSupError(f"stl10 has no split {split!r}: use one of {', '.join(parts)}")
    names_file = path / "class_names.txt"
    if names_file.exists():
        regular_file(names_file, "STL-10 class names", "re-download the dataset")
    classes = names_file.read_text().split() if names_file.exists() else [str(i) for i in range(10)]
    images, labels, files = [], [], []
    for part in parts[split]:
        xf = path / f"{part}_X.bin"
        if not xf.exists():
            raise SelfSupError(f"{path} lacks {xf.name}: point at the stl10_binary folder")
        if regular_file(xf, "STL-10 file", "re-download the dataset").st_size % (3 * 96 * 96):
            raise SelfSupError(f"{xf} is not whole 3 x 96 x 96 images ({xf.stat().st_size} bytes): the file is "
                               f"truncated or damaged; re-download the dataset")
        x = np.memmap(xf, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
        images.append(np.transpose(x, (0, 1, 3, 2)))            # stored column-major
        files.append(xf)
        if part == "unlabeled":
            labels.append(np.full(len(x), -1, dtype=np.int64))
            continue
        yf = path / f"{part}_y.bin"
        if not yf.is_file() or yf.stat().st_size != len(x):
            got = f"{yf.stat().st_size} labels" if yf.is_file() else "missing, or not a file"
            raise SelfSupError(f"{yf} must hold one label byte for each of the {len(x)} images of {xf.name} "
                               f"({got}): re-download the dataset")
        y = np.fromfile(yf, dtype=np.uint8).astype(np.int64)
        wrong = np.flatnonzero((y < 1) | (y > len(classes)))
        if len(wrong):
            raise SelfSupError(f"{yf} holds label {y[wrong[0]]} (image {wrong[0]}): STL-10 labels are 1 to "
                               f"{len(classes)}, the classes of {names_file.name if names_file.exists() else 'STL-10'}; "
                               f"re-download the dataset")
        labels.append(y - 1)
    images = images[0] if len(images) == 1 else np.concatenate(images)
    return ImageArrayDataset(images, np.concatenate(labels), classes,
                             _short_hash(f"stl10|{path.resolve()}|{split}|{_stat(files)}"))


IDX_GZIP_BYTES = 1 << 30     # the most a gzipped IDX file may unpack to (MNIST's images: 47 MB)


def _read_idx_file(path: Path, ndim: int) -> np.ndarray:
    """The array of an unsigned-byte IDX file of ``ndim`` dimensions (3: images, 1: labels), read no further
    than its header says: a file of other dimensions, or that holds fewer or more bytes than they need, is
    refused, and a gzipped one that would unpack to over IDX_GZIP_BYTES is refused unread."""
    st = regular_file(path, "IDX file", "give the dataset's files")
    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\0\0\x08":
                raise SelfSupError(f"{path} is not an unsigned-byte IDX file: check the file or re-install the dataset")
            if head[3] != ndim:
                raise SelfSupError(f"{path} holds an array of {head[3]} dimensions, not {ndim} "
                                   f"({'N x H x W images' if ndim == 3 else 'N labels'}): re-install the dataset")
            dims = [int(d) for d in np.frombuffer(f.read(4 * ndim).ljust(4 * ndim, b"\0"), dtype=">u4")]
            expected = int(np.prod(dims, dtype=object))
            if gz and expected > IDX_GZIP_BYTES:
                raise SelfSupError(f"{path} claims a {' x '.join(map(str, dims))} array ({expected:,} bytes "
                                   f"unpacked), over the {IDX_GZIP_BYTES:,} bytes that a gzipped IDX file may "
                                   f"unpack to: re-install the dataset")
            if not gz and expected > st.st_size:
                raw = b""                    # truncated: said below, without reading
            else:
                raw = f.read(expected + 1)   # one byte more: a file longer than its header says is damaged too
    except (OSError, EOFError, zlib.error) as exc:
        raise SelfSupError(f"cannot read {path} ({exc}): the file is truncated or corrupt; re-install the "
                           f"dataset") from None
    if len(raw) < expected:
        raise SelfSupError(f"{path} is truncated ({len(raw)} of {expected} bytes): re-install the dataset")
    if len(raw) > expected:
        raise SelfSupError(f"{path} holds more bytes than its header's {' x '.join(map(str, dims))}: the file is "
                           f"damaged; re-install the dataset")
    return np.frombuffer(raw, dtype=np.uint8, count=expected).reshape(dims)


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
    images = _read_idx_file(image_file, 3)[:, None]
    labels = _read_idx_file(label_file, 1).astype(np.int64)
    classes = FASHION_CLASSES if fashion else [str(i) for i in range(10)]
    if len(images) != len(labels) or not len(images):
        raise SelfSupError(f"{path}: {image_file.name} holds {len(images)} images and {label_file.name} "
                           f"{len(labels)} labels: they must be the same number, at least 1; re-install the dataset")
    if labels.max() >= len(classes):
        raise SelfSupError(f"{label_file} holds label {labels.max()} (image {int(labels.argmax())}), outside the "
                           f"{len(classes)} classes 0 to {len(classes) - 1}: re-install the dataset")
    return ImageArrayDataset(images, labels, classes,
                             _short_hash(f"idx|{path.resolve()}|{split}|{_stat([image_file, label_file])}"))


# ------------------------------------------------------------------ image files

GRAY_MODES = ("1", "L", "LA", "La", "I", "F")       # and "I;16..."; "P" (palette) and "PA" count as colour
PROBE_HEAD = 1 << 16                 # bytes read to probe an image's header once KEEP_BYTES is spent
KEEP_BYTES = 256 << 20               # bytes of probed images kept for decoding: a small set is read only once
MAX_IMAGE_BYTES = 1 << 30            # no image file is larger: a bigger file or tar member is refused unread


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def regular_file(path: Path, what: str, fix: str) -> os.stat_result:
    """The stat (following links) of the dataset, label or meta file ``path``, checked before it is opened:
    anything but a regular file is refused in one line (a FIFO would block its reader, a device never end)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SelfSupError(f"cannot read {what} {path} ({exc.strerror}): {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SelfSupError(f"{what} {path} is {_file_kind(st.st_mode)}, not a file: {fix}")
    return st


def image_file_problem(what, st: os.stat_result) -> SelfSupError | None:
    """Why the file ``what`` of stat ``st`` (taken following links) is no image file, or None: only a regular
    file of at most MAX_IMAGE_BYTES is read (a device, e.g. a link to /dev/zero, never ends; a FIFO blocks)."""
    if not stat.S_ISREG(st.st_mode):
        return SelfSupError(f"{what} is {_file_kind(st.st_mode)}, not an image file: images are regular files; "
                            f"remove it (or the link to it)")
    return _over_image_bound(what, st.st_size, "remove it, or keep only images in the data")


def _over_image_bound(what, size: int, fix: str) -> SelfSupError | None:
    """A file or tar member of ``size`` bytes over MAX_IMAGE_BYTES is no image: its refusal, else None."""
    if size > MAX_IMAGE_BYTES:
        return SelfSupError(f"{what} is {size:,} bytes, over the {MAX_IMAGE_BYTES:,} bytes that any image file "
                            f"stays under: {fix}")
    return None


def tar_member_problem(what, member: tarfile.TarInfo) -> SelfSupError | None:
    """Why a regular tar member is no image file, or None: a sparse member (its holes would be read as
    zeros, gigabytes of them from a tiny tar) or one over MAX_IMAGE_BYTES is refused unread."""
    if member.issparse():
        return SelfSupError(f"{what} is a sparse tar member ({member.size / 2**30:.1f} GiB unpacked), not an image: "
                            f"re-create the tar without --sparse, holding only images")
    return _over_image_bound(what, member.size, "re-create the tar with only images")


def read_image_file(file, limit: int = -1) -> bytes:
    """The bytes of one image file (its first ``limit``), refused in one line unless it is a regular file of at
    most MAX_IMAGE_BYTES (``image_file_problem``): checked on the open file, which a FIFO opens without waiting.
    A file that cannot be opened raises OSError."""
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        problem = image_file_problem(file, os.fstat(fd))
        if problem:
            raise problem
        return f.read(limit)


def walk(root: Path):
    """(folder, its file names) for ``root`` and every folder under it, following symlinked folders (a linked
    class folder is a class); a link back to a folder it is inside (a loop) is skipped with a warning."""
    chains = {str(root): {os.path.realpath(root)}}      # each folder's real path and its ancestors'
    for top, dirs, files in os.walk(root, followlinks=True):     # a folder it cannot list: skipped
        dirs.sort()
        for d in list(dirs):
            try:
                real = os.path.realpath(os.path.join(top, d))
            except OSError:                             # gone while walking (e.g. a process's folder in /proc)
                dirs.remove(d)
                continue
            inside = real.rstrip(os.sep) + os.sep
            if any(c == real or c.startswith(inside) for c in chains[top]):    # e.g. a link to / or to ..
                dirs.remove(d)
                warnings.warn(f"skipped {os.path.join(top, d)}: a link to {real}, which holds it (a loop)")
            else:
                chains[os.path.join(top, d)] = chains[top] | {real}
        yield top, files


def tar_end_problem(tar: tarfile.TarFile) -> str | None:
    """Why an uncompressed tar whose member headers have all been read is cut or damaged, or None. It ends
    with two zero blocks where the headers stop: the headers stop where the file does when it was cut at a
    member boundary, past its end when cut inside a member, and (tarfile says nothing) at a damaged header in
    the middle."""
    try:
        tar.fileobj.seek(tar.offset)
        end = tar.fileobj.read(1024)
    except OSError as exc:
        return str(exc)
    if len(end) < 1024:
        return "no end-of-archive marker"
    if end.count(0) != 1024:
        return f"a damaged member header at byte {tar.offset}"
    return None


class _Source:
    """Reads the bytes of image files from a folder or, in place, from a tar."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = None
        if path.is_file():
            try:
                self.tar = tarfile.open(path)
            except tarfile.ReadError:
                raise SelfSupError(f"cannot open {path} as a tar file: it is not a tar archive (plain, .gz, .bz2 or "
                                   f".xz); check the file, or give FORMAT:PATH") from None
            except (tarfile.TarError, OSError) as exc:
                raise SelfSupError(f"cannot open {path} as a tar file ({exc}): check the file") from None
            try:
                self.members = {m.name.lstrip("./"): m for m in self.tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise self._corrupt(exc) from None
            problem = tar_end_problem(self.tar) if isinstance(self.tar.fileobj, io.BufferedReader) else None
            if problem:                                  # checked on uncompressed tars, read in place
                raise self._corrupt(problem)

    def _corrupt(self, why) -> SelfSupError:
        return SelfSupError(f"cannot read tar {self.path}: truncated or corrupt ({why}): re-create or re-download it")

    def files(self) -> list[str]:
        if self.tar is not None:
            return sorted(self.members)
        return sorted(Path(top, f).relative_to(self.path).as_posix() for top, files in walk(self.path) for f in files)

    def read(self, name: str, limit: int = -1) -> bytes:
        """The file's bytes, or its first ``limit`` bytes."""
        if self.tar is not None:
            problem = tar_member_problem(self.display(name), self.members[name])
            if problem:
                raise problem
            try:
                return self.tar.extractfile(self.members[name]).read(limit)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise self._corrupt(exc) from None
        try:
            return read_image_file(self.path / name, limit)
        except OSError as exc:
            raise SelfSupError(f"cannot read image {self.path / name} ({exc.strerror}): fix the file or its "
                               f"permissions, or remove it") from None

    def read_order(self, names: list[str]) -> list[int]:
        if self.tar is None:
            return list(range(len(names)))
        return sorted(range(len(names)), key=lambda i: self.members[names[i]].offset_data)

    def display(self, name: str) -> str:
        return f"{self.path}:{name}" if self.tar is not None else str(self.path / name)


MAX_ASPECT = 2               # fit="keep": the long side is kept up to this many times the short side


def kept_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(h, w) of an image of ``width`` x ``height`` under fit="keep": the short side resized to ``size``, the
    long side in proportion, centre-cropped to at most MAX_ASPECT x ``size``."""
    scale = size / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    return min(h, MAX_ASPECT * size), min(w, MAX_ASPECT * size)


def eight_bit(im: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer grayscale image ("I;16*", "I") scaled to 8 bits ("L"), other images as they are:
    Pillow's ``convert`` clips such values at 255, which turns a 16-bit image almost white. Values up to 65535
    are read as 16-bit (divided by 257); an "I" image with larger values as 32-bit (0 .. 2**31 - 1)."""
    if im.mode != "I" and not im.mode.startswith("I;16"):
        return im
    values = np.asarray(im).astype(np.float64)
    top = 65535 if values.max(initial=0) <= 65535 else 2 ** 31 - 1
    return Image.fromarray(np.clip(np.round(values * (255 / top)), 0, 255).astype(np.uint8), "L")


def _decode(data: bytes, size: int | None, mode: str, fit: str = "crop") -> np.ndarray:
    """C x H x W uint8. ``fit="crop"``: resize the short side to ``size``, then center-crop size x size;
    ``fit="keep"``: resize the short side to ``size`` and keep the aspect ratio (``kept_size``: the long side
    centre-cropped to at most MAX_ASPECT x size); ``fit="squash"``: resize to exactly size x size, ignoring the
    aspect ratio (Goyal's VOC07 transform, METHODS.md 6.1).

    Pixels in their stored orientation: an EXIF orientation tag is not applied, on this path, on the streaming
    path (``selfsup.data.stream``) and by the batched JPEG decoders alike, so the same file gives the same
    pixels whichever path reads it. That is what the published pipelines trained and evaluated on: torchvision's
    ImageFolder loader (``Image.open(f).convert("RGB")``) and ``torchvision.io.decode_jpeg``
    (``apply_exif_orientation=False``) do not rotate either; and the caches decoded so far stay valid."""
    with Image.open(io.BytesIO(data)) as im:
        im = eight_bit(im).convert(mode)
        if size is not None and im.size != (size, size) and fit == "squash":
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
        elif size is not None and im.size != (size, size):
            scale = size / min(im.size)
            w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
            im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
            ch, cw = kept_size(w, h, size) if fit == "keep" else (size, size)
            # offsets such that the centre size x size of the kept image is exactly the fit="crop" image
            left, top = (w - size) // 2 - (cw - size) // 2, (h - size) // 2 - (ch - size) // 2
            im = im.crop((left, top, left + cw, top + ch))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _header(blob: bytes):
    try:
        with Image.open(io.BytesIO(blob)) as im:        # lazy: reads the header, decodes no pixels
            return im.mode, im.size
    except Exception:
        return None


def _read_head(file: str) -> bytes:
    """The first PROBE_HEAD bytes of a file: enough for its header."""
    return read_image_file(file, PROBE_HEAD)


def _probe_all(source: _Source, names: list[str]) -> tuple[list, dict]:
    """(mode, (width, height)) of every image from its header, None where unreadable; and {index: bytes} of
    the files read whole, kept for decoding while they total at most KEEP_BYTES."""
    kept, used = {}, [0]

    def probe(i):
        if used[0] < KEEP_BYTES:                     # read it whole, once
            kept[i] = blob = source.read(names[i])
            used[0] += len(blob)
            return _header(blob)
        head = source.read(names[i], PROBE_HEAD)
        found = _header(head)
        if found is None and len(head) == PROBE_HEAD:    # a header past the first bytes (e.g. a TIFF's)
            found = _header(source.read(names[i]))
        return found

    if source.tar is not None:                   # a tar handle is not thread-safe: one pass in archive order
        found = [None] * len(names)
        for i in source.read_order(names):
            found[i] = probe(i)
        return found, kept
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(probe, range(len(names)))), kept


def _is_gray(mode: str) -> bool:
    return mode in GRAY_MODES or mode.startswith("I;16")


def _side_rule(sizes: list[tuple[int, int]]) -> int:
    """The decoded side of a set of (width, height): their side when all are one square size, else the median
    short side, at most 256."""
    if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1]:
        return sizes[0][0]
    shorts = sorted(min(s) for s in sizes)
    return min(256, shorts[(len(shorts) - 1) // 2])


def _choose_size(path: Path, sizes: list[tuple[int, int]]) -> int:
    """The images' side if they all share one square size; else the median short side, at most 256, with a warning."""
    distinct = set(sizes)
    size = _side_rule(sizes)
    if len(distinct) == 1 and sizes[0][0] == sizes[0][1]:
        return size
    shorts = sorted(min(s) for s in sizes)
    if len(distinct) == 1:
        how = f"are all {sizes[0][0]}x{sizes[0][1]}, not square"
    else:
        how = f"differ in size ({len(distinct)} distinct sizes, short sides {shorts[0]} to {shorts[-1]} px)"
    warnings.warn(f"images in {path} {how}: resizing each to a short side of {size} px (the median short side, "
                  f"at most 256), keeping its aspect ratio for training crops, centre-cropped to {size}x{size} for "
                  f"evaluation; add ?size=N to the data spec to choose another")
    return size


def _tmp(cache: Path, fingerprint: str, what: str) -> Path:
    """A temporary file of one cache entry, named after its writer (host and pid) so that leftovers can be found."""
    return cache / f".{fingerprint}.{what}.{writer_suffix()}"


def _remove_stale_tmps(cache: Path, fingerprint: str) -> None:
    """Delete this entry's temporary files left by a killed writer (``remove_dead_temporaries``)."""
    remove_dead_temporaries(cache, f".{fingerprint}.")


def _decode_all(source: _Source, names: list[str], labels: list[int], classes: list[str], size: int | None,
                cache: Path, fingerprint: str, *, fit: str = "keep", mode: str | None = None, size_rule=None,
                targets: np.ndarray | None = None) -> ImageArrayDataset:
    """Decode every image once into ``cache/<fingerprint>.npy`` (memory-mapped), skipping corrupt files.

    Every image's header decides: colour (3 channels) unless all readable images are grayscale or ``mode`` is
    given ("RGB" or "L"), and the size unless ``size`` is given: ``size_rule(sizes)`` of the readable images'
    (width, height), by default ``_choose_size``. ``fit`` is how an image is stored (see ``_decode``): with
    "keep", images that do not all become size x size keep their aspect ratio, padded into one array with
    their true sizes (``<fingerprint>.sizes.npy``; the dataset's ``images`` are then their centre crops).
    ``targets`` (N x C, multi-label) are saved as ``<fingerprint>.targets.npy``, minus the rows of corrupt files."""
    images_file, labels_file = cache / f"{fingerprint}.npy", cache / f"{fingerprint}.labels.npy"
    cached = _cached(cache, fingerprint)
    if cached is not None:
        return cached
    probes, kept = _probe_all(source, names)
    readable = [p for p in probes if p is not None]
    if not readable:
        raise SelfSupError(f"no readable image in {source.path}: check that the files are images")
    if mode is None:
        mode = "L" if all(_is_gray(m) for m, _ in readable) else "RGB"
    if size is None:
        sizes = [s for _, s in readable]
        size = size_rule(sizes) if size_rule is not None else _choose_size(source.path, sizes)
    shape = (size, size)
    if fit == "keep":
        dims = [kept_size(w, h, size) for _, (w, h) in readable]
        fit = "crop" if all(d == (size, size) for d in dims) else "keep"
        shape = (max(h for h, _ in dims), max(w for _, w in dims))
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(cache, fingerprint)
    tmp, tmp2 = _tmp(cache, fingerprint, "npy"), _tmp(cache, fingerprint, "npy2")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(names), 1 if mode == "L" else 3) + shape)
        ok = np.zeros(len(names), dtype=bool)
        true_sizes = np.zeros((len(names), 2), dtype=np.int64)

        def decode(item):
            i, blob = item
            try:
                arr = _decode(blob, size, mode, fit)[:, :shape[0], :shape[1]]
                out[i, :, :arr.shape[1], :arr.shape[2]] = arr
                true_sizes[i] = arr.shape[1:]
                ok[i] = True
            except Exception:
                pass

        # read serially (a tar handle is not thread-safe; tar members in archive order), decode in threads
        order = [i for i in source.read_order(names) if probes[i] is not None]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for start in range(0, len(order), 1024):
                chunk = order[start:start + 1024]
                list(pool.map(decode, [(i, kept.pop(i) if i in kept else source.read(names[i])) for i in chunk]))
        bad = np.flatnonzero(~ok)
        if len(bad) == len(names):
            raise SelfSupError(f"every image in {source.path} failed to decode: check that the files are images")
        if len(bad):
            warnings.warn(f"skipped {len(bad)} corrupt image(s) in {source.path} (first: {source.display(names[bad[0]])})")
            keep = np.flatnonzero(ok)
            compact = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(keep),) + out.shape[1:])
            for start in range(0, len(keep), 4096):
                compact[start:start + 4096] = out[keep[start:start + 4096]]
            compact.flush()
            del out, compact
            os.replace(tmp2, tmp)
            labels = [labels[i] for i in keep]
            targets = None if targets is None else np.asarray(targets)[keep]
            true_sizes = true_sizes[keep]
        else:
            out.flush()
            del out
        if fit == "keep":
            sizes_tmp = _tmp(cache, fingerprint, "sizes.npy")
            with open(sizes_tmp, "wb") as f:
                np.save(f, true_sizes)
            os.replace(sizes_tmp, cache / f"{fingerprint}.sizes.npy")
        labels_tmp, classes_tmp = _tmp(cache, fingerprint, "labels.npy"), _tmp(cache, fingerprint, "classes.json")
        with open(labels_tmp, "wb") as f:
            np.save(f, np.asarray(labels, dtype=np.int64))
        os.replace(labels_tmp, labels_file)
        classes_tmp.write_text(json.dumps(classes))
        os.replace(classes_tmp, cache / f"{fingerprint}.classes.json")
        if targets is not None:
            targets_tmp = _tmp(cache, fingerprint, "targets.npy")
            with open(targets_tmp, "wb") as f:
                np.save(f, np.asarray(targets, dtype=np.int8))
            os.replace(targets_tmp, cache / f"{fingerprint}.targets.npy")
        os.replace(tmp, images_file)              # last: its presence marks a complete cache entry
    finally:
        for leftover in (tmp, tmp2):
            leftover.unlink(missing_ok=True)
    return _cached(cache, fingerprint)


def _cached(cache: Path, fingerprint: str) -> ImageArrayDataset | None:
    images_file = cache / f"{fingerprint}.npy"
    if not images_file.exists():
        return None
    classes = json.loads((cache / f"{fingerprint}.classes.json").read_text())
    targets_file, sizes_file = cache / f"{fingerprint}.targets.npy", cache / f"{fingerprint}.sizes.npy"
    targets = np.load(targets_file) if targets_file.exists() else None
    images, labels = np.load(images_file, mmap_mode="r"), np.load(cache / f"{fingerprint}.labels.npy")
    if sizes_file.exists():                  # stored at their own aspect ratio: the short side is the size
        sizes = np.load(sizes_file)
        return ImageArrayDataset(CenterCrops(images, sizes, int(sizes.min())), labels, classes, fingerprint,
                                 targets, images, sizes)
    return ImageArrayDataset(images, labels, classes, fingerprint, targets)


def _stat_line(file, st: os.stat_result | None = None) -> str:
    """Name, size and modification time of one file (``st``: its stat, when taken already): enough to notice a
    changed file without reading it."""
    st = st or os.stat(file)
    return f"{file}|{st.st_size}|{st.st_mtime_ns}\n"


def files_digest(files, missing_ok: bool = False) -> str:
    """sha1 of every file's name, size and modification time (``_stat_line``), in order: the part of a cache key
    that changes when any image is replaced, even in place under the same name. ``missing_ok``: a file that does
    not exist counts as missing instead of raising OSError."""
    h = hashlib.sha1()
    for f in files:
        try:
            h.update(_stat_line(f).encode())
        except OSError:
            if not missing_ok:
                raise
            h.update(f"{f}|missing\n".encode())
    return h.hexdigest()


def _folder_entries(source: _Source, path: Path, split: str | None) -> tuple[list[str], list[int], list[str]]:
    """(names, labels, classes) of an image folder (or tar) of class subfolders, names relative to ``path``."""
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
        raise SelfSupError(f"no images inside class subfolders of {path}: put each class's images in a folder of "
                           f"its own, or give unlabeled:{path} for images without classes")
    classes = sorted({p[0] for p in parts})
    index = {c: i for i, c in enumerate(classes)}
    return [prefix + "/".join(p) for p in parts], [index[p[0]] for p in parts], classes


def _tar_identity(path: Path) -> str:
    """Path, size and time of a tar: they change when any member does."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def read_imagefolder(path: Path, split: str | None, size: int | None, cache_root: Path, unlabeled: bool = False,
                     options: dict | None = None):
    """Class subfolders (``unlabeled``: any tree of images, labels -1), decoded into memory, or streamed when
    ``stream=1`` or when the decoded array would not fit in half of the RAM (``selfsup.data.stream``)."""
    options = options or {}
    if not path.is_dir():
        regular_file(path, "data path", "pass a folder or a .tar of images")
    kind = "unlabeled" if unlabeled else "imagefolder"
    mode = channel_mode(options)
    shape = f"{size}" if mode is None else f"{size}|{mode}"      # as before when channels= is not given
    if path.is_file() and options.get("stream") in (None, "0", "auto"):
        # a tar: its size and time identify it, no need to list it again
        st = path.stat()
        early = _short_hash(f"{kind}-tar-v3|{path.resolve()}|{split}|{shape}|{st.st_size}|{st.st_mtime_ns}")
        if unlabeled:
            early = _short_hash(f"unlabeled|{early}")
        cached = _cached(cache_root / "arrays", early)
        if cached is not None:
            return cached
    source = _Source(path)
    if unlabeled:
        from selfsup.data.stream import list_unlabeled
        names = list_unlabeled(source, path, split)
        labels, classes = [-1] * len(names), []
    else:
        names, labels, classes = _folder_entries(source, path, split)
    from selfsup.data.stream import choose_stream, stream_set
    if choose_stream(len(names), size, options.get("stream"), str(path), lambda n: source.read(n, PROBE_HEAD),
                     names):
        if path.is_file():
            return stream_set(Path("/"), names, labels, classes, f"{kind}|{split}|{_tar_identity(path)}", options,
                              tar=path)
        # a folder's fingerprint covers every file's name, size and time, stat'ed when a cache first needs it
        return stream_set(path, names, labels, classes, f"{kind}|{split}|{path.resolve()}", options, stat_files=True)
    if path.is_file():
        fingerprint = early
    else:                                   # every file's name, size and time: a changed image is decoded again
        digest = files_digest(path / n for n in names)
        fingerprint = _short_hash(f"imagefolder-v3|{path.resolve()}|{split}|{shape}|{digest}")
        if unlabeled:
            fingerprint = _short_hash(f"unlabeled|{fingerprint}")
    return _decode_all(source, names, labels, classes, size, cache_root / "arrays", fingerprint, mode=mode)


def read_filelist(path: Path, size: int | None, cache_root: Path, options: dict | None = None):
    """``path label`` lines, or ``path`` alone (unlabeled: -1); decoded into memory, or streamed (stream=1, or
    too large for memory). Either way every listed file is stat'ed once (about 0.1 to 0.3 s per 50,000 local
    files): a line naming a missing file or a folder is refused in one line, so the choice of path (which
    ``stream=auto`` makes from the RAM) never changes what is accepted, and the names, sizes and times key the
    caches."""
    options = options or {}
    mode = channel_mode(options)
    names, labels, stats = [], [], []
    regular_file(path, "file list", "give a text file of 'path label' lines")
    lines = path.read_text().splitlines()
    stream = options.get("stream") == "1"
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)            # any whitespace: a space or a tab before the label
        item, label = parts if len(parts) == 2 else ("", line)
        try:
            labels.append(int(label))
        except ValueError:
            whole = Path(line).expanduser()
            whole = whole if whole.is_absolute() else path.parent / whole
            if len(parts) == 2 and not whole.is_file():
                raise SelfSupError(f"{path} line {number}: expected 'path label' with an integer label, or a path "
                                   f"alone (unlabeled), got {line!r}") from None
            item = line                             # a path alone: unlabeled
            labels.append(-1)
        if labels[-1] >= MAX_CLASSES:
            raise SelfSupError(f"{path} line {number}: label {labels[-1]} is not a class index: labels are 0 to "
                               f"{MAX_CLASSES - 1:,} (-1: unlabeled); renumber the classes")
        file = Path(item.strip()).expanduser()
        file = Path(os.path.abspath(file if file.is_absolute() else path.parent / file))
        try:                                    # on both paths: stream=auto must not change what is accepted
            st = os.stat(file)
        except OSError:
            raise SelfSupError(f"{path} line {number}: image {file} does not exist: fix the path or drop the "
                               f"line") from None
        problem = image_file_problem(file, st)
        if problem:
            raise SelfSupError(f"{path} line {number}: {problem}")
        stats.append(_stat_line(file, st))
        names.append(str(file))
    if not names:
        raise SelfSupError(f"file list {path} names no images: write one 'path label' per line")
    if min(labels) < -1:
        raise SelfSupError(f"labels in {path} must be 0 or more (-1: unlabeled), found {min(labels)}: renumber the classes")
    # Any integer labels: the classes are 0 .. the largest label, so a label is its class index, and a class
    # without images (an empty cluster of pseudo-labels) is kept, said once.
    num_classes = max(labels) + 1
    empty = sorted(set(range(num_classes)) - set(labels))
    digest = hashlib.sha1("".join(stats).encode()).hexdigest()   # the listed images too, not only the list
    st = path.stat()
    from selfsup.data.stream import choose_stream, stream_set
    if stream or (options.get("stream") != "0" and choose_stream(len(names), size, options.get("stream"), str(path),
                                                                 _read_head, names)):
        return stream_set(Path("/"), [n.lstrip("/") for n in names], labels, [str(c) for c in range(num_classes)],
                          f"filelist|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{digest}", options)
    if empty:
        print(f"file list {path}: {len(empty)} of the {num_classes} classes 0..{num_classes - 1} have no image "
              f"(e.g. {', '.join(map(str, empty[:5]))}); kept as classes")
    source = _Source(Path("/"))
    shape = f"{size}" if mode is None else f"{size}|{mode}"      # as before when channels= is not given
    fingerprint = _short_hash(f"filelist-v3|{path.resolve()}|{shape}|{st.st_size}|{st.st_mtime_ns}|{digest}")
    return _decode_all(source, [n.lstrip("/") for n in names], labels, [str(c) for c in range(num_classes)], size,
                       cache_root / "arrays", fingerprint, mode=mode)


# ------------------------------------------------------------------ synthetic

SYNTHETIC_BYTES = 2 << 30          # the largest synthetic set, in bytes of uint8 images


def synthetic(count: str, options: dict) -> ImageArrayDataset:
    """``synthetic:N?classes=10&size=32&channels=3&seed=0``: N images, each class a
    distinct oriented grating with its own colour, random phase, position and noise. ``split=test``: N other
    images of the same classes (another random stream of the same seed); ``split=train`` is the default."""
    try:
        n = int(count)
    except ValueError:
        raise SelfSupError(f"synthetic data needs a count, e.g. synthetic:1000, got {count!r}") from None
    if n < 1:
        raise SelfSupError(f"synthetic data needs a positive count, e.g. synthetic:1000, got {count!r}")
    k, size = _positive(options, "classes", 10, example=10), _positive(options, "size", 32)
    channels, seed = 1 if channel_mode(options) == "L" else 3, _seed(options, "seed")
    split = options.get("split", "train")
    if split not in ("train", "test"):
        raise SelfSupError(f"synthetic data has no split {split!r}: use split=train (the default) or split=test")
    if n * channels * size * size > SYNTHETIC_BYTES:
        raise SelfSupError(f"synthetic:{n}?size={size} would take {n * channels * size * size:,} bytes: "
                           f"synthetic data is for tests, keep images x channels x size x size under "
                           f"{SYNTHETIC_BYTES:,} (fewer images or a smaller size=)")
    rng = np.random.default_rng(seed if split == "train" else [seed, 1])
    labels = np.arange(n) % k
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * labels / k
    freq = 2 + (labels % 3)
    phase = rng.uniform(0, 2 * np.pi, n)
    hue = (labels / k)[:, None]
    colour = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])[None]))[:, :channels]
    images = np.empty((n, channels, size, size), dtype=np.uint8)
    step = max(1, (1 << 22) // (channels * size * size))    # images at a time: the float arrays stay small
    for s in (slice(start, start + step) for start in range(0, n, step)):
        wave = np.sin(2 * np.pi * freq[s, None, None] * (np.cos(angle[s])[:, None, None] * xx
                                                         + np.sin(angle[s])[:, None, None] * yy) + phase[s, None, None])
        noise = rng.standard_normal((len(wave), channels, size, size))     # drawn in order: the same stream
        img = 0.5 + 0.35 * wave[:, None] * colour[s, :, None, None] + 0.08 * noise
        images[s] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    identity = f"synthetic|{n}|{k}|{size}|{channels}|{seed}" + ("|test" if split == "test" else "")
    return ImageArrayDataset(images, labels.astype(np.int64), [f"class{i}" for i in range(k)], _short_hash(identity))
