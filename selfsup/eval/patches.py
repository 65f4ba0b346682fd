"""Evaluation by aggregating patch embeddings (BagSSL §4-5, METHODS.md 7.4).

A representation of an image is built from embeddings of its patches, each patch
cropped from the image, resized to the network input and embedded by the
backbone alone (any backbone: the tap's output, globally average-pooled). Every
image is first brought to the evaluation size (the checkpoint's pretraining size
or ``--image-size``, resized and centre-cropped as ``extract_features`` does), so
patches and windows cover the same part of the image in every set:

- global aggregation: the mean of the embeddings of N patches drawn at the
  pretraining scale: fixed-side patches at uniformly random positions for
  patch-trained models, RandomResizedCrop(0.08, 1) boxes for multi-scale ones;
- local aggregation (Table 5): a window slid with a stride gives a g x g grid of
  embeddings (D x g x g), average-pooled with kernel 3 and stride 2 and
  flattened: D x s^2 features with s = floor((g - 3) / 2) + 1 (CIFAR: 16 px
  windows at stride 4 -> 5 x 5 grid -> 2 x 2 -> 4 D).

Patches are embedded in chunks of at most ``chunk`` patches and their embeddings
summed per image as they come, so memory stays bounded whatever N is. The same
module gives the convergence study (Fig. 3a), the similarity map of a query patch
against its image (Fig. 4) and the nearest patches of a query across a dataset
(Fig. 5).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.views import EvalTransform, crop_boxes, normalize, patch_boxes, resized_crop
from selfsup.checkpoint import save_atomic
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one
from selfsup.eval.features import eval_resize, feature_cache

MULTI_SCALE = (0.08, 1.0)
IMAGES_PER_STEP = 64


def random_boxes(n_images: int, height: int, width: int, num: int, side: int | None, g: torch.Generator,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` boxes per image at the pretraining scale: ``side`` x ``side`` patches at
    uniformly random positions, or RandomResizedCrop(0.08, 1) boxes when ``side`` is None.
    Returns the boxes (n_images * num x 4, image-major) and the image index of each."""
    n = n_images * num
    if side is None:
        boxes = crop_boxes(n, height, width, MULTI_SCALE, (3 / 4, 4 / 3), g, device)
    else:
        boxes = patch_boxes(n, height, width, side, g, device)
    return boxes, torch.arange(n_images, device=device).repeat_interleave(num)


