"""Multi-label mosaics in the VOC2007 layout, built from any labelled data set (a stand-in for VOC07, METHODS.md 6.1).

No VOC2007 is available offline, so this builds folders that ``voc07:DIR`` reads like VOC and that exercise the
same benchmark code (the per-class SVMs of METHODS.md 6.1, the low-shot samples of 6.3)::

    python -m selfsup.data.mosaic SRC_SPEC OUT_DIR [--trainval 5011] [--test 4952] [--grid 2] \\
        [--difficult 0.1] [--seed 0] [--test-data SPEC]

Each mosaic is grid x grid tiles, each a real image of the source (2 x 2 CIFAR images of 32 px -> 64 px), saved as
``JPEGImages/<6-digit id>.jpg`` (JPEG quality 95, no chroma subsampling). Its tiles show 1 to 4 distinct classes
(uniformly many; a class may fill several tiles, each a random image of that class) and its labels are their
union. With probability ``difficult`` a tile is occluded: about 70-80 % of its area hidden under a flat grey or
noise block. As in VOC's files (``ImageSets/Main/<class>_<split>.txt``), a class is 1 (present) when an unoccluded
tile shows it, 0 (difficult) when all its tiles are occluded, -1 (absent) otherwise. By default the source images
are split between the trainval and test mosaics (no source image in both); ``--test-data`` draws the test mosaics
from another set.
Everything is drawn from ``--seed``: two builds give identical files.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.datasets import ImageArrayDataset, load_dataset
from selfsup.errors import SelfSupError

MAX_CLASSES_PER_IMAGE = 4
OCCLUDED_AREA = (0.7, 0.8)
CHUNK = 512                          # mosaics assembled at once


@dataclass
class MosaicSplit:
    """What the builder drew for one split; tiles are numbered row-major, ``grid * grid`` per mosaic."""
    ids: list[str]                   # image ids, JPEGImages/<id>.jpg
    classes: list[str]               # VOC-style class names, in the source data set's order
    sources: np.ndarray              # int64 n x tiles: each tile's index in its source data set
    tile_labels: np.ndarray          # int64 n x tiles: each tile's class (index into classes)
    occluded: np.ndarray             # bool n x tiles

    def voc_values(self) -> np.ndarray:
        """int64 n x classes as written in the class files: 1 present, 0 difficult (all its tiles occluded), -1 absent."""
        values = np.full((len(self.ids), len(self.classes)), -1, dtype=np.int64)
        rows = np.repeat(np.arange(len(self.ids)), self.tile_labels.shape[1])
        labels, occluded = self.tile_labels.ravel(), self.occluded.ravel()
        values[rows[occluded], labels[occluded]] = 0
        values[rows[~occluded], labels[~occluded]] = 1
        return values


def voc_class_names(classes: list[str]) -> list[str]:
    """VOC-style names (lower case letters and digits, like 'pottedplant'), unique: 'T-shirt/top' -> 'tshirttop'."""
    names: list[str] = []
    for i, c in enumerate(classes):
        name = re.sub(r"[^a-z0-9]", "", str(c).lower()) or f"class{i}"
        while name in names:
            name += str(i)
        names.append(name)
    return names


def _check_source(data: ImageArrayDataset, what: str) -> np.ndarray:
    labels = np.asarray(data.labels, dtype=np.int64)
    if data.targets is not None or len(labels) == 0 or (labels < 0).any():
        raise SelfSupError(f"the {what} data set needs a single label per image (it has unlabeled or multi-label "
                           f"images): give a labelled split, e.g. cifar10:DIR?split=train")
    return labels


def _pools(labels: np.ndarray, classes: int, share: float | None, rng) -> tuple[list, list]:
    """Per class, the source indices for trainval and for test: each class's images shuffled and cut at ``share``
    (rounded, at least one image on each side when it has two); ``share=None``: all of them for both."""
    trainval, test = [], []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        if share is None:
            trainval.append(idx)
            continue
        idx = rng.permutation(idx)
        cut = min(max(1, round(len(idx) * share)), len(idx) - 1) if len(idx) > 1 else len(idx)
        trainval.append(idx[:cut])
        test.append(idx[cut:])
    return trainval, test


def _draw(count: int, pools: list, grid: int, difficult: float, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sources, tile_labels, occluded) of ``count`` mosaics drawn from per-class pools of source indices.

    Mosaic i shows k_i distinct classes, k_i uniform in 1..min(4, tiles, classes): each fills one tile, the other
    tiles repeat one of them at random, the tiles are shuffled, and each tile is a random image of its class."""
    tiles = grid * grid
    available = np.array([c for c, pool in enumerate(pools) if len(pool)], dtype=np.int64)
    if not len(available):
        raise SelfSupError("the source data set has no images to tile: give a non-empty labelled data set")
    most = min(MAX_CLASSES_PER_IMAGE, tiles, len(available))
    k = rng.integers(1, most + 1, count)[:, None]
    chosen = available[np.argsort(rng.random((count, len(available))), axis=1)[:, :most]]   # the first k: distinct
    position = np.arange(tiles)[None]
    pick = np.where(position < k, position, (rng.random((count, tiles)) * k).astype(np.int64))
    tile_labels = np.take_along_axis(chosen, pick, axis=1)
    tile_labels = np.take_along_axis(tile_labels, np.argsort(rng.random((count, tiles)), axis=1), axis=1)
    sizes = np.array([len(pool) for pool in pools], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate([np.asarray(pool, dtype=np.int64) for pool in pools])
    sources = flat[starts[tile_labels] + (rng.random((count, tiles)) * sizes[tile_labels]).astype(np.int64)]
    occluded = rng.random((count, tiles)) < difficult
    return sources, tile_labels, occluded


def _occlude(tile: np.ndarray, rng) -> None:
    """Hide about 70-80 % of a C x S x S tile, in place, under a square of flat grey or uniform noise."""
    size = tile.shape[-1]
    side = min(size, max(1, round(np.sqrt(rng.uniform(*OCCLUDED_AREA)) * size)))
    top, left = rng.integers(0, size - side + 1, 2)
    block = tile[:, top:top + side, left:left + side]
    block[...] = 128 if rng.random() < 0.5 else rng.integers(0, 256, block.shape, dtype=np.uint8)


def _write_images(folder: Path, data: ImageArrayDataset, split: MosaicSplit, grid: int, seed: int, split_no: int,
                  pool: ThreadPoolExecutor) -> None:
    size = data.image_size
    for start in range(0, len(split.ids), CHUNK):
        sources = split.sources[start:start + CHUNK]
        m = len(sources)
        tiles = np.array(data.images[sources.ravel()], dtype=np.uint8)           # (m * tiles) x C x S x S, a copy
        for k in np.flatnonzero(split.occluded[start:start + CHUNK].ravel()):
            i, j = divmod(int(k), grid * grid)                    # a generator per tile: the same draw in any order
            _occlude(tiles[k], np.random.default_rng([seed, split_no, start + i, j]))
        if tiles.shape[1] == 1:
            tiles = np.repeat(tiles, 3, axis=1)
        mosaics = tiles.reshape(m, grid, grid, 3, size, size).transpose(0, 1, 4, 2, 5, 3)
        mosaics = np.ascontiguousarray(mosaics).reshape(m, grid * size, grid * size, 3)

        def save(i):
            Image.fromarray(mosaics[i]).save(folder / f"{split.ids[start + i]}.jpg", quality=95, subsampling=0)

        list(pool.map(save, range(m)))


def _write_image_sets(folder: Path, name: str, split: MosaicSplit) -> None:
    folder.joinpath(f"{name}.txt").write_text("".join(f"{i}\n" for i in split.ids))
    values = split.voc_values()
    for c, cls in enumerate(split.classes):
        folder.joinpath(f"{cls}_{name}.txt").write_text(
            "".join(f"{i} {v:2d}\n" for i, v in zip(split.ids, values[:, c])))


def _readme(splits: dict, grid: int, difficult: float, seed: int, size: int, source: str, test_source: str) -> str:
    tv, te = splits["trainval"], splits["test"]
    return (f"Multi-label mosaics in the PASCAL VOC2007 layout, built by `python -m selfsup.data.mosaic` "
            f"(selfsup/data/mosaic.py) as a stand-in for VOC07 (METHODS.md 6.1, 6.3).\n\n"
            f"source (trainval): {source}\nsource (test): {test_source}\n"
            f"seed: {seed}\ntrainval: {len(tv.ids)} images ({tv.ids[0]}-{tv.ids[-1]})\n"
            f"test: {len(te.ids)} images ({te.ids[0]}-{te.ids[-1]})\n"
            f"grid: {grid} x {grid} tiles of {size} px -> {grid * size} x {grid * size} JPEG (quality 95)\n"
            f"difficult: each tile occluded with probability {difficult} (about 70-80% of it grey or noise)\n"
            f"classes ({len(tv.classes)}): {' '.join(tv.classes)}\n\n"
            f"Each mosaic shows 1-{MAX_CLASSES_PER_IMAGE} distinct classes; its labels are their union. In "
            f"ImageSets/Main/<class>_<split>.txt, as in VOC: 1 = an unoccluded tile shows the class, 0 = difficult "
            f"(all its tiles occluded), -1 = absent. Trainval and test share no source image. "
            f"Read it with the data spec voc07:DIR?split=trainval|test.\n")


def build_mosaics(dataset: ImageArrayDataset, out_dir, trainval: int = 5011, test: int = 4952, grid: int = 2,
                  difficult: float = 0.1, seed: int = 0, test_dataset: ImageArrayDataset | None = None,
                  source: str = "(a data set in memory)", test_source: str | None = None) -> dict[str, MosaicSplit]:
    """Write a VOC2007-layout folder of multi-label mosaics to ``out_dir`` (see the module docstring) and return
    what was drawn, {"trainval": MosaicSplit, "test": MosaicSplit}; ``source`` / ``test_source`` name the
    data sets in README.txt. The test mosaics come from ``test_dataset`` when given, else from the images of
    ``dataset`` that no trainval mosaic uses. The folder is built beside ``out_dir`` and renamed into place;
    an existing non-empty ``out_dir`` is refused."""
    if trainval < 1 or test < 1 or trainval + test > 999_999:
        raise SelfSupError(f"--trainval {trainval} / --test {test}: give at least 1 of each and at most 999999 "
                           f"in all (6-digit ids)")
    if grid < 1:
        raise SelfSupError(f"--grid {grid}: give a positive number of tiles per side, e.g. 2")
    if not 0 <= difficult <= 1:
        raise SelfSupError(f"--difficult {difficult}: give a probability per tile between 0 and 1, e.g. 0.1")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelfSupError(f"mosaic output {out} exists and is not an empty folder: remove it or choose another OUT_DIR")
    labels = _check_source(dataset, "trainval" if test_dataset is not None else "source")
    test_data = dataset if test_dataset is None else test_dataset
    test_labels = labels if test_dataset is None else _check_source(test_dataset, "test")
    if test_dataset is not None and (list(test_dataset.classes) != list(dataset.classes)
                                     or test_dataset.image_size != dataset.image_size):
        raise SelfSupError("the test data set differs from the trainval one in classes or image size: give test "
                           "data of the same kind (e.g. the held-out part of the same data set)")
    classes = voc_class_names(dataset.classes)
    rng = np.random.default_rng(seed)
    share = None if test_dataset is not None else trainval / (trainval + test)
    tv_pools, te_pools = _pools(labels, len(classes), share, rng)
    if test_dataset is not None:
        te_pools = _pools(test_labels, len(classes), None, rng)[0]
    splits = {}
    for name, count, pools, first in (("trainval", trainval, tv_pools, 1), ("test", test, te_pools, trainval + 1)):
        sources, tile_labels, occluded = _draw(count, pools, grid, difficult, rng)
        splits[name] = MosaicSplit([f"{first + i:06d}" for i in range(count)], classes, sources, tile_labels, occluded)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        images, sets = tmp / "JPEGImages", tmp / "ImageSets" / "Main"
        images.mkdir(parents=True)
        sets.mkdir(parents=True)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            for split_no, (name, data) in enumerate((("trainval", dataset), ("test", test_data))):
                _write_images(images, data, splits[name], grid, seed, split_no, pool)
                _write_image_sets(sets, name, splits[name])
        (tmp / "README.txt").write_text(_readme(splits, grid, difficult, seed, dataset.image_size, source,
                                                test_source or f"held-out images of {source}"))
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfsup.data.mosaic", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="SRC_SPEC", help="a labelled data set spec, as for --data")
    parser.add_argument("out", metavar="OUT_DIR", help="the VOC2007-layout folder to create (must not exist or be empty)")
    parser.add_argument("--trainval", type=int, default=5011, help="trainval mosaics (default: 5011, as VOC07)")
    parser.add_argument("--test", type=int, default=4952, help="test mosaics (default: 4952, as VOC07)")
    parser.add_argument("--grid", type=int, default=2, help="tiles per side (default: 2)")
    parser.add_argument("--difficult", type=float, default=0.1, help="probability that a tile is occluded (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-data", metavar="SPEC", help="draw the test mosaics from this data set instead")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        data = load_dataset(args.source)
        test_data = load_dataset(args.test_data) if args.test_data else None
        splits = build_mosaics(data, args.out, args.trainval, args.test, args.grid, args.difficult, args.seed,
                               test_data, source=args.source, test_source=args.test_data)
    except SelfSupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return 2
    side = args.grid * data.image_size
    print(f"wrote {len(splits['trainval'].ids)} trainval + {len(splits['test'].ids)} test mosaics "
          f"({side}x{side}, {len(data.classes)} classes) to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
