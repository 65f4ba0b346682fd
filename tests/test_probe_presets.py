"""Linear-probe presets: fast (cached features), moco (METHODS.md 1.4) and swav (5.7), the
augmented ones training on RandomResizedCrop + flip views through the frozen backbone."""
import json
import math

import pytest
import torch

from conftest import TINY, run
from selfsup.data.datasets import load_dataset
from selfsup.errors import SelfSupError
from selfsup.eval.features import CenterView
from selfsup.eval.linear import PRESETS, augmented_linear_probe, describe, milestones, preset_lr
from selfsup.models import build_backbone


def lrs_of(scheduler_cls, epochs, lr, **kw):
    """The per-epoch learning rates a torch scheduler gives (stepped once per epoch, as both scripts do)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = scheduler_cls(opt, **kw)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_moco_preset_is_the_step_schedule_at_60_and_80():
    moco = PRESETS["moco"]
    assert (moco.lr, moco.epochs, moco.weight_decay, moco.batch_size, moco.augment) == (10.0, 100, 0.0, 256, True)
    ours = [preset_lr(moco, 10.0, 100, e) for e in range(100)]
    by_hand = [10.0 * (0.1 if e >= 60 else 1) * (0.1 if e >= 80 else 1) for e in range(100)]   # main_lincls
    assert ours == pytest.approx(by_hand, rel=1e-12)
    assert ours == pytest.approx(lrs_of(torch.optim.lr_scheduler.MultiStepLR, 100, 10.0, milestones=[60, 80],
                                        gamma=0.1), rel=1e-12)
    assert all(preset_lr(moco, 10.0, 100, e, step, 50) == preset_lr(moco, 10.0, 100, e) for e in (0, 59, 60) for step in (0, 49))
    assert milestones(moco, 100) == (60, 80) and milestones(moco, 5) == (3, 4) and milestones(moco, 10) == (6, 8)


def test_swav_preset_is_cosine_per_epoch_to_zero():
    swav = PRESETS["swav"]
    assert (swav.lr, swav.epochs, swav.weight_decay, swav.augment, swav.standardize) == (0.3, 100, 1e-6, True, False)
    ours = [preset_lr(swav, 0.3, 100, e) for e in range(100)]
    torch_cos = lrs_of(torch.optim.lr_scheduler.CosineAnnealingLR, 100, 0.3, T_max=100, eta_min=0.0)
    assert ours == pytest.approx(torch_cos, rel=1e-9, abs=1e-12)


def test_fast_preset_is_the_former_per_iteration_cosine():
    fast = PRESETS["fast"]
    assert (fast.lr, fast.epochs, fast.augment, fast.standardize) == (0.1, 100, False, True)
    total = 3 * 7
    for step in range(total):
        assert preset_lr(fast, 0.1, 3, step // 7, step % 7, 7) == pytest.approx(0.05 * (1 + math.cos(math.pi * step / total)))


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic:96?classes=3&size=16"), load_dataset("synthetic:48?classes=3&size=16&seed=1")


def test_augmented_probe_trains_and_leaves_the_backbone_untouched(data):
    train, test = data
    torch.manual_seed(0)
    net = build_backbone("convnet").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = []
    result = augmented_linear_probe(net, train, test, "moco", epochs=3, history=history)     # lr 10, as MoCo
    assert len(history) == 3 and history[0] > history[1] > history[2]     # the loss goes down every epoch
    assert result["train_loss"] == history[-1] and 0 <= result["top1"] <= 1 and result["feature_dim"] == 192
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)       # weights and BN running statistics
    assert net.training                                                 # the mode is restored


def test_augmented_probe_runs_the_backbone_on_fresh_views_every_epoch(data, monkeypatch):
    train, test = data
    net = build_backbone("convnet")
    seen = []
    real = net.forward_taps

    def spy(x, taps=None):
        seen.append((x.shape, net.training, torch.is_grad_enabled(), x.clone()))
        return real(x, taps)

    monkeypatch.setattr(net, "forward_taps", spy)
    augmented_linear_probe(net, train, test, "moco", epochs=2, lr=0.5, image_size=12, batch_size=1000)
    assert len(seen) == 1 + 2                                          # the test set once, then 96 images per epoch
    assert all(shape == (len(test) if i == 0 else len(train), 3, 12, 12) for i, (shape, *_) in enumerate(seen))
    assert not any(training or grad for _, training, grad, _ in seen)  # eval mode, no gradients
    assert not torch.allclose(seen[1][3], seen[2][3])                  # epochs see different random views


def test_center_view_is_resize_256_then_center_crop_224():
    from torchvision.transforms.v2 import functional as TF

    images = torch.randint(0, 256, (2, 3, 300, 400), dtype=torch.uint8)
    ours = CenterView(224)(images)
    x = TF.center_crop(TF.resize(images.float() / 255, 256, antialias=True), 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert ours.shape == (2, 3, 224, 224)
    assert torch.allclose(ours, (x - mean) / std, atol=1e-4)
    assert CenterView(32)(images[:, :, :64, :64]).shape == (2, 3, 32, 32)   # resize to 37, crop 32


def test_library_refusals():
    train = load_dataset("synthetic:8?classes=2&size=16")
    net = build_backbone("convnet")
    with pytest.raises(SelfSupError, match="unknown linear preset 'nope': use --preset fast, moco or swav"):
        augmented_linear_probe(net, train, train, "nope")
    with pytest.raises(SelfSupError, match="preset fast trains on cached features"):
        augmented_linear_probe(net, train, train, "fast")
    with pytest.raises(SelfSupError, match="--probe-epochs must be at least 1"):
        augmented_linear_probe(net, train, train, "moco", epochs=0)
    assert describe("moco", {"epochs": 5}) == "preset moco, epochs 5" and describe("swav") == "preset swav"


@pytest.fixture(scope="session")
def ckpt(random_ckpt):
    return random_ckpt


def test_cli_names_the_preset_and_its_overrides(capsys, ckpt):
    base = ["eval", "linear", "--checkpoint", ckpt, "--train-data", TINY, "--test-data", TINY + "&seed=1"]
    code, out, err = run(capsys, *base, "--preset", "moco", "--probe-epochs", 2)
    assert code == 0, err
    assert "linear (preset moco, epochs 2) on conv4 (192 dims): top-1" in out
    code, out, err = run(capsys, *base, "--preset", "swav", "--probe-epochs", 2, "--lr", 0.05, "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["preset"] == "swav" and result["overrides"] == {"epochs": 2, "lr": 0.05}
    assert result["probe_epochs"] == 2 and result["lr"] == 0.05 and 0 <= result["top1"] <= 1
    code, out, err = run(capsys, *base, "--probe-epochs", 3)
    assert code == 0, err
    assert "linear (preset fast, epochs 3) on conv4" in out
    code, out, err = run(capsys, *base, "--probe-epochs", 3, "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["preset"] == "fast" and result["overrides"] == {"epochs": 3} and result["lr"] == 0.1


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "linear", "--preset", "nope"], "unknown linear preset 'nope': use --preset fast, moco or swav"),
    (["eval", "knn", "--preset", "moco"], "--preset applies to eval linear only"),
    (["eval", "patches", "--preset", "swav"], "--preset applies to eval linear only"),
    (["eval", "linear", "--preset", "moco", "--probe-epochs", 0], "--probe-epochs must be at least 1, got 0"),
    (["eval", "linear", "--preset", "swav", "--lr", -1], "--lr must be a positive number"),
])
def test_cli_refuses_bad_presets_in_one_line(capsys, ckpt, argv, fragment):
    code, _, err = run(capsys, *argv, "--checkpoint", ckpt, "--train-data", TINY, "--test-data", TINY)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("selfsup: error:") and fragment in lines[0], err


def test_short_probes_keep_the_first_epoch_at_the_stated_lr():
    """goyal's steps (4, 8, 12 of 14) scaled to 1 or 2 epochs: rounded to (0, 1, 1) / (1, 1, 2) they trained the
    only epoch at lr / 10, or stepped twice at once."""
    goyal = PRESETS["goyal"]
    assert milestones(goyal, 14) == (4, 8, 12)
    assert milestones(goyal, 1) == (1, 2, 3) and milestones(goyal, 2) == (1, 2, 3)
    assert preset_lr(goyal, 0.01, 1, 0) == 0.01
    assert [preset_lr(goyal, 0.01, 2, e) for e in range(2)] == pytest.approx([0.01, 0.001])
