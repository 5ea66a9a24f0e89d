"""Minimal loss hashing (Norouzi & Fleet, ICML 2011), following the authors' learnMLH.m with the hinge loss.

Features are centred on the training mean, scaled to unit length and given a constant 1 (the offsets); bit
``k`` is ``sign(w_k^T x)``. For a pair at Hamming distance ``m`` the hinge loss is
``max(m - rho + 1, 0) / (bits - rho + 1)`` when the two share a label and ``lam * max(rho - m + 1, 0) / (rho + 1)``
otherwise (learnMLH.m's scaling). Its upper bound, convex-concave in ``W``, is minimised by stochastic gradient
descent with momentum: for each pair, loss-adjusted inference finds the codes ``(g, g')`` maximising
``loss(||g - g'||) + g^T W x + g'^T W x'`` exactly (per bit the best agreeing and disagreeing assignment,
sorted by how much disagreeing costs, for every number of disagreeing bits), and the step moves ``W`` by
``(sign(W x) - g) x^T + (sign(W x') - g') x'^T``. Mini-batches hold ``positive_fraction`` pairs of one label at
least (learnMLH.m fills them up to that fraction), and an iteration is ``pairs_per_iter`` pairs; the learning
rate shrinks linearly to zero over the iterations, weight decay acts on the weights but not the offsets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deephash.methods.shallow import BaseHash
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

MONITOR_PAIRS = 4000  # fixed pairs whose mean loss is recorded after every iteration


class MLH(BaseHash):
    """Defaults from learnMLH.m and RUN.m: ``eta = 0.1``, momentum 0.9, mini-batches of 100 pairs, iterations of
    10^5 pairs, ``rho = 2 ceil(bits / 16)`` (None), ``lam = 1``."""

    name = "mlh"
    supervised = True
    state_keys = ("mean", "weights")

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        rho: int | None = None,
        lam: float = 1.0,
        positive_fraction: float = 0.5,
        eta: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        batch_size: int = 100,
        pairs_per_iter: int = 100_000,
        n_iter: int = 50,
    ) -> None:
        super().__init__(bits, seed)
        self.rho = 2 * math.ceil(self.bits / 16) if rho is None else check_int(rho, "mlh rho", 1)
        if self.rho > self.bits:
            raise ConfigError(f"mlh rho must be at most bits ({self.bits}), got {self.rho}")
        for key, value, top in (
            ("lam", lam, math.inf),
            ("positive_fraction", positive_fraction, 1.0),
            ("eta", eta, math.inf),
            ("momentum", momentum, 1.0),
            ("weight_decay", weight_decay, math.inf),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
                raise ConfigError(f"mlh {key} must be a number in [0, {top:g}], got {value!r}")
        self.lam, self.positive_fraction, self.eta = float(lam), float(positive_fraction), float(eta)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.batch_size = check_int(batch_size, "mlh batch_size", 1)
        self.pairs_per_iter = check_int(pairs_per_iter, "mlh pairs_per_iter", 1)
        self.n_iter = check_int(n_iter, "mlh n_iter", 0)
        # the mean hinge loss on fixed pairs, before training and after each iteration
        self.history: list[float] = []

    def params(self) -> dict[str, Any]:
        keys = ("rho", "lam", "positive_fraction", "eta", "momentum", "weight_decay", "batch_size")
        return {
            **super().params(),
            **{k: getattr(self, k) for k in keys},
            "pairs_per_iter": self.pairs_per_iter,
            "n_iter": self.n_iter,
        }

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> MLH:
        assert y is not None
        rng = np.random.default_rng(self.seed)
        mean = X.mean(axis=0, dtype=np.float64)
        Xa = augmented(X, mean)
        n, d1 = Xa.shape
        W = np.concatenate([0.1 * rng.standard_normal((self.bits, d1 - 1)), np.zeros((self.bits, 1))], axis=1)
        pos, neg = loss_tables(self.bits, self.rho, self.lam)
        sampler = PairSampler(y, rng)
        monitor = sampler.draw(MONITOR_PAIRS, self.positive_fraction)
        self.history = [mean_loss(W, Xa, y, monitor, pos, neg)]
        step = np.zeros_like(W)
        batches = max(1, self.pairs_per_iter // self.batch_size)
        decay = np.ones_like(W)
        decay[:, -1] = 0.0  # no weight decay on the offsets
        for t in range(self.n_iter):
            eta = self.eta * (self.n_iter - t) / self.n_iter  # learnMLH.m's shrink_eta, on this loop's length
            for _ in range(batches):
                i, j = sampler.draw(self.batch_size, self.positive_fraction)
                gradient = bound_gradient(W, Xa[i], Xa[j], y[i] == y[j], pos, neg)
                step = self.momentum * step + eta * (gradient / len(i) - self.weight_decay * decay * W)
                W = W + step
            self.history.append(mean_loss(W, Xa, y, monitor, pos, neg))
        self._set_state(X.shape[1], {"mean": mean, "weights": W})
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        X = self._query_features(X)
        return augmented(X, self.mean) @ self.weights.T > 0


def augmented(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``[(x - mean) / ||x - mean||, 1]`` per row: ``(n, d + 1)`` float64."""
    centred = np.asarray(X, dtype=np.float64) - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.concatenate([centred / np.where(norms > 0, norms, 1.0), np.ones((len(centred), 1))], axis=1)


