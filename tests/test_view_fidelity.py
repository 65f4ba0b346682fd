"""The view recipes against the papers and official code (METHODS.md 1.1, 5.2, 7.1, 7.5)."""
import math
from dataclasses import replace

import pytest
import torch

from selfsup.config import resolve_config
from selfsup.data import views as V
from selfsup.data.jigclu import JigCluViews
from selfsup.errors import SelfSupError
from selfsup.methods import build_method, get_method


def blur_only(size, sigma, **kw):
    """A view spec whose only step is a blur of exactly ``sigma`` px."""
    return V.ViewSpec(size, flip_prob=0, jitter_prob=0, gray_prob=0, blur_prob=1.0, blur_sigma=(sigma, sigma), **kw)


def blur_transcription(img, sigma, r=None):
    """Direct 2-D Gaussian blur of a C x H x W image: out[y, x] = sum_ij k_i k_j img[y + i, x + j],
    k_t proportional to exp(-t^2 / (2 sigma^2)) for |t| <= r (default ceil(3 sigma), where PIL's
    GaussianBlur(radius=sigma) has its weight), the image reflected at its edges."""
    r = math.ceil(3 * sigma) if r is None else r
    k = [math.exp(-t * t / (2 * sigma * sigma)) for t in range(-r, r + 1)]
    k = [v / sum(k) for v in k]
    _, h, w = img.shape

    def refl(i, n):
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = []
    for ch in img.tolist():
        out.append([[sum(k[i + r] * k[j + r] * ch[refl(y + i, h)][refl(x + j, w)]
                         for i in range(-r, r + 1) for j in range(-r, r + 1)) for x in range(w)] for y in range(h)])
    return torch.tensor(out)


# ---------------------------------------------------------------- blur (METHODS.md 1.1, 5.2, 7.5)

def blurring_specs(size):
    """Every spec of the library's recipes at ``size`` px that blurs, JigClu's patches included."""
    specs = [s for name in ("simclr", "mocov2", "byol", "multicrop", "patch:4") for s in V.view_recipe(name, size)]
    specs.append(JigCluViews(2 * size).spec)
    return [s for s in dict.fromkeys(specs) if s.blur_prob > 0]


@pytest.mark.parametrize("size", [16, 32, 96])
def test_blur_sigmas_are_pixels_of_the_view_whatever_its_size(size, monkeypatch):
    assert all(spec.blur_sigma == (0.1, 2.0) for spec in blurring_specs(224))   # sampled as below, at any size
    seen = []
    monkeypatch.setattr(V, "gaussian_blur", lambda x, sigma, radius=None: seen.append(sigma) or x)
    g = torch.Generator().manual_seed(0)
    for spec in blurring_specs(size):
        assert spec.blur_sigma == (0.1, 2.0)
        for _ in range(4):
            V.photometric(torch.rand(32, 3, spec.size, spec.size), spec, g)
    sigma = torch.cat(seen)
    assert len(sigma) > 100
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert sigma.min() < 0.3 and sigma.max() > 1.8        # the whole range, not a size-scaled part of it


@pytest.mark.parametrize("sigma", [0.1, 0.45, 1.0, 1.9])
def test_blur_of_a_view_equals_the_direct_transcription(sigma):
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = V.photometric(img.clone(), blur_only(16, sigma), torch.Generator().manual_seed(0))
    assert torch.allclose(out[0], blur_transcription(img[0], sigma), atol=1e-5)


def test_blur_of_a_batch_with_its_own_sigmas_matches_each_transcription():
    img = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = V.gaussian_blur(img.clone(), sigma)                  # the kernel of sigma 2: +-6 px for all three
    for i in range(3):
        assert torch.allclose(out[i], blur_transcription(img[i], float(sigma[i]), r=6), atol=1e-5)


def test_kernel_covers_three_sigma_within_the_view():
    assert V.blur_radius(2.0, 224) == 6 and V.blur_radius(1.0, 96) == 3 and V.blur_radius(0.1, 224) == 1
    assert V.blur_radius(2.0, 16) == 6
    assert V.blur_radius(2.0, 7) == 3 and V.blur_radius(2.0, 2) == 0        # never wider than the view


