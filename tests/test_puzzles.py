"""Jigsaw permutation sets: greedy max-average Hamming selection and the released files."""
import itertools
from pathlib import Path

import numpy as np
import pytest

from selfsup.data.puzzles import hamming_permutations, hamming_stats, load_permutations
from selfsup.errors import SelfSupError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def greedy_slow(n, tiles, seed):
    """Alg. 1 as written: the remaining list, a full distance matrix each iteration, mean of rows."""
    remaining = list(itertools.permutations(range(tiles)))
    j = np.random.RandomState(seed).randint(len(remaining))
    selected = []
    for _ in range(n):
        selected.append(remaining.pop(j))
        if not remaining:
            break
        d = np.array([[sum(a != b for a, b in zip(s, r)) for r in remaining] for s in selected])
        j = int(np.argmax(d.mean(0)))
    return np.array(selected)


@pytest.mark.parametrize("n,tiles,seed", [(10, 4, 0), (24, 4, 3), (30, 5, 1)])
def test_incremental_selection_equals_algorithm_1(n, tiles, seed):
    assert np.array_equal(hamming_permutations(n, tiles, seed, cache=False), greedy_slow(n, tiles, seed))


def test_greedy_100_set_has_the_official_statistics_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    p = hamming_permutations(100)
    assert p.shape == (100, 9) and len({tuple(r) for r in p}) == 100
    assert (np.sort(p, axis=1) == np.arange(9)).all()
    stats = hamming_stats(p)
    assert stats["average"] == pytest.approx(8.08, abs=0.005) and stats["minimum"] == 2
    assert np.array_equal(hamming_permutations(100), p)                        # the same set for the same seed
    assert list(tmp_path.glob("puzzles/*.npy"))                                  # ... read back from the cache
    assert not np.array_equal(hamming_permutations(100, seed=1, cache=False), p)
    with pytest.raises(SelfSupError, match="between 1 and"):
        hamming_permutations(0)


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
def test_official_sets_load_with_their_documented_statistics(tmp_path):
    p100 = load_permutations(SHARED / "permutations_100_max.npy")
    p701 = load_permutations(SHARED / "permutations_701.npy")
    assert p100.shape == (100, 9) and hamming_stats(p100)["average"] == pytest.approx(8.08, abs=0.005)
    assert hamming_stats(p100)["minimum"] == 2
    assert p701.shape == (701, 9) and hamming_stats(p701)["minimum"] == 3       # Jigsaw++: unique with 2 occluders
    # the Caffe .bin format: int32 header (n, 9), then 1-based rows
    raw = np.concatenate([[100, 9], (p100 + 1).ravel()]).astype(np.int32)
    raw.tofile(tmp_path / "p.bin")
    assert np.array_equal(load_permutations(tmp_path / "p.bin"), p100)


def test_bad_permutation_files(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[0, 0, 1], [0, 1, 2]]))
    with pytest.raises(SelfSupError, match="not permutations"):
        load_permutations(tmp_path / "bad.npy")
    with pytest.raises(SelfSupError, match="does not exist"):
        load_permutations(tmp_path / "none.npy")


@pytest.mark.parametrize("name, write", [
    ("objects.npy", lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)),
    ("text.npy", lambda p: p.write_text("0 1 2\n1 2 0\n")),
    ("short.bin", lambda p: p.write_bytes(b"\x01\x00")),
    ("header.bin", lambda p: np.array([100, 9, 1, 2, 3], dtype=np.int32).tofile(p)),
    ("strings.npy", lambda p: np.save(p, np.array([["a", "b"], ["b", "a"]]))),
    ("halves.npy", lambda p: np.save(p, np.array([[0.5, 1.5], [1.5, 0.5]]))),
    ("flat.npy", lambda p: np.save(p, np.arange(9))),
])
def test_unreadable_permutation_files_are_one_line(tmp_path, name, write):
    write(tmp_path / name)
    with pytest.raises(SelfSupError, match=f"(cannot read permutation file .*{name}|{name} is not an n x tiles).*each row a permutation"):
        load_permutations(tmp_path / name)


def test_whole_float_permutations_load(tmp_path):
    np.save(tmp_path / "f.npy", np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]))
    assert load_permutations(tmp_path / "f.npy").tolist() == [[0, 1, 2], [2, 0, 1]]
