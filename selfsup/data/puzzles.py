"""Jigsaw permutation sets (Noroozi & Favaro 2016, Alg. 1; METHODS.md 2.3).

``hamming_permutations(n)`` selects n of the tiles! permutations greedily: start
from a random one, then repeatedly add the remaining permutation with the
largest average Hamming distance to those already selected ("max_avg"; ties go
to the first in lexicographic order). The average is kept as a running sum over
every candidate, so one iteration costs O(tiles!), and 10,000 of the 9! = 362,880
permutations take well under a minute. Results are cached on disk.

``load_permutations(path)`` reads the released sets: the official 100 and 701
(Jigsaw++, minimum distance 3) sets and Goyal et al.'s 2,000 and 10,000 sets, as
.npy (0- or 1-based) or as the Caffe .bin files (int32 header n, tiles, then
1-based rows).

Semantics (as the official code and VISSL): input slot s receives the tile of
grid cell perm[s]; the label of a puzzle is its permutation's row index.

Puzzles (METHODS.md 2.1, 2.2, 2.5): ``tile_geometry`` scales Noroozi's 255 px
crop / 85 px cells / 64 px tiles / 21 px jitter to any image size; ``cut_tiles``
cuts the 3 x 3 tiles of a batch with per-tile jitter and per-channel shifts;
``assemble`` / ``disassemble`` apply and undo permutations; ``occlude`` replaces 0
to 2 slots by tiles of another image (Jigsaw++); ``PuzzleMaker`` does all of it,
plus the colour handling, for the training engine.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.datasets import cache_root
from selfsup.data.views import normalize, to_float
from selfsup.errors import SelfSupError

RESOURCES = Path(__file__).parent / "resources"
OFFICIAL_SETS = {"noroozi-100": "permutations_100_max.npy", "noroozi-701": "permutations_701.npy"}


def _all_permutations(tiles: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)


def hamming_permutations(n: int, tiles: int = 9, seed: int = 0, cache: bool = True) -> np.ndarray:
    """n x tiles int64 permutations chosen by maximal average Hamming distance (Alg. 1)."""
    total = int(np.prod(np.arange(1, tiles + 1)))
    if not 1 <= n <= total:
        raise SelfSupError(f"cannot choose {n} permutations of {tiles} tiles: n must be between 1 and {total}")
    path = cache_root() / "puzzles" / f"hamming_max_avg_{n}_{tiles}_{seed}.npy"
    if cache and path.exists():
        return np.load(path)
    perms = _all_permutations(tiles)
    # matches[pos, v]: 1 where a candidate has tile v at position pos; Hamming = tiles - sum of matches
    matches = np.stack([np.stack([(perms[:, pos] == v) for v in range(tiles)]) for pos in range(tiles)]).astype(np.int32)
    score = np.zeros(len(perms), dtype=np.int64)       # sum over selected of Hamming distance (the mean, times |selected|)
    taken = np.zeros(len(perms), dtype=bool)
    j = int(np.random.RandomState(seed).randint(len(perms)))
    chosen = []
    for _ in range(n):
        chosen.append(j)
        taken[j] = True
        new = perms[j]
        score += tiles
        for pos in range(tiles):
            score -= matches[pos, new[pos]]
        j = int(np.argmax(np.where(taken, -1, score)))
    result = perms[chosen].astype(np.int64)
    if cache:                                           # written whole, then renamed: never half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(tmp, result)
        os.replace(tmp, path)
    return result


def load_permutations(path: str | Path) -> np.ndarray:
    """A released permutation set as n x tiles int64, 0-based (.npy or Caffe .bin)."""
    path = Path(path)
    if not path.exists():
        raise SelfSupError(f"permutation file {path} does not exist: pass a .npy or .bin permutation set")
    valid = ("a .npy of an n x tiles array of whole numbers or a Caffe .bin (int32 n, tiles, then n rows), each row a "
             "permutation of 0..tiles-1 or of 1..tiles")
    try:
        if path.suffix == ".bin":
            raw = np.fromfile(path, dtype=np.int32)
            n, tiles = (int(raw[0]), int(raw[1])) if len(raw) >= 2 else (0, 0)
            if n < 1 or tiles < 1 or len(raw) < 2 + n * tiles:
                raise ValueError("too short for its header")
            perms = raw[2:2 + n * tiles].reshape(n, tiles)
        else:
            perms = np.load(path, allow_pickle=False)         # never unpickle: a crafted file could run code
    except (OSError, ValueError, EOFError):
        raise SelfSupError(f"cannot read permutation file {path}: it is not {valid}") from None
    if (not isinstance(perms, np.ndarray) or perms.ndim != 2 or perms.size == 0
            or perms.dtype.kind not in "iuf" or not np.isfinite(perms).all() or (perms % 1 != 0).any()):
        raise SelfSupError(f"{path} is not an n x tiles array of permutations: pass {valid}")
    perms = perms.astype(np.int64)
    if perms.min() == 1:                                  # 1-based (Caffe and the FAIR-distributed copies)
        perms = perms - 1
    if not (np.sort(perms, axis=1) == np.arange(perms.shape[1])).all():
        raise SelfSupError(f"{path} has rows that are not permutations of 0..{perms.shape[1] - 1}")
    return perms


def hamming_stats(perms: np.ndarray) -> dict[str, float]:
    """Average and minimum pairwise Hamming distance of a set (over distinct pairs)."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    off = ~np.eye(len(perms), dtype=bool)
    return {"average": float(d[off].mean()), "minimum": int(d[off].min()), "maximum": int(d[off].max())}


