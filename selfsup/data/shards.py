"""webdataset-style tar shards: read them as a streaming set, and write them from a folder.

A shard is an uncompressed ``.tar`` whose members are ``KEY.EXT`` images (jpg, png, ...) with an optional
``KEY.cls`` holding the integer label as text (the key is the member name up to the first dot of its file
name, as in webdataset). ``shards:SPEC`` names a folder of ``.tar`` files, a brace list
(``train-{000000..000146}.tar``) or a glob (``train-*.tar``); every shard a brace list names must exist and
every glob must match one (refused otherwise, never read as the shards that are there). An optional
``classes.txt`` beside the shards names the classes, one a line (label i: line i); without it the classes are
0 .. the largest label; without any ``.cls`` the set is unlabeled (labels -1). A shard cut short or with a
damaged header is refused (tarfile alone stops there without a word).

Order and resume: each shard's member table (name, offset, size, label) is read once from its tar headers
(cached under the cache folder by shard path, size and time); an epoch's order is then a function of
(seed, epoch) only: the shards in a random order, their samples front to back, shuffled within windows of
``buffer`` consecutive samples (default 1000; a deterministic stand-in for webdataset's shuffle buffer).
So a run resumed mid-epoch sees exactly the batches of the uninterrupted one, and reads stay local (a
window spans one or two shards). The members are read at their offsets, so shards must be seekable files.

Writing: ``python -m selfsup.data.shards SRC_DIR OUT_DIR --shard-size N`` copies the files of an image
folder (class subfolders, or any tree with ``--unlabeled``) into shards of N images, their bytes unchanged,
in a seeded random order (``--seed``; ``--no-shuffle`` keeps the folder's order), with ``classes.txt``.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.data.datasets import (IMAGE_EXTENSIONS, MAX_CLASSES, _number, _short_hash, read_image_file,
                                   tar_end_problem, tar_member_problem)
from selfsup.data.stream import StreamImageSet, decode_option, loader_option, probe
from selfsup.errors import SelfSupError


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}`` lists too."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.groups()
        items = [str(i).zfill(len(a)) for i in range(int(a), int(b) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]


def shard_files(spec: str) -> list[Path]:
    """The shard files of ``spec``: a folder's ``*.tar``, or the names of a brace list / glob in order. Every
    name without a wildcard must be a file and every glob must match one: a list naming shards that are not
    there is refused, never read as the shards that are."""
    path = Path(spec).expanduser()
    fix = "fix the shard list"
    if path.is_dir():
        files = sorted(path.glob("*.tar"))
        if not files:
            raise SelfSupError(f"no .tar shards found at {spec}: give a folder of .tar files, a brace list "
                               f"(train-{{000..009}}.tar) or a glob (train-*.tar)")
        fix = f"remove it from {spec}, or name the shards to read (a brace list or a glob)"
    else:
        files = _listed_files(spec, path)
    folders = [f for f in files if not f.is_file()]          # a folder named, or matched by a glob
    if folders:
        raise SelfSupError(f"shard {folders[0]} is not a file: {fix}")
    seen: dict[Path, Path] = {}
    for f in files:                                          # read twice, its images would count twice an epoch
        first = seen.setdefault(f.resolve(), f)
        if first is not f:
            also = "" if first == f else f" (as {first})"
            raise SelfSupError(f"shard {f} is named twice by {spec}{also}: {fix}")
    return files


def _listed_files(spec: str, path: Path) -> list[Path]:
    """The files a brace list or glob names, in order; refused if a name is missing or a glob matches nothing."""
    names = expand_braces(str(path))
    files, missing = [], []
    for name in names:
        if any(c in name for c in "*?["):
            found = sorted(glob.glob(name))
            if not found and len(names) == 1:
                raise SelfSupError(f"no .tar shards found at {spec}: give a folder of .tar files, a brace list "
                                   f"(train-{{000..009}}.tar) or a glob (train-*.tar)")
            if not found:
                raise SelfSupError(f"no shard matches {name} (of {spec}): fix the shard list")
            files += [Path(f) for f in found]
        else:
            files.append(Path(name))
            if not files[-1].exists():
                missing.append(files[-1])
    if missing:
        of = f" ({len(missing)} of {len(names)} shards named by {spec} are missing)" if len(missing) > 1 else ""
        raise SelfSupError(f"shard {missing[0]} does not exist{of}: fix the shard list")
    return files


def _key_ext(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (folder + "/" + stem if folder else stem), ext.lower()


SHARD_TABLE_VERSION = "shard-v2"     # v2: tables only of whole shards (v1 cached a cut shard's first members)
CLS_BYTES = 1 << 16                  # the most a .cls (a class index as text) is read


def shard_table(path: Path, cache: Path) -> dict:
    """{"names", "offsets", "sizes", "labels"} of one shard's images (label -1 without a .cls), from its headers.
    A shard cut short (no end-of-archive marker, or a member past the end of the file) is refused, and its
    table never cached: only whole shards' tables are."""
    st = path.stat()
    key = _short_hash(f"{SHARD_TABLE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    file = cache / f"{key}.npz"
    if file.exists():
        with np.load(file, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    images, labels = {}, {}
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.ReadError as exc:
        raise SelfSupError(f"cannot read shard {path} as an uncompressed tar ({exc}): shards are read at member "
                           f"offsets, unpack compressed ones or write them with python -m selfsup.data.shards") from None
    except (tarfile.TarError, OSError) as exc:
        raise SelfSupError(f"cannot open shard {path} ({exc}): check the file") from None
    with tar:
        try:
            for m in tar:
                if not m.isfile():
                    continue
                k, ext = _key_ext(m.name.lstrip("./"))
                if ext == "cls":
                    if m.issparse() or m.size > CLS_BYTES:
                        raise SelfSupError(f"{path}:{m.name} is {m.size} bytes{' (sparse)' if m.issparse() else ''}, "
                                           f"not a label: a .cls holds the class index as text (at most "
                                           f"{CLS_BYTES} bytes); re-create the shard")
                    text = tar.extractfile(m).read().decode(errors="replace").strip()
                    try:
                        labels[k] = int(text)
                    except ValueError:
                        raise SelfSupError(f"{path}:{m.name} holds {text[:20]!r}, not an integer label: write the "
                                           f"class index as text") from None
                    if not -1 <= labels[k] < MAX_CLASSES:
                        raise SelfSupError(f"{path}:{m.name} holds label {text[:30]}: labels are class indices 0 "
                                           f"to {MAX_CLASSES - 1:,} (-1: unlabeled); renumber the classes")
                elif ("." + ext.rpartition(".")[2]) in IMAGE_EXTENSIONS and k not in images:
                    problem = tar_member_problem(f"{path}:{m.name}", m)
                    if problem:
                        raise problem
                    images[k] = (m.name, m.offset_data, m.size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _corrupt(path, exc) from None
        problem = tar_end_problem(tar)
        if problem:
            raise _corrupt(path, problem)
    keys = list(images)          # archive order
    table = {"names": np.array([images[k][0].encode() for k in keys], dtype=bytes).reshape(-1),
             "offsets": np.array([images[k][1] for k in keys], dtype=np.int64),
             "sizes": np.array([images[k][2] for k in keys], dtype=np.int64),
             "labels": np.array([labels.get(k, -1) for k in keys], dtype=np.int64)}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **table)
    os.replace(tmp, file)
    return table


def _corrupt(path: Path, why) -> SelfSupError:
    return SelfSupError(f"cannot read shard {path}: truncated or corrupt ({why}): re-create or re-download it")


@dataclass
class ShardImageSet(StreamImageSet):
    """A ``StreamImageSet`` over shards: sample i is member ``member[i]``; ``bounds[s]`` the first sample of
    shard s (samples are stored shard after shard, in archive order)."""

    bounds: np.ndarray | None = None
    buffer: int = 1000

    def subset(self, indices) -> StreamImageSet:
        """A subset (fraction, holdout) is a plain streaming set: a random order over its samples."""
        out = StreamImageSet.subset(self, indices)
        return StreamImageSet(**{k: getattr(out, k) for k in StreamImageSet.__dataclass_fields__})

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch, 7])
        perm = rng.permutation(len(self.bounds) - 1)
        order = np.concatenate([np.arange(self.bounds[s], self.bounds[s + 1]) for s in perm])
        window = np.arange(len(order)) // max(1, self.buffer)
        return order[np.lexsort((rng.random(len(order)), window))]


