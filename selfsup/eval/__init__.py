"""Evaluation of frozen backbones: features from any tap (global, ~9k or Goyal et al.'s pooling),
kNN, linear probes by preset (fast, moco, swav)."""
from selfsup.eval.features import extract_features, goyal_pool, l2_normalize_goyal, pool_features
from selfsup.eval.knn import knn_predict, knn_scores, topk_accuracy
from selfsup.eval.linear import PRESETS, augmented_linear_probe, linear_probe

__all__ = ["extract_features", "goyal_pool", "l2_normalize_goyal", "pool_features", "knn_predict", "knn_scores",
           "topk_accuracy", "PRESETS", "augmented_linear_probe", "linear_probe"]
