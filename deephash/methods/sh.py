"""Spectral hashing (Weiss, Torralba & Fergus, NIPS 2008), following the authors' trainSH/compressSH.

The data are rotated to their principal axes and assumed uniform in the bounding box of the training
set. The Laplacian eigenfunctions of a box are products of cosines; like the reference code this keeps
only single-axis modes ``cos(k pi (x_j - mn_j) / R_j)`` and picks the ``bits`` with the smallest
eigenvalues ``(k pi / R_j)^2``. Bit ``i`` is set where eigenfunction ``i`` is positive.
"""

from __future__ import annotations

import numpy as np

from deephash.methods.pca import principal_components
from deephash.methods.shallow import BaseHash

# MATLAB's eps, padding the bounding box exactly as trainSH does.
_EPS = np.finfo(np.float64).eps


class SH(BaseHash):
    """Spectral hashing with ``min(bits, d)`` principal axes; a wide axis may carry several bits."""

    name = "sh"
    state_keys = ("mean", "components", "mn", "mx", "modes")

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> SH:
        npca = min(self.bits, X.shape[1])
        mean, components, _ = principal_components(X, npca)
        # trainSH projects without centring; the offset cancels once mn is subtracted.
        Y = (X - mean) @ components
        mn = Y.min(axis=0) - _EPS
        mx = Y.max(axis=0) + _EPS
        modes = select_modes(mx - mn, self.bits)
        self._set_state(
            X.shape[1], {"mean": mean, "components": components, "mn": mn, "mx": mx, "modes": modes}
        )
        return self

    def project(self, X: np.ndarray) -> np.ndarray:
        """Eigenfunction values ``U: (n, bits)`` in [-1, 1]; the codes are ``U > 0``."""
        X = self._query_features(X)
        Y = (X - self.mean) @ self.components - self.mn
        omegas = self.modes * (np.pi / (self.mx - self.mn))  # (bits, npca)
        U = np.empty((X.shape[0], self.bits), dtype=np.float64)
        for i in range(self.bits):
            U[:, i] = np.prod(np.sin(Y * omegas[i] + np.pi / 2), axis=1)
        return U

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self.project(X) > 0


def select_modes(ranges: np.ndarray, bits: int) -> np.ndarray:
    """Mode numbers ``(bits, npca)`` of the ``bits`` smallest nontrivial single-axis eigenfunctions.

    ``ranges: (npca,)`` are the box widths ``R``. Axis ``j`` contributes modes ``1 .. maxMode_j - 1``
    with ``maxMode_j = ceil((bits + 1) R_j / max R)``, enough to hold the ``bits`` smallest overall;
    ties keep the reference's enumeration order (axis by axis), via a stable sort.
    """
    npca = ranges.shape[0]
    max_mode = np.ceil((bits + 1) * ranges / ranges.max()).astype(np.int64)
    rows = [np.zeros(npca, dtype=np.int64)]  # the constant mode, eigenvalue 0, dropped below
    for j in range(npca):
        for k in range(1, max_mode[j]):
            row = np.zeros(npca, dtype=np.int64)
            row[j] = k
            rows.append(row)
    modes = np.stack(rows)
    eigvals = ((modes * (np.pi / ranges)) ** 2).sum(axis=1)
    order = np.argsort(eigvals, kind="stable")
    return modes[order[1 : bits + 1]]
