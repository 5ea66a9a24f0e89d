"""Re-rank feature codecs: how an index stores the features its hierarchical and euclidean modes rank by.

A codec is chosen when the index is built (``deephash-index build codec=<spec>``), recorded in the manifest
(``codec``, with its parameters in ``codec.npz``) and rebuilt from them on load:

* ``float16``: F7 as float16 rows (``f7.npy``), ranked by exact L2; the default, and every index built before
  codecs existed.
* ``pca<d>``: F7 centred and projected on its ``d`` principal directions, stored as float16 rows
  (``f7.npy``, checked block by block like F7); queries are projected the same way (``queries``).
* ``pq<m>`` / ``opq<m>``: FAISS product quantisation, m bytes per row (``pq.npy``), 256 centroids per
  sub-quantiser, optionally after an OPQ rotation; ``pca<d>pq<m>``: the same on F7 projected on its d principal
  directions first (FAISS's ``PCA<d>,PQ<m>``: m bytes a row, each byte covering d/m dimensions instead of
  dim/m, distances those of the projections, as ``pca<d>``'s); ranked by the asymmetric distance
  (``deephash.retrieval.pq_rows``). With ``rerank`` R > 0 the float16 rows are kept on disk too (``f7.npy``) and
  each search's top R by asymmetric distance are re-ranked by exact L2 (``pq_rows.exact_rerank``).

Trainable codecs learn from a seeded sample of the database rows (``sample_rows``), so the same rows and seed
give the same index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deephash.methods.pca import principal_components
from deephash.retrieval.distances import nearest_centroids
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.manifest import QUANTISED
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, IndexFormatError

CODEC_NAMES = ("float16", "pca", "pq", "opq", "pcapq")
_SPEC = re.compile(r"(float16)|(pca|pq|opq)([1-9][0-9]*)|pca([1-9][0-9]*)pq([1-9][0-9]*)")
PQ_BITS = 8  # bits per sub-quantiser code: one byte, 256 centroids
DEFAULT_TRAIN_ROWS = 32768  # 128 rows per centroid: k-means on more costs more than it gains
OPQ_ITERATIONS = 20  # alternations of rotation and PQ (FAISS's default 50 costs minutes at 4096-d)
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Codec:
    """A codec and its trained parameters.

    name: one of ``CODEC_NAMES``; size: the PCA width or the PQ bytes per row (0 for float16); dim: the
    feature width of the model (the queries'); reduced: the PCA width before PQ (``pcapq``; else 0); params:
    ``mean`` (dim,) and ``components`` (dim, size) for PCA, ``centroids`` (size, 256, width / size) for PQ,
    width being ``reduced`` or dim, and ``rotation`` (width, dim) for OPQ (dim, dim) and PCA-then-PQ (the
    principal directions), all float32.
    """

    name: str
    size: int
    dim: int
    params: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    rerank: int = 0
    reduced: int = 0

    @property
    def spec(self) -> str:
        if self.name == "pcapq":
            return f"pca{self.reduced}pq{self.size}"
        return self.name if self.name == "float16" else f"{self.name}{self.size}"

    @property
    def quantised(self) -> bool:
        """True: the rows are PQ codes (``pq.npy``); False: float16 rows (``f7.npy``)."""
        return self.name in QUANTISED

    @property
    def row_width(self) -> int:
        """Columns of a stored row: F7's width, the PCA width or the PQ bytes."""
        return self.dim if self.name == "float16" else self.size

    def queries(self, f7: np.ndarray) -> np.ndarray:
        """Query features (q, dim) -> the space the stored rows are compared in: (q, size) for PCA, else as
        they are, the same object (a PQ index rotates and splits them itself)."""
        return _project(f7, self.params) if self.name == "pca" else f7

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """Database rows (m, dim) float -> stored rows: float16 (m, row_width) or uint8 PQ codes (m, size)."""
        if self.name == "float16":
            return rows.astype(np.float16)
        if self.name == "pca":
            return _project(rows, self.params).astype(np.float16)
        x = np.ascontiguousarray(rows, np.float32)
        if "rotation" in self.params:
            x = np.ascontiguousarray(x @ self.params["rotation"].T)
        return nearest_centroids(x, self.params["centroids"])

    @property
    def keeps_f7(self) -> bool:
        """True: the index holds float16 rows in ``f7.npy`` (every codec but PQ without ``rerank``)."""
        return not self.quantised or self.rerank > 0

    def manifest(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "size": self.size}
        return (
            entry
            | ({"reduced": self.reduced} if self.reduced else {})
            | ({"rerank": self.rerank} if self.rerank else {})
        )


def parse_codec(spec: Any) -> tuple[str, int]:
    """``float16``, ``pca<d>``, ``pq<m>``, ``opq<m>`` or ``pca<d>pq<m>`` -> (name, size) (``pcapq``, m for the
    last; ``reduced_width`` gives its d); else a one-line ConfigError."""
    match = _SPEC.fullmatch(str(spec)) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(
            "codec must be float16, pca<d> (PCA to d dims), pq<m> or opq<m> (m bytes per row) or pca<d>pq<m> "
            f"(PCA, then PQ), got {spec!r}"
        )
    if match.group(1):
        return "float16", 0
    if match.group(4):
        return "pcapq", int(match.group(5))
    return match.group(2), int(match.group(3))


def reduced_width(spec: str) -> int:
    """The PCA width d of a ``pca<d>pq<m>`` spec; 0 for any other codec."""
    match = _SPEC.fullmatch(spec)
    return int(match.group(4)) if match is not None and match.group(4) else 0


def codec_options(settings: Any) -> dict[str, Any]:
    """``save_index``'s codec options from a config (``codec``, ``codec_train_rows``, ``codec_seed``; defaults
    where absent), checked before any work."""
    spec = str(settings.get("codec", "float16"))
    parse_codec(spec)
    train_rows = check_int(settings.get("codec_train_rows", DEFAULT_TRAIN_ROWS), "codec_train_rows", 1)
    rerank = check_int(settings.get("codec_rerank", 0), "codec_rerank", 0)
    if rerank and parse_codec(spec)[0] not in QUANTISED:
        raise ConfigError(
            f"codec_rerank re-ranks a PQ index's results exactly; codec {spec} ranks exactly already"
        )
    seed = int(settings.get("codec_seed", DEFAULT_SEED))
    return {"codec": spec, "codec_train_rows": train_rows, "codec_seed": seed, "codec_rerank": rerank}


def check_codec(spec: Any, dim: int) -> tuple[str, int]:
    """``parse_codec`` plus the checks against the feature width ``dim``, before any training or encoding."""
    name, size = parse_codec(spec)
    width = reduced_width(spec) or dim
    if name in ("pca", "pcapq") and max(size if name == "pca" else 0, width) > dim:
        kept = size if name == "pca" else width
        raise ConfigError(f"codec {spec}: cannot keep {kept} principal directions of {dim}-d features")
    if name in QUANTISED and width % size:
        raise ConfigError(f"codec {spec}: {width}-d features do not split into {size} equal sub-vectors")
    return name, size


def sample_rows(n: int, train_rows: int, seed: int) -> np.ndarray:
    """The sorted rows a codec trains on: ``train_rows`` of ``n`` drawn without replacement (all if fewer)."""
    if train_rows < 1:
        raise ConfigError(f"codec_train_rows must be >= 1, got {train_rows}")
    if n <= train_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, train_rows, replace=False))