def test_simclr_code_kernel_is_an_explicit_option():
    """SimCLR's TF code: kernel_size = height // 10, radius = kernel_size // 2, same sigmas."""
    assert V.ViewSpec(224).blur_kernel_frac is None
    assert V.blur_radius(2.0, 224, 0.1) == 11 and V.blur_radius(2.0, 32, 0.1) == 1 and V.blur_radius(0.5, 40, 0.1) == 2
    img = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    out = V.photometric(img.clone(), blur_only(40, 1.5, blur_kernel_frac=0.1), torch.Generator().manual_seed(0))
    assert torch.allclose(out[0], blur_transcription(img[0], 1.5, r=2), atol=1e-5)


# ---------------------------------------------------------------- multi-crop (METHODS.md 5.2)

@pytest.mark.parametrize("crops, sizes, global_scale", [
    ("2x224+6x96", [224] * 2 + [96] * 6, (0.14, 1.0)),
    ("2x224", [224] * 2, (0.08, 1.0)),
    ("2x160+4x96", [160] * 2 + [96] * 4, (0.08, 1.0)),
])
def test_global_scale_follows_the_official_crops(crops, sizes, global_scale):
    specs = V.multicrop_views(224, crops)
    assert [s.size for s in specs] == sizes
    assert [s.scale for s in specs] == [global_scale] * 2 + [(0.05, 0.14)] * (len(sizes) - 2)
    for s in specs:
        assert s.jitter == pytest.approx((0.8, 0.8, 0.8, 0.2)) and s.jitter_prob == 0.8 and s.gray_prob == 0.2
        assert s.flip_prob == 0.5 and s.blur_prob == 0.5 and s.blur_sigma == (0.1, 2.0)
    for name in ("swav", "deepcluster_v2", "sela_v2"):       # global_scale: None in their configs
        m = build_method(name, backbone="convnet", image_size=224, crops=crops, nmb_prototypes=[4] if name != "swav" else 4)
        assert [s.scale for s in m.specs] == [s.scale for s in specs]


def test_default_crops_are_swav_and_an_explicit_global_scale_wins():
    assert V.multicrop_views(224)[0].scale == (0.14, 1.0) and V.multicrop_views(32)[0].scale == (0.14, 1.0)
    assert [s.size for s in V.multicrop_views(32)] == [32, 32, 16, 16, 16, 16]      # the CIFAR advice, 2x32+4x16
    assert [s.size for s in V.multicrop_views(65)] == [65, 65] + [28] * 6
    assert V.multicrop_views(224, "2x160+4x96", global_scale=(0.14, 1.0))[0].scale == (0.14, 1.0)
    assert V.multicrop_views(224, "2x224+6x96", global_scale=(0.2, 1.0))[0].scale == (0.2, 1.0)
    m = build_method("swav", backbone="convnet", image_size=224, crops="2x224", global_scale=(0.3, 1.0), nmb_prototypes=4)
    assert m.specs[0].scale == (0.3, 1.0)
    cfg = resolve_config(get_method("sela_v2"), file="configs/sela_v2_imagenet.yaml")
    assert cfg.sela_v2.global_scale == (0.08, 1.0)
    assert resolve_config(get_method("swav"), flags={"method": "swav"}).swav.global_scale is None


# ---------------------------------------------------------------- SimCLR (METHODS.md 7.5)

def assert_simclr(specs, size, strength, blur_prob):
    s = strength
    assert len(specs) == 2
    for spec in specs:
        assert spec.size == size and spec.scale == (0.08, 1.0) and spec.ratio == (3 / 4, 4 / 3) and spec.flip_prob == 0.5
        assert spec.jitter == pytest.approx((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)) and spec.jitter_prob == 0.8
        assert spec.gray_prob == 0.2 and spec.blur_prob == blur_prob and spec.blur_sigma == (0.1, 2.0)
        assert spec.solarize_prob == 0 and spec.patch is None


