"""Streaming image sets: images read and decoded one by one from the original files, in DataLoader workers.

The in-memory path (``selfsup.data.datasets``) decodes every image once into a uint8 array; that does not
scale to ImageNet-sized folders. A ``StreamImageSet`` keeps only the list of its images (names as a numpy
bytes array, labels as int64: no Python objects per image, so forked workers share the pages) and decodes
an image when a batch needs it, in ``torch.utils.data.DataLoader`` worker processes.

Training (``StreamLoader``): the batches of an epoch are the same function of (seed, epoch) as on the
in-memory path (``BatchLoader.batch_indices``; shards: ``ShardImageSet.epoch_order``), and the random
parameters of every batch's views the same function of (seed, epoch, step, rank), so a run resumed in the
middle of an epoch sees exactly the batches and views of the uninterrupted run. Each worker returns the
decoded image at its own aspect ratio, pre-shrunk (JPEG draft mode, then a bilinear resize) so that its
short side is at most ``shrink`` px (default: twice the training image size); the collate pads the batch
to its largest height and width and returns the true sizes (B x 2). View makers that accept ``sizes``
(``selfsup.data.views.ViewMaker``: every crop and patch recipe, colorization) draw each crop inside each
image's true size; the others (JigClu, Jigsaw, Jigsaw++) get each image resized (short side) and
centre-cropped to the data's size, exactly what the in-memory path would have decoded.

Evaluation (``StreamImageSet.eval_batches``): in order, the short side resized to round(size / crop) and the
centre size x size kept, from the original file (Resize(256) -> CenterCrop(224) for crop = 224 / 256).

An unreadable image (corrupt, empty) is replaced in its batch by the next readable image of its class (its
label: an evaluation never scores an image under another's label), and a warning names it, once. The batch
keeps its size, and the replacement is the same in every run.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from selfsup.data.datasets import (IMAGE_EXTENSIONS, _decode, _header, _is_gray, _short_hash, _side_rule, eight_bit,
                                   read_image_file, tar_member_problem)
from selfsup.data.loader import Batch, BatchLoader, batch_generator
from selfsup.errors import SelfSupError

PROBE = 64                  # headers read (evenly spaced) to choose the colour mode and the default size


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def physical_ram() -> int | None:
    """Total physical memory in bytes (a fixed number, so that the automatic path choice is the same every run)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def choose_stream(count: int, size: int | None, option: str | None, what: str, read_head=None,
                  names: list[str] = ()) -> bool:
    """``stream=1`` / ``stream=0`` as given; else stream when the decoded array (count x 3 x S x S bytes) would
    not fit in half of the physical RAM, and say so in one line. S is the ``size=`` option, else the side that
    decoding would choose from the headers of up to PROBE evenly spaced ``names`` (``read_head(name)``: a file's
    first bytes), else 256."""
    if option is not None:
        if option not in ("0", "1", "auto"):
            raise SelfSupError(f"data option stream={option!r}: use stream=1 (stream from the files), stream=0 "
                               f"(decode into memory) or stream=auto")
        if option != "auto":
            return option == "1"
    side = size or (sampled_side(read_head, names) if read_head is not None and names else None) or 256
    need, ram = count * 3 * side * side, physical_ram()
    if ram is None:
        return False
    if need > ram // 2:
        print(f"data: {what}: {count} images decoded at {side} px would take {need / 2**30:.1f} GiB, over half of "
              f"the {ram / 2**30:.0f} GiB RAM: streaming them from the files (stream=0 decodes into memory)")
        return True
    if need >= 1 << 30:
        print(f"data: {what}: {count} images decoded at {side} px take {need / 2**30:.1f} GiB, under half of the "
              f"{ram / 2**30:.0f} GiB RAM: decoding into memory once (stream=1 streams from the files)")
    return False


# ---------------------------------------------------------------- decoding

