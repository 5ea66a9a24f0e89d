"""The one record of encoded items (``EncodedItems``) and a saved index that is one (``IndexStore``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval.codecs import Codec
from deephash.retrieval.features import F7File
from deephash.retrieval.hamming import HammingIndex
from deephash.retrieval.pq_rows import PQRows


@dataclass(kw_only=True)
class EncodedItems:
    """Encoded items, one row each: the record every stage passes on (encoding, index, search, evaluation).

    codes: (n, ceil(bits / 8)) uint8 packed, or None for a baseline's inputs before hashing;
    f7: (n, d) float16/float32 ndarray, or an ``F7File`` reading rows from disk on demand, or None where
    only codes are needed; labels: (n,) int64; ids: n item ids (empty where not kept);
    pool_index: (n,) int64 positions in the datamodule's pool, or None where unknown.
    """

    codes: np.ndarray | None
    f7: np.ndarray | F7File | None
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)
    pool_index: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | slice, *, f7: bool = True) -> EncodedItems:
        """The items at ``rows`` (F7 read into memory, or left out with ``f7=False``)."""
        picked = np.arange(self.count)[rows] if isinstance(rows, slice) else np.asarray(rows)
        return EncodedItems(
            codes=None if self.codes is None else self.codes[rows],
            f7=self.f7[rows] if f7 and self.f7 is not None else None,
            labels=self.labels[rows],
            ids=[self.ids[i] for i in picked] if self.ids else [],
            pool_index=None if self.pool_index is None else self.pool_index[rows],
        )


@dataclass(kw_only=True)
class IndexStore(EncodedItems):
    """A loaded index: its encoded items (f7 an ``F7File`` by default, an ndarray with
    ``f7_in_memory=True``, a ``PQRows`` under a PQ codec) with the directory, the code length, the parsed
    manifest.json and the re-rank codec (None: float16)."""

    codes: np.ndarray
    f7: np.ndarray | F7File | PQRows
    path: Path
    bits: int
    manifest: dict[str, Any]
    codec: Codec | None = None
    _hamming: HammingIndex | None = field(default=None, repr=False)

    @property
    def feature_dim(self) -> int:
        """The width of the model's features (the queries'); a PCA index stores fewer columns."""
        return int(self.manifest.get("feature_dim", self.f7.shape[1]))

    def query_features(self, f7: np.ndarray) -> np.ndarray:
        """Query features (q, feature_dim) in the space this index's rows are compared in (PCA: projected)."""
        return f7 if self.codec is None else self.codec.queries(f7)

    @property
    def hamming_index(self) -> HammingIndex:
        """The FAISS Hamming index over ``codes``, built on first use."""
        if self._hamming is None:
            self._hamming = HammingIndex(self.codes, self.bits)
        return self._hamming
