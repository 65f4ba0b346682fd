"""PNG figures of what a backbone learned (BagSSL Fig. 3a, 4 and 5; Colorization's colourised
images, Zhang et al. Fig. 1; CC+'s conv1 filters and clusters, Noroozi et al. 2018 Figs. 4 and 5),
for `selfsup viz`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfsup.data.datasets import load_dataset
from selfsup.data.color import lab_to_rgb, rgb_to_lab
from selfsup.data.views import EvalTransform, unnormalize
from selfsup.checkpoint import load_backbone, load_checkpoint, load_method, load_projector
from selfsup.distributed import resolve_device
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, eval_image_size
from selfsup.eval.features import eval_resize
from selfsup.eval.patches import check_counts, nearest_patches, patch_convergence, similarity_map
from selfsup.eval.run import pretraining_patch_size
from selfsup.report.plots import _plt

MAX_COUNT = 1024        # convergence: patches averaged per image; the curve is flat long before


def png_out(out: str | Path) -> Path:
    """``--out`` as a PNG file whose folder exists: a folder, a name not ending in .png (matplotlib would
    write another file, or another format) and a folder that cannot be made are refused in one line."""
    out = Path(out)
    if out.is_dir():
        raise SelfSupError(f"--out {out} is a folder: give a PNG file name, e.g. {out / 'figure.png'}")
    if out.suffix.lower() != ".png":
        raise SelfSupError(f"--out {out}: viz writes PNG, give a file name ending in .png, "
                           f"e.g. {out.with_suffix('.png')}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelfSupError(f"--out {out}: cannot make its folder {out.parent} ({e.strerror}): "
                           f"choose another --out") from None
    return out


def _show(ax, image: torch.Tensor, title: str = "") -> None:
    """C x H x W uint8 (or float in [0, 1]) on a matplotlib axis."""
    x = image.float() / (255 if image.dtype == torch.uint8 else 1)
    ax.imshow(x.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray" if x.shape[0] == 1 else None)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _image(dataset, index: int, image_size: int | None) -> torch.Tensor:
    """Image ``index`` in [0, 1], brought to ``image_size`` as the patch evaluations see it (``eval_resize``)."""
    return eval_resize(torch.from_numpy(np.array(dataset.images[index:index + 1])), image_size)[0]


def _box(ax, box, color="red") -> None:
    import matplotlib.patches as mpatches

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(mpatches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, linewidth=2))


def heatmap_png(image: torch.Tensor, result: dict, png: str | Path) -> None:
    """The image with its query patch, and one similarity map per space."""
    plt = _plt()
    maps = result["maps"]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.2))
    _show(axes[0], image, "query patch")
    _box(axes[0], result["query_box"])
    for ax, (space, m) in zip(axes[1:], maps.items()):
        im = ax.imshow(m.numpy(), cmap="viridis", vmin=float(m.min()), vmax=1.0)   # contrast within the image
        ax.set_title(f"cosine similarity, {space}", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def patch_knn_png(dataset, query_image: int, query_box, neighbours, png: str | Path,
                  image_size: int | None = None) -> None:
    """The query patch, then its nearest patches (nearest first) with their similarity; the boxes are
    pixels of the images brought to ``image_size`` (None: their own size)."""
    plt = _plt()
    cols = 6
    rows = (len(neighbours) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    crop = lambda i, b: _image(dataset, i, image_size)[:, int(b[1]):int(b[3]), int(b[0]):int(b[2])]  # noqa: E731
    _show(axes[0][0], crop(query_image, query_box), f"query (image {query_image})")
    for n, (i, b, sim) in enumerate(neighbours, start=1):
        _show(axes[n // cols][n % cols], crop(i, b), f"{sim:.2f} (image {i})")
    for n in range(len(neighbours) + 1, rows * cols):
        axes[n // cols][n % cols].axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def convergence_png(result: dict, png: str | Path, title: str) -> None:
    """cos(mean of N patch embeddings, whole-image embedding) against N, with "all" as a line."""
    plt = _plt()
    counts = [k for k in result if k.isdigit()]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([int(c) for c in counts], [result[c] for c in counts], marker="o", label="N random patches")
    ax.axhline(result["all"], color="gray", linestyle="--", label=f"all {result['all_patches']} patches")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("patches averaged (N)")
    ax.set_ylabel("cosine similarity to the whole image")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def colorize_png(gray: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor, png: str | Path,
                 first: int = 0) -> None:
    """Three rows of B x 3 x H x W images in [0, 1]: the grayscale input, the colourisation, the ground truth."""
    plt = _plt()
    n = len(gray)
    fig, axes = plt.subplots(3, n, figsize=(1.5 * n, 1.5 * 3 + 0.3), squeeze=False)
    for row, (images, title) in enumerate(((gray, "input (L)"), (predicted, "colourised"), (truth, "ground truth"))):
        for col in range(n):
            index = f"#{first + col}" if row == 0 else ""
            _show(axes[row][col], images[col], f"{title} {index}".strip() if col == 0 else index)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def colorize_figure(ckpt: dict, checkpoint: str, backbone, dataset, out: str | Path, index: int, count: int,
                    image_size: int | None, device: str = "cpu") -> str:
    """``count`` images from ``index`` as their L, the checkpoint's annealed-mean colourisation
    (Zhang et al. eq. 5) and the original; returns a summary line."""
    name = (ckpt.get("config") or {}).get("method")
    if name != "colorization" or "model" not in ckpt:
        raise SelfSupError(f"checkpoint {checkpoint} was not pretrained with colorization (method: {name or 'none'}): "
                           "pass a checkpoint of `selfsup pretrain colorization`")
    method = load_method(ckpt, backbone, checkpoint).to(device)
    stop = min(len(dataset), index + max(1, count))
    x = EvalTransform(image_size)(torch.from_numpy(np.array(dataset.images[index:stop])).to(device))
    predicted = method.colorize(x)
    truth = unnormalize(x)
    lab = rgb_to_lab(truth)
    gray = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))
    error = (rgb_to_lab(predicted)[:, 1:] - lab[:, 1:]).square().sum(1).mean().sqrt()
    colorize_png(gray.cpu(), predicted.cpu(), truth.cpu(), out, first=index)
    return (f"wrote {out}: images {index} to {stop - 1}, annealed mean T={method.cfg.temperature}, "
            f"ab RMSE {float(error):.1f} against the ground truth")


def filters_png(backbone, png: str | Path, title: str) -> str:
    """The first convolution's filters, each min-max scaled on its own (Noroozi et al. 2018 Fig. 4)."""
    conv = next((m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise SelfSupError("this backbone has no convolution to show")
    w = conv.weight.detach().float().cpu()
    lo, hi = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    n = len(w)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, w[i])
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return f"{n} filters of {tuple(w.shape[1:])}"


def clusters_png(backbone, dataset, png: str | Path, clusters: int, shown: int, per_cluster: int, tap: str,
                 image_size: int | None, device, seed: int = 0) -> str:
    """k-means on the dataset's features at ``tap``; for ``shown`` random clusters, the ``per_cluster`` images
    nearest their centroid, one row each (Noroozi et al. 2018 Fig. 5)."""
    from selfsup.eval.features import extract_features
    from selfsup.kmeans import kmeans

    x, _ = extract_features(backbone, dataset, tap=tap, image_size=image_size, device=device)
    if not 1 <= clusters <= len(x):
        raise SelfSupError(f"--clusters {clusters} must be between 1 and the {len(x)} images")
    centroids, labels = kmeans(x.float(), clusters, 20, seed=seed)
    rng = np.random.default_rng(seed)
    sizes = torch.bincount(labels, minlength=clusters)
    pick = rng.choice(np.flatnonzero(sizes.numpy() > 0), min(shown, int((sizes > 0).sum())), replace=False)
    plt = _plt()
    fig, axes = plt.subplots(len(pick), per_cluster, figsize=(per_cluster * 0.8, len(pick) * 0.85), squeeze=False)
    for row, c in enumerate(pick):
        members = torch.nonzero(labels == int(c)).flatten()
        dist = ((x[members].float() - centroids[int(c)]) ** 2).sum(1)
        nearest = members[dist.argsort()[:per_cluster]]
        for col, ax in enumerate(axes[row]):
            if col < len(nearest):
                _show(ax, torch.from_numpy(np.array(dataset.images[int(nearest[col])])),
                      f"cluster {int(c)} ({int(sizes[c])})" if col == 0 else "")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return f"{clusters} clusters at {tap}, {len(pick)} shown with their {per_cluster} nearest images"


def retrieval_png(queries_from, bank, queries, neighbours: dict[str, torch.Tensor], png: str | Path) -> None:
    """Image retrieval side by side: per row a query image of ``queries_from``, then, for each
    named feature space, its nearest images of ``bank`` (``neighbours[name]``: queries x k
    indices, nearest first), titled with their class, green when it is the query's, red otherwise."""
    plt = _plt()
    k = next(iter(neighbours.values())).shape[1]
    cols = len(neighbours) * (k + 1)
    fig, axes = plt.subplots(len(queries), cols, figsize=(0.75 * cols, 0.9 * len(queries) + 0.3), squeeze=False)
    for row, q in enumerate(queries):
        label = int(queries_from.labels[int(q)])
        for block, (name, idx) in enumerate(neighbours.items()):
            first = block * (k + 1)
            _show(axes[row, first], torch.from_numpy(np.array(queries_from.images[int(q)])),
                  f"{name}: query" if row == 0 else "")
            for col, j in enumerate(idx[row].tolist(), start=first + 1):
                ax = axes[row, col]
                same = int(bank.labels[j]) == label
                _show(ax, torch.from_numpy(np.array(bank.images[j])))
                ax.set_title(str(bank.classes[int(bank.labels[j])])[:7], fontsize=6, color="green" if same else "red")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def visualise(kind: str, checkpoint: str, data: str | None, out: str | Path, index: int = 0, query=None,
              patch_size="auto", stride: int | None = None, k: int = 16, patches_per_image: int = 16,
              max_images: int | None = None, counts=(1, 2, 4, 8, 16), image_size: int | None = None,
              device: str = "cpu", clusters: int = 100) -> str:
    """Write the ``kind`` figure ("heatmap", "patch-knn", "convergence", "colorize", "filters" or "clusters")
    to ``out``; returns a summary line. ``colorize`` shows ``max_images`` images (default 8) from ``index``;
    ``clusters`` shows 8 of ``clusters`` k-means clusters with their ``k`` nearest images. Everything
    runs on ``device`` (auto, cpu or cuda); sizes and counts below 1 are refused before anything runs."""
    device = resolve_device(device)
    kinds = ("heatmap", "patch-knn", "convergence", "colorize", "filters", "clusters")
    if kind not in kinds:
        raise SelfSupError(f"unknown figure {kind!r}: use {', '.join(kinds)}")
    out = png_out(out)
    if kind == "filters":
        backbone = load_backbone(checkpoint)
        return f"wrote {out}: " + filters_png(backbone, out, f"{checkpoint}: first convolution")
    if not data:
        raise SelfSupError(f"viz {kind} needs --data SPEC")
    for flag, value, example in (("--k", k, 16), ("--patches-per-image", patches_per_image, 16),
                                 ("--max-images", max_images, 256), ("--stride", stride, 4),
                                 ("--image-size", image_size, 224)):
        at_least_one(flag, value, example)
    check_counts(counts)
    if max(counts) > MAX_COUNT:
        raise SelfSupError(f"--counts {max(counts)} is more than {MAX_COUNT} patches per image, where the curve has long "
                           f"flattened (and memory and time grow with it): use e.g. --counts 1,2,4,8,16")
    ckpt = load_checkpoint(checkpoint)
    backbone = load_backbone(checkpoint, ckpt)
    dataset = load_dataset(data)
    if not 0 <= index < len(dataset):
        raise SelfSupError(f"--index {index} is outside the dataset of {len(dataset)} images")
    input_size = eval_image_size(ckpt, image_size)        # default: the pretraining size
    if kind == "clusters":
        tap = ckpt.get("eval_tap") or backbone.default_tap
        return f"wrote {out}: " + clusters_png(backbone, dataset, out, clusters, 8, k, tap, input_size, device)
    if kind == "colorize":
        return colorize_figure(ckpt, checkpoint, backbone, dataset, out, index, max_images or 8, input_size, device)
    if patch_size == "auto":
        patch_size = pretraining_patch_size(ckpt)
    at_least_one("--patch-size", patch_size, 16)
    # the patch figures bring every image to the evaluation size first, as `eval patches` does: patch sides,
    # windows and strides are pixels of that size, the pretraining patch side means what it meant in training
    side = patch_size or (input_size or min(dataset.images.shape[2:4])) // 2
    stride = stride or max(1, side // 4)
    if kind in ("heatmap", "patch-knn"):
        image = torch.from_numpy(np.array(dataset.images[index]))
        head = load_projector(ckpt, backbone, checkpoint) if kind == "heatmap" else None
        result = similarity_map(backbone, image, side, stride, query, input_size, head=head, device=device,
                                image_size=input_size)
    if kind == "heatmap":
        heatmap_png(_image(dataset, index, input_size), result, out)
        return f"wrote {out}: {result['grid'][0]} x {result['grid'][1]} windows of {side} px, spaces {', '.join(result['maps'])}"
    if kind == "patch-knn":
        found = nearest_patches(backbone, dataset, index, result["query_box"], k, patches_per_image, side,
                                max_images, input_size, device=device, image_size=input_size)
        patch_knn_png(dataset, index, result["query_box"], found, out, input_size)
        return f"wrote {out}: {len(found)} nearest patches, similarity {found[0][2]:.3f} to {found[-1][2]:.3f}"
    if kind == "convergence":
        result = patch_convergence(backbone, dataset, counts, patch_size, stride, input_size, max_images or 256,
                                   device=device, image_size=input_size)
        convergence_png(result, out, f"{Path(checkpoint).parent.name}: patches of {patch_size or 'multi-scale'} px")
        values = ", ".join(f"{n}: {result[n]:.3f}" for n in [*map(str, counts), "all"])
        return f"wrote {out}: cosine to the whole image by patches averaged: {values}"