def permutation_set(spec: str | int) -> np.ndarray:
    """A permutation set by name: an integer N (the greedy max-average set of N, cached),
    ``noroozi-100`` / ``noroozi-701`` (the released sets, bundled), or a .npy / .bin path."""
    spec = str(spec)
    if spec.isdigit():
        return hamming_permutations(int(spec))
    if spec in OFFICIAL_SETS:
        return load_permutations(RESOURCES / OFFICIAL_SETS[spec])
    if not spec.endswith((".npy", ".bin")):
        raise SelfSupError(f"unknown permutation set {spec!r}: use a number (e.g. 1000), "
                           f"{' or '.join(OFFICIAL_SETS)}, or a .npy / .bin file")
    return load_permutations(spec)


# ---------------------------------------------------------------- puzzles

@dataclass(frozen=True)
class TileGeometry:
    """Sizes in pixels of the input image: a ``crop`` x ``crop`` square split into
    ``grid`` x ``grid`` cells of side ``cell``; from each cell a ``tile`` x ``tile`` tile
    at a random offset in [0, ``jitter``] in x and y, and each colour channel shifted by
    a further [0, ``channel_shift``] px in x and y."""

    crop: int
    cell: int
    tile: int
    jitter: int
    channel_shift: int
    grid: int = 3


def tile_geometry(image_size: int, grid: int = 3, jitter_255: int = 21, channel_shift_255: int = 2) -> TileGeometry:
    """Noroozi's geometry (a 255 crop of a 256 image, 85 px cells, 64 px tiles, jitter 21
    (18 for Jigsaw++), channel shifts up to 2 px) scaled to ``image_size``:

    cell = floor(floor(image_size * 255 / 256) / grid), crop = grid * cell, tile = round(cell * 64 / 85),
    jitter = min(round(cell * jitter_255 / 85), cell - tile), shift = round(cell * 2 / 85).

    256 px: 255 / 85 / 64 / 21 / 2. 224 px: 222 / 74 / 56 / 18 / 2. 64 px: 63 / 21 / 16 /
    5 / 0. 32 px: 30 / 10 / 8 / 2 / 0."""
    cell = image_size * 255 // 256 // grid
    tile = int(cell * 64 / 85 + 0.5)
    if tile < 2:
        raise SelfSupError(f"{image_size} px images are too small for a {grid}x{grid} puzzle: use a larger image_size")
    jitter = min(int(cell * jitter_255 / 85 + 0.5), cell - tile)
    return TileGeometry(grid * cell, cell, tile, jitter, int(cell * channel_shift_255 / 85 + 0.5), grid)


def cut_tiles(x: torch.Tensor, geom: TileGeometry, g: torch.Generator) -> torch.Tensor:
    """B x C x H x W -> B x grid^2 x C x tile x tile, the tiles of a random crop in grid
    order (row-major), each at its own random offset in its cell, each channel shifted
    on its own (sampling past the image border repeats the border pixel)."""
    b, c, h, w = x.shape
    if min(h, w) < geom.crop:
        raise SelfSupError(f"images of {h}x{w} px are smaller than the {geom.crop} px puzzle crop: raise image_size")
    n, dev = geom.grid ** 2, x.device
    x0 = torch.randint(0, w - geom.crop + 1, (b, 1), generator=g, device=dev)
    y0 = torch.randint(0, h - geom.crop + 1, (b, 1), generator=g, device=dev)
    cells = torch.arange(n, device=dev)
    left = x0 + (cells % geom.grid) * geom.cell + torch.randint(0, geom.jitter + 1, (b, n), generator=g, device=dev)
    top = y0 + (cells // geom.grid) * geom.cell + torch.randint(0, geom.jitter + 1, (b, n), generator=g, device=dev)
    shift = lambda: torch.randint(0, geom.channel_shift + 1, (b, n, c), generator=g, device=dev)  # noqa: E731
    u = torch.arange(geom.tile, device=dev)
    xs = ((left[..., None] + shift())[..., None] + u).clamp_(max=w - 1)      # B x n x C x tile
    ys = ((top[..., None] + shift())[..., None] + u).clamp_(max=h - 1)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, 1, c, 1, 1)
    return x[bi, ci, ys[..., :, None], xs[..., None, :]]


