"""``loader=dali``: the streaming path's training crops decoded by NVIDIA DALI, where it is installed.

DALI is optional (``pip install nvidia-dali-cuda120``; never a dependency) and feature-detected. It takes
the part of a view that costs most: decoding the JPEG and resizing the crop. Each crop is decoded from
the file's region of interest only (``fn.decoders.image_slice``: on the GPU with nvJPEG, ``mixed``, else on
the CPU in DALI's own threads) and resized to the view size with antialiasing (``fn.resize``, bilinear).
Everything else stays selfsup's: the boxes, on the original image at its own aspect ratio, are drawn by
``crop_boxes`` from the batch's (seed, epoch, step, rank) generator before the batch is decoded, and the
flip, colour jitter, grayscale, blur and solarize are the batched ``photometric`` of the same generator.
So a resumed run is exact on this loader too, but its views are not those of ``loader=torch``: the boxes
are drawn on the original image (not on the image shrunk to ``shrink=``) and the draws come in another
order. Files DALI should not take (PNG, CMYK or EXIF-rotated JPEGs: ``device_ready``) are decoded by PIL
in the DataLoader workers and cut with ``cut_and_resize``; unreadable files are replaced as on the
streaming path. Only crop recipes (``ViewMaker``) run on it.
"""
from __future__ import annotations

import io
import threading

import numpy as np
import torch
from PIL import Image

from selfsup.data.loader import Batch, batch_generator
from selfsup.data.stream import StreamLoader, _iterate, _Reader, _warn_bad, collate_payloads
from selfsup.data.views import cut_and_resize, spec_boxes
from selfsup.errors import SelfSupError


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DaliStreamLoader(StreamLoader):
    """``StreamLoader`` whose crops are decoded and resized by DALI (see the module's text)."""

    def __init__(self, dataset, batch_size: int, transform, **kw):
        if not dali_available():
            raise SelfSupError("data option loader=dali needs NVIDIA DALI: pip install nvidia-dali-cuda120 "
                               "(or nvidia-dali-cuda130), or drop loader=dali")
        if not (hasattr(transform, "from_crops") and getattr(transform, "specs", None)):
            raise SelfSupError("loader=dali makes crop views (the simclr, mocov2, byol, multicrop and patch recipes); "
                               "this method draws its own geometry: drop loader=dali")
        super().__init__(dataset, batch_size, transform, **kw)
        self.device_decode = False
        self.how = ("bytes", None)        # JPEG bytes for DALI; anything else decoded by PIL at full size
        self.threads = max(1, self.workers)
        self._pipe = None
        self._lock = threading.Lock()     # one batch at a time through the pipeline (loader thread, load())

    def _pipeline(self):
        """Built once, in the loader thread's process: one image_slice + resize per view, fed per batch."""
        if self._pipe is None:
            from nvidia.dali import fn, pipeline_def, types

            cuda = self.device.type == "cuda"
            gray = self.dataset.mode == "L"

            @pipeline_def(batch_size=self.batch_size, num_threads=self.threads,
                          device_id=(self.device.index or 0) if cuda else None, seed=0, prefetch_queue_depth=1,
                          exec_async=False, exec_pipelined=False)
            def views():
                jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
                out = []
                for k, spec in enumerate(self.transform.specs):
                    anchor = fn.external_source(name=f"anchor{k}", dtype=types.FLOAT, ndim=1)
                    shape = fn.external_source(name=f"shape{k}", dtype=types.FLOAT, ndim=1)
                    crop = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed" if cuda else "cpu",
                                                   output_type=types.GRAY if gray else types.RGB, axis_names="WH",
                                                   normalized_anchor=False, normalized_shape=False)
                    out.append(fn.resize(crop, resize_x=spec.size, resize_y=spec.size,
                                         interp_type=types.INTERP_LINEAR, antialias=True))
                return tuple(out)

            self._pipe = views()
            self._pipe.build()
        return self._pipe

    def _dali_crops(self, blobs: list, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """B' x C x size x size uint8 crops of the JPEGs ``blobs``, one tensor per view, on the device."""
        with self._lock:
            pipe = self._pipeline()
            pipe.feed_input("jpegs", blobs)
            for k, b in enumerate(boxes):
                b = b.cpu().numpy().astype(np.float32)
                pipe.feed_input(f"anchor{k}", list(b[:, :2]))
                pipe.feed_input(f"shape{k}", list(b[:, 2:] - b[:, :2]))
            lists = pipe.run()
        out = []
        for tl in lists:
            if self.device.type == "cuda":
                from nvidia.dali.plugin.pytorch import feed_ndarray

                dense = tl.as_tensor()
                t = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
                feed_ndarray(dense, t, cuda_stream=torch.cuda.current_stream(self.device))
            else:
                t = torch.from_numpy(tl.as_array())
            out.append(t.permute(0, 3, 1, 2))
        return out

    def _finish(self, epoch: int, step: int, item) -> Batch:
        payloads, labels, indices, bad = item
        _warn_bad(self.dataset, bad, self._warned)
        sizes = torch.tensor([_size(p) for p in payloads], dtype=torch.int64)       # (h, w) of each original
        g = batch_generator(self.seed, epoch, step, self.rank, self.device)
        specs = self.transform.specs
        boxes = [spec_boxes(s, len(payloads), sizes[:, 0].to(self.device), sizes[:, 1].to(self.device), g,
                            self.device) for s in specs]
        jpeg = [k for k, p in enumerate(payloads) if p.ndim == 1]
        other = [k for k, p in enumerate(payloads) if p.ndim != 1]
        c = self.dataset.channels
        crops = [torch.empty(len(payloads), c, s.size, s.size, dtype=torch.uint8, device=self.device) for s in specs]
        if jpeg:
            rows = torch.tensor(jpeg, device=self.device)
            made = self._dali_crops([payloads[k] for k in jpeg], [b[rows] for b in boxes])
            for full, part in zip(crops, made):
                full[rows] = part.to(self.device)
        for k in other:
            image = torch.from_numpy(np.ascontiguousarray(payloads[k]))[None].to(self.device)
            for full, b, s in zip(crops, boxes, specs):
                full[k] = cut_and_resize(image, b[k:k + 1], s.size)[0]
        views = self.transform.from_crops(crops, g)
        return Batch(views, labels.to(self.device), indices.to(self.device))

    def load(self, epoch: int, step: int, idx: np.ndarray) -> Batch:
        return self._finish(epoch, step, collate_payloads([_Reader(self.dataset, self.how)[int(i)] for i in idx]))

    def _batches(self, epoch: int, steps: list):
        source = _iterate(_Reader(self.dataset, self.how), [[int(i) for i in idx] for _, idx in steps],
                          self.workers, collate_payloads)
        for (step, _), item in zip(steps, source):
            yield self._finish(epoch, step, item)


def _size(payload: np.ndarray) -> tuple[int, int]:
    """(h, w) of a decoded C x H x W image, or of a JPEG's bytes from its header (no EXIF rotation: ``device_ready``)."""
    if payload.ndim != 1:
        return payload.shape[1], payload.shape[2]
    with Image.open(io.BytesIO(payload.tobytes())) as im:
        return im.size[1], im.size[0]
