"""Loss functions of the papers, as pure functions of tensors.

Each function cites the equation it implements. Functions that, in the original
work, use statistics of the whole (multi-GPU) batch gather across processes with
gradients, so that under DDP they equal the single-process loss on the global batch.
"""
from __future__ import annotations

import math

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


def _logsumexp_across(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp over ``dim`` of the tensor concatenated along ``dim`` over every process."""
    m = x.amax(dim=dim, keepdim=True)
    if dist.world_size() > 1:
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = dist.all_reduce_sum(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return torch.log(s) + m


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
             log_space: bool | None = None) -> torch.Tensor:
    """Soft codes by the Sinkhorn-Knopp algorithm (SwAV, Caron et al. 2020, eq. 3-5).

    Solves max_Q Tr(Q^T C^T Z) + epsilon H(Q) over the transportation polytope of
    eq. 4 (each of the K prototypes receives B/K of the mass, each of the B samples
    1), whose solution is eq. 5: Q* = Diag(u) exp(C^T Z / epsilon) Diag(v), with u, v
    found by alternately normalising rows and columns ``iterations`` times.

    ``scores`` is B_local x K (z^T c, detached). Under torch.distributed the B
    columns are the samples of every process: prototype-wise sums are all-reduced,
    sample-wise sums stay local, so each process gets the rows of its own samples
    of the global solution. Returns B_local x K codes whose rows each sum to 1,
    ending on the sample normalisation as the official code does.

    ``log_space`` (default: when epsilon < 0.03 or the scores are half precision)
    runs the same iterations on log Q with logsumexp, which cannot overflow.
    """
    if log_space is None:
        log_space = epsilon < 0.03 or scores.dtype in (torch.float16, torch.bfloat16)
    s = scores.detach().float().T / epsilon                    # K x b
    k, b = s.shape
    big_b = b * dist.world_size()
    if log_space:
        log_q = s
        for _ in range(iterations):
            log_q = log_q - _logsumexp_across(log_q, dim=1) - math.log(k)          # prototypes: 1/K each
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(big_b)  # samples: 1/B each
        return torch.exp(log_q + math.log(big_b)).T
    q = torch.exp(s)
    q /= dist.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= big_b
    return (q * big_b).T


def swav(scores: list[torch.Tensor], codes: dict[int, torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction loss (Caron et al. 2020, eq. 1-2 and 6).

    ``scores[v]``: B x K prototype scores z_v^T C of crop v; ``codes[i]``: the
    codes q_i of assignment crop i (from ``sinkhorn``). Every other crop predicts
    them: l(z_v, q_i) = -sum_k q_ik log softmax(z_v^T C / t)_k (eq. 2), averaged
    over the batch, then over the V - 1 other crops, then over the assignment
    crops, as the official code does.

    >>> s = [torch.randn(8, 30) for _ in range(4)]
    >>> loss = swav(s, {0: sinkhorn(s[0]), 1: sinkhorn(s[1])}, temperature=0.1)
    """
    total = 0.0
    for i, q in codes.items():
        sub = 0.0
        for v, s in enumerate(scores):
            if v != i:
                sub = sub - (q * F.log_softmax(s.float() / temperature, dim=1)).sum(dim=1).mean()
        total = total + sub / (len(scores) - 1)
    return total / len(codes)


# ---------------------------------------------------------------- the joint-embedding family (BagSSL §3, METHODS.md 7.3)

def byol(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): the mean over the batch of

        2 - 2 cos(p_i, z_i),

    with ``p`` the online prediction and ``z`` the target projection, treated as a
    constant (no gradient reaches it). The method symmetrises over the two views.

    >>> p, z = torch.randn(8, 256), torch.randn(8, 256)
    >>> loss = byol(p, z)
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
           cov_weight: float = 1.0) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, eq. 1-6) as its official code computes it:

        s(Z, Z')   = mean_i ||z_i - z'_i||^2 / d                     (invariance, eq. 5: MSE)
        v(Z)       = 1/d sum_j max(0, 1 - sqrt(Var(z^j) + 1e-4))     (variance, eq. 1)
        c(Z)       = 1/d sum_{i != j} C(Z)_ij^2,  C = Z_c^T Z_c / (B - 1)   (covariance, eq. 3-4)
        loss       = lambda s + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))  (eq. 6)

    The invariance term is local; variance and covariance use the global batch
    (gathered with gradients), as the official code does.

    >>> z1, z2 = torch.randn(16, 64), torch.randn(16, 64)
    >>> loss = vicreg(z1, z2)
    """
    invariance = F.mse_loss(z1, z2)
    d = z1.shape[1]

    def variance_covariance(z):
        z = dist.gather_with_grad(z)
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        cov = z.T @ z / (z.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diagonal(cov))
        return F.relu(1 - std).mean(), off_diagonal.pow(2).sum() / d

    v1, c1 = variance_covariance(z1)
    v2, c2 = variance_covariance(z2)
    return sim_weight * invariance + var_weight * (v1 + v2) / 2 + cov_weight * (c1 + c2)


def coding_rate(z: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """Coding rate of the L2-normalised rows of ``z`` (B x d), as NMCE's TotalCodingRate:

        R(Z) = 1/2 logdet( I_d + d / (B eps) Z^T Z ),

    ``eps`` used as-is (it plays the role of eps^2 in MCR^2). Over the global batch
    (gathered with gradients), computed in float32.

    >>> r = coding_rate(torch.randn(32, 16), eps=0.2)
    """
    z = dist.gather_with_grad(F.normalize(z.float(), dim=1))
    b, d = z.shape
    eye = torch.eye(d, device=z.device, dtype=z.dtype)
    return 0.5 * torch.logdet(eye + d / (b * eps) * z.T @ z)


def tcr(z1: torch.Tensor, z2: torch.Tensor, eps: float = 0.2, lam: float = 30.0) -> torch.Tensor:
    """Total-coding-rate loss of BagSSL (METHODS.md 7.3, after NMCE):

        L = -1/2 [R(Z1) + R(Z2)] + lam * ( -mean_i cos(z1_i, z2_i) ),

    expanding the coding rate of each view's batch while pulling the two views of
    an image together; ``lam`` = 30 on CIFAR, 1920 on ImageNet-100.

    >>> loss = tcr(torch.randn(32, 16), torch.randn(32, 16))
    """
    similarity = F.cosine_similarity(z1, z2, dim=1).mean()
    return -0.5 * (coding_rate(z1, eps) + coding_rate(z2, eps)) - lam * similarity


def spectral_contrastive(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Spectral contrastive loss (HaoChen et al. 2021; BagSSL Prop. 3.1 with lambda = 1), mini-batch form:

        L = -1/B sum_i z1_i . z2_i  +  1/(B (B - 1)) sum_{i != j} (z1_i . z2_j)^2,

    on the projections as given (not normalised). Under torch.distributed the
    negatives z2_j come from the global batch (gathered with gradients) and each
    process averages over its own anchors i.

    >>> loss = spectral_contrastive(torch.randn(8, 32), torch.randn(8, 32))
    """
    b = z1.shape[0]
    z2_all = dist.gather_with_grad(z2)
    big_b = z2_all.shape[0]
    positive = (z1 * z2).sum(dim=1).mean()
    products = z1 @ z2_all.T                                               # b x B
    own = torch.arange(b, device=z1.device) + dist.rank() * b
    products = products.masked_fill(F.one_hot(own, big_b).bool(), 0.0)
    return -positive + products.pow(2).sum() / (b * (big_b - 1))


