"""docs/add_a_method.md: the Barlow Twins example registers, matches its equation and trains."""
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import run, tiny_overrides
from selfsup.errors import SelfSupError
from selfsup.methods import METHODS, register_method

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "barlow_twins.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("barlow_twins_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    METHODS.pop("barlow_twins", None)


def slow_barlow(z_a, z_b, lambd):
    """Eq. 1 of Zbontar et al. element by element: C_ij = sum_b za_bi zb_bj / sqrt(sum za_bi^2 sum zb_bj^2) on
    batch-centred z (the normalisation along the batch), L = sum_i (1 - C_ii)^2 + lambda sum_i sum_j!=i C_ij^2."""
    z_a, z_b = z_a - z_a.mean(0), z_b - z_b.mean(0)
    d = z_a.shape[1]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = (z_a[:, i] * z_b[:, j]).sum() / ((z_a[:, i] ** 2).sum() * (z_b[:, j] ** 2).sum()).sqrt()
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


def test_example_loss_is_eq_1(example):
    from selfsup.data.loader import Batch
    from selfsup.methods import build_method

    method = build_method("barlow_twins", backbone="convnet", image_size=16, proj_dim=6, lambd=0.1).eval()
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    out = method(Batch(views, torch.zeros(8, dtype=torch.long), torch.arange(8)))
    with torch.no_grad():
        z_a, z_b = method.projector(method.backbone(torch.cat(views))).chunk(2)
    assert torch.allclose(out["loss"], slow_barlow(z_a, z_b, 0.1), rtol=1e-4)


def test_example_trains_and_evaluates(example, tmp_path, capsys):
    out = tmp_path / "bt"
    code, _, err = run(capsys, "pretrain", "barlow_twins", *tiny_overrides(out, epochs=1, **{"barlow_twins.proj_dim": 32}))
    assert code == 0, err
    code, stdout, err = run(capsys, "eval", "knn", "--checkpoint", out / "last.pt", "--train-data",
                            "synthetic:64?classes=4&size=16", "--test-data", "synthetic:32?classes=4&size=16&seed=1")
    assert code == 0 and "top-1" in stdout, err


def test_register_refuses_a_clash_and_a_non_method(example):
    with pytest.raises(SelfSupError, match="exists already"):
        register_method(type("Other", (example.BarlowTwins,), {"name": "simclr"}))
    with pytest.raises(SelfSupError, match="Method subclass"):
        register_method(int)


def test_the_page_shows_the_tested_file():
    page = (EXAMPLE.parents[1] / "add_a_method.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == EXAMPLE.read_text().split("\n", 1)[1]


def test_a_method_of_your_own_adds_its_range_checks(example, monkeypatch):
    """docs/add_a_method.md: an entry in METHOD_CHECKS is run by build_method (and by every command)."""
    from selfsup.methods import METHOD_CHECKS, build_method

    monkeypatch.setitem(METHOD_CHECKS, "barlow_twins", [("lambd", lambda v, c: v >= 0, "0 or more, e.g. 5e-3")])
    with pytest.raises(SelfSupError, match=r"barlow_twins.lambd=-1.0 is not valid: it must be 0 or more"):
        build_method("barlow_twins", backbone="convnet", lambd=-1.0)
    with pytest.raises(SelfSupError, match=r"barlow_twins.lambd=nan is not valid: it must be a finite number"):
        build_method("barlow_twins", backbone="convnet", lambd=float("nan"))
    build_method("barlow_twins", backbone="convnet", lambd=5e-3)
