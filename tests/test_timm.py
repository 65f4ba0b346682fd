"""``timm:NAME`` backbones: taps, gradients, state dicts, method steps and checkpoints on tiny
timm models on the CPU (skipped without timm), and the one-line error without it (always run)."""
import math
import sys

import pytest
import torch

from conftest import one_line_error, run, tiny_overrides
from selfsup.errors import SelfSupError
from selfsup.models import build_backbone

CNN = "mobilenetv3_small_050"                                   # 0.3 M parameters as a feature extractor
VIT = ("vit_tiny_patch16_224", {"patch_size": 4, "depth": 2})   # 4 px patches: an 8 x 8 grid at 32 px
MODELS = {"cnn": (CNN, {}), "vit": VIT}
DATA32 = "synthetic:16?classes=4&size=32"


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def tiny(kind, **extra):
    name, kwargs = MODELS[kind]
    return build_backbone(f"timm:{name}", **kwargs, **extra)


# ------------------------------------------------------------------ without timm


def test_without_timm_the_error_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)                 # `import timm` now fails as if not installed
    with pytest.raises(SelfSupError, match=r"^backbone timm:resnet10t needs timm: pip install 'selfsup\[timm\]'$"):
        build_backbone("timm:resnet10t")
    code, _, err = run(capsys, "pretrain", "simclr", "--data", DATA32, "--backbone", "timm:resnet10t", "--epochs", 1,
                       "--batch-size", 16, "--out", tmp_path / "run", "device=cpu", "progress=false")
    assert one_line_error(code, err, "pip install 'selfsup[timm]'"), err


# ------------------------------------------------------------------ the backbone


def test_bad_names_and_the_cifar_stem_are_refused_in_one_line(timm):
    with pytest.raises(SelfSupError, match="timm has no model 'resnet10x'.*did you mean .*resnet10t"):
        build_backbone("timm:resnet10x")
    with pytest.raises(SelfSupError, match="has timm's own stem.*drop cifar_stem"):
        build_backbone(f"timm:{CNN}", cifar_stem=True)
    with pytest.raises(SelfSupError, match="unknown backbone 'vgg'.*or timm:NAME"):
        build_backbone("vgg")


def test_taps_follow_feature_info_and_the_token_grid(timm):
    cnn, vit = tiny("cnn").eval(), tiny("vit").eval()
    info = timm.create_model(CNN, pretrained=False, features_only=True).feature_info
    assert cnn.taps == tuple(f"stage{i}" for i in range(1, len(info) + 1)) and cnn.default_tap == cnn.taps[-1]
    assert list(cnn.tap_dims.values()) == info.channels() and list(cnn.tap_strides.values()) == info.reduction()
    assert vit.taps == ("block1", "block2", "norm") and vit.default_tap == "norm"
    assert vit.tap_modules == {"block1": "blocks.0", "block2": "blocks.1", "norm": "norm"}
    assert build_backbone("timm:vit_small_patch16_224").taps == ("block3", "block6", "block9", "norm")
    x = torch.randn(2, 3, 32, 32)
    for net in (cnn, vit):
        maps = net.forward_taps(x)
        for tap, fmap in maps.items():
            side = math.ceil(32 / net.tap_strides[tap])
            assert fmap.shape == (2, net.tap_dims[tap], side, side), tap
        assert torch.allclose(net(x), maps[net.default_tap].mean((2, 3)), atol=1e-6)
        first = net.taps[0]
        assert torch.allclose(net.forward_taps(x, (first,))[first], maps[first], atol=1e-6)   # early stop
    tokens = vit.model.forward_features(x)[:, vit.model.num_prefix_tokens:]               # timm's own final norm
    assert torch.allclose(vit.forward_map(x).flatten(2).transpose(1, 2), tokens, atol=1e-5)
    # one state dict for every size: the position embeddings follow the grid, odd sides are padded
    assert vit.forward_map(torch.randn(1, 3, 18, 22)).shape == (1, 192, 5, 6)
    assert cnn.forward_map(torch.randn(1, 3, 64, 64)).shape[-2:] == (2, 2)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_backward_reaches_every_parameter_and_the_state_dict_round_trips(timm, kind):
    net = tiny(kind).train()
    x = torch.randn(4, 3, 32, 32)
    sum(m.square().mean() for m in net.forward_taps(x).values()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    fresh = tiny(kind)
    assert set(fresh.state_dict()) == set(net.state_dict()) and all(k.startswith("model.") for k in fresh.state_dict())
    fresh.load_state_dict(net.state_dict())
    net.eval(), fresh.eval()
    with torch.no_grad():
        for tap, fmap in net.forward_taps(x).items():
            assert torch.equal(fresh.forward_taps(x, (tap,))[tap], fmap), tap


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_one_input_channel_for_colorization(timm, kind):
    net = tiny(kind, input="L").eval()
    assert net.net.model.state_dict()[next(k for k in net.net.model.state_dict() if k.endswith("weight"))].shape[1] == 1
    assert net.forward_map(torch.randn(2, 3, 32, 32)).shape[0] == 2      # RGB in, L to the tower


# ------------------------------------------------------------------ methods


STEP = {"simclr": {}, "byol": {}, "swav": {"nmb_prototypes": 8, "crops": "2x32+2x16", "queue_length": 0},
        "jigclu": {}}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(STEP))
