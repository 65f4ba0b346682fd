import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup.data import views as V


def batch(n=8, size=32, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("recipe", [r if r != "patch" else "patch:10" for r in V.VIEW_RECIPES])
def test_recipes_shapes_and_determinism(recipe):
    maker = V.ViewMaker(V.view_recipe(recipe, 24))
    x = batch()
    a = maker(x, torch.Generator().manual_seed(3))
    b = maker(x, torch.Generator().manual_seed(3))
    c = maker(x, torch.Generator().manual_seed(4))
    sizes = [24] * 2 + ([12] * 4 if recipe == "multicrop" else [])   # multi-crop at 64 px or less: 4 local crops at half
    assert [v.shape for v in a] == [(8, 3, s, s) for s in sizes]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])          # two views differ


def test_grayscale_input_becomes_three_channels():
    maker = V.ViewMaker(V.simclr_views(28))
    out = maker(batch(channels=1, size=28), torch.Generator().manual_seed(0))
    assert out[0].shape == (8, 3, 28, 28)


def test_crop_boxes_inside_and_in_range():
    g = torch.Generator().manual_seed(0)
    boxes = V.crop_boxes(2000, 32, 48, (0.08, 1.0), (3 / 4, 4 / 3), g, "cpu")
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 48).all() and (y2 <= 32).all()
    area = (x2 - x1) * (y2 - y1) / (32 * 48)
    assert area.min() > 0.05 and area.max() <= 1.0
    ratio = (x2 - x1) / (y2 - y1)
    assert ratio.min() > 0.6 and ratio.max() < 1.6


def test_full_box_crop_is_identity():
    x = batch().float() / 255
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(8, 1)
    assert torch.allclose(V.resized_crop(x, boxes, 32), x, atol=2e-4)


def test_colour_ops_match_torchvision():
    x = batch().float() / 255
    f = torch.full((8,), 1.3)
    assert torch.allclose(V.adjust_brightness(x.clone(), f), TF.adjust_brightness(x, 1.3), atol=2e-4)
    assert torch.allclose(V.adjust_contrast(x.clone(), f), TF.adjust_contrast(x, 1.3), atol=2e-4)
    assert torch.allclose(V.adjust_saturation(x.clone(), f), TF.adjust_saturation(x, 1.3), atol=2e-4)
    for h in (-0.4, 0.1, 0.5):
        assert torch.allclose(V.adjust_hue(x, torch.full((8,), h)), TF.adjust_hue(x, h), atol=2e-4)
    assert torch.allclose(V.grayscale(x), TF.rgb_to_grayscale(x), atol=2e-4)


def test_hue_rotation_matches_torchvision_per_image_and_at_the_edges():
    """Per-image shifts, on random colours, grays (no hue), pure and saturated colours, black and white."""
    torch.manual_seed(0)
    x = torch.rand(6, 3, 9, 9)
    x[1] = x[1, :1]                                    # gray: max == min
    x[2, :, :3] = torch.tensor([1.0, 0, 0]).view(3, 1, 1)
    x[2, :, 3:6] = torch.tensor([0, 1.0, 0]).view(3, 1, 1)
    x[2, :, 6:] = torch.tensor([0, 0, 1.0]).view(3, 1, 1)
    x[3] = (x[3] > 0.5).float()                        # black, white and the six corner colours
    x[4, :, :, :4] = 0
    shifts = torch.tensor([-0.5, 0.25, -0.33, 0.5, 0.07, -0.01])
    got = V.adjust_hue(x, shifts)
    for i, h in enumerate(shifts.tolist()):
        assert torch.allclose(got[i], TF.adjust_hue(x[i:i + 1], h)[0], atol=2e-5), i


def test_per_sample_factors_are_independent():
    x = batch().float() / 255
    f = torch.linspace(0.5, 1.5, 8)
    out = V.adjust_saturation(x.clone(), f)
    for i in range(8):
        assert torch.allclose(out[i], TF.adjust_saturation(x[i], float(f[i])), atol=2e-4)


def test_blur_preserves_constant_images_and_smooths_noise():
    const = torch.full((2, 3, 32, 32), 0.4)
    assert torch.allclose(V.gaussian_blur(const, torch.tensor([1.0, 2.0])), const, atol=1e-6)
    noise = torch.rand(2, 3, 32, 32)
    assert V.gaussian_blur(noise, torch.tensor([1.5, 1.5])).std() < noise.std() / 2


def test_eval_transform_resizes_and_normalises():
    out = V.EvalTransform(24)(batch(size=32))
    assert out.shape == (8, 3, 24, 24)
    assert V.EvalTransform(None)(batch()).shape == (8, 3, 32, 32)


def test_simclr_strength_in_the_recipe_name():
    assert V.view_recipe("simclr:0.5", 32)[0].jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert V.view_recipe("simclr:0", 32)[0].jitter == (0, 0, 0, 0)
    out = V.ViewMaker(V.view_recipe("simclr:0.5", 24))(batch(size=24), torch.Generator().manual_seed(0))
    assert [v.shape for v in out] == [(8, 3, 24, 24)] * 2
    for bad in ("simclr:strong", "simclr:-1", "simclr:3"):
        with pytest.raises(V.SelfSupError, match="cannot parse colour strength"):
            V.view_recipe(bad, 32)
    with pytest.raises(V.SelfSupError, match="unknown view recipe"):
        V.view_recipe("mocov2:0.5", 32)
    with pytest.raises(V.SelfSupError, match="unknown view recipe"):
        V.view_recipe("mocov2:blur", 32)


