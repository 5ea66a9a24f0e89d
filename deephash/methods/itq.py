"""Iterative quantization (Gong & Lazebnik, CVPR 2011)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from deephash.methods.pca import principal_components
from deephash.methods.shallow import LinearHash
from deephash.utils.checks import check_int


class ITQ(LinearHash):
    """PCA to ``bits`` dimensions, then a rotation ``R`` that minimises the quantisation loss
    ``||B - V R||_F`` by alternating ``B = sign(V R)`` and orthogonal Procrustes for ``R``.
    """

    name = "itq"

    def __init__(self, bits: int, seed: int = 0, n_iter: int = 50) -> None:
        super().__init__(bits, seed)
        self.n_iter = check_int(n_iter, "itq n_iter", 0)

    def params(self) -> dict[str, int | float]:
        return {**super().params(), "n_iter": self.n_iter}

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> ITQ:
        self._check_pca_bits(X)
        mean, components, _ = principal_components(X, self.bits)
        V = (X - mean) @ components  # (n, bits) float64
        rotation = itq_rotation(V, self.n_iter, np.random.default_rng(self.seed))
        return self._set_fitted(mean, components @ rotation)


def itq_rotation(V: np.ndarray, n_iter: int, rng: np.random.Generator) -> np.ndarray:
    """Orthogonal ``R: (bits, bits)`` for PCA-projected data ``V: (n, bits)``, from a random rotation."""
    bits = V.shape[1]
    rotation, _, _ = np.linalg.svd(rng.standard_normal((bits, bits)))
    # The loop multiplies and decomposes bits x bits matrices: BLAS threads gain nothing there and
    # spin-wait badly when the cores are shared, so it runs single-threaded.
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(n_iter):
            B = np.where(V @ rotation >= 0, 1.0, -1.0)
            # Procrustes: maximise trace(B^T V R) with R = U_A U_B^T where B^T V = U_B S U_A^T.
            u_b, _, u_a_t = np.linalg.svd(B.T @ V)
            rotation = u_a_t.T @ u_b.T
    return rotation
