"""Kernel-based supervised hashing (Liu, Wang, Ji, Jiang & Chang, CVPR 2012), following the authors' KSH_demo.m
and OptProjectionFast.m (ColumbiaDVMM/Supervised-Hashing-with-Kernels).

Features are an RBF kernel against ``anchors`` random training points, ``k(x, a) = exp(-||x - a||^2 / (2 sigma))``
with ``sigma`` the mean squared distance of the training points to the anchors, centred by the training mean.
Bit ``r`` is ``sign(k(x)^T a_r)``. The projections are learnt greedily, bit by bit, so that the code inner
products ``H H^T`` of the ``l`` labelled samples fit ``r S0`` (``S0_ij = +1`` for a shared label, ``-1``
otherwise): with ``R`` the residual left by the bits so far, bit ``r`` maximises ``y^T R y``. Each bit starts
from the spectral relaxation (the top generalised eigenvector of ``K^T R K a = lambda K^T K a``, scaled so that
``||K a||^2 = l``), then runs Nesterov-accelerated gradient descent with a backtracking step on the smoothed
cost ``-phi(K a)^T R phi(K a)``, ``phi(x) = 2 / (1 + exp(-x)) - 1``, and keeps whichever start or end gives
the larger ``y^T R y`` once binarised. The residual is held in low-rank form (:class:`LowRankSimilarity`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from deephash.methods.kernels import LowRankSimilarity, draw_anchors, squared_distances
from deephash.methods.shallow import BaseHash
from deephash.utils.checks import check_int

BACKTRACKS = 51  # step sizes tried per iteration, 2^0 .. 2^50 times the last one (the reference's j = 0:50)
STOP = 1e-2  # stop when the cost changes by at most this much per labelled sample (the reference's rule)


class KSH(BaseHash):
    """``n_anchors`` RBF anchors (300 in the paper), ``n_iter`` gradient steps per bit at most (500)."""

    name = "ksh"
    supervised = True
    state_keys = ("anchors", "sigma", "kernel_mean", "projection")

    def __init__(self, bits: int, seed: int = 0, n_anchors: int = 300, n_iter: int = 500) -> None:
        super().__init__(bits, seed)
        self.n_anchors = check_int(n_anchors, "ksh n_anchors", 1)
        self.n_iter = check_int(n_iter, "ksh n_iter", 0)
        self.history: list[
            dict[str, np.ndarray | float]
        ] = []  # per bit: costs of its gradient phase, residual

    def params(self) -> dict[str, int | float]:
        return {**super().params(), "n_anchors": self.n_anchors, "n_iter": self.n_iter}

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> KSH:
        assert y is not None
        anchors = draw_anchors(X, self.n_anchors, np.random.default_rng(self.seed))
        dist = squared_distances(X, anchors)
        sigma = float(dist.mean())
        K = np.exp(-dist / (2 * sigma))
        kernel_mean = K.mean(axis=0)
        K -= kernel_mean
        n, m = K.shape
        residual = LowRankSimilarity(y, scale=self.bits)
        gram = K.T @ K
        # the generalised eigenproblem needs K^T K positive definite: a ridge far below its scale
        gram_ridge = gram + 1e-10 * np.trace(gram) / m * np.eye(m)
        projection = np.zeros((m, self.bits))
        self.history = []
        for r in range(self.bits):
            _, vectors = scipy.linalg.eigh(residual.sandwich(K), gram_ridge, subset_by_index=[m - 1, m - 1])
            start = vectors[:, 0]
            start *= np.sqrt(n / float(start @ gram @ start))
            end, costs = optimise_projection(K, residual, start, self.n_iter)
            y_start, y_end = signs(K @ start), signs(K @ end)
            if residual.quadratic(y_end) > residual.quadratic(y_start):
                projection[:, r], code = end, y_end
            else:
                projection[:, r], code = start, y_start
            residual.subtract(code)
            self.history.append({"costs": costs, "residual": frobenius2(residual)})
        self._set_state(
            X.shape[1],
            {
                "anchors": anchors,
                "sigma": np.asarray(sigma),
                "kernel_mean": kernel_mean,
                "projection": projection,
            },
        )
        return self

    def kernel(self, X: np.ndarray) -> np.ndarray:
        """Centred RBF features ``(n, n_anchors)`` of ``X``."""
        X = self._query_features(X)
        return np.exp(-squared_distances(X, self.anchors) / (2 * float(self.sigma))) - self.kernel_mean

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self.kernel(X) @ self.projection > 0


def signs(values: np.ndarray) -> np.ndarray:
    """``+1`` where ``values > 0``, else ``-1`` (float64)."""
    return np.where(values > 0, 1.0, -1.0)


def smoothed_signs(values: np.ndarray) -> np.ndarray:
    """``phi(x) = 2 / (1 + exp(-x)) - 1 = tanh(x / 2)``, KSH's smooth surrogate of the sign."""
    return np.tanh(values / 2)


def frobenius2(S: LowRankSimilarity) -> float:
    """``||S||_F^2`` of a low-rank similarity, ``tr(W G W G)`` with ``G = B^T B``."""
    G = S.B.T @ S.B
    WG = S.w[:, None] * G
    return float(np.sum(WG * WG.T))


def optimise_projection(
    K: np.ndarray, S: LowRankSimilarity, start: np.ndarray, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``-phi(K a)^T S phi(K a)`` from ``a = start`` by Nesterov's accelerated gradient with a
    backtracking step (OptProjectionFast.m); returns the last accepted ``a`` and the costs, divided by the
    ``n`` samples, of the start and every accepted step."""
    n = K.shape[0]

    def cost(a: np.ndarray) -> tuple[float, np.ndarray]:
        y = smoothed_signs(K @ a)
        return -S.quadratic(y), y

    costs = [cost(start)[0]]
    previous, current = start, start
    delta_prev, delta = 0.0, 1.0
    step = 1.0
    for _ in range(n_iter):
        probe = current + (delta_prev - 1) / delta * (current - previous)
        value, y = cost(probe)
        gradient = -K.T @ (S.matvec(y) * (1 - y**2))
        for j in range(BACKTRACKS):
            b = 2.0**j * step
            candidate = probe - gradient / b
            moved = candidate - probe
            new_value, _ = cost(candidate)
            if new_value <= value + gradient @ moved + b * (moved @ moved) / 2:
                break
        else:
            break  # no step size satisfies the bound: stop where we are
        step = b
        previous, current = current, candidate
        costs.append(new_value)
        delta_prev, delta = delta, (1 + np.sqrt(1 + 4 * delta**2)) / 2
        if abs(costs[-1] - costs[-2]) / n <= STOP:
            break
    return current, np.asarray(costs) / n