@pytest.mark.parametrize("size, strength, blur_prob", [(32, 0.5, 0.0), (64, 0.5, 0.0), (96, 1.0, 0.5), (224, 1.0, 0.5)])
def test_simclr_default_strength_and_blur_follow_the_resolution(size, strength, blur_prob):
    assert_simclr(V.view_recipe("simclr", size), size, strength, blur_prob)


def test_simclr_explicit_strength_is_honoured():
    assert_simclr(V.view_recipe("simclr:0.25", 32), 32, 0.25, 0.0)
    assert_simclr(V.view_recipe("simclr:1.0", 32), 32, 1.0, 0.0)      # the blur still follows the size
    assert_simclr(V.view_recipe("simclr:0.5", 224), 224, 0.5, 0.5)
    assert_simclr(V.simclr_views(224, strength=0.7), 224, 0.7, 0.5)


def test_simclr_cifar10_config_is_the_official_command():
    cfg = resolve_config(get_method("simclr"), file="configs/simclr_cifar10.yaml")
    assert (cfg.backbone, cfg.cifar_stem, cfg.image_size, cfg.batch_size, cfg.epochs) == ("resnet18", True, 32, 512, 1000)
    o = cfg.optim
    assert (o.name, o.lr, o.scale_lr, o.weight_decay, o.warmup_epochs, o.min_lr) == ("lars", 1.0, True, 1e-4, 10, 0.0)
    assert cfg.simclr.temperature == 0.5
    assert_simclr(V.view_recipe(cfg.simclr.views, cfg.image_size), 32, 0.5, 0.0)


# ---------------------------------------------------------------- the other recipes keep theirs

def test_mocov2_byol_and_jigclu_recipes():
    for spec in V.view_recipe("mocov2", 224):                  # METHODS.md 1.1
        assert spec.scale == (0.2, 1.0) and spec.jitter == (0.4, 0.4, 0.4, 0.1) and spec.jitter_prob == 0.8
        assert spec.gray_prob == 0.2 and spec.blur_prob == 0.5 and spec.blur_sigma == (0.1, 2.0) and spec.flip_prob == 0.5
    assert [s.blur_prob for s in V.view_recipe("mocov2", 32)] == [0.5, 0.5]     # blur at every size
    assert V.view_recipe("mocov2:noblur", 32) == [replace(V.view_recipe("mocov2", 32)[0], blur_prob=0.0)] * 2
    jig = JigCluViews(224).spec                            # the MoCo v2 policy on 112 px patches
    assert jig == V.view_recipe("mocov2", 112)[0]
    a, b = V.view_recipe("byol", 224)                          # METHODS.md 7.1
    for spec in (a, b):
        assert spec.scale == (0.08, 1.0) and spec.jitter == (0.4, 0.4, 0.2, 0.1) and spec.jitter_prob == 0.8
        assert spec.gray_prob == 0.2 and spec.blur_sigma == (0.1, 2.0) and spec.flip_prob == 0.5
    assert (a.blur_prob, a.solarize_prob, b.blur_prob, b.solarize_prob) == (1.0, 0.0, 0.1, 0.2)


def test_byol_views_drop_the_blur_at_64_px_or_less_and_patches_keep_it():
    """solo-learn's CIFAR recipes have no blur; ``byol:blur`` and BagSSL's patches (the paper's
    CIFAR augmentation) keep BYOL's 1.0 / 0.1 at any size."""
    a, b = V.view_recipe("byol", 32)
    assert (a.blur_prob, a.solarize_prob, b.blur_prob, b.solarize_prob) == (0.0, 0.0, 0.0, 0.2)
    assert V.view_recipe("byol", 64)[0].blur_prob == 0.0 and V.view_recipe("byol", 65)[0].blur_prob == 1.0
    for views in (V.view_recipe("byol:blur", 32), V.view_recipe("patch:14", 32)):
        assert (views[0].blur_prob, views[1].blur_prob, views[1].solarize_prob) == (1.0, 0.1, 0.2)
    with pytest.raises(SelfSupError):
        V.view_recipe("byol:0.5", 32)
