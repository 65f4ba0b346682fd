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


def jigclu_clustering(z: torch.Tensor, image_ids: torch.Tensor, temperature: float = 0.3) -> torch.Tensor:
    """JigClu's clustering loss (Chen et al. 2021, eq. 1-2).

    ``z``: embeddings of all n*m*m patches (normalised here), ``image_ids``: the
    source image of each patch. For patches i, j of the same image,

        l_ij = -log( exp(cos(z_i, z_j)/t) / sum_{k != i} exp(cos(z_i, z_k)/t) )      (eq. 1)
        L    = 1/(n m m) sum_i 1/(m m - 1) sum_{j in C_i} l_ij                         (eq. 2)

    with C_i the other patches of i's image (the denominator keeps the positives,
    excludes only i itself). The official code's extra factor t / 0.07 is not part
    of this function (see the JigClu method's ``official_loss_factor``).

    >>> z, ids = torch.randn(16, 128), torch.arange(4).repeat(4)
    >>> loss = jigclu_clustering(z, ids, temperature=0.3)
    """
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_den = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
    pos = (image_ids[:, None] == image_ids[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    pos_logits = (logits * pos).sum(1) / n_pos.clamp(min=1)
    return (log_den - pos_logits)[n_pos > 0].mean()