def decode_image(blob: bytes, mode: str, shrink: int | None = None) -> np.ndarray:
    """C x H x W uint8 at the image's own aspect ratio, in its stored orientation (an EXIF orientation tag is not
    applied, as on the in-memory path: see ``selfsup.data.datasets._decode``), converted to ``mode``
    ("RGB" or "L": gray, RGBA, CMYK and palette images as the in-memory decoder converts them); with
    ``shrink``, the short side brought down to at most ``shrink`` px (JPEG draft mode, then bilinear)."""
    with Image.open(io.BytesIO(blob)) as im:
        target = None
        if shrink and min(im.size) > shrink:
            s = shrink / min(im.size)          # the final size from the stored size: JPEG draft rounds its own way
            target = shrunk_size(im.size[1], im.size[0], shrink)[::-1]
            im.draft(None, (max(1, math.ceil(im.size[0] * s)), max(1, math.ceil(im.size[1] * s))))
        im = eight_bit(im).convert(mode)
        if target is not None and im.size != target:
            im = im.resize(target, Image.BILINEAR, reducing_gap=None)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_center(blob: bytes, mode: str, size: int, crop: float = 1.0) -> np.ndarray:
    """C x size x size in the stored orientation (no EXIF rotation, as ``decode_image``): the short side resized
    to round(size / crop), the centre kept (``crop`` = 1: exactly the in-memory decoder's resize and centre crop;
    else torchvision's Resize -> CenterCrop rounding)."""
    if crop == 1.0:
        return _decode(blob, size, mode, "crop")
    short = round(size / crop)
    with Image.open(io.BytesIO(blob)) as im:
        im = eight_bit(im).convert(mode)
        s = short / min(im.size)
        w, h = max(short, round(im.size[0] * s)), max(short, round(im.size[1] * s))
        im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
        left, top = round((w - size) / 2), round((h - size) / 2)
        arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def device_ready(blob: bytes, mode: str) -> bool:
    """Whether the batched JPEG decoders (``decode_batch``, DALI) give this image as ``decode_image`` would: a JPEG
    stored as YCbCr or gray (gray is also accepted for ``mode`` RGB: both replicate it), without an EXIF
    orientation tag. Everything else (PNG, CMYK, JPEGs tagged as rotated) is decoded by PIL in the workers,
    in the stored orientation: ``decode_jpeg`` leaves the tag alone by default, but DALI's decoders apply it
    (``adjust_orientation=True`` in the nvImageCodec versions) and would also read the crop box in the
    rotated frame. Reads the header only."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.format != "JPEG" or im.mode not in (("L",) if mode == "L" else ("RGB", "L")):
                return False
            return im.getexif().get(0x0112, 1) == 1
    except Exception:
        return False


def shrunk_size(h: int, w: int, bound: int | None) -> tuple[int, int]:
    """(h, w) with the short side brought down to ``bound`` (``decode_image``'s rounding); unchanged when it is
    already at most ``bound``."""
    if not bound or min(h, w) <= bound:
        return h, w
    s = bound / min(h, w)
    return max(bound, round(h * s)), max(bound, round(w * s))


def decode_batch(blobs: list[np.ndarray], mode: str, device: torch.device) -> list[torch.Tensor | None]:
    """C x H x W uint8 images of JPEG byte arrays, decoded together on ``device`` by ``torchvision.io.decode_jpeg``
    (nvJPEG on CUDA, libjpeg-turbo on the CPU). One call for the batch; if it fails, one call per image, and an
    image that still fails is None (the caller decodes it, or its replacement, with PIL)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    read = ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB
    data = [torch.from_numpy(np.array(b, copy=True)) for b in blobs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # torchvision 0.29 deprecates its decoders for TorchCodec's
        try:
            return list(decode_jpeg(data, mode=read, device=device))
        except Exception:
            out = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=read, device=device))
                except Exception:
                    out.append(None)
            return out


