"""Locality-sensitive hashing by sign random projections (Charikar 2002; Andoni & Indyk 2006)."""

from __future__ import annotations

import numpy as np

from deephash.methods.shallow import LinearHash
from deephash.utils.errors import ConfigError


class LSH(LinearHash):
    """Random Gaussian hyperplanes, through the training mean (``centre=True``) or through the origin.

    The paper describes LSH as projecting onto random hyperplanes with a threshold; centring on the
    training mean puts every threshold at the data's centre, so each bit splits the data roughly in half.
    ``centre=False`` is Charikar's sign random projection of the raw features, the variant of the LSH rows
    of Xia et al. (AAAI 2014, Table 2), which the paper's figures 4 and 6 reprint: on non-negative features
    such as pixels many of its bits are nearly constant, so its mAP is lower.
    """

    name = "lsh"

    def __init__(self, bits: int, seed: int = 0, centre: bool = True) -> None:
        super().__init__(bits, seed)
        if not isinstance(centre, (bool, np.bool_)):
            raise ConfigError(f"lsh centre must be true or false, got {centre!r}")
        self.centre = bool(centre)

    def params(self) -> dict[str, int | float]:
        return {**super().params(), "centre": self.centre}

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> LSH:
        rng = np.random.default_rng(self.seed)
        projection = rng.standard_normal((X.shape[1], self.bits))
        mean = X.mean(axis=0, dtype=np.float64) if self.centre else np.zeros(X.shape[1])
        return self._set_fitted(mean, projection)
