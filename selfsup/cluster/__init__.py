"""Clustering of frozen features, beside ``selfsup.eval``: k-means on a backbone's features
(``selfsup.kmeans``), the clustering-quality benchmark (NMI, ARI, Hungarian accuracy) and, for
knowledge transfer by clustering (CC+), pseudo-labels. It knows backbones, never methods."""
