"""Supervised discrete hashing (Shen, Shen, Liu & Shen, CVPR 2015), following the authors' SDH.m and demo with
the L2 loss.

Features are RBF responses to ``n_anchors`` random training points plus a constant,
``phi(x) = [exp(-||x - a_j||^2 / (2 sigma^2)), 1]``; the hash function is ``sign(phi(x)^T P)``. From random
codes ``B`` the method alternates, ``n_iter`` times: the G-step, a ridge regression ``W`` of the one-hot labels
on the codes (``lam``); the F-step, a ridge regression ``P`` of the codes on ``phi`` (``ridge``); the B-step,
discrete cyclic coordinate descent on ``||Y - B W||^2 + nu ||B - phi(X) P||^2`` with ``B`` in ``{-1, 1}``, one
bit (column) at a time in closed form, ``B[:, k] = sign(Q[:, k] - B' W' w_k)``, ``Q = Y W^T + nu phi(X) P``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deephash.methods.kernels import draw_anchors, one_hot, squared_distances
from deephash.methods.shallow import BaseHash
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

TOL = 1e-5  # SDH.m's default tolerance on the change of P and on the fit of B
DCC_TOL = 1e-6  # a B-step stops when the codes change by less than this (relative)


class SDH(BaseHash):
    """Defaults from the authors' demo: 1,000 anchors, 5 iterations, ``lam = 1``, ``nu = 1e-5``, ``ridge = 0.01``,
    10 coordinate-descent sweeps per B-step. ``sigma`` None: the mean distance of a training point to its
    nearest anchor (the demo's rule for unnormalised data; its 0.4 is for unit-length features)."""

    name = "sdh"
    supervised = True
    state_keys = ("anchors", "sigma", "projection")

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        n_anchors: int = 1000,
        n_iter: int = 5,
        lam: float = 1.0,
        nu: float = 1e-5,
        ridge: float = 1e-2,
        dcc_iter: int = 10,
        kernel_width: float | None = None,
    ) -> None:
        super().__init__(bits, seed)
        self.n_anchors = check_int(n_anchors, "sdh n_anchors", 1)
        self.n_iter = check_int(n_iter, "sdh n_iter", 1)
        self.dcc_iter = check_int(dcc_iter, "sdh dcc_iter", 1)
        for key, value in (("lam", lam), ("nu", nu), ("ridge", ridge)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"sdh {key} must be a number >= 0, got {value!r}")
        if kernel_width is not None and (
            isinstance(kernel_width, bool)
            or not isinstance(kernel_width, (int, float))
            or not kernel_width > 0
        ):
            raise ConfigError(f"sdh kernel_width must be a positive number or null, got {kernel_width!r}")
        self.lam, self.nu, self.ridge = float(lam), float(nu), float(ridge)
        self.kernel_width = None if kernel_width is None else float(kernel_width)
        self.history: list[float] = []  # the objective after each iteration

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            **super().params(),
            "n_anchors": self.n_anchors,
            "n_iter": self.n_iter,
            "lam": self.lam,
            "nu": self.nu,
            "ridge": self.ridge,
            "dcc_iter": self.dcc_iter,
        }
        if self.kernel_width is not None:
            params["kernel_width"] = self.kernel_width
        return params

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> SDH:
        assert y is not None
        rng = np.random.default_rng(self.seed)
        anchors = draw_anchors(X, self.n_anchors, rng)
        dist = squared_distances(X, anchors)
        sigma = self.kernel_width or float(np.sqrt(dist.min(axis=1)).mean())
        phi = features(dist, sigma)
        _, Y = one_hot(y)
        B = np.where(rng.standard_normal((X.shape[0], self.bits)) > 0, 1.0, -1.0)
        W = ridge_regression(B, Y, self.lam)
        P = ridge_regression(phi, B, self.ridge)
        self.history = []
        for _ in range(self.n_iter):
            B = discrete_cyclic_descent(B, Y @ W.T + self.nu * (phi @ P), W, self.dcc_iter)
            W = ridge_regression(B, Y, self.lam)
            previous, P = P, ridge_regression(phi, B, self.ridge)
            fit = phi @ P
            self.history.append(
                float(((Y - B @ W) ** 2).sum() + self.lam * (W**2).sum() + self.nu * ((B - fit) ** 2).sum())
            )
            if np.linalg.norm(B - fit) < TOL * np.linalg.norm(B):
                break
            if np.linalg.norm(P - previous) < TOL * np.linalg.norm(previous):
                break
        self._set_state(X.shape[1], {"anchors": anchors, "sigma": np.asarray(sigma), "projection": P})
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        X = self._query_features(X)
        return features(squared_distances(X, self.anchors), float(self.sigma)) @ self.projection > 0


def features(dist: np.ndarray, sigma: float) -> np.ndarray:
    """``[exp(-dist / (2 sigma^2)), 1]``: ``(n, m + 1)`` from squared distances ``(n, m)``."""
    return np.concatenate([np.exp(-dist / (2 * sigma**2)), np.ones((dist.shape[0], 1))], axis=1)


def ridge_regression(A: np.ndarray, T: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_W ||T - A W||^2 + lam ||W||^2 = (A^T A + lam I)^-1 A^T T``."""
    return np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ T)


def discrete_cyclic_descent(B: np.ndarray, Q: np.ndarray, W: np.ndarray, sweeps: int) -> np.ndarray:
    """SDH's B-step: minimise ``||B W||^2 - 2 tr(B^T Q)`` over ``B`` in ``{-1, 1}^(n x bits)``, one column at a
    time in closed form, for at most ``sweeps`` sweeps or until the codes stop changing."""
    B = B.copy()
    gram = W @ W.T  # (bits, bits)
    for _ in range(sweeps):
        before = B.copy()
        for k in range(B.shape[1]):
            others = B @ gram[:, k] - B[:, k] * gram[k, k]  # B' W' w_k without bit k's own term
            B[:, k] = np.where(Q[:, k] - others > 0, 1.0, -1.0)
        if np.linalg.norm(B - before) < DCC_TOL * np.linalg.norm(before):
            break
    return B
