"""What the kernel and label-supervised shallow methods share: anchor points, RBF features, one-hot labels and
the pairwise label similarity kept in low-rank form.

A similarity matrix over ``n`` labelled samples is ``n x n``: 200 MB at n = 5,000. Built from labels it has
rank at most ``classes + 1``, and the greedy methods only ever subtract rank-one terms from it, so it is kept
as ``S = B diag(w) B^T`` and applied to vectors in ``O(n rank)``.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 4096  # rows of squared distances computed at a time


def draw_anchors(X: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``min(m, n)`` distinct rows of ``X: (n, d)``, drawn at random, as float64 ``(m, d)``."""
    rows = rng.choice(X.shape[0], size=min(m, X.shape[0]), replace=False)
    return np.asarray(X[np.sort(rows)], dtype=np.float64)


def squared_distances(X: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``||x_i - a_j||^2`` as float64 ``(n, m)``, computed in row chunks, clipped at 0 against rounding."""
    a2 = (anchors**2).sum(axis=1)
    out = np.empty((X.shape[0], anchors.shape[0]), dtype=np.float64)
    for start in range(0, X.shape[0], _CHUNK):
        block = np.asarray(X[start : start + _CHUNK], dtype=np.float64)
        d = (block**2).sum(axis=1)[:, None] + a2[None, :] - 2.0 * block @ anchors.T
        out[start : start + len(block)] = np.maximum(d, 0.0)
    return out


def one_hot(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (c,), Y (n, c) float64)``: the distinct labels and each sample's one-hot row."""
    classes, inverse = np.unique(y, return_inverse=True)
    Y = np.zeros((len(y), len(classes)), dtype=np.float64)
    Y[np.arange(len(y)), inverse] = 1.0
    return classes, Y


class LowRankSimilarity:
    """``S = scale * S0 - sum_k y_k y_k^T`` with ``S0_ij = +1`` for samples of one class and ``-1`` otherwise.

    Stored as ``B diag(w) B^T`` (``S0 = 2 Y Y^T - 1 1^T`` for one-hot ``Y``); :meth:`subtract` appends a column.
    """

    def __init__(self, y: np.ndarray, scale: float = 1.0) -> None:
        _, Y = one_hot(y)
        n, c = Y.shape
        self.B = np.concatenate([Y, np.ones((n, 1))], axis=1)
        self.w = np.concatenate([np.full(c, 2.0 * scale), [-float(scale)]])

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``S v`` for ``v: (n,)`` or ``(n, k)``."""
        return (
            self.B @ (self.w[:, None] * (self.B.T @ v)) if v.ndim == 2 else self.B @ (self.w * (self.B.T @ v))
        )

    def quadratic(self, v: np.ndarray) -> float:
        """``v^T S v``."""
        p = self.B.T @ v
        return float(p @ (self.w * p))

    def sandwich(self, K: np.ndarray) -> np.ndarray:
        """``K^T S K`` for ``K: (n, m)``: ``(m, m)``."""
        P = self.B.T @ K
        return P.T @ (self.w[:, None] * P)

    def subtract(self, y: np.ndarray) -> None:
        """``S <- S - y y^T``."""
        self.B = np.concatenate([self.B, y[:, None].astype(np.float64)], axis=1)
        self.w = np.append(self.w, -1.0)

    def dense(self) -> np.ndarray:
        """``S`` as an ``(n, n)`` array (tests and small problems)."""
        return (self.B * self.w) @ self.B.T
