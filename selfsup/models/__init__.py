"""Backbones by name with named taps, and heads."""
from selfsup.models.backbones import BACKBONES, Backbone, build_backbone
from selfsup.models.heads import projection_mlp

__all__ = ["BACKBONES", "Backbone", "build_backbone", "projection_mlp"]
