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
