"""BagSSL and the joint-embedding family: losses against slow transcriptions of their
equations, BYOL's target, MoCo's queue, fixed-scale patches, patch aggregation."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.data.loader import Batch
from selfsup.data.views import augment, patch_boxes, view_recipe
from selfsup.errors import SelfSupError
from selfsup.eval.patches import (aggregated_features, embed_boxes, grid_boxes, local_pool, patch_convergence,
                                  random_boxes)
from selfsup.losses import byol, coding_rate, moco, spectral_contrastive, tcr, vicreg
from selfsup.methods import build_method
from test_distributed import run_two_processes

# ---------------------------------------------------------------- slow transcriptions, loops and scalars


def vicreg_slow(z1, z2, lam, mu, nu):
    z1, z2 = z1.double(), z2.double()
    b, d = z1.shape
    s = sum(float((z1[i, j] - z2[i, j]) ** 2) for i in range(b) for j in range(d)) / (b * d)

    def v_c(z):
        mean = [sum(float(z[i, j]) for i in range(b)) / b for j in range(d)]
        cov = [[sum((float(z[i, j]) - mean[j]) * (float(z[i, k]) - mean[k]) for i in range(b)) / (b - 1)
                for k in range(d)] for j in range(d)]
        v = sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        c = sum(cov[j][k] ** 2 for j in range(d) for k in range(d) if j != k) / d
        return v, c

    (v1, c1), (v2, c2) = v_c(z1), v_c(z2)
    return lam * s + mu * (v1 + v2) / 2 + nu * (c1 + c2)


def byol_slow(p, z):
    total = 0.0
    for i in range(len(p)):
        a, b = p[i].double(), z[i].double()
        total += 2 - 2 * float(a @ b) / (float(a.norm()) * float(b.norm()))
    return total / len(p)


def coding_rate_slow(z, eps):
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True)
    b, d = z.shape
    gram = torch.zeros(d, d, dtype=torch.float64)
    for i in range(b):                                   # Z^T Z as a sum of outer products
        gram += torch.outer(z[i], z[i])
    matrix = torch.eye(d, dtype=torch.float64) + d / (b * eps) * gram
    return 0.5 * float(torch.logdet(matrix))


def tcr_slow(z1, z2, eps, lam):
    cos = sum(float(F.cosine_similarity(z1[i:i + 1].double(), z2[i:i + 1].double())) for i in range(len(z1))) / len(z1)
    return -0.5 * (coding_rate_slow(z1, eps) + coding_rate_slow(z2, eps)) - lam * cos


def spectral_slow(z1, z2):
    z1, z2 = z1.double(), z2.double()
    b = len(z1)
    pos = sum(float(z1[i] @ z2[i]) for i in range(b)) / b
    neg = sum(float(z1[i] @ z2[j]) ** 2 for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    return -pos + neg


def moco_slow(q, k, queue, t):
    total = 0.0
    for i in range(len(q)):
        qi, ki = q[i].double() / q[i].double().norm(), k[i].double() / k[i].double().norm()
        pos = math.exp(float(qi @ ki) / t)
        neg = sum(math.exp(float(qi @ (n.double() / n.double().norm())) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def _z(b=12, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def test_vicreg_equals_its_equations():
    z1, z2 = _z()
    assert vicreg(z1, z2).item() == pytest.approx(vicreg_slow(z1, z2, 25, 25, 1), abs=1e-5)
    assert vicreg(z1 * 0.1, z2, 2.0, 3.0, 0.5).item() == pytest.approx(vicreg_slow(z1 * 0.1, z2, 2.0, 3.0, 0.5), abs=1e-5)


def test_byol_equals_its_equation_and_stops_the_target_gradient():
    p, z = _z()
    p.requires_grad_(True)
    z.requires_grad_(True)
    loss = byol(p, z)
    assert loss.item() == pytest.approx(byol_slow(p.detach(), z.detach()), abs=1e-5)
    loss.backward()
    assert z.grad is None and p.grad is not None


@pytest.mark.parametrize("eps,lam", [(0.2, 30.0), (0.5, 1.0)])
def test_coding_rate_and_tcr_equal_their_equations(eps, lam):
    z1, z2 = _z(b=10, d=5)
    assert coding_rate(z1, eps).item() == pytest.approx(coding_rate_slow(z1, eps), abs=1e-5)
    assert tcr(z1, z2, eps, lam).item() == pytest.approx(tcr_slow(z1, z2, eps, lam), abs=1e-5)
    # a collapsed batch has the smallest coding rate, spread-out rows a larger one
    assert coding_rate(z1[:1].repeat(10, 1), eps) < coding_rate(z1, eps)


def test_spectral_contrastive_equals_its_equation():
    z1, z2 = _z()
    assert spectral_contrastive(z1, z2).item() == pytest.approx(spectral_slow(z1, z2), abs=1e-5)


def test_moco_infonce_equals_its_equation():
    q, k = _z(b=5, d=8)
    queue = torch.randn(7, 8, generator=torch.Generator().manual_seed(3))
    assert moco(q, k, queue, 0.2).item() == pytest.approx(moco_slow(q, k, queue, 0.2), abs=1e-5)


def _loss_worker(rank, world, init_file, z1, z2, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = len(z1) // world
        a1 = z1[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        a2 = z2[rank * b:(rank + 1) * b]
        losses = {"vicreg": vicreg(a1, a2), "tcr": tcr(a1, a2), "spectral": spectral_contrastive(a1, a2)}
        grads = {}
        for name, loss in losses.items():
            (g,) = torch.autograd.grad(loss, a1)
            grads[name] = g / world                          # DDP averages over processes
        out[rank] = ({k: v.item() for k, v in losses.items()}, grads)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_the_concatenated_batch():
    """Statistics over the gathered batch: the mean of the per-process losses (what DDP
    optimises) and its gradients equal the single-process loss on the whole batch."""
    z1, z2 = _z(b=8, d=5)
    out = run_two_processes(_loss_worker, z1, z2)
    for name, fn in [("vicreg", vicreg), ("tcr", tcr), ("spectral", spectral_contrastive)]:
        r1 = z1.clone().requires_grad_(True)
        ref = fn(r1, z2)
        (grad,) = torch.autograd.grad(ref, r1)
        assert (out[0][0][name] + out[1][0][name]) / 2 == pytest.approx(ref.item(), abs=1e-5), name
        assert torch.allclose(torch.cat([out[0][1][name], out[1][1][name]]), grad, atol=1e-5), name


# ---------------------------------------------------------------- methods


def _batch(method, b=8, size=16, seed=0):
    images = (torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
    views = method.view_maker()(images, torch.Generator().manual_seed(seed))
    return Batch(views, torch.zeros(b, dtype=torch.long), torch.arange(b))


def test_byol_target_is_a_moving_average_without_gradient():
    m = build_method("byol", backbone="convnet", image_size=16, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32,
                     base_momentum=0.9)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    online = list(m.backbone.parameters()) + list(m.projector.parameters())
    before = [p.detach().clone() for p in m.target.parameters()]
    assert all(torch.equal(t, o) for t, o in zip(before, online))          # starts as a copy
    loss = m(_batch(m))["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())
    m.on_step_end(3, 10)
    tau = 1 - 0.1 * (math.cos(3 * math.pi / 10) + 1) / 2                   # cosine from 0.9 towards 1
    assert m.momentum == pytest.approx(tau)
    for t, b, o in zip(m.target.parameters(), before, online):
        assert torch.allclose(t, tau * b + (1 - tau) * o.detach(), atol=1e-6)


def test_moco_queue_holds_the_latest_keys_and_wraps():
    m = build_method("moco_v2", backbone="convnet", image_size=16, queue_size=12, proj_dim=8)
    for step in range(3):
        m(_batch(m, seed=step))
    assert m.queue_ptr == (3 * 8) % 12
    with torch.no_grad():
        k = m.keys(_batch(m, seed=2).views[1])
    latest = F.normalize(k, dim=1)
    assert torch.allclose(m.queue[4:12], latest, atol=1e-5)                 # step 2 wrote 4..11 (0..7, 8..3, 4..11)


@pytest.mark.parametrize("name", ["simclr", "byol", "vicreg", "tcr", "spectral_contrastive", "moco_v2"])
def test_every_method_trains_on_fixed_scale_patches(name):
    torch.manual_seed(0)
    m = build_method(name, backbone="convnet", image_size=16, views="patch:8")
    batch = _batch(m)
    assert [tuple(v.shape) for v in batch.views] == [(8, 3, 16, 16)] * 2
    loss = m(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in m.backbone.parameters())


# ---------------------------------------------------------------- fixed-scale patches


def test_patch_boxes_have_the_fixed_size_and_lie_inside_the_image():
    g = torch.Generator().manual_seed(0)
    boxes = patch_boxes(5000, 32, 24, 14, g, "cpu")
    assert ((boxes[:, 2] - boxes[:, 0]) == 14).all() and ((boxes[:, 3] - boxes[:, 1]) == 14).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 24).all() and (boxes[:, 3] <= 32).all()
    assert boxes[:, 0].max() == 24 - 14 and boxes[:, 1].max() == 32 - 14 and boxes[:, :2].min() == 0  # every position
    with pytest.raises(SelfSupError, match="smaller patch side"):
        patch_boxes(1, 8, 8, 9, g, "cpu")


def test_a_patch_view_is_the_resized_patch():
    """Without the photometric steps (and at the patch's own size), a fixed-scale view is
    exactly a side x side window of the image: for an image of distinct pixels, find it."""
    from dataclasses import replace

    spec = replace(view_recipe("patch:4", 4)[0], flip_prob=0, jitter_prob=0, gray_prob=0, blur_prob=0)
    x = torch.arange(3 * 16 * 16, dtype=torch.float32).view(1, 3, 16, 16) / (3 * 256)
    view = augment(x.repeat(50, 1, 1, 1), spec, torch.Generator().manual_seed(0))
    for v in view:
        hits = [(i, j) for i in range(13) for j in range(13) if torch.allclose(x[0, :, i:i + 4, j:j + 4], v, atol=1e-5)]
        assert len(hits) == 1
    assert view_recipe("patch:14x4", 32)[3].patch == 14 and len(view_recipe("patch:14x4", 32)) == 4
    with pytest.raises(SelfSupError, match="patch:14"):
        view_recipe("patch:big", 32)


# ---------------------------------------------------------------- aggregation


class _Data:
    def __init__(self, n=6, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8).numpy()
        self.labels = np.arange(n) % 2
        self.fingerprint = f"test-{n}-{size}-{seed}"

    def __len__(self):
        return len(self.images)


def _backbone():
    torch.manual_seed(0)
    return build_method("simclr", backbone="convnet", image_size=16).backbone.eval()


def test_aggregating_one_patch_equals_that_patch_embedding():
    data, bb = _Data(), _backbone()
    feats, labels = aggregated_features(bb, data, num_patches=1, patch_size=8, seed=3)
    g = torch.Generator().manual_seed(3)
    boxes, source = random_boxes(len(data), 16, 16, 1, 8, g, "cpu")
    x = torch.from_numpy(data.images).float() / 255
    direct = embed_boxes(bb, x, boxes, source, 16, bb.taps[-1])
    assert torch.allclose(feats, direct, atol=1e-5) and labels.tolist() == list(data.labels)


def test_global_aggregation_is_the_mean_and_does_not_depend_on_the_chunk():
    data, bb = _Data(), _backbone()
    big, _ = aggregated_features(bb, data, num_patches=5, patch_size=None, seed=1, chunk=4096)
    small, _ = aggregated_features(bb, data, num_patches=5, patch_size=None, seed=1, chunk=3)   # 3 patches at once
    assert torch.allclose(big, small, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    boxes, source = random_boxes(len(data), 16, 16, 5, None, g, "cpu")
    x = torch.from_numpy(data.images).float() / 255
    mean = embed_boxes(bb, x, boxes, source, 16, bb.taps[-1]).view(len(data), 5, -1).mean(1)
    assert torch.allclose(big, mean, atol=1e-5)


def test_local_aggregation_has_the_documented_size():
    data, bb = _Data(n=3, size=32), _backbone()
    d = bb.out_dim
    feats, _ = aggregated_features(bb, data, aggregate="local", window=16, stride=4)    # 5 x 5 grid -> 2 x 2
    assert feats.shape == (3, 4 * d)
    feats, _ = aggregated_features(bb, data, aggregate="local", window=8, stride=2)     # 13 x 13 -> 6 x 6
    assert feats.shape == (3, 36 * d)
    grid = torch.randn(2, 5, 5, 7)
    assert torch.allclose(local_pool(grid).view(2, 7, 2, 2)[:, :, 0, 0], grid[:, :3, :3].mean((1, 2)), atol=1e-6)
    with pytest.raises(SelfSupError, match="3 x 3"):
        aggregated_features(bb, data, aggregate="local", window=16, stride=16)


class _Resized(_Data):
    """``data``'s images brought to ``size`` px beforehand (float, 0..255): what ``aggregated_features``
    should see when it brings them to the evaluation size itself."""
    def __init__(self, data, size):
        x = torch.from_numpy(data.images).float() / 255          # square: resized whole, nothing to crop
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        self.images = (x * 255).numpy()
        self.labels, self.fingerprint = data.labels, data.fingerprint + f"-at{size}"


@pytest.mark.parametrize("size", [40, 64])
def test_patches_are_drawn_at_the_evaluation_size_whatever_the_set_size(size):
    """A 32 px training set and a 40 or 64 px test set evaluated at 32 px: the test set gets the patches
    and windows (relative to the image) and the feature dimension it would get at 32 px."""
    train, test, bb = _Data(n=3, size=32), _Data(n=3, size=size, seed=1), _backbone()
    at32 = _Resized(test, 32)
    for opts in (dict(num_patches=3, patch_size=14), dict(num_patches=3, patch_size=None),
                 dict(aggregate="local", window=16), dict(aggregate="local")):
        xtr, _ = aggregated_features(bb, train, input_size=32, image_size=32, seed=2, **opts)
        same, _ = aggregated_features(bb, train, input_size=32, seed=2, **opts)      # already 32 px: unchanged
        xte, _ = aggregated_features(bb, test, input_size=32, image_size=32, seed=2, **opts)
        ref, _ = aggregated_features(bb, at32, input_size=32, seed=2, **opts)
        assert xtr.shape[1] == xte.shape[1] == ref.shape[1], opts
        assert torch.equal(xtr, same) and torch.allclose(xte, ref, atol=1e-4), opts


def test_convergence_compares_patch_means_with_the_whole_image():
    data, bb = _Data(n=4), _backbone()
    # patches as large as the image are the whole image: cosine 1 for every N and for "all"
    whole = patch_convergence(bb, data, counts=(1, 3), patch_size=16, stride=4)
    assert whole["all_patches"] == 1 and all(whole[k] == pytest.approx(1, abs=1e-5) for k in ("1", "3", "all"))
    # small patches: below 1, and "all" is the mean over the 3 x 3 grid of windows
    result = patch_convergence(bb, data, counts=(1, 4), patch_size=8, stride=4)
    boxes, _ = grid_boxes(16, 16, 8, 4)
    assert result["all_patches"] == len(boxes) == 9
    x = torch.from_numpy(data.images).float() / 255
    source = torch.arange(4).repeat_interleave(9)
    with torch.no_grad():
        mean = embed_boxes(bb, x, boxes.repeat(4, 1), source, 16, bb.taps[-1], mean_per_image=True)
        full = embed_boxes(bb, x, torch.tensor([[0.0, 0, 16, 16]]).repeat(4, 1), torch.arange(4), 16, bb.taps[-1])
    assert result["all"] == pytest.approx(float(F.cosine_similarity(mean, full).mean()), abs=1e-5)
    assert all(-1 <= result[k] < 0.9999 for k in ("1", "4", "all"))


@pytest.mark.parametrize("method,extra", [("byol", {}), ("moco_v2", {"moco_v2.queue_size": 40})])
def test_interrupted_run_resumes_exactly_with_target_and_queue(tmp_path, method, extra):
    import os
    import signal

    from conftest import tiny_overrides
    from selfsup.config import resolve_config
    from selfsup.checkpoint import load_checkpoint
    from selfsup.engine.trainer import Trainer
    from selfsup.methods import get_method

    def cfg(out):
        return resolve_config(get_method(method), overrides=tiny_overrides(out, method=method, **{"optim.name": "sgd", **extra}))

    Trainer(cfg(tmp_path / "straight")).fit()

    def kill(trainer):
        if trainer.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    assert Trainer(cfg(tmp_path / "cut")).fit(on_epoch_end=kill) == "interrupted"
    resumed = cfg(tmp_path / "cut")
    resumed.resume = True
    assert Trainer(resumed).fit() == "done"
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert any(k.startswith(("target.", "key_encoder.")) for k in a)
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
    if method == "moco_v2":
        assert torch.equal(a["_extra_state"]["queue"], b["_extra_state"]["queue"])


@pytest.mark.parametrize("name", ["byol", "vicreg"])
def test_byol_and_vicreg_forward_each_view_separately_by_default(name):
    """Their official code calls the network once per view, so batch norm normalises each view
    with its own statistics; SimCLR's code passes the views together (joint_pass)."""
    from selfsup.data.loader import Batch
    from selfsup.losses import byol, vicreg

    torch.manual_seed(0)
    m = build_method(name, backbone="convnet", image_size=16, proj_hidden_dim=32, proj_dim=16,
                     **({"pred_hidden_dim": 32} if name == "byol" else {}))
    assert m.cfg.joint_pass is False and build_method("simclr", backbone="convnet").cfg.joint_pass is True
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16) * 2 + 1]
    loss = m(Batch(views, torch.zeros(8), torch.arange(8)))["loss"]
    z = [m.projector(m.backbone(v)) for v in views]                  # one call per view, by hand
    if name == "vicreg":
        ref = vicreg(z[0], z[1])
    else:
        p = [m.predictor(v) for v in z]
        with torch.no_grad():
            t = [m.target["projector"](m.target["backbone"](v)) for v in views]
        ref = byol(p[0], t[1]) + byol(p[1], t[0])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    m.cfg.joint_pass = True
    assert m(Batch(views, torch.zeros(8), torch.arange(8)))["loss"].item() != pytest.approx(ref.item(), rel=1e-3)


def test_vicreg_expander_fits_the_input_size():
    """The paper's 8192-8192-8192 expander above 64 px; 2048 wide on small images; explicit sizes win."""
    assert build_method("vicreg", backbone="convnet", image_size=96).projector[-1].out_features == 8192
    small = build_method("vicreg", backbone="convnet", image_size=32)
    assert small.projector[0].out_features == 2048 and small.projector[-1].out_features == 2048
    assert build_method("vicreg", backbone="convnet", image_size=32, proj_dim=64).projector[-1].out_features == 64
