"""SwAV, DeepCluster-v2 and SeLa-v2: Sinkhorn, the swapped loss, k-means, queue, freezing, banks."""
import json
import math
import os
import signal
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from conftest import tiny_overrides
from selfsup.config import resolve_config
from selfsup.data.loader import Batch
from selfsup.data.views import multicrop_views, parse_crops
from selfsup.checkpoint import load_checkpoint
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.losses import sinkhorn, swav
from selfsup.methods import build_method, get_method
from selfsup.kmeans import spherical_kmeans
from test_distributed import run_two_processes


def random_scores(b, k, seed=0, d=16):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.T


def sinkhorn_eq5(scores, epsilon, iterations):
    """Direct transcription of SwAV eq. 5: Q = Diag(u) exp(C^T Z / eps) Diag(v), with u, v
    scaling the rows (prototypes) to 1/K and the columns (samples) to 1/B in turn; codes = B Q^T."""
    p = torch.exp(scores.double().T / epsilon)                    # K x B
    k, b = p.shape
    u, v = torch.ones(k, dtype=torch.float64), torch.ones(b, dtype=torch.float64)
    for _ in range(iterations):
        for i in range(k):
            u[i] = (1 / k) / sum(p[i, j] * v[j] for j in range(b))
        for j in range(b):
            v[j] = (1 / b) / sum(u[i] * p[i, j] for i in range(k))
    q = u[:, None] * p * v[None, :]
    return (b * q).T


@pytest.mark.parametrize("log_space", [False, True])
def test_sinkhorn_equals_eq5(log_space):
    s = random_scores(12, 5)
    codes = sinkhorn(s, epsilon=0.05, iterations=3, log_space=log_space)
    assert torch.allclose(codes.double(), sinkhorn_eq5(s, 0.05, 3), atol=1e-5)


@pytest.mark.parametrize("log_space", [False, True])
def test_sinkhorn_marginals(log_space):
    b, k = 64, 16
    codes = sinkhorn(random_scores(b, k, seed=1), epsilon=0.1, iterations=500, log_space=log_space)
    assert codes.shape == (b, k)
    assert torch.allclose(codes.sum(1), torch.ones(b), atol=1e-5)          # each sample: one unit
    assert torch.allclose(codes.sum(0), torch.full((k,), b / k), atol=1e-5)  # each prototype: B/K


def test_sinkhorn_log_and_linear_agree_and_log_survives_small_epsilon():
    s = random_scores(32, 10, seed=2)
    assert torch.allclose(sinkhorn(s, 0.05, 3, log_space=False), sinkhorn(s, 0.05, 3, log_space=True), atol=1e-5)
    assert not torch.isfinite(sinkhorn(s * 40, 0.05, 3, log_space=False)).all()    # exp overflows
    tiny = sinkhorn(s * 40, 0.05, 3, log_space=True)
    assert torch.isfinite(tiny).all() and torch.allclose(tiny.sum(1), torch.ones(32), atol=1e-5)
    assert torch.isfinite(sinkhorn(s.half(), 0.01, 3)).all()     # half precision -> log space by default


def test_sinkhorn_is_permutation_equivariant():
    s = random_scores(20, 6, seed=3)
    perm = torch.randperm(20)
    assert torch.allclose(sinkhorn(s)[perm], sinkhorn(s[perm]), atol=1e-6)


def swav_slow(scores, codes, t):
    """Eq. 6 by loops: for each assignment crop i and every other crop v, the cross-entropy
    -sum_k q_ik log p_vk with p = softmax(z_v^T C / t) (eq. 2), averaged as the official code."""
    total = 0.0
    for i, q in codes.items():
        sub = 0.0
        others = [v for v in range(len(scores)) if v != i]
        for v in others:
            ce = 0.0
            for n in range(q.shape[0]):
                x = scores[v][n].double() / t
                log_p = x - math.log(sum(math.exp(float(a)) for a in x))
                ce += -float((q[n].double() * log_p).sum())
            sub += ce / q.shape[0]
        total += sub / len(others)
    return total / len(codes)


def test_swav_loss_equals_eq6():
    scores = [random_scores(6, 7, seed=s) for s in range(4)]
    codes = {0: sinkhorn(scores[0]), 1: sinkhorn(scores[1])}
    assert swav(scores, codes, 0.1).item() == pytest.approx(swav_slow(scores, codes, 0.1), abs=1e-5)
    one = {1: codes[1]}
    assert swav(scores, one, 0.2).item() == pytest.approx(swav_slow(scores, one, 0.2), abs=1e-5)


