"""Principal directions of training features, shared by PCAH, ITQ and SH."""

from __future__ import annotations

import numpy as np

_CHUNK = 8192


def principal_components(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` eigenvectors of the covariance of ``X: (n, d)``, largest eigenvalue first.

    Returns ``mean: (d,)``, ``components: (d, k)`` (orthonormal columns) and ``variances: (k,)``.
    Like the reference code (``eigs(cov(X), k)``) this eigendecomposes the ``d x d`` covariance,
    accumulated in float64 over row chunks so large feature sets are never copied whole. Each
    component's sign is fixed (largest-magnitude entry positive) so results are reproducible.
    """
    n, d = X.shape
    mean = X.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, _CHUNK):
        centred = X[start : start + _CHUNK].astype(np.float64) - mean
        cov += centred.T @ centred
    cov /= max(n - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(-eigvals, kind="stable")[:k]
    components = eigvecs[:, order]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(k)])
    components *= np.where(signs == 0, 1.0, signs)
    return mean, components, np.maximum(eigvals[order], 0.0)