def read_shards(spec: str, options: dict, cache_root: Path) -> ShardImageSet:
    from selfsup.data.datasets import _positive, channel_mode

    files = shard_files(spec)
    tables = [shard_table(f, cache_root / "shards") for f in files]
    counts = np.array([len(t["names"]) for t in tables], dtype=np.int64)
    if counts.sum() == 0:
        raise SelfSupError(f"the shards at {spec} hold no images (KEY.jpg, KEY.png, ...): check how they were written")
    names = np.concatenate([t["names"] for t in tables])
    labels = np.concatenate([t["labels"] for t in tables])
    member = np.concatenate([np.stack([np.full(len(t["names"]), s), t["offsets"], t["sizes"]], 1)
                             for s, t in enumerate(tables)]).astype(np.int64)
    if (labels >= 0).any() and (labels < 0).any():
        print(f"shards {spec}: {int((labels < 0).sum())} of {len(labels)} images have no .cls: unlabeled (-1)")
    if (labels < -1).any():
        raise SelfSupError(f"labels in the shards at {spec} must be 0 or more, found {labels.min()}: renumber")
    classes_file = files[0].parent / "classes.txt"
    if classes_file.exists():
        classes = classes_file.read_text().splitlines()
        if labels.max() >= len(classes):
            raise SelfSupError(f"{classes_file} names {len(classes)} classes but the shards hold label "
                               f"{labels.max()}: rewrite the shards or the classes file")
    else:
        classes = [str(c) for c in range(labels.max() + 1)]
    identity = "|".join(f"{f.resolve()}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files)
    fingerprint = _short_hash("shards-v2|" + hashlib.sha1(identity.encode()).hexdigest())
    buffer = _number(options, "buffer", int, 1000)
    if buffer < 1:
        raise SelfSupError(f"data option buffer={buffer} must be 1 (no shuffle within shards) or more samples")
    workers, shrink = _number(options, "workers", int, None), _number(options, "shrink", int, None)
    data = ShardImageSet(names, labels, classes, fingerprint, str(files[0].parent), tars=[str(f) for f in files],
                         member=member, shrink=shrink, workers=workers, decode=decode_option(options),
                         loader=loader_option(options), bounds=np.concatenate([[0], np.cumsum(counts)]), buffer=buffer)
    return probe(data, _positive(options, "size"), channel_mode(options))


# ---------------------------------------------------------------- writing

def write_shards(src: Path, out: Path, shard_size: int, unlabeled: bool = False, seed: int | None = 0,
                 prefix: str = "shard") -> list[Path]:
    """Copy the images of folder ``src`` into ``out/PREFIX-000000.tar``, ... of ``shard_size`` images each
    (``KEY.EXT`` with the file's bytes, and ``KEY.cls`` unless unlabeled), plus ``classes.txt``;
    ``seed`` None keeps the folder's order, else a seeded random order. Returns the shard paths."""
    from selfsup.data.datasets import _folder_entries, _Source
    from selfsup.data.stream import list_unlabeled

    if shard_size < 1:
        raise SelfSupError(f"--shard-size {shard_size}: give a positive number of images per shard, e.g. 1000")
    if not src.is_dir():
        raise SelfSupError(f"{src} is not a folder: give the folder of images to write into shards")
    source = _Source(src)
    if unlabeled:
        names, labels, classes = list_unlabeled(source, src, None), None, []
    else:
        names, labels, classes = _folder_entries(source, src, None)
    order = np.arange(len(names)) if seed is None else np.random.default_rng(seed).permutation(len(names))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(order), shard_size)):
        path = out / f"{prefix}-{s:06d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            for i in order[start:start + shard_size]:
                key = f"{int(i):09d}"
                blob = read_image_file(src / names[i])
                ext = names[i].rpartition(".")[2].lower()
                _add(tar, f"{key}.{ext}", blob)
                if labels is not None:
                    _add(tar, f"{key}.cls", str(labels[i]).encode())
        os.replace(tmp, path)
        paths.append(path)
    if classes:
        (out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    return paths


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(blob), 0, 0o644
    tar.addfile(info, io.BytesIO(blob))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfsup.data.shards",
                                     description="Write webdataset-style .tar shards (KEY.jpg + KEY.cls) from an "
                                                 "image folder.")
    parser.add_argument("src", type=Path, help="folder of class subfolders (or any tree, with --unlabeled)")
    parser.add_argument("out", type=Path, help="folder to write the shards and classes.txt into")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--unlabeled", action="store_true", help="no classes: every image of the tree, no .cls")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random order of the images (default 0)")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the folder's sorted order")
    parser.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar (default shard)")
    args = parser.parse_args(argv)
    try:
        paths = write_shards(args.src, args.out, args.shard_size, args.unlabeled,
                             None if args.no_shuffle else args.seed, args.prefix)
    except SelfSupError as exc:
        print(f"selfsup.data.shards: error: {exc}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} shard(s), {total / 2**20:.1f} MiB, to {args.out} "
          f"(read them with --data shards:{args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