def test_one_training_step(timm, method, kind):
    from selfsup.data.datasets import load_dataset
    from selfsup.data.loader import BatchLoader
    from selfsup.methods import build_method

    torch.manual_seed(0)
    size = 64 if (kind, method) == ("cnn", "jigclu") else 32     # a 2 x 2 final map for JigClu's 2 x 2 cells
    m = build_method(method, backbone=tiny(kind), image_size=size, **STEP[method]).train()
    loader = BatchLoader(load_dataset(f"synthetic:16?classes=4&size={size}"), 16, m.view_maker(), device="cpu")
    m.on_epoch_start(0, loader)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    before = [p.detach().clone() for p in m.backbone.parameters()]
    loss = m(next(loader.epoch(0)))["loss"]
    opt.zero_grad()
    loss.backward()
    m.on_after_backward(0)
    opt.step()
    m.on_step_end(0, 1)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.backbone.parameters()))


def test_jigclu_refuses_a_final_map_smaller_than_its_cells_naming_the_size(timm):
    from selfsup.methods import build_method

    with pytest.raises(SelfSupError, match="gives 1 x 1 at 32 px: use image_size 64 or more"):
        build_method("jigclu", backbone=f"timm:{CNN}", image_size=32)


def test_jigclu_decouples_a_vit_grid_at_224_px(timm):
    """14 x 14 tokens of a ViT/16 into 2 x 2 cells (bilinear to 14 x 14 is a no-op, then 7 x 7 pooling)."""
    from selfsup.data.loader import Batch
    from selfsup.methods import build_method

    m = build_method("jigclu", backbone="timm:test_vit", image_size=224).train()
    views = m.view_maker()(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8), torch.Generator().manual_seed(0))
    out = m(Batch(views, torch.zeros(2, dtype=torch.long), torch.arange(2)))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.backbone.model.pos_embed.grad is not None


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("method, backbone", [("simclr", "timm:test_vit"), ("colorization", f"timm:{CNN}")])
def test_a_checkpoint_loads_back_through_load_backbone(timm, tmp_path, method, backbone):
    from selfsup.checkpoint import load_backbone, load_checkpoint
    from selfsup.config import resolve_config
    from selfsup.engine.trainer import Trainer
    from selfsup.methods import get_method

    cfg = resolve_config(get_method(method), overrides=tiny_overrides(
        tmp_path / "run", epochs=1, data=DATA32, backbone=backbone, method=method))
    trainer = Trainer(cfg)
    assert trainer.fit() == "done" and trainer.cifar_stem is False     # auto: no CIFAR stem for timm models
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["backbone"] == backbone
    loaded = load_backbone(tmp_path / "run" / "last.pt")
    trained = trainer.backbone.eval().state_dict()
    assert set(trained) == set(loaded.state_dict())
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():                     # the trainer's copy is channels_last: equal up to rounding
        assert torch.allclose(loaded(x), trainer.backbone(x), atol=1e-5)
    assert ckpt["eval_tap"] in loaded.taps
