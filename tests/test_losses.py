import math

import pytest
import torch

from selfsup.losses import nt_xent


def nt_xent_slow(z1, z2, t):
    """SimCLR eq. 1 written out: one term per anchor, loops and scalars only."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        num = math.exp(float(z[a] @ z[p]) / t)
        den = sum(math.exp(float(z[a] @ z[k]) / t) for k in range(2 * n) if k != a)
        total += -math.log(num / den)
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_equation(t):
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 16), torch.randn(7, 16)
    assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_slow(z1, z2, t), abs=1e-5)


def test_nt_xent_properties():
    torch.manual_seed(1)
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    loss = nt_xent(z1, z2)
    # symmetric in the two views, invariant to a common permutation of the images and to scale
    assert nt_xent(z2, z1).item() == pytest.approx(loss.item(), abs=1e-6)
    perm = torch.randperm(16)
    assert nt_xent(z1[perm], z2[perm]).item() == pytest.approx(loss.item(), abs=1e-5)
    assert nt_xent(3 * z1, 0.5 * z2).item() == pytest.approx(loss.item(), abs=1e-5)
    # identical views of well separated images: near the minimum
    e = torch.eye(16)
    assert nt_xent(e, e, 0.1).item() < 0.01
    # gradients reach both inputs
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    nt_xent(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
