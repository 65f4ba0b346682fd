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
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from selfsup.data.datasets import cache_root
from selfsup.errors import SelfSupError


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
    if path.suffix == ".bin":
        raw = np.fromfile(path, dtype=np.int32)
        n, tiles = int(raw[0]), int(raw[1])
        perms = raw[2:2 + n * tiles].reshape(n, tiles).astype(np.int64)
    else:
        perms = np.load(path).astype(np.int64)
    if perms.ndim != 2:
        raise SelfSupError(f"{path} is not an n x tiles array of permutations")
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