def train_codec(spec: str, sample: np.ndarray, seed: int = DEFAULT_SEED, rerank: int = 0) -> Codec:
    """A codec trained on ``sample`` (t, dim) rows of the database (nothing to train for float16); ``rerank``:
    see the module docstring (PQ only)."""
    dim = sample.shape[1]
    name, size = check_codec(spec, dim)
    if rerank and name not in QUANTISED:
        raise ConfigError(
            f"codec_rerank re-ranks a PQ index's results exactly; codec {spec} ranks exactly already"
        )
    if name == "float16":
        return Codec(name, size, dim)
    x = np.ascontiguousarray(sample, np.float32)
    if not len(x):
        raise ConfigError(f"codec {spec} needs training rows, got none")
    if not np.isfinite(x).all():
        raise ConfigError(f"codec {spec}: the F7 rows it trains on hold NaN or inf")
    if name == "pca":
        mean, components, _ = principal_components(x, size)
        return Codec(
            name, size, dim, {"mean": mean.astype(np.float32), "components": components.astype(np.float32)}
        )
    params: dict[str, np.ndarray] = {}
    if name == "opq":
        opq = faiss.OPQMatrix(dim, size)
        opq.verbose = False
        opq.niter = OPQ_ITERATIONS
        opq.train(x)
        params["rotation"] = faiss.vector_to_array(opq.A).reshape(dim, dim).astype(np.float32)
        x = np.ascontiguousarray(x @ params["rotation"].T)
    reduced = reduced_width(spec)
    if reduced:  # the distances are those of the projections: no centring needed (PQ absorbs the offset)
        params["rotation"] = principal_components(x, reduced)[1].T.astype(np.float32).copy()  # (d, dim)
        x = np.ascontiguousarray(x @ params["rotation"].T)
    pq = faiss.ProductQuantizer(x.shape[1], size, PQ_BITS)
    pq.cp.seed = seed
    pq.train(x)
    params["centroids"] = faiss.vector_to_array(pq.centroids).reshape(size, pq.ksub, pq.dsub).copy()
    return Codec(name, size, dim, params, rerank, reduced)