def moco(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1): for each query q_i, the positive is its
    key k_i (from the momentum encoder, no gradient) and the negatives are the K
    queued keys; rows are L2-normalised here.

        L = -mean_i log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_n exp(q_i.queue_n / t)) )

    >>> loss = moco(torch.randn(8, 128), torch.randn(8, 128), torch.randn(64, 128))
    """
    q, k, queue = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1), F.normalize(queue.detach(), dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def colorization(logits: torch.Tensor, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Colorization's class-rebalanced multinomial cross-entropy (Zhang et al. 2016, eq. 2).

    ``logits`` are the network's B x Q x H x W scores over the Q ab bins, ``z`` the soft
    targets (B x Q x H x W, each pixel's row sums to 1: ``selfsup.data.color.soft_encode``)
    and ``weights`` the per-pixel weights v (B x H x W: class rebalancing of eq. 3-4,
    0 for grayscale images). Averaged over the B * H * W pixels:

        L = -1/(B H W) sum_{b,h,w} v_{b,h,w} sum_q Z_{b,q,h,w} log softmax(logits)_{b,q,h,w}

    Zhang's Caffe code applies v as a gradient multiplier after the softmax loss
    (``ClassRebalanceMultLayer``); that gives the same gradient as this weighted loss.
    ``weights`` are constants (no gradient flows into them). Computed in float32.

    >>> logits = torch.randn(2, 313, 4, 4)
    >>> z = torch.softmax(torch.randn(2, 313, 4, 4), dim=1)
    >>> loss = colorization(logits, z, torch.ones(2, 4, 4))
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    per_pixel = -(z.float() * log_p).sum(dim=1)                       # B x H x W
    return (weights.detach().float() * per_pixel).mean()
