"""Two gloo processes on CPU give the single-process result on the concatenated batch."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.losses import nt_xent


def _worker(rank, world, init_file, z1, z2, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = len(z1) // world
        a1 = z1[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        a2 = z2[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        loss = nt_xent(a1, a2, temperature=0.2)
        loss.backward()
        out[rank] = (loss.detach(), a1.grad / world, a2.grad / world)   # DDP averages over processes
    finally:
        dist.destroy_process_group()


def run_two_processes(fn, *args):
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        out = manager.dict()
        mp.spawn(fn, args=(2, os.path.join(tmp, "init"), *args, out), nprocs=2, join=True)
        return dict(out)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_nt_xent_gathers_negatives_across_processes():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    out = run_two_processes(_worker, z1, z2)
    r1, r2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = nt_xent(r1, r2, temperature=0.2)
    ref.backward()
    assert (out[0][0] + out[1][0]).item() / 2 == pytest.approx(ref.item(), abs=1e-5)
    g1 = torch.cat([out[0][1], out[1][1]])
    g2 = torch.cat([out[0][2], out[1][2]])
    assert torch.allclose(g1, r1.grad, atol=1e-6) and torch.allclose(g2, r2.grad, atol=1e-6)


def torchrun_pretrain(tmp_path, method, batch_size, *extra):
    """``selfsup pretrain METHOD`` on TINY under torchrun: 2 gloo processes on CPU."""
    import socket
    import subprocess
    import sys

    from conftest import TINY

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "selfsup", "pretrain", method, "--data", TINY, "--backbone", "convnet",
           "--epochs", "1", "--batch-size", str(batch_size), "--out", str(tmp_path / "run"), "progress=false",
           "device=cpu", "log_every=1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_pretrain_under_torchrun_two_gloo_processes(tmp_path):
    """The same pretrain command under torchrun: DDP on CPU with gloo, one checkpoint."""
    proc = torchrun_pretrain(tmp_path, "simclr", 16)
    # the workers' own messages come first in stderr, the launcher's summary last
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 4        # 64 images / global batch 16, logged once per step by rank 0 only


def test_one_image_per_process_is_refused_under_torchrun(tmp_path):
    """--batch-size 2 over 2 processes: one image each. SimCLR's loss gathers its negatives, but its projector's
    batch norm (per process on CPU) normalises the two views of that one image against each other: it trained,
    with the positives pushed apart (loss 5 to 6, against 0.5 to 1.7 for one process of 2 images). Refused in one
    line per process before anything is written."""
    proc = torchrun_pretrain(tmp_path, "simclr", 2)
    assert proc.returncode != 0
    # each process says it (the launcher may stop one first; the two lines can interleave)
    errors = [e.splitlines()[0] for e in proc.stderr.split("selfsup: error: ")[1:]]
    assert errors and all(e.startswith("batch_size=2 over 2 processes gives each process 1 image, too few for simclr")
                          and e.endswith("set --batch-size 4 or more (at least 2 x 2 processes)") for e in errors), \
        proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def _jigclu_worker(rank, world, init_file, images, out):
    from selfsup.data.loader import Batch
    from selfsup.methods import build_method

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        method = build_method("jigclu", backbone="convnet", image_size=32).eval()   # BN on running stats
        n = len(images) // world
        views = method.view_maker()(images[rank * n:(rank + 1) * n], torch.Generator().manual_seed(rank))
        torch.manual_seed(7)                           # the permutation comes from rank 0
        loss = method(Batch(views, torch.zeros(n), torch.arange(n)))["loss"]
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in method.parameters()])
        dist.all_reduce(grads)
        out[rank] = (loss.detach(), grads / world, views[0])
    finally:
        dist.destroy_process_group()


def test_jigclu_montage_over_the_global_batch():
    """Two processes, each with half the images: the same loss and (DDP-averaged)
    gradients as one process with all the images and the same permutation."""
    from selfsup.data.loader import Batch
    from selfsup.methods import build_method

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = run_two_processes(_jigclu_worker, images)
    torch.manual_seed(0)
    method = build_method("jigclu", backbone="convnet", image_size=32).eval()
    mm, n = 4, 3
    # the single-process batch: the two halves' patches, position-major over all 6 images
    halves = [out[r][2].view(mm, n, 3, 16, 16) for r in range(2)]
    patches = torch.cat(halves, dim=1).reshape(mm * 2 * n, 3, 16, 16)
    torch.manual_seed(7)
    loss = method(Batch([patches], torch.zeros(6), torch.arange(6)))["loss"]
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in method.parameters()])
    assert out[0][0].item() == pytest.approx(loss.item(), abs=1e-5) and out[1][0].item() == pytest.approx(loss.item(), abs=1e-5)
    assert torch.allclose(out[0][1], grads, atol=1e-5) and torch.allclose(out[1][1], grads, atol=1e-5)


def test_transfer_under_torchrun_labels_once_under_the_lock(tmp_path):
    """Every process made and wrote the pseudo-labels (the same temporary file: a FileNotFoundError traceback in one
    run of five) outside the lock rank 0 held; now rank 0 labels under the student's lock, the others wait."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "selfsup", "transfer", "--teacher", "random:convnet", "--student",
           "convnet", "--cluster-data", "synthetic:64?classes=4&size=16", "--clusters", "4", "--epochs", "1",
           "--batch-size", "16", "--out", str(tmp_path / "tr"), "--device", "cpu", "progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "tr" / "student" / "last.pt").exists()
    assert not list((tmp_path / "tr").glob("*.tmp*"))
