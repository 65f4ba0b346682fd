"""``voc07:DIR``: a PASCAL VOC2007-layout folder as a multi-label ``ImageArrayDataset`` (METHODS.md 6.1, 6.3).

The layout: ``DIR/JPEGImages/<id>.jpg`` and ``DIR/ImageSets/Main/<class>_<split>.txt``, one ``<id> <v>`` per line,
where VOC writes v = 1 present, -1 absent, 0 difficult only. DIR may also be the folder holding ``VOC2007/`` or
``VOCdevkit/VOC2007/``. Options: ``split=trainval|test|train|val`` (default trainval) and ``size=N``.

The result's ``targets`` (int8 N x 20 for VOC) follow Goyal et al.'s code, which remaps VOC's values
(``create_voc_data_files.py``): 1 present, 0 absent, -1 difficult. The classes are the sorted class names of the
split's files; the images are ``ImageSets/Main/<split>.txt``'s ids in its order (else the first class file's).
Every image is resized to exactly size x size, aspect ratio ignored, as Goyal's VOC07 feature transform does
(resize the short side to 256, then resize to exactly 224 x 224); size defaults to min(224, median short side),
so real VOC gets 224 and a set of 64 px mosaics (``selfsup.data.mosaic``) stays 64. Colour is always RGB.
Decoded images are cached like the other image formats (``datasets._decode_all``); corrupt images are skipped
with a warning, and their target rows with them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from selfsup.data.datasets import ImageArrayDataset, _decode_all, _short_hash, _Source, _stat_line, image_file_problem
from selfsup.errors import SelfSupError

SPLITS = ("trainval", "test", "train", "val")
VOC_TO_TARGET = {1: 1, -1: 0, 0: -1}          # VOC file value -> target: present, absent, difficult


def voc_root(path: Path) -> Path:
    """The folder holding ``JPEGImages`` and ``ImageSets``: PATH, PATH/VOC2007 or PATH/VOCdevkit/VOC2007."""
    for root in (path, path / "VOC2007", path / "VOCdevkit" / "VOC2007"):
        if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Main").is_dir():
            return root
    raise SelfSupError(f"{path} is not a VOC2007 folder: point voc07: at the folder holding JPEGImages/ and "
                       f"ImageSets/Main/ (or VOC2007/ or VOCdevkit/VOC2007/)")


def _read_class_file(file: Path) -> dict[str, int]:
    """{id: VOC value} of one ``<class>_<split>.txt``."""
    values = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise SelfSupError(f"{file} line {number}: expected '<id> <1|-1|0>', got {line.strip()!r}: "
                               f"fix or re-extract the file")
        if fields[0] in values:
            raise SelfSupError(f"{file} lists image {fields[0]} twice (line {number}): remove the duplicate line")
        values[fields[0]] = int(fields[1])
    return values


def read_voc07_targets(root: Path, split: str) -> tuple[list[str], list[str], np.ndarray, list[Path]]:
    """(classes, image ids, int8 targets N x C with 1 present / 0 absent / -1 difficult, the files read)."""
    if split not in SPLITS:
        raise SelfSupError(f"voc07 has no split {split!r}: use split=trainval, test, train or val")
    main = root / "ImageSets" / "Main"
    suffix = f"_{split}.txt"
    class_files = sorted(f for f in main.glob(f"*{suffix}") if f.is_file() and len(f.name) > len(suffix))
    if not class_files:
        raise SelfSupError(f"{main} has no <class>{suffix} files: use a split the folder has "
                           f"(split=trainval|test|train|val) or re-extract the VOC ImageSets")
    classes = [f.name[:-len(suffix)] for f in class_files]
    per_class = [_read_class_file(f) for f in class_files]
    list_file = main / f"{split}.txt"
    if list_file.is_file():
        ids = list_file.read_text().split()
        source_name = list_file.name
    else:
        ids, source_name = list(per_class[0]), class_files[0].name
    if len(set(ids)) != len(ids):
        raise SelfSupError(f"{main / source_name} lists an image id twice: remove the duplicate")
    if not ids:
        raise SelfSupError(f"{main / source_name} lists no images: re-extract the VOC ImageSets")
    wanted = set(ids)
    targets = np.empty((len(ids), len(classes)), dtype=np.int8)
    for c, (file, values) in enumerate(zip(class_files, per_class)):
        if set(values) != wanted:
            extra, lacking = sorted(set(values) - wanted), sorted(wanted - set(values))
            what = (f"lacks image {lacking[0]}, which {source_name} lists" if lacking else
                    f"lists image {extra[0]}, which {source_name} does not")
            raise SelfSupError(f"{file} {what}: every <class>{suffix} file must list the same images; "
                               f"re-extract or regenerate the ImageSets")
        targets[:, c] = [VOC_TO_TARGET[values[i]] for i in ids]
    return classes, ids, targets, class_files + ([list_file] if list_file.is_file() else [])


def _default_size(sizes: list[tuple[int, int]]) -> int:
    """min(224, the median short side): Goyal's 224 for real VOC, the native side of small mosaics."""
    shorts = sorted(min(s) for s in sizes)
    return min(224, shorts[(len(shorts) - 1) // 2])


def read_voc07(path: Path, split: str = "trainval", size: int | None = None,
               cache_root: Path | None = None) -> ImageArrayDataset:
    """The ``voc07:DIR?split=...&size=...`` data set: uint8 RGB images N x 3 x size x size, labels -1 and int8
    targets N x C (1 present, 0 absent, -1 difficult; METHODS.md 6.1). See the module docstring."""
    from selfsup.data.datasets import cache_root as default_cache_root
    root = voc_root(path)
    classes, ids, targets, list_files = read_voc07_targets(root, split)
    images = root / "JPEGImages"
    names, stats = [f"{i}.jpg" for i in ids], []
    for name in names:
        try:
            st = os.stat(images / name)
        except OSError:
            raise SelfSupError(f"image {images / name}, listed for split {split}, does not exist: restore it "
                               f"(re-extract the VOC tar) or remove its id from ImageSets/Main") from None
        problem = image_file_problem(images / name, st)        # e.g. a folder of that name
        if problem:
            raise problem
        stats.append(_stat_line(images / name, st))
    digest = hashlib.sha1("".join(stats + [_stat_line(f) for f in list_files]).encode()).hexdigest()
    fingerprint = _short_hash(f"voc07-v1|{root.resolve()}|{split}|{size}|{digest}")
    cache = Path(cache_root or default_cache_root()) / "arrays"
    return _decode_all(_Source(images), names, [-1] * len(names), classes, size, cache, fingerprint,
                       fit="squash", mode="RGB", size_rule=_default_size, targets=targets)
