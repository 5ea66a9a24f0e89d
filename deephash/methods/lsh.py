"""Locality-sensitive hashing by sign random projections (Charikar 2002; Andoni & Indyk 2006)."""

from __future__ import annotations

import numpy as np

from deephash.methods.shallow import LinearHash


class LSH(LinearHash):
    """Random Gaussian hyperplanes through the training mean.

    The paper describes LSH as projecting onto random hyperplanes with a threshold; centring on the
    training mean puts every threshold at the data's centre, so each bit splits the data roughly in half.
    """

    name = "lsh"

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> LSH:
        rng = np.random.default_rng(self.seed)
        projection = rng.standard_normal((X.shape[1], self.bits))
        return self._set_fitted(X.mean(axis=0, dtype=np.float64), projection)
