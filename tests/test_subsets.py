import numpy as np
import pytest

from selfsup.data.subsets import fraction_per_class, holdout_split
from selfsup.errors import SelfSupError


def test_holdout_is_deterministic_disjoint_and_complete():
    labels = np.repeat(np.arange(5), 40)
    labels = np.concatenate([labels, [-1] * 7])
    tr, va = holdout_split(labels, val_per_class=8, seed=1)
    tr2, va2 = holdout_split(labels, val_per_class=8, seed=1)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [8] * 5
    assert all(i in set(tr) for i in range(200, 207))          # unlabeled stay in train
    _, va3 = holdout_split(labels, val_per_class=8, seed=2)
    assert not np.array_equal(va, va3)
    _, vf = holdout_split(labels, val_fraction=0.25)
    assert np.bincount(labels[vf]).tolist() == [10] * 5


def test_fraction_per_class():
    labels = np.repeat(np.arange(4), 100)
    keep = fraction_per_class(labels, 0.01, seed=0)
    assert np.bincount(labels[keep]).tolist() == [1] * 4
    assert np.array_equal(keep, np.sort(keep))
    assert np.bincount(labels[fraction_per_class(labels, 0.1)]).tolist() == [10] * 4
    with pytest.raises(SelfSupError):
        fraction_per_class(labels, 0)
    with pytest.raises(SelfSupError):
        holdout_split(labels, val_per_class=100)