def grid_boxes(height: int, width: int, side: int, stride: int, device="cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """Boxes of a ``side`` window slid with ``stride`` over the image, row-major, and the grid shape."""
    at_least_one("--stride", stride, 4)
    if side > min(height, width):
        raise SelfSupError(f"window {side} exceeds the {height}x{width} images: use a smaller window or patch size")
    ys, xs = range(0, height - side + 1, stride), range(0, width - side + 1, stride)
    boxes = torch.tensor([[x, y, x + side, y + side] for y in ys for x in xs], dtype=torch.float32, device=device)
    return boxes, (len(ys), len(xs))


def embed_boxes(backbone, x: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor, input_size: int,
                tap: str, chunk: int = 2048, mean_per_image: bool = False) -> torch.Tensor:
    """Embeddings (len(boxes) x D) of the patches ``boxes`` of images ``x[source]`` (float in
    [0, 1]), each resized to ``input_size``, normalised and embedded; at most ``chunk``
    patches go through the backbone at once. With ``mean_per_image`` the result is the mean embedding of each
    image's patches (len(x) x D), accumulated chunk by chunk, so memory stays bounded."""
    out, sums = [], None
    for start in range(0, len(boxes), chunk):
        src = source[start:start + chunk]
        patches = normalize(resized_crop(x, boxes[start:start + chunk], input_size, src))
        patches = patches.contiguous(memory_format=torch.channels_last)
        h = torch.flatten(F.adaptive_avg_pool2d(backbone.forward_taps(patches, (tap,))[tap].float(), 1), 1)
        if mean_per_image:
            sums = h.new_zeros(len(x), h.shape[1]) if sums is None else sums
            sums.index_add_(0, src, h)
        else:
            out.append(h)
    if mean_per_image:
        return sums / torch.bincount(source, minlength=len(x)).clamp(min=1)[:, None].to(sums.dtype)
    return torch.cat(out)


def local_pool(grid: torch.Tensor) -> torch.Tensor:
    """B x g_h x g_w x D grid of embeddings -> AvgPool2d(3, stride 2) -> flattened B x (D s_h s_w)."""
    if min(grid.shape[1:3]) < 3:
        raise SelfSupError(f"local aggregation needs a grid of at least 3 x 3 windows, got {grid.shape[1]} x "
                           f"{grid.shape[2]}: use a smaller --stride or --window")
    return torch.flatten(F.avg_pool2d(grid.permute(0, 3, 1, 2), kernel_size=3, stride=2), 1)


def check_patches(num_patches: int = 16, patch_size: int | None = None, window: int | None = None,
                  stride: int | None = None, chunk: int = 2048) -> None:
    """Refuse patch settings that leave nothing to embed (None: the default, accepted)."""
    at_least_one("--num-patches", num_patches, 16)
    at_least_one("--patch-size", patch_size, 16)
    at_least_one("--window", window, 16)
    at_least_one("--stride", stride, 4)
    at_least_one("--chunk", chunk, 2048)


def check_counts(counts) -> None:
    """Refuse numbers of patches averaged (``patch_convergence``) below 1."""
    if not counts or min(counts) < 1:
        raise SelfSupError(f"--counts must be numbers of patches of at least 1, got {','.join(map(str, counts))}: "
                           "use e.g. --counts 1,2,4,8,16")


def _raw(dataset, start: int, count: int, device) -> torch.Tensor:
    return torch.from_numpy(np.array(dataset.images[start:start + count])).to(device)


def _images(dataset, start: int, count: int, device, size: int | None = None) -> torch.Tensor:
    """Images ``start`` .. ``start + count`` as float in [0, 1], brought to ``size`` x ``size`` (``eval_resize``:
    the evaluation view's resize and centre crop) when ``size`` is given."""
    return eval_resize(_raw(dataset, start, count, device), size)


@torch.no_grad()
def aggregated_features(backbone, dataset, num_patches: int = 16, patch_size: int | None = None,
                        aggregate: str = "global", window: int | None = None, stride: int | None = None,
                        input_size: int | None = None, tap: str | None = None, chunk: int = 2048, seed: int = 0,
                        device: str | torch.device = "cpu", cache_key: str | None = None,
                        cache_dir: str | Path | None = None, progress: bool = False,
                        image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregated patch features (N x D', float32) and labels of ``dataset``.

    ``aggregate="global"``: mean embedding of ``num_patches`` patches (side ``patch_size``
    in source pixels at random positions; None: RandomResizedCrop(0.08, 1) boxes), drawn
    with a generator seeded by ``seed``. ``aggregate="local"``: ``window`` px windows
    (default half the image side) at ``stride`` (default window / 4), pooled by
    ``local_pool``. Every patch is resized to ``input_size`` (default: the image size).

    ``image_size``: the evaluation size (``evaluate`` passes the checkpoint's pretraining size or
    ``--image-size``): every image is first resized and centre-cropped to it (``eval_resize``, the view
    ``extract_features`` uses), so patch sides, windows and strides are pixels of that size in every set,
    and sets of other sizes get the same patches relative to the image and features of the same
    dimension. None: the images' own size.
    """
    if aggregate not in ("global", "local"):
        raise SelfSupError(f"unknown aggregation {aggregate!r}: use global or local")
    check_patches(num_patches, patch_size, window, stride, chunk)
    tap = backbone.check_taps([tap])[0] if tap else backbone.default_tap
    at_least_one("--image-size", image_size, 224)
    height, width = (image_size, image_size) if image_size else tuple(dataset.images.shape[2:4])
    input_size = input_size or height
    window = window or min(height, width) // 2
    stride = stride or max(1, window // 4)
    cache_file, cached = feature_cache(cache_key, f"patches|{dataset.fingerprint}|{tap}|{aggregate}|{num_patches}|"
                                                  f"{patch_size}|{window}|{stride}|{input_size}|{seed}|"
                                                  f"size{image_size}", cache_dir)
    if cached is not None:
        return cached
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval().to(device, memory_format=torch.channels_last)
    g = torch.Generator(device=device).manual_seed(seed)
    if aggregate == "local":
        grid, (gh, gw) = grid_boxes(height, width, window, stride, device)
    # images per step: fixed for global aggregation, so the patch positions drawn do not depend on ``chunk``
    step = IMAGES_PER_STEP if aggregate == "global" else max(1, chunk // (gh * gw))
    from selfsup.progress import track

    feats = []
    for start in track(range(0, len(dataset), step), desc="patches", enabled=progress, unit="batch"):
        x = _images(dataset, start, step, device, image_size)
        if aggregate == "global":
            boxes, source = random_boxes(len(x), height, width, num_patches, patch_size, g, device)
            feats.append(embed_boxes(backbone, x, boxes, source, input_size, tap, chunk, mean_per_image=True).cpu())
        else:
            source = torch.arange(len(x), device=device).repeat_interleave(len(grid))
            e = embed_boxes(backbone, x, grid.repeat(len(x), 1), source, input_size, tap, chunk)
            feats.append(local_pool(e.view(len(x), gh, gw, -1)).cpu())
    backbone.train(was_training)
    features = torch.cat(feats)
    labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    if cache_file is not None:
        save_atomic({"features": features, "labels": labels}, cache_file)
    return features, labels


@torch.no_grad()
def patch_convergence(backbone, dataset, counts=(1, 2, 4, 8, 16), patch_size: int | None = None,
                      stride: int | None = None, input_size: int | None = None, max_images: int = 256,
                      tap: str | None = None, seed: int = 0, chunk: int = 2048, device="cpu",
                      image_size: int | None = None) -> dict[str, float]:
    """BagSSL Fig. 3a: mean over images of cos(mean of N patch embeddings, whole-image
    embedding) for each N in ``counts``, and for "all" patches (the window slid at
    ``stride``, default side / 4). The whole image is embedded at ``input_size``. ``image_size``: the
    evaluation size every image is first brought to, as in ``aggregated_features`` (None: their own)."""
    check_counts(counts)
    at_least_one("--max-images", max_images, 256)
    tap = backbone.check_taps([tap])[0] if tap else backbone.default_tap
    height, width = (image_size, image_size) if image_size else tuple(dataset.images.shape[2:4])
    input_size = input_size or height
    side = patch_size or min(height, width) // 2
    grid, _ = grid_boxes(height, width, side, stride or max(1, side // 4), device)
    backbone.eval().to(device, memory_format=torch.channels_last)
    g = torch.Generator(device=device).manual_seed(seed)
    sums = {str(n): 0.0 for n in counts} | {"all": 0.0}
    n_images = min(max_images, len(dataset))
    transform = EvalTransform(input_size)
    step = IMAGES_PER_STEP
    for start in range(0, n_images, step):
        raw = _raw(dataset, start, min(step, n_images - start), device)
        x = eval_resize(raw, image_size)
        whole = torch.flatten(F.adaptive_avg_pool2d(backbone.forward_taps(transform(raw), (tap,))[tap].float(), 1), 1)
        for n in counts:
            boxes, source = random_boxes(len(x), height, width, n, patch_size, g, device)
            mean = embed_boxes(backbone, x, boxes, source, input_size, tap, chunk, mean_per_image=True)
            sums[str(n)] += float(F.cosine_similarity(mean, whole).sum())
        source = torch.arange(len(x), device=device).repeat_interleave(len(grid))
        mean = embed_boxes(backbone, x, grid.repeat(len(x), 1), source, input_size, tap, chunk, mean_per_image=True)
        sums["all"] += float(F.cosine_similarity(mean, whole).sum())
    result = {k: v / n_images for k, v in sums.items()}
    result["all_patches"] = len(grid)
    return result


@torch.no_grad()
def similarity_map(backbone, image: torch.Tensor, side: int, stride: int, query: tuple[int, int] | None = None,
                   input_size: int | None = None, tap: str | None = None, head=None, device="cpu",
                   image_size: int | None = None) -> dict:
    """BagSSL Fig. 4: cosine similarity of one query patch to every patch of its image.

    ``image``: C x H x W uint8. Windows of ``side`` px at ``stride`` form a grid; ``query``
    (row, column in that grid, default its centre) is compared to every cell, in the
    embedding space and, with ``head`` (the pretraining projector), in the projection
    space, everything on ``device``. ``image_size``: the evaluation size the image is first brought to
    (``eval_resize``; None: its own), the pixels of the windows and the query box. Returns the maps
    (g_h x g_w), the query's box and the grid shape, on the CPU."""
    tap = backbone.check_taps([tap])[0] if tap else backbone.default_tap
    backbone.eval().to(device, memory_format=torch.channels_last)
    x = eval_resize(image[None].to(device), image_size)
    height, width = x.shape[2:]
    boxes, (gh, gw) = grid_boxes(height, width, side, stride, device)
    row, col = query if query is not None else (gh // 2, gw // 2)
    if not (0 <= row < gh and 0 <= col < gw):
        raise SelfSupError(f"query cell ({row}, {col}) is outside the {gh} x {gw} grid of windows: pick one inside")
    source = torch.zeros(len(boxes), dtype=torch.long, device=device)
    h = embed_boxes(backbone, x, boxes, source, input_size or height, tap)
    q = row * gw + col
    maps = {"embedding": F.cosine_similarity(h, h[q:q + 1]).view(gh, gw).cpu()}
    if head is not None:
        z = head.eval().to(device)(h).float()
        maps["projection"] = F.cosine_similarity(z, z[q:q + 1]).view(gh, gw).cpu()
    return {"maps": maps, "query_box": boxes[q].cpu(), "grid": (gh, gw)}


@torch.no_grad()
def nearest_patches(backbone, dataset, query_image: int, query_box: torch.Tensor, k: int = 16,
                    patches_per_image: int = 16, patch_size: int | None = None, max_images: int | None = None,
                    input_size: int | None = None, tap: str | None = None, seed: int = 0, chunk: int = 2048,
                    device="cpu", image_size: int | None = None) -> list[tuple[int, torch.Tensor, float]]:
    """BagSSL Fig. 5: the ``k`` patches of ``dataset`` (``patches_per_image`` random ones per
    image, side ``patch_size``) nearest to the query patch (cosine, embedding space),
    excluding the query's own image. A running top-k over chunks keeps memory bounded. ``image_size``:
    the evaluation size every image is first brought to (None: their own), the pixels of the boxes.
    Returns (image index, box, similarity) for each, nearest first."""
    at_least_one("--k", k, 16)
    at_least_one("--patches-per-image", patches_per_image, 16)
    at_least_one("--max-images", max_images, 256)
    tap = backbone.check_taps([tap])[0] if tap else backbone.default_tap
    backbone.eval().to(device, memory_format=torch.channels_last)
    height, width = (image_size, image_size) if image_size else tuple(dataset.images.shape[2:4])
    input_size = input_size or height
    side = patch_size or int(query_box[2] - query_box[0])
    xq = _images(dataset, query_image, 1, device, image_size)
    q = embed_boxes(backbone, xq, query_box.view(1, 4).to(device), torch.zeros(1, dtype=torch.long, device=device),
                    input_size, tap)
    g = torch.Generator(device=device).manual_seed(seed)
    best_sim = torch.empty(0, device=device)
    best_img = torch.empty(0, dtype=torch.long, device=device)
    best_box = torch.empty(0, 4, device=device)
    n_images = min(max_images or len(dataset), len(dataset))
    step = max(1, chunk // patches_per_image)
    for start in range(0, n_images, step):
        x = _images(dataset, start, min(step, n_images - start), device, image_size)
        boxes, source = random_boxes(len(x), height, width, patches_per_image, side, g, device)
        sim = F.cosine_similarity(embed_boxes(backbone, x, boxes, source, input_size, tap, chunk), q)
        sim = sim.masked_fill(source + start == query_image, -2.0)
        best_sim = torch.cat([best_sim, sim])
        best_img = torch.cat([best_img, source + start])
        best_box = torch.cat([best_box, boxes])
        top = best_sim.topk(min(k, len(best_sim))).indices
        best_sim, best_img, best_box = best_sim[top], best_img[top], best_box[top]
    return [(int(i), b.cpu(), float(s)) for i, b, s in zip(best_img, best_box, best_sim)]
