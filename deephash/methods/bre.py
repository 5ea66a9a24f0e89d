"""Binary reconstructive embedding (Kulis & Darrell, NIPS 2009), supervised: the paper's algorithm with the
settings of the BRE_learn.m wrapper (Lin & Cai's hashing collection) around Kulis's BRE.m.

Features are centred on the training mean and scaled to unit length. Hash function ``p`` is a kernel
expansion over ``n_points`` training points of its own, ``h_p(x) = [sum_q W_pq k(x_pq, x) > 0]``, with the
wrapper's linear kernel ``k(x, x') = x^T x'``. The weights minimise the reconstruction error over every pair of the ``n``
labelled samples, ``sum_ij (d_M(i, j) - d_R(i, j))^2``, with the supervised targets ``d_M = 0`` for a shared
label and ``1`` otherwise, and ``d_R`` the Hamming distance divided by ``bits``. Coordinate descent updates one
``W_pq`` at a time exactly: as ``W_pq`` moves, the objective only changes where some ``h_p(x_i)`` flips, at
``n`` known values, so every interval is scored in one pass over the flips sorted by where they happen and the
best one is taken. The residual ``E = d_M - d_R`` of labels and ``{-1, 1}`` codes ``Z`` is
``1/2 - Y Y^T + Z Z^T / (2 bits)`` (``Y`` one-hot), of rank ``1 + classes + bits``, so scoring a coordinate
costs ``O(n (classes + bits))`` rather than ``O(n^2)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deephash.methods.kernels import one_hot
from deephash.methods.shallow import BaseHash
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

STOP = 1e-6  # stop when a sweep lowers the objective by less than this fraction


class BRE(BaseHash):
    """``n_points`` points per hash function (BRE_learn.m's 20), ``n_iter`` sweeps over every weight at most,
    initial weights ``N(0, 0.001^2)`` (BRE_learn.m)."""

    name = "bre"
    supervised = True
    state_keys = ("mean", "points", "point_index", "weights")

    def __init__(self, bits: int, seed: int = 0, n_points: int = 20, n_iter: int = 10) -> None:
        super().__init__(bits, seed)
        self.n_points = check_int(n_points, "bre n_points", 1)
        self.n_iter = check_int(n_iter, "bre n_iter", 0)
        self.history: list[float] = []  # mean squared reconstruction error over the pairs, before each sweep

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_points": self.n_points, "n_iter": self.n_iter}

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> BRE:
        assert y is not None
        n = X.shape[0]
        if self.n_points > n:
            raise ConfigError(f"bre needs n_points <= training samples ({n}), got {self.n_points}")
        rng = np.random.default_rng(self.seed)
        mean = X.mean(axis=0, dtype=np.float64)
        Xn = unit_rows(X, mean)
        chosen = np.stack([rng.choice(n, self.n_points, replace=False) for _ in range(self.bits)])
        rows, point_index = np.unique(chosen, return_inverse=True)
        point_index = point_index.reshape(chosen.shape)
        points = Xn[rows]
        K = Xn @ points.T  # the linear kernel against every point: (n, points)
        weights = 0.001 * rng.standard_normal((self.bits, self.n_points))
        _, Y = one_hot(y)
        self.history, weights = descend(K, point_index, weights, Y, self.n_iter)
        self._set_state(
            X.shape[1],
            {
                "mean": mean,
                "points": points,
                "point_index": point_index,
                "weights": weights,
            },
        )
        return self

    def project(self, X: np.ndarray) -> np.ndarray:
        """``(n, bits)`` kernel expansions whose signs are the codes."""
        X = self._query_features(X)
        K = unit_rows(X, self.mean) @ self.points.T
        return np.einsum("npq,pq->np", K[:, self.point_index], self.weights)

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self.project(X) > 0


def unit_rows(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``X - mean`` with each row scaled to unit length (a zero row stays zero)."""
    centred = np.asarray(X, dtype=np.float64) - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norms > 0, norms, 1.0)


