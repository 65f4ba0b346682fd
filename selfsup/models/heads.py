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
) -> nn.Sequential:
    """Linear-(BN)-ReLU blocks then a final Linear: the SimCLR / BYOL / VICReg projector.

    ``num_layers`` counts Linear layers (2 for SimCLR v1, 3 for VICReg).
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    return nn.Sequential(*layers)
