"""Is the input pipeline the bottleneck? One SimCLR epoch with data loading and
augmentation, against the same steps on views already in memory.

Target: the full epoch runs at >= 80% of the in-memory rate (SimCLR, CIFAR-10, 32 px).
Also times the augmentation alone: selfsup's batched tensor views, kornia.augmentation
(if installed) and torchvision's per-image PIL pipeline.

    python benchmarks/input_pipeline.py [--data ../shared/data/cifar10-train-jpg.tar] [--backbone convnet] [--limit 0]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.data.datasets import load_dataset
from selfsup.data.loader import BatchLoader
from selfsup.data.views import ViewMaker, simclr_views
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--memory-steps", type=int, default=30)
    args = parser.parse_args()
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
    main()
