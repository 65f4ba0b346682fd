"""Evaluation of frozen backbones: features from any tap, kNN, linear probe."""
from selfsup.eval.features import extract_features, pool_features
from selfsup.eval.knn import knn_predict, knn_scores, topk_accuracy
from selfsup.eval.linear import linear_probe

__all__ = ["extract_features", "pool_features", "knn_predict", "knn_scores", "topk_accuracy", "linear_probe"]