def objective(U: np.ndarray, M: np.ndarray) -> float:
    """``||E||_F^2`` for ``E = U diag(M) U^T``: ``tr(M G M G)``, ``G = U^T U``."""
    MG = M[:, None] * (U.T @ U)
    return float(np.sum(MG * MG.T))


def descend(
    K: np.ndarray, point_index: np.ndarray, weights: np.ndarray, Y: np.ndarray, n_iter: int
) -> tuple[list[float], np.ndarray]:
    """Coordinate descent on every ``weights[p, q]``; returns the objective (mean over the ``n (n - 1)``
    ordered pairs) before each sweep and after the last, and the weights."""
    n, c = Y.shape
    bits = weights.shape[0]
    weights = weights.copy()
    proj = np.einsum("npq,pq->np", K[:, point_index], weights)
    Z = np.where(proj > 0, 1.0, -1.0)
    # E = U diag(M) U^T with U = [1, Y, Z]: the residual d_M - d_R over every pair
    U = np.concatenate([np.ones((n, 1)), Y, Z], axis=1)
    M = np.concatenate([[0.5], np.full(c, -1.0), np.full(bits, 0.5 / bits)])
    pairs = n * (n - 1)
    history = [objective(U, M) / pairs]
    for _ in range(n_iter):
        for p in range(bits):
            for q in range(weights.shape[1]):
                column = K[:, point_index[p, q]]
                new = best_weight(U, M, 1 + c + p, proj[:, p], column, weights[p, q], bits)
                if new is None:
                    continue
                proj[:, p] += (new - weights[p, q]) * column
                weights[p, q] = new
                U[:, 1 + c + p] = np.where(proj[:, p] > 0, 1.0, -1.0)
        history.append(objective(U, M) / pairs)
        if history[-2] - history[-1] <= STOP * history[-2]:
            break
    return history, weights


def best_weight(
    U: np.ndarray, M: np.ndarray, col: int, proj: np.ndarray, column: np.ndarray, current: float, bits: int
) -> float | None:
    """The value of one weight that lowers ``||E||^2`` most, or None when no value lowers it.

    ``proj``: hash ``p``'s expansions ``(n,)``; ``column``: the kernel values of the weight's point ``(n,)``.
    Point ``i`` flips at ``w_i = current - proj_i / column_i``. Flipping ``i`` alone changes the objective by
    ``-4/b z_i (E z)_i + 2 (n - 1) / b^2``; two flipped points ``i, j`` leave their own pair unchanged, which
    corrects the sum by ``8/b E_ij z_i z_j - 4/b^2``, accumulated along the sorted flips.
    """
    n = U.shape[0]
    z = U[:, col]
    UM = U * M
    ez = UM @ (U.T @ z)  # (E z)_i; E_ii = 0, so the sum is over j != i
    alone = -4.0 / bits * z * ez + 2.0 * (n - 1) / bits**2
    moving = np.abs(column) > 1e-12
    at = np.full(n, np.nan)
    at[moving] = current - proj[moving] / column[moving]
    best, value = 0.0, None
    for direction in (1.0, -1.0):
        ahead = np.flatnonzero(moving & (direction * (at - current) > 0))
        if ahead.size == 0:
            continue
        order = ahead[np.argsort(direction * at[ahead], kind="stable")]
        zu = U[order] * z[order, None]
        before = np.cumsum(zu, axis=0) - zu  # sum of z_l u_l over the flips before each one
        pair = 8.0 / bits * z[order] * np.einsum("ij,ij->i", UM[order], before)
        pair -= 4.0 / bits**2 * np.arange(order.size)
        change = np.cumsum(alone[order] + pair)
        m = int(np.argmin(change))
        if change[m] < best - 1e-12:
            best = float(change[m])
            flip_at = at[order[m]]
            after = at[order[m + 1]] if m + 1 < order.size else flip_at + direction * max(abs(flip_at), 1.0)
            value = (flip_at + after) / 2
    return value
