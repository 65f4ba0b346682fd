"""Clustering of frozen features, beside ``selfsup.eval``: k-means on a backbone's features
(``selfsup.kmeans``), the clustering-quality benchmark (NMI, ARI, Hungarian accuracy) and HOG teachers for
knowledge transfer by clustering (CC+). It knows backbones, never methods, and never imports the engine:
``selfsup.transfer`` composes it with the engine (pseudo-labels, then a student trained on them)."""
