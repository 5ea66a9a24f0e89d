"""The contract of a shallow hashing method, and its save/load format.

A shallow method learns (or draws) its parameters from training features ``X: (n, d)`` and, if it is
supervised, their class labels ``y: (n,)`` in ``fit(X, y=None)``, and maps any features to
``codes: (n, bits) bool`` in ``encode``; the codes enter retrieval and evaluation like a deep method's. A
fitted method is a handful of arrays, saved with ``np.savez``. Each subclass that sets ``name`` registers
itself (:data:`SHALLOW_METHODS`), so a new method is one module in ``deephash/methods`` plus
``conf/method/<name>.yaml``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, DataError, DeephashError
from deephash.utils.io import atomic_write_bytes

FORMAT_VERSION = 1
# every shallow method by name, filled as their modules are imported (deephash.methods.registry imports all)
SHALLOW_METHODS: dict[str, type[BaseHash]] = {}


@runtime_checkable
class HashMethod(Protocol):
    """What the baseline runner, retrieval and evaluation need from a shallow method."""

    name: str
    bits: int
    supervised: bool

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> HashMethod:
        """Learn the hash functions from training features ``X: (n, d)`` (and, supervised, their class labels
        ``y: (n,)``); returns ``self``."""
        ...

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Binary codes ``(n, bits) bool`` of features ``X: (n, d)``."""
        ...

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted parameters to ``path`` (npz), atomically."""
        ...


def validate_bits(bits: object) -> int:
    return check_int(bits, "bits")


def as_features(X: Any, what: str = "features") -> np.ndarray:
    """``X`` as a finite float ``(n, d)`` array (float32 kept, anything else float64)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty 2-D array (n, d), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool) or np.iscomplexobj(X):
        raise DataError(f"{what} must be real numbers, got dtype {X.dtype}")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise DataError(f"{what} contain NaN or infinite values")
    return X


def as_labels(y: Any, n: int) -> np.ndarray:
    """Class labels ``y`` as ``int64 (n,)``, or a one-line DataError."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataError(f"labels must have shape ({n},) like the training features, got {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


class BaseHash:
    """Shared validation, fitted-state bookkeeping and npz persistence.

    Subclasses set ``name`` (which registers them), ``supervised`` (True: ``fit`` needs labels), list their
    fitted arrays in ``state_keys`` (attributes, ``None`` until fitted), implement ``_fit(X, y)`` (``y`` the
    checked labels, or None for an unsupervised method) and return their constructor arguments from
    ``params``.
    """

    name: ClassVar[str]
    supervised: ClassVar[bool] = False
    state_keys: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            SHALLOW_METHODS[cls.name] = cls

    def __init__(self, bits: int, seed: int = 0) -> None:
        self.bits = validate_bits(bits)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.dim: int | None = None  # feature dimension seen by fit
        for key in self.state_keys:
            setattr(self, key, None)

    def params(self) -> dict[str, int | float]:
        """Constructor arguments, saved with the state so ``load_method`` rebuilds the same method."""
        return {"bits": self.bits, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    @property
    def fitted(self) -> bool:
        return self.dim is not None

    def fit(self, X: Any, y: Any = None) -> BaseHash:
        """Learn the hash functions from ``X: (n, d)``; a supervised method needs the class labels ``y: (n,)``
        (an unsupervised one ignores them). Returns ``self``."""
        X = as_features(X, "training features")
        n = X.shape[0]
        if n < 2:
            raise DataError(f"{self.name} needs at least 2 training samples, got {n}")
        if not self.supervised:
            return self._fit(X, None)
        if y is None:
            raise ConfigError(
                f"{self.name} is a supervised method and needs the training labels: fit(X, y) with y the (n,) "
                "class labels"
            )
        return self._fit(X, as_labels(y, n))

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> BaseHash:
        raise NotImplementedError

    def _check_pca_bits(self, X: np.ndarray) -> None:
        """PCA-based codes use one principal direction per bit, so bits are capped by the data's rank."""
        n, d = X.shape
        if self.bits > d:
            raise ConfigError(f"{self.name} needs bits <= feature dimension ({d}), got {self.bits}")
        if self.bits >= n:
            raise ConfigError(
                f"{self.name} needs more training samples than bits, got {n} samples for {self.bits} bits"
            )

    def _query_features(self, X: Any) -> np.ndarray:
        if not self.fitted:
            raise DeephashError(f"{self.name} is not fitted: call fit() or load_method() first")
        X = as_features(X)
        if X.shape[1] != self.dim:
            raise DataError(f"{self.name} was fitted on {self.dim}-d features, got {X.shape[1]}-d")
        return X

    def save(self, path: str | os.PathLike) -> Path:
        if not self.fitted:
            raise DeephashError(f"{self.name} is not fitted: nothing to save")
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(FORMAT_VERSION),
            "method": np.asarray(self.name),
            "dim": np.asarray(self.dim),
        }
        arrays.update({f"param_{k}": np.asarray(v) for k, v in self.params().items()})
        arrays.update({f"state_{k}": np.asarray(getattr(self, k)) for k in self.state_keys})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())

    def _set_state(self, dim: int, state: dict[str, np.ndarray]) -> None:
        missing = sorted(set(self.state_keys) - set(state))
        if missing:
            raise ValueError(f"missing arrays {missing}")
        for key in self.state_keys:
            setattr(self, key, state[key])
        self.dim = dim


class LinearHash(BaseHash):
    """Codes are the signs of affine projections: ``((X - mean) @ projection) >= 0``.

    LSH, PCAH and ITQ differ only in how they choose ``projection: (d, bits)``.
    """

    state_keys = ("mean", "projection")

    def project(self, X: np.ndarray) -> np.ndarray:
        """Real-valued projections ``(n, bits)`` whose signs are the codes."""
        X = self._query_features(X)
        return (X - self.mean.astype(X.dtype)) @ self.projection.astype(X.dtype)

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self.project(X) >= 0

    def _set_fitted(self, mean: np.ndarray, projection: np.ndarray) -> LinearHash:
        self._set_state(mean.shape[0], {"mean": mean, "projection": projection})
        return self