def shrink_on_device(image: torch.Tensor, bound: int | None) -> torch.Tensor:
    """``image`` (C x H x W uint8) with its short side at most ``bound``: bilinear with antialiasing, as PIL's
    resize (without JPEG draft mode's DCT scaling, so pixels differ slightly from ``decode_image``'s)."""
    h, w = image.shape[-2:]
    target = shrunk_size(h, w, bound)
    if target == (h, w):
        return image
    out = torch.nn.functional.interpolate(image[None].float(), size=target, mode="bilinear", antialias=True,
                                          align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


_DEVICE_DECODE: dict = {}


def device_decode_works(device: torch.device) -> bool:
    """Whether ``decode_jpeg`` runs on ``device`` (nvJPEG needs a CUDA build of torchvision); tried once per device."""
    key = str(device)
    if key not in _DEVICE_DECODE:
        probe_image = Image.new("RGB", (16, 16), (200, 40, 90))
        buffer = io.BytesIO()
        probe_image.save(buffer, format="JPEG")
        try:
            _DEVICE_DECODE[key] = decode_batch([np.frombuffer(buffer.getvalue(), np.uint8)], "RGB", device)[0] is not None
        except Exception:
            _DEVICE_DECODE[key] = False
    return _DEVICE_DECODE[key]


# ---------------------------------------------------------------- the image set

@dataclass
class StreamImageSet:
    """The list of a set's images, decoded on demand. Duck-types ``ImageArrayDataset`` (``labels``, ``classes``,
    ``fingerprint``, ``targets``, ``subset``, ``images``: a lazy array of the images at ``size``).

    ``fingerprint`` (the key of feature caches and label files) is ``identity`` alone when that already changes
    with the images (a tar's or shards' size and time); with ``stat_files`` (a folder) it also covers every
    file's name, size and modification time, as on the in-memory path, so that an image overwritten in place
    is never served from a cache. Those stats are taken on first use, not when the set is listed: training
    on a streamed folder never pays a stat per image (about 0.1 to 0.25 s per 50,000 local files, far more on
    network file systems)."""

    names: np.ndarray                  # bytes: paths under ``root``, or tar member names
    labels: np.ndarray                 # int64, -1 unlabeled
    classes: list[str]
    identity: str                      # the fingerprint, or its part before the files' stats (``stat_files``)
    root: str                          # folder the names are relative to ("/" for absolute paths)
    mode: str = "RGB"                  # "RGB" or "L"
    size: int = 224                    # the fixed size of ``images`` and of the fixed-size training views
    tars: list[str] = field(default_factory=list)   # tar files, when the images are members of tars
    member: np.ndarray | None = None   # int64 N x 3: (tar index, data offset, size) of each member
    shrink: int | None = None          # the ``shrink=`` option: short side bound of training decodes (0: none)
    workers: int | None = None         # DataLoader workers (None: default_workers())
    decode: str = "auto"               # training decodes: "workers" (PIL), "device" (batched decode_jpeg), "auto"
    loader: str = "torch"              # training crops: "torch" (StreamLoader) or "dali" (selfsup.data.dali)
    targets: np.ndarray | None = None
    stat_files: bool = False           # ``fingerprint`` also covers each file's name, size and time (lazily)
    streaming = True

    def __post_init__(self):
        self._handles: dict = {}
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Identifies these images for caches: ``identity``, with ``stat_files`` also every file's name, size and
        modification time (stat'ed once, on first use; a file gone since it was listed counts as missing)."""
        if self._fingerprint is None:
            if not self.stat_files:
                self._fingerprint = self.identity
            else:
                from selfsup.data.datasets import files_digest

                files = [os.path.join(self.root, n.decode()) for n in self.names]
                self._fingerprint = _short_hash(f"{self.identity}|files|{files_digest(files, missing_ok=True)}")
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}             # open files stay with their process
        return state

    @property
    def images(self) -> "StreamImages":
        return StreamImages(self)

    @property
    def image_size(self) -> int:
        return self.size

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def subset(self, indices) -> "StreamImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        tag = hashlib.sha1(indices.tobytes()).hexdigest()[:12]
        return replace(self, names=self.names[indices], labels=self.labels[indices],
                       member=None if self.member is None else self.member[indices],
                       targets=None if self.targets is None else self.targets[indices],
                       identity=f"{self.identity}-{tag}")

    def with_labels(self, labels: np.ndarray, classes: list[str], tag: str) -> "StreamImageSet":
        """These images, in this order, with other labels (a label file's; shards stay shards): no multi-label
        targets. The fingerprint is ``FP-TAG`` (FP this set's, as on the in-memory path); the identity carries the
        tag too, so a subset's fingerprint differs from the same subset's of the unlabelled set."""
        out = replace(self, labels=np.asarray(labels, dtype=np.int64), classes=list(classes), targets=None,
                      identity=f"{self.identity}-{tag}")
        out._fingerprint = f"{self.fingerprint}-{tag}"
        return out

    def to_memory(self):
        """An ``ImageArrayDataset`` of these images decoded at ``size`` (resize, centre crop): for small subsets."""
        from selfsup.data.datasets import ImageArrayDataset

        return ImageArrayDataset(np.ascontiguousarray(self.images[:]), self.labels.copy(), list(self.classes),
                                 f"{self.fingerprint}-memory", self.targets)

    def name(self, i: int) -> str:
        name = self.names[i].decode()
        if self.member is not None:
            return f"{self.tars[int(self.member[i, 0])]}:{name}"
        return str(Path(self.root) / name)

    def read(self, i: int) -> bytes:
        """The bytes of image i (a tar member is read at its offset: an uncompressed tar, any worker)."""
        if self.member is None:                # a regular file only: a FIFO or a device is refused, never read
            return read_image_file(Path(self.root) / self.names[i].decode())
        t, offset, size = (int(v) for v in self.member[i])
        key = (os.getpid(), t)
        f = self._handles.get(key)
        if f is None:
            f = self._handles[key] = open(self.tars[t], "rb")
        f.seek(offset)
        return f.read(size)

    def load(self, i: int, how) -> tuple[np.ndarray, int, str | None]:
        """(image, index actually decoded, name of the unreadable image it replaces or None): an unreadable image
        is replaced by the next readable one of its class (label), so that image and label always agree. ``how``:
        ("shrink", bound), ("center", size, crop) or ("bytes", bound): the file's bytes (1-D uint8) when
        ``device_ready`` says the batched decoder takes it, else the image as with ("shrink", bound)."""
        bad, label = None, self.labels[i]
        for k in range(len(self)):
            j = (i + k) % len(self)
            if self.labels[j] != label:        # a stand-in of another class would be scored under i's label
                continue
            try:
                blob = self.read(j)
                if how[0] == "bytes" and device_ready(blob, self.mode):
                    return np.frombuffer(blob, dtype=np.uint8), j, bad
                if how[0] in ("shrink", "bytes"):
                    return decode_image(blob, self.mode, how[1]), j, bad
                return decode_center(blob, self.mode, how[1], how[2]), j, bad
            except Exception:
                if bad is None:
                    bad = self.name(j)
        what = f"class {self.classes[label]} of {self.root}" if 0 <= label < len(self.classes) else self.root
        raise SelfSupError(f"no image of {what} can be decoded: check that the files are images")

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The sample order of an epoch (as ``BatchLoader``'s)."""
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def eval_batches(self, batch_size: int, size: int | None = None, crop: float = 1.0,
                     workers: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 batches (B x C x size x size) of every image in order: the short side resized to
        round(size / crop), the centre kept (the evaluation transform, from the original file)."""
        size = size or self.size
        reader = _Reader(self, ("center", size, crop))
        sampler = [list(range(s, min(s + batch_size, len(self)))) for s in range(0, len(self), batch_size)]
        warned = set()
        for images, _, _, _, bad in _iterate(reader, sampler, self._workers(workers)):
            _warn_bad(self, bad, warned)
            yield images

    def _workers(self, workers=None) -> int:
        return workers if workers is not None else (self.workers if self.workers is not None else default_workers())


class StreamImages:
    """``images`` of a ``StreamImageSet``: rows decoded on access (resize, centre crop to the set's size),
    like a memory-mapped array of the in-memory path; for viewers and small subsets, not for whole epochs."""

    def __init__(self, data: StreamImageSet):
        self.data = data
        self.shape = (len(data), data.channels, data.size, data.size)
        self.dtype, self.ndim = np.dtype(np.uint8), 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.data.load(int(key) % len(self), ("center", self.data.size, 1.0))[0]
        index = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        out = np.empty((len(index),) + self.shape[1:], dtype=np.uint8)

        def fill(k):
            out[k] = self.data.load(int(index[k]), ("center", self.data.size, 1.0))[0]

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            list(pool.map(fill, range(len(index))))
        return out

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


# ---------------------------------------------------------------- workers and collate

class _Reader(torch.utils.data.Dataset):
    def __init__(self, data: StreamImageSet, how):
        self.data, self.how = data, how

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        image, j, bad = self.data.load(int(i), self.how)
        return image, int(self.data.labels[j]), j, bad


def pad_batch(images: list, device=None):
    """C x h x W uint8 images padded with zeros (bottom and right) into one B x C x H x W batch of the largest
    H and W, on ``device`` (default: the images'), and their true sizes (B x 2: h, w)."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    out = torch.zeros((len(images), images[0].shape[0], h, w), dtype=torch.uint8, device=device or images[0].device)
    for k, im in enumerate(images):
        out[k, :, :im.shape[1], :im.shape[2]] = im
    return out, torch.tensor([im.shape[1:] for im in images], dtype=torch.int64)


def collate_padded(items):
    """Images padded (zeros, bottom and right) to the batch's largest H x W, their true sizes (B x 2: h, w),
    labels, the indices decoded, and the names of unreadable images replaced."""
    out, sizes = pad_batch([torch.from_numpy(np.require(it[0], requirements="CW")) for it in items])   # PIL's: read-only
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    indices = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return out, sizes, labels, indices, [it[3] for it in items if it[3] is not None]


def collate_payloads(items):
    """The reader's payloads as they are (JPEG bytes, 1-D, or decoded images, 3-D), labels, indices decoded and
    the names of unreadable images replaced: for decoding on the device."""
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    indices = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return [it[0] for it in items], labels, indices, [it[3] for it in items if it[3] is not None]


def _iterate(reader: _Reader, batches: list, workers: int, collate=collate_padded):
    if not batches:
        return iter(())
    loader = torch.utils.data.DataLoader(reader, batch_sampler=batches, num_workers=min(workers, len(batches)),
                                         collate_fn=collate, prefetch_factor=2 if workers else None,
                                         persistent_workers=False)
    return iter(loader)


def _warn_bad(data: StreamImageSet, bad: list, warned: set) -> None:
    new = [b for b in dict.fromkeys(bad) if b not in warned]
    if new:
        warned.update(new)
        warnings.warn(f"skipped {len(new)} unreadable image(s) ({', '.join(new[:5])}"
                      f"{', ...' if len(new) > 5 else ''}): each replaced in its batch by the next readable image "
                      f"of its class, which is then counted twice; remove or fix the file(s)")


class StreamLoader(BatchLoader):
    """``BatchLoader`` over a ``StreamImageSet``: the same batches and views for (seed, epoch, step, rank),
    the images decoded in ``workers`` DataLoader processes. ``shrink``: the short-side bound of the decoded
    images (None: the set's ``shrink=`` option, else ``2 * image_size``; 0: none). The transform gets
    ``sizes`` when it has ``accepts_sizes`` (padded batches), else fixed size x size centre crops."""

    def __init__(self, dataset: StreamImageSet, batch_size: int, transform, *, image_size: int | None = None,
                 shrink: int | None = None, workers: int | None = None, **kw):
        super().__init__(dataset, batch_size, transform, **kw)
        if shrink is None:
            shrink = dataset.shrink if dataset.shrink is not None else 2 * (image_size or dataset.size)
        self.padded = bool(getattr(transform, "accepts_sizes", False))
        self.how = ("shrink", shrink or None) if self.padded else ("center", dataset.size, 1.0)
        self.workers = dataset._workers(workers)
        self._warned: set = set()
        self.device_decode = self.padded and self._device_decode(dataset.decode)
        if self.device_decode:
            self.how = ("bytes", shrink or None)

    def _device_decode(self, option: str) -> bool:
        """``decode=device``: JPEGs decoded in batches on the training device; ``auto``: so on CUDA (nvJPEG) when
        it works there, else in the workers; ``workers``: PIL in the workers."""
        if option == "workers" or (option == "auto" and self.device.type != "cuda"):
            return False
        if device_decode_works(self.device):
            if option == "auto":
                print(f"data: JPEGs decoded in batches on {self.device} (nvJPEG); decode=workers decodes them with "
                      f"PIL in the DataLoader workers")
            return True
        if option == "device":
            raise SelfSupError(f"data option decode=device: torchvision cannot decode JPEGs on {self.device} "
                               f"(nvJPEG needs torchvision built with CUDA); use decode=workers")
        return False

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The set's own order (shards: shard order, then windows of ``buffer``), as a function of (seed, epoch)."""
        return self.dataset.epoch_order(self.seed, epoch) if self.shuffle else np.arange(len(self.dataset))

    def _decode_on_device(self, item):
        """The batch of a ("bytes", bound) reader decoded on the device: JPEG bytes together (``decode_batch``),
        PIL's images (and JPEGs the decoder refused, or their replacements) as they come; shrunk, padded."""
        payloads, labels, indices, bad = item
        jpegs = [k for k, p in enumerate(payloads) if p.ndim == 1]
        images: list = [None] * len(payloads)
        for k, image in zip(jpegs, decode_batch([payloads[k] for k in jpegs], self.dataset.mode, self.device)):
            images[k] = None if image is None else shrink_on_device(image, self.how[1])
        for k, p in enumerate(payloads):
            if images[k] is None:
                if p.ndim == 1:
                    p, j, replaced = self.dataset.load(int(indices[k]), ("shrink", self.how[1]))
                    if j != int(indices[k]):
                        bad = bad + [replaced or self.dataset.name(int(indices[k]))]
                        labels[k], indices[k] = int(self.dataset.labels[j]), j
                images[k] = torch.from_numpy(np.require(p, requirements="CW")).to(self.device)
        out, sizes = pad_batch(images, self.device)
        return out, sizes, labels, indices, bad

    def _finish(self, epoch: int, step: int, item) -> Batch:
        if self.device_decode:
            item = self._decode_on_device(item)
        images, sizes, labels, indices, bad = item
        _warn_bad(self.dataset, bad, self._warned)
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
            labels, sizes = labels.to(self.device, non_blocking=True), sizes.to(self.device)
        g = batch_generator(self.seed, epoch, step, self.rank, self.device)
        views = self.transform(images, g, sizes=sizes) if self.padded else self.transform(images, g)
        views, targets = views if isinstance(views, tuple) else (views, None)
        return Batch(views, labels, indices.to(self.device), targets)

    def load(self, epoch: int, step: int, idx: np.ndarray) -> Batch:
        items = [_Reader(self.dataset, self.how)[int(i)] for i in idx]
        return self._finish(epoch, step, (collate_payloads if self.device_decode else collate_padded)(items))

    def _batches(self, epoch: int, steps: list) -> Iterator[Batch]:
        reader = _Reader(self.dataset, self.how)
        source = _iterate(reader, [[int(i) for i in idx] for _, idx in steps], self.workers,
                          collate_payloads if self.device_decode else collate_padded)
        for (step, _), item in zip(steps, source):
            yield self._finish(epoch, step, item)


# ---------------------------------------------------------------- building sets

def sampled_side(read_head, names: list[str]) -> int | None:
    """The side that decoding into memory would choose (``_side_rule``), from the headers of up to PROBE evenly
    spaced images; None when none of them is readable."""
    picks = np.unique(np.linspace(0, len(names) - 1, min(len(names), PROBE)).round().astype(np.int64))
    found = []
    for i in picks:
        try:
            head = _header(read_head(names[int(i)]))
        except (OSError, SelfSupError):
            head = None
        if head is not None:
            found.append(head[1])
    return _side_rule(found) if found else None


def probe(data: StreamImageSet, size: int | None, mode: str | None) -> StreamImageSet:
    """The colour mode (L when every probed image is grayscale) and the size (the in-memory rule: the images'
    side when all are one square size, else the median short side, at most 256) from the headers of up to
    PROBE evenly spaced images: no pass over the whole set."""
    n = len(data)
    picks = np.unique(np.linspace(0, n - 1, min(n, PROBE)).round().astype(np.int64))
    found = []
    for i in picks:
        try:
            head = _header(data.read(int(i)))
        except OSError:
            head = None
        if head is not None:
            found.append(head)
    if not found:
        raise SelfSupError(f"none of {len(picks)} images probed in {data.root} is readable: check that the files "
                           f"are images")
    if mode is None:
        mode = "L" if all(_is_gray(m) for m, _ in found) else "RGB"
    if size is None:
        size = _side_rule([s for _, s in found])
    return replace(data, mode=mode, size=size)


def stream_set(root: Path, names: list[str], labels, classes: list[str], identity: str, options: dict,
               tar: Path | None = None, stat_files: bool = False) -> StreamImageSet:
    """A ``StreamImageSet`` of ``names`` under ``root`` (or members of the uncompressed ``tar``). ``identity``
    must change with the images' contents, unless ``stat_files``: then the fingerprint also covers every file's
    name, size and time, stat'ed when it is first needed (``StreamImageSet.fingerprint``)."""
    from selfsup.data.datasets import _number, _positive, channel_mode

    member = None
    tars = []
    if tar is not None:
        with tarfile.open(tar) as handle:
            if handle.fileobj is not None and not isinstance(handle.fileobj, io.BufferedReader):
                raise SelfSupError(f"{tar} is compressed: streaming reads members at their offsets, which needs an "
                                   f"uncompressed .tar; unpack it, write shards (python -m selfsup.data.shards), "
                                   f"or use stream=0")
            members = {m.name.lstrip("./"): m for m in handle.getmembers() if m.isfile()}
        for n in names:
            problem = tar_member_problem(f"{tar}:{n}", members[n])
            if problem:
                raise problem
        offsets = {n: (m.offset_data, m.size) for n, m in members.items()}
        member = np.array([(0, *offsets[n]) for n in names], dtype=np.int64).reshape(-1, 3)
        tars = [str(tar)]
    encoded = np.array([n.encode() for n in names], dtype=bytes)
    labels = np.asarray(labels, dtype=np.int64)
    # v2: no EXIF rotation (v1 applied it): features cached from rotated decodes are not served
    fingerprint = _short_hash(f"stream-v2|{identity}|" + hashlib.sha1(encoded.tobytes() + labels.tobytes()).hexdigest())
    workers = _number(options, "workers", int, None)
    if workers is not None and workers < 0:
        raise SelfSupError(f"data option workers={workers} must be 0 (decode in the main process) or more")
    shrink = _number(options, "shrink", int, None)
    if shrink is not None and shrink < 0:
        raise SelfSupError(f"data option shrink={shrink} must be 0 (keep full size) or a short side in px")
    data = StreamImageSet(encoded, labels, classes, fingerprint, str(root), tars=tars, member=member,
                          stat_files=stat_files, shrink=shrink, workers=workers, decode=decode_option(options),
                          loader=loader_option(options))
    return probe(data, _positive(options, "size"), channel_mode(options))


def loader_option(options: dict) -> str:
    return options.get("loader", "torch")          # its value is checked with the spec (``parse_spec``)


def stream_loader(dataset: StreamImageSet, batch_size: int, transform, **kw) -> StreamLoader:
    """The training loader that the set's ``loader=`` option names."""
    if dataset.loader == "dali":
        from selfsup.data.dali import DaliStreamLoader

        return DaliStreamLoader(dataset, batch_size, transform, **kw)
    return StreamLoader(dataset, batch_size, transform, **kw)


def decode_option(options: dict) -> str:
    decode = options.get("decode", "auto")
    if decode not in ("auto", "workers", "device"):
        raise SelfSupError(f"data option decode={decode!r}: use decode=workers (PIL in the DataLoader workers), "
                           f"decode=device (JPEGs in batches on the training device: nvJPEG on CUDA) or decode=auto")
    return decode


def list_unlabeled(source, path: Path, split: str | None) -> list[str]:
    """Every image of a folder tree (or tar), any depth, sorted; ``split``: only under that top folder."""
    files = [f for f in source.files() if f.lower().endswith(IMAGE_EXTENSIONS)]
    if split is not None:
        files = [f for f in files if f.split("/")[0] == split]
        if not files:
            raise SelfSupError(f"{path} has no images under a split folder {split!r}: drop split= or use one of "
                               f"its top folders")
    if not files:
        raise SelfSupError(f"no images found in {path}: unlabeled:DIR needs image files ({', '.join(IMAGE_EXTENSIONS)}) "
                           f"anywhere under DIR")
    return files