def test_blur_of_tiny_views_keeps_them():
    for size in (1, 2, 3):
        x = torch.rand(2, 3, size, size)
        spec = V.ViewSpec(size, flip_prob=0, jitter_prob=0, gray_prob=0, blur_prob=1.0)
        out = V.photometric(x.clone(), spec, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and torch.isfinite(out).all()
        if size < 3:                                  # a 1-tap kernel: the view unchanged
            assert torch.allclose(out, x)


@pytest.mark.parametrize("size", [8, 24])
def test_crop_inside_never_reads_a_pixel_outside_its_box(size):
    """Pixels outside the box are 100, inside in [0, 1]: the default crop blends the border in (up to half a
    pixel's weight at the edges), ``inside=True`` never does, and keeps the box's content."""
    x = torch.full((2, 3, 20, 20), 100.0)
    x[:, :, 5:15, 4:16] = torch.rand(2, 3, 10, 12)
    boxes = torch.tensor([[4.0, 5.0, 16.0, 15.0]] * 2)
    assert V.resized_crop(x, boxes, size).max() > 1
    inside = V.resized_crop(x, boxes, size, inside=True)
    assert inside.max() <= 1 and inside.min() >= 0
    flat = torch.zeros(2, 3, 20, 20)
    flat[:, :, 5:15, 4:16] = 0.5
    assert torch.allclose(V.resized_crop(flat, boxes, size, inside=True), torch.full((2, 3, size, size), 0.5))


def test_crop_inside_option_reaches_the_views_of_joint_embedding_methods():
    from selfsup.methods import build_method

    m = build_method("simclr", backbone="convnet", image_size=32, crop_inside=True)
    assert all(spec.inside for spec in m.view_maker().specs)
    assert not any(spec.inside for spec in build_method("simclr", backbone="convnet", image_size=32).view_maker().specs)


def test_flip_and_grayscale_of_the_selected_views_equal_the_masked_formula():
    """photometric flips and grays only the views its coins pick: the same values as the whole-batch
    torch.where(coin, op(v), v), with the same draws."""
    from selfsup.data.views import ViewSpec, _coin, grayscale, photometric

    spec = ViewSpec(16, flip_prob=0.5, jitter_prob=0.0, gray_prob=0.4, blur_prob=0.0)
    v = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    got = photometric(v.clone(), spec, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    want = torch.where(_coin(40, 0.5, g, "cpu").view(-1, 1, 1, 1), v.flip(3), v)
    want = torch.where(_coin(40, 0.4, g, "cpu").view(-1, 1, 1, 1), grayscale(want).expand_as(want), want)
    assert torch.equal(got, want)
    assert not torch.equal(got, v) and (got[:, 0] == got[:, 1]).all(dim=(1, 2)).any()


def test_crop_min_scale_sets_the_smallest_area_of_the_image_size_crops_only():
    from selfsup.errors import SelfSupError
    from selfsup.methods import build_method

    m = build_method("simclr", backbone="convnet", image_size=32, views="multicrop:2x32+4x16", crop_min_scale=0.4)
    scales = [spec.scale for spec in m.view_maker().specs]
    assert scales[:2] == [(0.4, 1.0)] * 2 and scales[2:] == [(0.05, 0.14)] * 4
    assert build_method("simclr", backbone="convnet", image_size=32).view_maker().specs[0].scale == (0.08, 1.0)
    with pytest.raises(SelfSupError, match="crop_min_scale"):
        build_method("simclr", backbone="convnet", image_size=32, crop_min_scale=1.5).view_maker()
    # multi-crop without crops of the image size: the example names that size (it printed {self.image_size})
    with pytest.raises(SelfSupError, match=r"give the crops \(e\.g\. 2x32\+4x16\)"):
        build_method("simclr", backbone="convnet", image_size=32, views="multicrop:2x24+4x16",
                     crop_min_scale=0.2).view_maker()


def test_view_size_sets_the_side_of_the_image_size_views_only():
    from selfsup.errors import SelfSupError
    from selfsup.methods import build_method

    m = build_method("simclr", backbone="convnet", image_size=28, views="multicrop:2x28+4x14", view_size=16)
    assert [spec.size for spec in m.view_maker().specs] == [16, 16, 14, 14, 14, 14]
    views = build_method("simclr", backbone="convnet", image_size=28, view_size=16).view_maker()(
        torch.rand(3, 3, 28, 28), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(3, 3, 16, 16)] * 2
    assert build_method("simclr", backbone="convnet", image_size=28).view_maker().specs[0].size == 28
    with pytest.raises(SelfSupError, match="view_size"):
        build_method("simclr", backbone="convnet", image_size=28, view_size=0).view_maker()
