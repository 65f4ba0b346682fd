import pytest
import torch
from torch import nn

from selfsup.engine.optim import LARS, build_optimizer, lr_at, param_groups
from selfsup.config import OptimConfig


def test_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_bias_and_norm_excluded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, 1e-4, True)
    assert len(groups[0]["params"]) == 2                       # conv weight, linear weight
    assert len(groups[1]["params"]) == 4 and groups[1]["weight_decay"] == 0   # 2 biases, BN weight and bias
    assert len(param_groups(model, 1e-4, False)[0]["params"]) == 6


def test_lars_step_matches_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3))
    b = nn.Parameter(torch.randn(5))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars_exclude": False},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=0.5, momentum=0.9, eta=0.02)
    w0, b0 = w.detach().clone(), b.detach().clone()
    gw, gb = torch.randn(5, 3), torch.randn(5)
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    d = gw + 0.1 * w0
    trust = 0.02 * w0.norm() / d.norm()
    assert torch.allclose(w, w0 - 0.5 * trust * d, atol=1e-6)
    assert torch.allclose(b, b0 - 0.5 * gb, atol=1e-6)


def test_build_optimizer_by_name():
    model = nn.Linear(3, 2)
    assert isinstance(build_optimizer(model, OptimConfig(name="lars")), LARS)
    assert isinstance(build_optimizer(model, OptimConfig(name="sgd")), torch.optim.SGD)