def assemble(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Tiles in grid order (B x n x ...) -> puzzles: slot s of puzzle i holds tile perms[i, s]."""
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], perms]


def disassemble(puzzles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """The inverse of ``assemble``: the tiles back in grid order."""
    return assemble(puzzles, perms.argsort(1))


def occlude(puzzles: torch.Tensor, donor_tiles: torch.Tensor, g: torch.Generator, max_substitute: int = 2):
    """Jigsaw++ (Noroozi et al. 2018, §4; METHODS.md 2.5): in every puzzle, replace a uniform
    number in {0 .. max_substitute} of distinct slots by distinct tiles of another image
    of the batch (drawn uniformly among the others). ``donor_tiles`` are the batch's tiles
    in grid order. Returns the puzzles, the donor image of each puzzle and a B x n mask of
    the replaced slots."""
    b, n = puzzles.shape[:2]
    if b < 2:
        raise SelfSupError("Jigsaw++ takes its occluding tiles from another image: use a batch of 2 or more per process")
    dev = puzzles.device
    count = torch.randint(0, max_substitute + 1, (b,), generator=g, device=dev)
    donor = (torch.arange(b, device=dev) + torch.randint(1, b, (b,), generator=g, device=dev)) % b
    slots = torch.rand(b, n, generator=g, device=dev).argsort(1)             # a random order of slots ...
    sources = torch.rand(b, n, generator=g, device=dev).argsort(1)           # ... and of the donor's tiles
    out, mask = puzzles.clone(), torch.zeros(b, n, dtype=torch.bool, device=dev)
    for k in range(max_substitute):
        i = (count > k).nonzero()[:, 0]
        out[i, slots[i, k]] = donor_tiles[donor[i], sources[i, k]]
        mask[i, slots[i, k]] = True
    return out, donor, mask


COLOR_PROJECTION = ((0.8333, 0.3333, -0.1667), (1 / 3, 1 / 3, 1 / 3), (-0.1667, 0.3333, 0.8333))


def puzzle_colors(puzzles: torch.Tensor, gray_prob: float, projection_prob: float, g: torch.Generator) -> torch.Tensor:
    """METHODS.md 2.2, one draw per puzzle for all its tiles: grayscale ((R + G + B) / 3 in
    every channel) with ``gray_prob``; otherwise, with ``projection_prob``, Noroozi's colour
    projection; otherwise unchanged. ``puzzles`` is B x n x 3 x t x t in [0, 1]."""
    b, dev = len(puzzles), puzzles.device
    u = torch.rand(b, 2, generator=g, device=dev)
    gray = (u[:, 0] < gray_prob).view(b, 1, 1, 1, 1)
    project = ((u[:, 0] >= gray_prob) & (u[:, 1] < projection_prob)).view(b, 1, 1, 1, 1)
    m = torch.tensor(COLOR_PROJECTION, dtype=puzzles.dtype, device=dev)
    projected = torch.einsum("ij,bnjhw->bnihw", m, puzzles)
    out = torch.where(project, projected, puzzles)
    return torch.where(gray, puzzles.mean(2, keepdim=True).expand_as(puzzles), out)


class PuzzleMaker:
    """uint8 images -> ([puzzles as (B * n) x 3 x t x t, image-major], permutation indices B).

    Per image: resize to ``image_size`` if needed, optional horizontal flip, cut the
    tiles (``cut_tiles``), draw a permutation index uniformly and assemble; Jigsaw++
    (``max_substitute`` > 0) then occludes slots with another image's tiles; the colour
    draw is made per puzzle after the occlusion, so occluders share it (METHODS.md 2.5
    [A]); last, the tiles are normalised with the data mean and std like every view
    (Jigsaw++'s per-tile normalisation belongs to its backbone: ``input="tile_norm"``)."""

    def __init__(self, image_size: int, perms: np.ndarray, geometry: TileGeometry, gray_prob: float = 0.5,
                 projection_prob: float = 0.5, flip: bool = False, max_substitute: int = 0):
        self.image_size, self.geometry, self.perms = image_size, geometry, torch.as_tensor(perms)
        self.gray_prob, self.projection_prob = gray_prob, projection_prob
        self.flip, self.max_substitute = flip, max_substitute

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = to_float(images)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        if self.flip:
            flip = torch.rand(len(x), generator=g, device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        tiles = cut_tiles(x, self.geometry, g)
        labels = torch.randint(0, len(self.perms), (len(x),), generator=g, device=x.device)
        puzzles = assemble(tiles, self.perms.to(x.device)[labels])
        if self.max_substitute:
            puzzles = occlude(puzzles, tiles, g, self.max_substitute)[0]
        puzzles = puzzle_colors(puzzles, self.gray_prob, self.projection_prob, g)
        return [normalize(puzzles.flatten(0, 1))], labels
