"""CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, TPAMI 2013, section 5): ITQ on the canonical correlation
projection of the features against the class labels, following Gong's cca.m / recall demo.

The centred features ``X`` and the one-hot labels ``Y`` give ``Cxx``, ``Cxy``, ``Cyy`` (each regularised by
``reg * I`` as in cca.m); the ``bits`` directions ``w`` of largest canonical correlation ``r`` solve
``Cxy Cyy^-1 Cyx w = r^2 Cxx w`` (unit length, as cca.m's ``eig`` returns them), and each is scaled by its
``r``. ITQ's rotation (the project's
:func:`~deephash.methods.itq.itq_rotation`) then turns them into codes. With ``c`` classes only ``c - 1``
correlations are non-zero: further directions carry almost no weight, and their bits are the ITQ rotation's
mixtures of the informative ones.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from deephash.methods.itq import itq_rotation
from deephash.methods.kernels import one_hot
from deephash.methods.shallow import LinearHash
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError


class CCAITQ(LinearHash):
    """Codes ``sign((x - mean) W R)``: ``W`` the correlation-scaled CCA directions, ``R`` the ITQ rotation."""

    name = "cca_itq"
    supervised = True

    def __init__(self, bits: int, seed: int = 0, n_iter: int = 50, reg: float = 1e-4) -> None:
        super().__init__(bits, seed)
        self.n_iter = check_int(n_iter, "cca_itq n_iter", 0)
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise ConfigError(f"cca_itq reg must be a positive number, got {reg!r}")
        self.reg = float(reg)

    def params(self) -> dict[str, int | float]:
        return {**super().params(), "n_iter": self.n_iter, "reg": self.reg}

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> CCAITQ:
        assert y is not None
        if self.bits > X.shape[1]:
            raise ConfigError(f"cca_itq needs bits <= feature dimension ({X.shape[1]}), got {self.bits}")
        directions = cca_directions(X, y, self.bits, self.reg)
        mean = X.mean(axis=0, dtype=np.float64)
        V = (X - mean) @ directions
        rotation = itq_rotation(V, self.n_iter, np.random.default_rng(self.seed))
        return self._set_fitted(mean, directions @ rotation)


def cca_directions(X: np.ndarray, y: np.ndarray, k: int, reg: float) -> np.ndarray:
    """The ``k`` CCA directions ``(d, k)`` of ``X: (n, d)`` against one-hot ``y``, largest correlation first,
    each scaled by its canonical correlation (cca.m's ``Wx * diag(r)``)."""
    _, Y = one_hot(y)
    n, d = X.shape
    Xc = X - X.mean(axis=0, dtype=np.float64)
    Yc = Y - Y.mean(axis=0)
    Cxx = Xc.T @ Xc / (n - 1) + reg * np.eye(d)
    Cxy = Xc.T @ Yc / (n - 1)
    Cyy = Yc.T @ Yc / (n - 1) + reg * np.eye(Y.shape[1])
    M = Cxy @ np.linalg.solve(Cyy, Cxy.T)
    values, vectors = scipy.linalg.eigh((M + M.T) / 2, Cxx, subset_by_index=[d - k, d - 1])
    order = np.argsort(-values, kind="stable")
    correlations = np.sqrt(np.clip(values[order], 0.0, None))
    # unit Euclidean length, as MATLAB's eig returns them (scipy normalises w^T Cxx w = 1 instead)
    directions = vectors[:, order] / np.linalg.norm(vectors[:, order], axis=0)
    # a fixed sign per direction (largest entry positive), so that results are reproducible
    signs = np.sign(directions[np.abs(directions).argmax(axis=0), np.arange(k)])
    return directions * np.where(signs == 0, 1.0, signs) * correlations