def load_codec(entry: Any, dim: int, params: dict[str, np.ndarray], where: str) -> Codec:
    """The codec a manifest records (``entry``; None: float16) with its ``codec.npz`` arrays, checked."""
    if entry is None:
        return Codec("float16", 0, dim)
    if not isinstance(entry, dict) or entry.keys() - {"rerank", "reduced"} != {"name", "size"}:
        raise IndexFormatError(
            f"{where}: codec must be an object with name, size (and reduced, rerank), got {entry!r}"
        )
    name, size, rerank = entry["name"], entry["size"], entry.get("rerank", 0)
    reduced = entry.get("reduced", 0)
    if not isinstance(reduced, int) or isinstance(reduced, bool) or (name == "pcapq") != (reduced > 0):
        raise IndexFormatError(
            f"{where}: codec reduced must be the PCA width of a pcapq codec, got {entry!r}"
        )
    if (
        not isinstance(rerank, int)
        or isinstance(rerank, bool)
        or rerank < 0
        or (rerank and name not in QUANTISED)
    ):
        raise IndexFormatError(
            f"{where}: codec rerank must be a count >= 0 of a pq or opq codec, got {entry!r}"
        )
    if name not in CODEC_NAMES or not isinstance(size, int) or isinstance(size, bool):
        raise IndexFormatError(f"{where}: unknown codec {entry!r} (expected one of {', '.join(CODEC_NAMES)})")
    expected = {"float16": {}, "pca": {"mean": (dim,), "components": (dim, size)}}.get(name)
    if expected is None:
        width = reduced or dim
        expected = {"centroids": (size, 1 << PQ_BITS, width // max(size, 1))}
        if name in ("opq", "pcapq"):
            expected["rotation"] = (width, dim)
    got = {key: value.shape for key, value in params.items()}
    if got != expected or any(value.dtype != np.float32 for value in params.values()):
        raise IndexFormatError(
            f"{where}: the {name} codec's parameters are {got}, expected {expected} float32"
        )
    return Codec(name, size, dim, dict(params), rerank, reduced)


def _project(rows: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """(m, dim) -> (m, size) float32: centred, on the principal directions."""
    return (np.asarray(rows, np.float32) - params["mean"]) @ params["components"]
