"""Heads put on top of a backbone during pretraining (dropped for evaluation)."""
from __future__ import annotations

from torch import nn


def projection_mlp(
    in_dim: int,
    hidden_dim: int = 2048,
    out_dim: int = 128,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_bias: bool = True,
    last_bn: bool = False,
) -> nn.Sequential:
    """Linear-(BN)-ReLU blocks then a final Linear: the SimCLR / BYOL / VICReg projector.

    ``num_layers`` counts Linear layers (2 for SimCLR v1, 3 for VICReg). ``last_bn``: the final Linear
    (without bias) is followed by a BatchNorm with a scale and no shift, as in the official SimCLR code's
    ``ProjectionHead`` (``use_bias=False, use_bn=True``: ``BatchNormRelu(relu=False, center=False)``).
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias and not last_bn))
    if last_bn:
        bn = nn.BatchNorm1d(out_dim)
        bn.bias.requires_grad_(False)           # center=False: the shift stays 0
        layers.append(bn)
    return nn.Sequential(*layers)
