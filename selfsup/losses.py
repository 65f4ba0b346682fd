"""Loss functions of the papers, as pure functions of tensors.

Each function cites the equation it implements. Functions that, in the original
work, use statistics of the whole (multi-GPU) batch gather across processes with
gradients, so that under DDP they equal the single-process loss on the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed as dist


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1), averaged over all 2B anchors.

    ``z1[i]`` and ``z2[i]`` are projections of two views of image i (need not be
    normalised). For anchor a, the positive is the other view of the same image and
    the 2B - 2 views of the other images are the negatives:

        l(a, p) = -log( exp(sim(a, p)/t) / sum_{k != a} exp(sim(a, k)/t) )

    Under torch.distributed the candidates are the views of the global batch
    (gathered with gradients); each process averages over its own anchors.

    >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = nt_xent(z1, z2, temperature=0.1)
    """
    b = z1.shape[0]
    z_local = F.normalize(torch.cat([z1, z2]), dim=1)                       # 2b x d, [view1; view2]
    z1_all = dist.gather_with_grad(F.normalize(z1, dim=1))
    z2_all = dist.gather_with_grad(F.normalize(z2, dim=1))
    z_all = torch.cat([z1_all, z2_all])                                      # 2B x d, [view1; view2]
    big_b = z1_all.shape[0]
    logits = z_local @ z_all.T / temperature                                 # 2b x 2B
    offset = dist.rank() * b
    local = torch.arange(b, device=z1.device) + offset                       # this rank's images
    self_idx = torch.cat([local, local + big_b])                             # anchor's own column
    pos_idx = torch.cat([local + big_b, local])                              # the other view
    self_mask = F.one_hot(self_idx, 2 * big_b).bool()
    return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), pos_idx)
