import json

import numpy as np
import pytest

from selfsup.data.datasets import load_dataset
from selfsup.demo import find_fashion_mnist, run_demo
from selfsup.errors import SelfSupError
from test_datasets import FASHION, write_idx


@pytest.fixture
def tiny_fashion(tmp_path):
    """Fashion-MNIST layout (gzipped IDX) holding 300 + 100 small synthetic images."""
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    for prefix, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        d = load_dataset(f"synthetic:{n}?classes=10&size=28&channels=1&seed={seed}")
        write_idx(root / f"{prefix}-images-idx3-ubyte", np.asarray(d.images[:, 0]))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", d.labels)
    return root


def test_demo_pipeline_writes_report(tiny_fashion, tmp_path):
    results = run_demo(out=str(tmp_path / "demo"), data=str(tiny_fashion), epochs=1, device="cpu")
    assert set(results) == {"random", "simclr"} and set(results["simclr"]) == {"knn", "linear"}
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert "| simclr | knn |" in report and "loss.png" in report
    assert (out / "loss.png").stat().st_size > 1000 and (out / "accuracy.png").stat().st_size > 1000
    rows = json.loads((out / "results.json").read_text())
    assert all(0 <= r["top1"] <= 1 for r in rows)


def test_demo_without_data_says_how_to_get_it(tmp_path):
    with pytest.raises(SelfSupError, match="make demo"):
        find_fashion_mnist(str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_demo_beats_random_weights(tmp_path):
    results = run_demo(out=str(tmp_path / "demo"), device="cpu")
    assert results["simclr"]["knn"] > results["random"]["knn"]
