import math

import pytest
import torch
from torch import nn

from selfsup.engine.optim import LARS, build_optimizer, lr_at, param_groups
from selfsup.config import OptimConfig


def test_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == 0 and lrs[9] == pytest.approx(0.9)
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


@pytest.mark.parametrize("lr", [0.5, 0.01])
def test_larc_clip_matches_apex_formula(lr):
    """clip=True (apex LARC clip=True, solo-learn clip_lr): trust = min(eta ||w|| / (||g|| + wd ||w||) / lr, 1)
    on g + wd w; at lr 0.5 the trust stays below 1 (LARS scaling), at lr 0.01 it clips to plain SGD."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars_exclude": False}], lr=lr, momentum=0.9, eta=0.02,
               larc=True, clip=True)
    w0, g = w.detach().clone(), torch.randn(5, 3)
    w.grad = g.clone()
    opt.step()
    adaptive = 0.02 * w0.norm() / (g.norm() + 0.1 * w0.norm())
    trust = min(adaptive.item() / lr, 1.0)
    assert (trust < 1) == (lr == 0.5)
    assert torch.allclose(w, w0 - lr * trust * (g + 0.1 * w0), atol=1e-6)


@pytest.mark.parametrize("larc, clip", [(False, False), (True, False), (True, True)])
def test_foreach_lars_equals_the_per_parameter_loop(larc, clip):
    """optim.fused=true: the multi-tensor update is the same LARS / LARC update, step after step."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 2)) for _ in "ab"]
    models[1].load_state_dict(models[0].state_dict())
    with torch.no_grad():
        models[0][0].bias.zero_()                    # a zero-norm weight keeps trust 1
        models[1][0].bias.zero_()
    opts = [LARS(param_groups(m, 1e-2, exclude), lr=0.3, momentum=0.9, eta=0.02, larc=larc, foreach=f, clip=clip)
            for m, f, exclude in ((models[0], False, True), (models[1], True, True))]
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8)
        for m, opt in zip(models, opts):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_fused_sgd_is_built_on_request():
    model = nn.Linear(3, 2)
    assert build_optimizer(model, OptimConfig(name="sgd", fused=True)).defaults["fused"]
    assert build_optimizer(model, OptimConfig(name="lars", fused=True)).foreach


def test_build_optimizer_by_name():
    model = nn.Linear(3, 2)
    assert isinstance(build_optimizer(model, OptimConfig(name="lars")), LARS)
    assert isinstance(build_optimizer(model, OptimConfig(name="sgd")), torch.optim.SGD)


def _trainer_lrs(tmp_path, method, batch_size, epochs=2, size=16, **overrides):
    """The learning rate the trainer sets at every step of a run of ``method``."""
    from conftest import tiny_overrides
    from selfsup.config import resolve_config
    from selfsup.engine.trainer import Trainer
    from selfsup.methods import get_method

    items = tiny_overrides(tmp_path / method, method=method, epochs=epochs, batch_size=batch_size,
                           data=f"synthetic:256?classes=4&size={size}")
    items = [i for i in items if not i.startswith(("optim.lr=", "optim.warmup_epochs="))]
    cfg = resolve_config(get_method(method), overrides=items + [f"{k}={v}" for k, v in overrides.items()])
    t = Trainer(cfg)
    at = lambda s: s - s % t.steps_per_epoch if cfg.optim.per_epoch else s   # noqa: E731
    return t, [lr_at(at(s), t.total_steps, t.warmup_steps, t.peak_lr, t.final_lr, t.start_lr)
               for s in range(t.total_steps)]


def test_swav_schedule_scales_start_peak_and_end_with_the_batch(tmp_path):
    """METHODS.md 5.7: batch 4096 warms up from 0.3 to 4.8 and decays to 0.0048; the per-256
    defaults give exactly that, and 1/16 of it at batch 256."""
    t, _ = _trainer_lrs(tmp_path, "swav", 64, **{"swav.crops": "2x16+2x8", "swav.nmb_prototypes": 8})
    assert (t.start_lr, t.peak_lr, t.final_lr) == pytest.approx((0.3 / 64, 4.8 / 64, 0.0048 / 64))
    cfg = t.cfg.optim
    for batch, (start, peak, final) in {4096: (0.3, 4.8, 0.0048), 256: (0.3 / 16, 0.3, 0.0003)}.items():
        scale = batch / 256
        assert (cfg.warmup_start_lr * scale, cfg.lr * scale, cfg.min_lr * scale) == pytest.approx((start, peak, final))
    lrs = [lr_at(s, 1000, 100, 4.8, 0.0048, 0.3) for s in range(1001)]
    assert lrs[0] == pytest.approx(0.3) and lrs[100] == pytest.approx(4.8) and lrs[1000] == pytest.approx(0.0048)


def test_jigclu_decays_per_epoch_with_weight_decay_on_every_parameter(tmp_path):
    """METHODS.md 1.4: lr = 0.03 x B/256 x (1 + cos(pi epoch / epochs)) / 2, wd 1e-4 on all parameters."""
    t, lrs = _trainer_lrs(tmp_path, "jigclu", 64, epochs=4, size=32)
    per_epoch = t.steps_per_epoch
    expected = [0.03 * 64 / 256 * 0.5 * (1 + math.cos(math.pi * (s // per_epoch) / 4)) for s in range(4 * per_epoch)]
    assert lrs == pytest.approx(expected)
    assert len(t.optimizer.param_groups) == 1 and t.optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_moco_never_gets_syncbatchnorm():
    from selfsup.methods import get_method

    assert get_method("moco_v2").sync_bn is False and get_method("simclr").sync_bn is True


def test_bias_lr_mult_scales_only_the_biases(tmp_path):
    """The CFN's Caffe solver: biases at lr x2 without weight decay (METHODS.md 2.4)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, 5e-4, True, bias_lr_mult=2.0)
    by_scale = {g["lr_scale"]: g for g in groups}
    assert len(by_scale[1.0]["params"]) == 2 and by_scale[1.0]["weight_decay"] == 5e-4
    assert len(by_scale[2.0]["params"]) == 2 and by_scale[2.0]["weight_decay"] == 0
    from conftest import tiny_overrides
    from selfsup.config import resolve_config
    from selfsup.engine.trainer import Trainer
    from selfsup.methods import get_method

    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "r", epochs=1) + ["optim.bias_lr_mult=2"])
    trainer = Trainer(cfg)
    trainer.fit()
    lrs = {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[2.0] == pytest.approx(2 * lrs[1.0]) and lrs[1.0] > 0
