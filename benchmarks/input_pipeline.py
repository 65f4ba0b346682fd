"""Is the input pipeline the bottleneck? One SimCLR epoch with data loading and
augmentation, against the same steps on views already in memory.

Target: the full epoch runs at >= 80% of the in-memory rate (SimCLR, CIFAR-10, 32 px).
Also times the augmentation alone: selfsup's batched tensor views, kornia.augmentation
(if installed) and torchvision's per-image PIL pipeline.

    python benchmarks/input_pipeline.py [--data ../shared/data/cifar10-train-jpg.tar] [--backbone convnet] [--limit 0]

``--imagenet-like N`` measures the streaming path (issue 18) instead, at 224 px: a folder of N JPEGs at
ImageNet's typical 500 x 375, quality 90, upsampled from the CIFAR-10 images (for the decode cost only: their
content is CIFAR's), made once under ``--work``. SimCLR two-view throughput, the loader alone and end to end
with ResNet-18, for selfsup's stream (``stream=1``), torchvision's ``ImageFolder`` + ``DataLoader`` with the
per-image PIL SimCLR transform (the same workers), and the memmap path on the same images (decoded once at
256 px, the decode timed apart); then, in fresh processes, the resident memory of streaming 10 x N and N
images (the 10 x N folder hard-links the N files) and the time to the first batch of the 10 x N folder
(the median of three processes each). With NVIDIA DALI installed, also the loader of ``loader=dali``.
Targets (2-core CPU): loader >= 1.3x torchvision's; RSS within 10%; first batch < 5 s. The process keeps
glibc's freed memory as ``selfsup`` does (``selfsup.malloc``), for both libraries (the workers inherit it);
``--glibc-defaults`` measures with glibc's own thresholds instead, ``--loader-only`` skips the end-to-end
and memory parts.

    python benchmarks/input_pipeline.py --imagenet-like 10000 [--workers 1] [--work /tmp/inet_like]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.data.datasets import load_dataset
from selfsup.data.loader import BatchLoader
from selfsup.data.views import ViewMaker, simclr_views
from selfsup.errors import script_main
from selfsup.malloc import keep_freed_memory
from selfsup.methods import build_method

DEFAULT_DATA = str(Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.tar")


def train_step(method, opt):
    def step(batch):
        loss = method(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def augmentation_only(images: torch.Tensor, size: int) -> None:
    n = len(images)
    ours = ViewMaker(simclr_views(size))
    g = torch.Generator().manual_seed(0)
    ours(images, g)
    t = time.perf_counter()
    for _ in range(3):
        ours(images, g)
    print(f"augmentation only, 2 views of {n} images: selfsup batched {3 * n / (time.perf_counter() - t):9.0f} images/s")
    try:
        import kornia.augmentation as K

        kaug = torch.nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.08, 1.0)), K.RandomHorizontalFlip(),
            K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8), K.RandomGrayscale(p=0.2),
            K.Normalize(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])))
        x = images.float() / 255
        kaug(x)
        t = time.perf_counter()
        for _ in range(3):
            kaug(x), kaug(x)
        print(f"                                          kornia.augmentation {3 * n / (time.perf_counter() - t):9.0f} images/s")
    except ImportError:
        print("kornia not installed: skipped")
    import torchvision.transforms as T
    from PIL import Image

    tv = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                    T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                    T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images[:512]]
    t = time.perf_counter()
    for im in pil:
        tv(im), tv(im)
    print(f"                                          torchvision PIL/image {len(pil) / (time.perf_counter() - t):7.0f} images/s")


# ------------------------------------------------------------------ the streaming path (--imagenet-like N)

def make_imagenet_like(folder: Path, n: int, source: str) -> Path:
    """N JPEGs of 500 x 375, quality 90, bicubic upsamplings of the first N images of ``source``, in one folder
    per class; kept across runs (``done`` marks a finished folder)."""
    from PIL import Image

    if (folder / "done").exists():
        return folder
    data = load_dataset(source)
    if len(data) < n:
        raise SystemExit(f"{source} has {len(data)} images, fewer than {n}")
    t = time.perf_counter()
    for i in range(n):
        d = folder / f"c{int(data.labels[i])}"
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(np.asarray(data.images[i]).transpose(1, 2, 0)).resize((500, 375), Image.BICUBIC)
        im.save(d / f"{i:07d}.jpg", quality=90)
    (folder / "done").write_text(f"{n}\n")
    print(f"wrote {n} JPEGs (500x375, q90) to {folder} in {time.perf_counter() - t:.0f} s")
    return folder


def linked_copies(folder: Path, out: Path, times: int) -> Path:
    """``times`` hard links of every file of ``folder`` (a folder of times x N images at no disk cost)."""
    if (out / "done").exists():
        return out
    for k in range(times):
        for f in folder.glob("c*/*.jpg"):
            (out / f.parent.name).mkdir(parents=True, exist_ok=True)
            target = out / f.parent.name / f"{k}_{f.name}"
            if not target.exists():
                os.link(f, target)
    (out / "done").write_text(f"{times}\n")
    return out


def torchvision_loader(folder: Path, size: int, batch: int, workers: int):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    # the same views as selfsup's simclr recipe at 224 px: its blur (p 0.5, sigma 0.1..2, 13 taps) included
    view = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                      T.RandomApply([T.GaussianBlur(13, sigma=(0.1, 2.0))], p=0.5),
                      T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class TwoViews:
        def __call__(self, im):
            return view(im), view(im)

    data = ImageFolder(str(folder), transform=TwoViews(), is_valid_file=lambda p: p.endswith(".jpg"))
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=False, prefetch_factor=2 if workers else None)


def rate(batches, steps: int, step=None, warm: int = 1) -> float:
    """Images per second over ``steps`` batches after ``warm`` (two views count as one image)."""
    it = iter(batches)
    for _ in range(warm):
        b = next(it)
        if step:
            step(b)
    t, n = time.perf_counter(), 0
    for _ in range(steps):
        b = next(it)
        if step:
            step(b)
        n += len(b[1]) if isinstance(b, (list, tuple)) else len(b.indices)
    return n / (time.perf_counter() - t)


def tv_step(method, opt):
    """The SimCLR training step on a torchvision batch ((view_a, view_b), labels)."""
    from selfsup.data.loader import Batch

    inner = train_step(method, opt)
    return lambda b: inner(Batch([b[0][0].contiguous(memory_format=torch.channels_last),
                                  b[0][1].contiguous(memory_format=torch.channels_last)], b[1], b[1]))


def rss_child(folder: str, batch: int, steps: int, workers: int) -> None:
    """In a fresh process: stream ``steps`` batches of ``folder``; print the peak RSS (this process and its
    workers) and the seconds from the call to the first batch."""
    import resource

    from selfsup.data.stream import StreamLoader

    t = time.perf_counter()
    data = load_dataset(f"{folder}?stream=1&workers={workers}")
    loader = StreamLoader(data, batch, ViewMaker(simclr_views(224)), image_size=224, device="cpu", seed=0)
    it = loader.epoch(0)
    next(it)
    first = time.perf_counter() - t
    for _ in range(steps - 1):
        next(it)
    it.close()
    # VmHWM: this process's own peak. ru_maxrss would not do: Linux keeps it across exec, so a child started
    # from the benchmark's parent reports the parent's peak (the memmap copy and all) instead of its own.
    status = Path("/proc/self/status")
    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] if status.exists() else []
    own = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # the largest worker, its forked pages included
    print(json.dumps({"images": len(data), "rss_mb": own / 1024, "worker_rss_mb": kids / 1024, "first_s": first}))


def streaming(args) -> None:
    import subprocess
    import sys

    from selfsup.data.stream import StreamLoader

    work = Path(args.work)
    folder = make_imagenet_like(work / f"n{args.imagenet_like}", args.imagenet_like, args.data)
    size, batch, w = 224, args.stream_batch, args.workers
    print(f"SimCLR two views at {size} px, batch {batch}, {w} worker(s), {torch.get_num_threads()} threads, "
          f"{args.imagenet_like} JPEGs of 500x375, glibc's freed memory "
          f"{'returned (its defaults)' if args.glibc_defaults else 'kept (selfsup.malloc)'}")
    views = ViewMaker(simclr_views(size))
    ours = StreamLoader(load_dataset(f"{folder}?stream=1&workers={w}"), batch, views, image_size=size,
                        device="cpu", seed=0)
    t = time.perf_counter()
    memmap_data = load_dataset(f"{folder}?size=256&stream=0")
    decode_s = time.perf_counter() - t
    memmap = BatchLoader(memmap_data, batch, views, device="cpu", seed=0)
    steps = args.stream_steps
    loader = {"selfsup stream": rate(ours.epoch(0), steps),
              "torchvision ImageFolder": rate(torchvision_loader(folder, size, batch, w), steps),
              "selfsup memmap (256 px)": rate(memmap.epoch(0), steps)}
    if args.device_decode:       # JPEGs decoded in batches in the loader thread (decode_jpeg on the CPU here)
        batched = StreamLoader(load_dataset(f"{folder}?stream=1&workers={w}&decode=device"), batch, views,
                               image_size=size, device="cpu", seed=0)
        loader["selfsup stream, decode=device"] = rate(batched.epoch(0), steps)
    from selfsup.data.dali import dali_available
    from selfsup.data.stream import stream_loader

    if dali_available():         # loader=dali: NVIDIA DALI decodes and resizes the crops (on the CPU here)
        dali = stream_loader(load_dataset(f"{folder}?loader=dali&workers={w}"), batch, views, image_size=size,
                             device="cpu", seed=0)
        loader["selfsup stream, loader=dali"] = rate(dali.epoch(0), steps)
    if args.loader_only:
        print(f"memmap path: the one-off decode at 256 px took {decode_s:.0f} s")
        print("| loader | loader alone (img/s) |\n|---|---|")
        for name, r in loader.items():
            print(f"| {name} | {r:.0f} |")
        print(f"loader: selfsup stream / torchvision = {loader['selfsup stream'] / loader['torchvision ImageFolder']:.2f}x "
              f"(target >= 1.3x)")
        return
    method = build_method("simclr", backbone="resnet18", image_size=size).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    step, e2e_steps = train_step(method, opt), args.e2e_steps
    end = {"selfsup stream": rate(ours.epoch(1), e2e_steps, step),
           "torchvision ImageFolder": rate(torchvision_loader(folder, size, batch, w), e2e_steps, tv_step(method, opt)),
           "selfsup memmap (256 px)": rate(memmap.epoch(1), e2e_steps, step)}
    ready = [b for _, b in zip(range(e2e_steps + 1), memmap.epoch(2))]
    model_only = rate(ready, e2e_steps, step)
    print(f"memmap path: the one-off decode at 256 px took {decode_s:.0f} s ({args.imagenet_like / decode_s:.0f} img/s)")
    print("| loader | loader alone (img/s) | end to end, ResNet-18 (img/s) |\n|---|---|---|")
    for name in loader:
        print(f"| {name} | {loader[name]:.0f} | {end[name]:.1f} |" if name in end else f"| {name} | {loader[name]:.0f} | |")
    print(f"| views already in memory (model only) | | {model_only:.1f} |")
    print(f"loader: selfsup stream / torchvision = {loader['selfsup stream'] / loader['torchvision ImageFolder']:.2f}x "
          f"(target >= 1.3x); end to end = {end['selfsup stream'] / model_only:.2f} of model only")
    big = linked_copies(folder, work / f"n{args.imagenet_like}x10", 10)
    out = {}
    for name, path in (("N", folder), ("10N", big)):         # the median of 3 fresh processes (peaks vary by ~10%)
        runs = []
        for _ in range(3):
            res = subprocess.run([sys.executable, __file__, "--rss-child", str(path), "--stream-batch", str(batch),
                                  "--workers", str(w)] + (["--glibc-defaults"] if args.glibc_defaults else []),
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        out[name] = sorted(runs, key=lambda r: r["rss_mb"] + r["worker_rss_mb"])[1]
    for name, r in out.items():
        print(f"{r['images']:>7} images: peak RSS {r['rss_mb']:.0f} MB (workers {r['worker_rss_mb']:.0f} MB), "
              f"first batch after {r['first_s']:.2f} s")
    total = {k: r["rss_mb"] + r["worker_rss_mb"] for k, r in out.items()}
    print(f"RSS 10N / N = {total['10N'] / total['N']:.3f} (target within 10%); first batch of "
          f"{out['10N']['images']} images {out['10N']['first_s']:.2f} s (target < 5 s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--imagenet-like", type=int, default=0, help="the streaming benchmark on N JPEGs")
    parser.add_argument("--work", default="/tmp/imagenet_like", help="where the JPEG folders are made (kept)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stream-batch", type=int, default=64)
    parser.add_argument("--stream-steps", type=int, default=20)
    parser.add_argument("--device-decode", action="store_true", help="also the loader with decode=device")
    parser.add_argument("--e2e-steps", type=int, default=3)
    parser.add_argument("--glibc-defaults", action="store_true", help="do not keep freed memory (selfsup.malloc)")
    parser.add_argument("--loader-only", action="store_true", help="streaming: the loader-alone rates only")
    parser.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--memory-steps", type=int, default=30)
    args = parser.parse_args()
    if not args.glibc_defaults:
        keep_freed_memory()
    if args.rss_child:
        return rss_child(args.rss_child, args.stream_batch, 10, args.workers)
    if args.imagenet_like:
        return streaming(args)
    torch.manual_seed(0)
    t = time.perf_counter()
    data = load_dataset(args.data)
    print(f"dataset {args.data}: {len(data)} images {tuple(data.images.shape[1:])}, loaded in {time.perf_counter() - t:.1f}s")
    if args.limit:
        data = data.subset(np.arange(args.limit))
    size = data.images.shape[-1]
    method = build_method("simclr", backbone=args.backbone, image_size=size).to(memory_format=torch.channels_last)
    step = train_step(method, torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9))
    loader = BatchLoader(data, args.batch_size, method.view_maker(), device="cpu", seed=0)

    # in memory: pre-made views, the same training step
    ready = list(loader.epoch(0))[:args.memory_steps]
    for b in ready[:2]:
        step(b)
    t = time.perf_counter()
    for b in ready:
        step(b)
    mem_rate = len(ready) * args.batch_size / (time.perf_counter() - t)

    # full epoch: read uint8 batches, augment in the loader thread, train
    t = time.perf_counter()
    n = 0
    for b in loader.epoch(1):
        step(b)
        n += len(b.indices)
    full_rate = n / (time.perf_counter() - t)
    print(f"SimCLR, {args.backbone}, batch {args.batch_size}, {size}px, {torch.get_num_threads()} threads")
    print(f"in-memory views : {mem_rate:8.1f} images/s ({len(ready)} steps)")
    print(f"full epoch      : {full_rate:8.1f} images/s ({n} images, loading + augmentation included)")
    print(f"ratio full / in-memory = {full_rate / mem_rate:.3f} (target >= 0.80)")
    augmentation_only(torch.from_numpy(np.array(data.images[:args.batch_size])), size)


if __name__ == "__main__":
    script_main(main)
