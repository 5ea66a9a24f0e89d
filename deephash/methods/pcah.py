"""PCA hashing: the signs of the top ``bits`` principal components (Wang et al. 2010)."""

from __future__ import annotations

import numpy as np

from deephash.methods.pca import principal_components
from deephash.methods.shallow import LinearHash


class PCAH(LinearHash):
    """Bit ``j`` is the sign of the mean-centred projection on the ``j``-th principal direction.

    Bits come in decreasing order of variance.
    """

    name = "pcah"

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> PCAH:
        self._check_pca_bits(X)
        mean, components, _ = principal_components(X, self.bits)
        return self._set_fitted(mean, components)