def loss_tables(bits: int, rho: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The hinge loss at Hamming distance ``m = 0 .. bits`` for a pair of one label and of two: ``(bits + 1,)`` each."""
    m = np.arange(bits + 1)
    return (
        np.maximum(m - rho + 1, 0) / (bits - rho + 1),
        lam * np.maximum(rho - m + 1, 0) / (rho + 1),
    )


class PairSampler:
    """Random ordered pairs of training samples, a given fraction of them of one label at least."""

    def __init__(self, y: np.ndarray, rng: np.random.Generator) -> None:
        self.y, self.rng = y, rng
        self.classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        self.members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        self.inverse = inverse
        self.natural = float((counts**2).sum()) / len(y) ** 2  # the fraction of same-label pairs

    def draw(self, size: int, positive_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        forced = min(round(size * max(positive_fraction - self.natural, 0.0)), size)
        i = self.rng.integers(0, len(self.y), size)
        j = self.rng.integers(0, len(self.y), size)
        for row in range(size - forced, size):  # partners of the same label for the forced positives
            group = self.members[self.inverse[i[row]]]
            j[row] = group[self.rng.integers(0, len(group))]
        return i, j


def hamming_hinge(W: np.ndarray, x1: np.ndarray, x2: np.ndarray, same: np.ndarray, pos, neg) -> np.ndarray:
    """The loss of each pair under the current codes ``sign(W x)``: ``(pairs,)``."""
    m = ((x1 @ W.T > 0) != (x2 @ W.T > 0)).sum(axis=1)
    return np.where(same, pos[m], neg[m])


def mean_loss(W, Xa, y, pairs, pos, neg) -> float:
    i, j = pairs
    return float(hamming_hinge(W, Xa[i], Xa[j], y[i] == y[j], pos, neg).mean())


def bound_gradient(
    W: np.ndarray, x1: np.ndarray, x2: np.ndarray, same: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> np.ndarray:
    """``sum over pairs of (h - g) x^T + (h' - g') x'^T``: ``(bits, d + 1)``, with ``h = sign(W x)`` and ``(g, g')``
    the loss-adjusted codes. Adding it to ``W`` lowers the upper bound."""
    s1, s2 = x1 @ W.T, x2 @ W.T  # (pairs, bits)
    h1, h2 = np.sign(s1), np.sign(s2)
    # per bit: the best score with the two bits equal (both +1 or both -1) and different
    equal_sign = np.where(s1 + s2 >= 0, 1.0, -1.0)
    differ_sign = np.where(s1 - s2 >= 0, 1.0, -1.0)  # g = +1, g' = -1 when s1 >= s2
    gain = np.abs(s1 - s2) - np.abs(s1 + s2)  # what making the bit differ adds to the score
    order = np.argsort(-gain, axis=1, kind="stable")
    ranked = np.take_along_axis(gain, order, axis=1)
    score = np.concatenate([np.zeros((len(s1), 1)), np.cumsum(ranked, axis=1)], axis=1)
    score += np.where(same[:, None], pos[None, :], neg[None, :])
    flips = score.argmax(axis=1)  # number of differing bits of the loss-adjusted codes
    differ = np.zeros_like(s1, dtype=bool)
    np.put_along_axis(differ, order, np.arange(s1.shape[1])[None, :] < flips[:, None], axis=1)
    g1 = np.where(differ, differ_sign, equal_sign)
    g2 = np.where(differ, -differ_sign, equal_sign)
    return (h1 - g1).T @ x1 + (h2 - g2).T @ x2