def _sinkhorn_worker(rank, world, init_file, scores, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = len(scores) // world
        local = scores[rank * b:(rank + 1) * b]
        x = F.normalize(scores[:, :4] + 0.1, dim=1)[rank * b:(rank + 1) * b]
        centroids, labels = spherical_kmeans(x, 3, 5, torch.Generator().manual_seed(0))
        out[rank] = (sinkhorn(local, 0.05, 3, log_space=False), sinkhorn(local, 0.05, 3, log_space=True),
                     centroids, labels)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_give_the_codes_of_the_concatenated_batch():
    scores = random_scores(16, 5, seed=4)
    out = run_two_processes(_sinkhorn_worker, scores)
    ref = sinkhorn(scores, 0.05, 3)
    assert torch.allclose(torch.cat([out[0][0], out[1][0]]), ref, atol=1e-6)
    assert torch.allclose(torch.cat([out[0][1], out[1][1]]), ref, atol=1e-5)
    # k-means: all-reduced M-step, rank 0's initial centroids (the first process holds rows 0..7)
    x = F.normalize(scores[:, :4] + 0.1, dim=1)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(8, generator=g)[:3]
    c = x[pick].clone()
    for _ in range(5):
        a = (x @ c.T).argmax(1)
        for j in range(3):
            if (a == j).any():
                c[j] = F.normalize(x[a == j].sum(0) / (a == j).sum(), dim=0)
    assert torch.allclose(out[0][2], c, atol=1e-6) and torch.allclose(out[1][2], c, atol=1e-6)
    assert torch.equal(torch.cat([out[0][3], out[1][3]]), (x @ c.T).argmax(1))


def test_spherical_kmeans_finds_separated_clusters_and_keeps_empty_centroids():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    x = F.normalize(centres.repeat_interleave(25, 0) + 0.05 * torch.randn(100, 8, generator=g), dim=1)
    c, labels = spherical_kmeans(x, 4, 10, torch.Generator().manual_seed(1))
    assert torch.allclose(c.norm(dim=1), torch.ones(4), atol=1e-6)
    truth = torch.arange(4).repeat_interleave(25)
    for k in range(4):   # each found cluster is one true cluster
        assert len(set(truth[labels == k].tolist())) <= 1
    # an empty cluster keeps its centroid: two identical points, k = 3
    same = F.normalize(torch.ones(3, 8), dim=1)
    c, labels = spherical_kmeans(same, 3, 3, torch.Generator().manual_seed(0))
    assert torch.isfinite(c).all()


def test_multicrop_recipe_sizes_and_scales():
    specs = multicrop_views(224)
    assert [s.size for s in specs] == [224, 224] + [96] * 6
    assert specs[0].scale == (0.14, 1.0) and specs[-1].scale == (0.05, 0.14)
    assert [s.size for s in multicrop_views(32, "2x32+4x16")] == [32, 32, 16, 16, 16, 16]
    assert parse_crops("2x160+4x96") == [(2, 160), (4, 96)]
    with pytest.raises(SelfSupError, match="COUNTxSIZE"):
        parse_crops("2by160")


def _batch(method, b=8, size=16, seed=0, start=0):
    images = (torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
    views = method.view_maker()(images, torch.Generator().manual_seed(seed))
    return Batch(views, torch.zeros(b, dtype=torch.long), torch.arange(start, start + b))


class _Loader:
    """The part of BatchLoader the methods use: sizes and one epoch of batches."""

    def __init__(self, method, steps=2, b=8):
        self.method, self.steps, self.batch_size, self.global_batch = method, steps, b, b
        self.dataset = range(steps * b)

    def __len__(self):
        return self.steps

    def epoch(self, epoch, start=0):
        for s in range(start, self.steps):
            yield _batch(self.method, self.batch_size, seed=100 * epoch + s, start=s * self.batch_size)


def test_prototypes_frozen_for_exactly_n_iterations():
    m = build_method("swav", backbone="convnet", image_size=16, nmb_prototypes=10, crops="2x16+2x8",
                     freeze_prototypes_niters=3)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    history = []
    for step in range(5):
        loss = m(_batch(m, seed=step))["loss"]
        history.append(m.prototypes.weight.detach().clone())     # normalised, before this step's update
        opt.zero_grad()
        loss.backward()
        m.on_after_backward(step)
        opt.step()
    after = F.normalize(m.prototypes.weight.detach(), dim=1)
    assert all(torch.allclose(history[0], h, atol=1e-6) for h in history[1:4])   # steps 0, 1, 2: untouched (up to re-normalisation)
    assert not torch.allclose(history[3], history[4]) and not torch.allclose(history[4], after)


def test_queue_starts_at_its_epoch_and_is_used_only_when_full(monkeypatch):
    import selfsup.methods.swav as swav_module

    seen = []
    real = swav_module.sinkhorn
    monkeypatch.setattr(swav_module, "sinkhorn", lambda s, *a: seen.append(len(s)) or real(s, *a))
    m = build_method("swav", backbone="convnet", image_size=16, nmb_prototypes=10, crops="2x16+2x8",
                     queue_length=20, epoch_queue_starts=1)   # trimmed to 16 = 2 batches of 8
    loader = _Loader(m, steps=3)
    m.on_epoch_start(0, loader)
    assert m.queue is None
    m(_batch(m))
    m.on_epoch_start(1, loader)
    assert m.queue.shape == (2, 16, 128) and not m.queue.any()
    for step in range(3):
        m(_batch(m, seed=step))
    # two assignment crops per step: batch only until the queue (2 batches) is full, then queue + batch
    assert seen == [8, 8] + [8, 8] * 2 + [24, 24]
    with torch.no_grad():
        last = m.embed(_batch(m, seed=2).views)
    assert torch.allclose(m.queue[0, :8], last[:8], atol=1e-5)         # newest embeddings in front
    assert torch.allclose(m.queue[1, :8], last[8:16], atol=1e-5)


@pytest.mark.parametrize("steps", [2, 3])
def test_the_queue_note_says_exactly_when_the_queue_is_never_used(monkeypatch, steps):
    """Queue 20 -> 16 (2 batches of 8) from epoch 1 of 2: it fills in 2 steps and is used from the 3rd, so an
    epoch of 2 steps never uses it (the note says so) and one of 3 does (no note)."""
    import selfsup.methods.swav as swav_module

    seen = []
    real = swav_module.sinkhorn
    monkeypatch.setattr(swav_module, "sinkhorn", lambda s, *a: seen.append(len(s)) or real(s, *a))
    m = build_method("swav", backbone="convnet", image_size=16, nmb_prototypes=10, crops="2x16+2x8",
                     queue_length=20, epoch_queue_starts=1)
    loader = _Loader(m, steps=steps)
    for epoch in range(2):
        m.on_epoch_start(epoch, loader)
        for batch in loader.epoch(epoch):
            m(batch)
    used = any(n > 8 for n in seen)
    notes = m.run_notes(2, steps, 8)
    assert used == (steps == 3) and bool(notes) == (not used)
    if notes:
        assert notes == ["swav.queue_length=20 is never used: the queue (16 once trimmed to a multiple of the global "
                         "batch) starts at epoch swav.epoch_queue_starts=1 and needs 3 steps of 8 images (2 to fill, "
                         "then one that uses it), but the run has 2 steps from then (1 epoch of 2); lower "
                         "swav.epoch_queue_starts or swav.queue_length, or train longer"]
    assert m.run_notes(1, steps, 8) == []         # never started: said when the config is resolved
    assert build_method("swav", backbone="convnet", image_size=16, queue_length=0).run_notes(2, 1, 8) == []


@pytest.mark.parametrize("queue,said", [(64, True), (48, False)])
def test_the_trainer_says_a_swav_queue_that_cannot_fill_before_training(tmp_path, capsys, queue, said):
    """64 images, batch 16: 4 steps an epoch. From epoch 1 of 2, a queue of 64 (4 batches) fills on the last step
    and is never used: one line on stderr, before training, and the run goes on; a queue of 48 is used."""
    cfg = _cfg("swav", tmp_path / "run", **{"swav.nmb_prototypes": 8, "swav.crops": "2x16+2x8",
                                           "swav.queue_length": queue, "swav.epoch_queue_starts": 1})
    capsys.readouterr()
    Trainer(cfg)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "is never used" in line]
    if said:
        assert lines == [f"swav.queue_length={queue} is never used: the queue starts at epoch "
                         "swav.epoch_queue_starts=1 and needs 5 steps of 16 images (4 to fill, then one that uses it), "
                         "but the run has 4 steps from then (1 epoch of 4); lower swav.epoch_queue_starts or "
                         "swav.queue_length, or train longer"], err
    else:
        assert lines == [], err


def test_deepcluster_bank_holds_the_previous_epoch_and_prototypes_are_centroids():
    m = build_method("deepcluster_v2", backbone="convnet", image_size=16, nmb_prototypes=[4, 4, 4], crops="2x16+2x8")
    loader = _Loader(m, steps=2)
    m.on_epoch_start(0, loader)
    assert sorted(m.bank_index.tolist()) == list(range(16))
    assert (m.assignments >= 0).all() and m.assignments.shape == (3, 16)
    for h, head in enumerate(m.heads):     # prototypes = centroids of bank h % 2, targets = nearest centroid
        assert not head.weight.requires_grad
        assert torch.equal((m.bank[h % 2] @ head.weight.T).argmax(1), m.assignments[h, m.bank_index])
    zs = []
    for batch in loader.epoch(1):
        loss = m(batch)["loss"]
        loss.backward()
        with torch.no_grad():
            zs.append(m.embed(batch.views))
    # the bank now holds this epoch's embeddings of the assignment crops, slot = step * b + i
    b = 8
    fresh = torch.stack([torch.cat([z[:b] for z in zs]), torch.cat([z[b:2 * b] for z in zs])])
    assert torch.allclose(m.bank, fresh, atol=1e-5)
    summary = m.on_epoch_end(1)
    assert 1 <= summary["head0_prototypes_used"] <= 4


def test_sela_assignments_are_balanced_hard_labels_and_prototypes_train():
    m = build_method("sela_v2", backbone="convnet", image_size=16, nmb_prototypes=[4, 4, 4], crops="2x16+2x8",
                     freeze_prototypes_niters=0)
    loader = _Loader(m, steps=4)
    m.on_epoch_start(0, loader)
    counts = torch.bincount(m.assignments[0], minlength=4)
    assert counts.sum() == 32 and (counts > 0).all() and counts.max() <= 16   # equipartition, rounded
    assert all(h.weight.requires_grad for h in m.heads)
    before = m.heads[0].weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    loss = m(next(loader.epoch(0)))["loss"]
    loss.backward()
    opt.step()
    assert not torch.allclose(before, m.heads[0].weight)


def test_collapse_warning(recwarn):
    from selfsup.methods.prototypes import PrototypeUsage

    usage = PrototypeUsage(100, "")
    usage.update(labels=torch.zeros(500, dtype=torch.long))
    out = usage.summary()
    assert out["prototypes_used"] == 1 and out["assignment_entropy"] == 0
    assert any("collapsed" in str(w.message) and "epsilon" in str(w.message) for w in recwarn)


@pytest.mark.parametrize("method", ["swav", "deepcluster_v2", "sela_v2"])
@pytest.mark.parametrize("k,n", [(2, 2), (4, 2), (4, 3), (3000, 16), (100, 500)])
def test_every_assignment_in_one_of_several_prototypes_is_never_silent(method, k, n):
    """All n >= 2 samples in one of K >= 2 prototypes: entropy 0, below half of ln min(K, n), always warned, with
    the method's own remedies (DeepCluster-v2 has no epsilon, queue or prototypes to freeze)."""
    options = {"nmb_prototypes": k} if method == "swav" else {"nmb_prototypes": [k, k]}
    m = build_method(method, backbone="convnet", image_size=16, crops="2x16+2x8", **options)
    usage = m.usage if method == "swav" else m.usage[1]
    usage.update(labels=torch.zeros(n, dtype=torch.long))
    with pytest.warns(UserWarning, match=f"assignments collapsed: 1 of {k} prototypes used, entropy 0.00") as got:
        out = usage.summary()
    assert out[f"{'head1_' if method != 'swav' else ''}prototypes_used"] == 1
    message = str(got[0].message)
    assert ("epsilon" in message) == (method != "deepcluster_v2")
    assert ("fewer prototypes" in message) == (method != "swav")


def test_one_prototype_is_refused_and_warned_if_built_around_the_checks():
    from selfsup.methods.prototypes import PrototypeUsage

    for method, k in [("swav", 1), ("deepcluster_v2", [1, 1, 1]), ("sela_v2", [1])]:
        with pytest.raises(SelfSupError, match=rf"{method}.nmb_prototypes=.* is not valid: it must be .*2.*one "
                                               "prototype takes every sample: loss 0, nothing learnt"):
            build_method(method, backbone="convnet", image_size=16, nmb_prototypes=k)
    usage = PrototypeUsage(1, "")
    usage.update(labels=torch.zeros(8, dtype=torch.long))
    with pytest.warns(UserWarning, match="one prototype takes every sample, so the loss is 0 and nothing is learnt"):
        usage.summary()


def _cfg(method, out, **extra):
    return resolve_config(get_method(method), overrides=tiny_overrides(out, method=method, **extra))


@pytest.mark.parametrize("method,extra", [
    ("swav", {"swav.nmb_prototypes": 8, "swav.crops": "2x16+2x8", "swav.queue_length": 32,
              "swav.epoch_queue_starts": 0, "swav.freeze_prototypes_niters": 2}),
    ("deepcluster_v2", {"deepcluster_v2.nmb_prototypes": "[8,8,8]", "deepcluster_v2.crops": "2x16+2x8"}),
    ("sela_v2", {"sela_v2.nmb_prototypes": "[8,8,8]", "sela_v2.crops": "2x16+2x8"}),
])
def test_killed_mid_epoch_resumes_exactly_with_queue_and_bank(tmp_path, method, extra):
    extra = {"optim.name": "sgd", **extra}
    Trainer(_cfg(method, tmp_path / "straight", **extra)).fit()

    def kill(trainer):
        if trainer.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    assert Trainer(_cfg(method, tmp_path / "cut", **extra)).fit(on_epoch_end=kill) == "interrupted"
    cfg = _cfg(method, tmp_path / "cut", **extra)
    cfg.resume = True
    assert Trainer(cfg).fit() == "done"
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
    for k, v in a["_extra_state"].items():      # queue / memory bank / assignments
        assert (torch.equal(v, b["_extra_state"][k]) if isinstance(v, torch.Tensor) else v == b["_extra_state"][k]), k
    records = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    assert [r["epoch"] for r in records if r.get("epoch_end")] == [0, 1]
    assert any("prototypes_used" in k for r in records if r.get("epoch_end") for k in r)


def test_simclr_with_multicrop_averages_the_pairs_with_the_global_crops():
    from selfsup.losses import nt_xent
    from selfsup.methods.base import forward_views

    torch.manual_seed(0)
    m = build_method("simclr", backbone="convnet", image_size=16, views="multicrop:2x16+2x8", temperature=0.2)
    batch = _batch(m)
    assert [v.shape[-1] for v in batch.views] == [16, 16, 8, 8]
    loss = m(batch)["loss"]
    z = m.projector(forward_views(m.backbone, batch.views)).chunk(4)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    ref = sum(nt_xent(z[a], z[b], 0.2) for a, b in pairs) / 5
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("name", ["swav", "sela_v2"])
def test_prototypes_frozen_for_one_epoch_of_this_run_by_default(name):
    """SwAV's 313 (batch 4096) and 5005 (batch 256) iterations are one ImageNet epoch each:
    the default is one epoch of the run, whatever its length; niters still wins when set."""
    cfg = get_method(name).Config()
    assert cfg.freeze_prototypes_epochs == 1.0 and cfg.freeze_prototypes_niters is None
    from selfsup.methods.swav import frozen_steps

    assert frozen_steps(cfg, 195) == 195 and frozen_steps(cfg, 313) == 313
    cfg.freeze_prototypes_niters = 5005
    assert frozen_steps(cfg, 195) == 5005


@pytest.mark.parametrize("method", ["swav", "deepcluster_v2", "sela_v2"])
def test_prototype_scores_stay_float32_under_bf16_autocast(method, monkeypatch):
    """Under bf16 autocast the backbone runs in bf16, but z and the scores z C^T that the temperature and
    Sinkhorn's epsilon divide are float32, and equal to the float32 product of the same z and prototypes."""
    import selfsup.methods.prototypes as prototypes_module

    seen = []
    real = prototypes_module.prototype_scores

    def spy(head, z):
        out = real(head, z)
        seen.append((z.detach().clone(), head.weight.detach().clone(), out))
        return out

    modules = {"swav": ["swav"], "deepcluster_v2": ["deepcluster_v2"], "sela_v2": ["sela_v2", "deepcluster_v2"]}
    for name in modules[method]:
        monkeypatch.setattr(sys.modules[f"selfsup.methods.{name}"], "prototype_scores", spy)
    k = {"nmb_prototypes": 10} if method == "swav" else {"nmb_prototypes": [4, 4]}
    m = build_method(method, backbone="convnet", image_size=16, crops="2x16", **k)
    batch = _batch(m)                                     # the views are made outside autocast, as the loader does
    if method != "swav":
        m.on_epoch_start(0, _Loader(m, steps=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear = torch.nn.Linear(4, 3, bias=False)
        assert linear(torch.randn(2, 4)).dtype == torch.bfloat16          # what a plain head would give
        m(batch)
    assert seen
    for z, weight, scores in seen:
        assert z.dtype == scores.dtype == torch.float32
        assert torch.allclose(scores, z @ weight.float().T, atol=1e-6)
