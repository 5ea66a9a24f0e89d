"""Synthetic F7 rows and codes for the codec benchmark, regenerated block by block on demand.

``SyntheticF7``: rows of ``dim`` non-negative features around ``clusters`` centres, varying in an
``intrinsic_dim``-d subspace (as a CNN's features mostly do) plus isotropic ``noise``; codes are the signs of
a random projection of the centred rows, so near codes have near features, as a trained model's do. Labels
are the rows' clusters. The centres, subspace and projection depend on ``seed`` only; the rows of a stream
come in blocks of ``BLOCK``, block ``b`` drawn from its own generator seeded with ``(stream, b)``. Any block
can thus be drawn again alone, and the same rows come back bit for bit.

That is what lets the benchmark measure an index larger than the disk's float16 copy would allow (10M x
4096-d is 82 GB as float16): the codec's index is built from the stream (``stream_index``), and the exact
reference, a float16 re-rank of the exact coarse pools, reads the pools' rows from one more pass over the
stream (``pool_rows``), not from a float16 index.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval import HammingIndex, PoolRule
from deephash.retrieval.codecs import train_codec
from deephash.retrieval.distances import pair_sqdist
from deephash.retrieval.hierarchical import coarse_pools, hierarchical_search
from deephash.retrieval.index_writer import IndexWriter
from deephash.retrieval.rows import sorted_unique
from deephash.utils.errors import ConfigError

BLOCK = 4096  # rows a block: 64 MB of float32 at 4096-d
_CENTRE_SPREAD = np.float32(2)  # centres uniform in [0, spread) in each dimension


@dataclass(frozen=True)
class SyntheticF7:
    """The data model of the module docstring."""

    dim: int
    bits: int
    clusters: int = 1000
    intrinsic_dim: int = 32
    noise: float = 0.05
    seed: int = 0

    @cached_property
    def _model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        model = np.random.default_rng(self.seed)
        centres = model.random((self.clusters, self.dim), dtype=np.float32) * _CENTRE_SPREAD
        basis = model.standard_normal((self.intrinsic_dim, self.dim)).astype(np.float32)
        basis /= np.float32(np.sqrt(self.intrinsic_dim))
        projection = model.standard_normal((self.dim, self.bits)).astype(np.float32)
        return centres, basis, projection, centres.mean(axis=0)

    def block(self, stream: int, b: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block ``b`` of a stream of ``n`` rows -> (labels (m,) int64, codes (m, ceil(bits / 8)) uint8,
        f7 (m, dim) float32), rows ``b * BLOCK`` to ``min(n, (b + 1) * BLOCK)``."""
        centres, basis, projection, mean = self._model
        m = min(BLOCK, n - b * BLOCK)
        if m <= 0:
            raise ConfigError(f"block {b} is past the {n} rows of the stream")
        rng = np.random.default_rng([stream, b])
        labels = rng.integers(0, self.clusters, m)
        f7 = centres[labels]
        f7 += rng.standard_normal((m, self.intrinsic_dim), dtype=np.float32) @ basis
        f7 += rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(self.noise)
        np.maximum(f7, 0, out=f7)  # post-ReLU activations
        return labels, np.packbits((f7 - mean) @ projection > 0, axis=1), f7

    def blocks(
        self, stream: int, n: int, only: np.ndarray | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(start, labels, codes, f7) of each block of the stream (of the blocks in ``only``, if given)."""
        for b in range(-(-n // BLOCK)) if only is None else np.unique(only).tolist():
            yield (b * BLOCK, *self.block(stream, b, n))

    def rows(self, stream: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``m`` rows of a stream of ``n`` (codes, f7 float32): queries, or a codec's training rows
        (the rows are independent draws, so the first m are a random sample)."""
        m = min(m, n)
        codes, f7 = np.empty((m, -(-self.bits // 8)), np.uint8), np.empty((m, self.dim), np.float32)
        for start, _, c, f in self.blocks(stream, n, np.arange(-(-m // BLOCK))):
            codes[start : start + len(c)], f7[start : start + len(f)] = c[: m - start], f[: m - start]
        return codes, f7


def stream_index(
    data: SyntheticF7, out: Path, n: int, stream: int, codec: str, train_rows: int, seed: int, rerank: int = 0
) -> float:
    """Build the ``codec`` index of a stream of ``n`` rows at ``out``, the codec trained on its first
    ``train_rows`` rows; returns the seconds spent drawing the rows (to subtract from the build's)."""
    trained, drawing = None, 0.0
    if codec != "float16":
        drawn = time.perf_counter()
        sample = data.rows(stream, n, train_rows)[1]
        drawing = time.perf_counter() - drawn
        trained = train_codec(codec, sample, seed, rerank)
        del sample
    with IndexWriter(out, n, data.bits, data.dim, {"dataset": "synthetic"}, trained) as writer:
        blocks = data.blocks(stream, n)
        while True:
            drawn = time.perf_counter()
            start, labels, codes, f7 = next(blocks, (None, None, None, None))
            drawing += time.perf_counter() - drawn
            if start is None:
                break
            writer.write(start, codes, f7, labels, [str(i) for i in range(start, start + len(f7))])
        writer.commit()
    return drawing


class PoolRows:
    """The float16 rows ``items`` (sorted, unique) of an (n, d) database, as a ``ScoredRows``: it scores pairs
    of those rows only, with ``pair_sqdist`` on the rows widened to float32, as a float16 index does."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, n: int, items: np.ndarray, rows: np.ndarray) -> None:
        self.items, self.rows, self.shape = items, rows, (n, rows.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def pair_sqdist(self, queries: np.ndarray, owner: np.ndarray, items: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.items, items)
        if len(items) and (at.max() >= len(self.items) or (self.items[at] != items).any()):
            raise ConfigError("a pair asks for a row outside the pools these rows were drawn for")
        order = np.argsort(at, kind="stable")
        uniq, inverse = sorted_unique(at[order])
        out = np.empty(len(items), np.float32)
        out[order] = pair_sqdist(queries, owner[order], self.rows[uniq].astype(np.float32), inverse)
        return out

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise ConfigError("pool rows hold only the coarse pools' rows: no exhaustive search")

    def sqdist_block(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        raise ConfigError("pool rows hold only the coarse pools' rows: no exhaustive search")


def pool_rows(data: SyntheticF7, stream: int, n: int, items: np.ndarray) -> PoolRows:
    """The float16 rows ``items`` of a stream of ``n``, drawn again block by block (only the blocks they
    fall in)."""
    items = np.unique(items)
    rows = np.empty((len(items), data.dim), np.float16)
    blocks = items // BLOCK
    for start, _, _, f7 in data.blocks(stream, n, blocks):
        lo, hi = np.searchsorted(items, [start, start + len(f7)])
        rows[lo:hi] = f7[items[lo:hi] - start]
    return PoolRows(n, items, rows)


def exact_reference(
    data: SyntheticF7,
    stream: int,
    codes: np.ndarray,
    query_codes: np.ndarray,
    queries: np.ndarray,
    k: int,
    pool: PoolRule,
) -> np.ndarray:
    """(q, k) ids of the exact hierarchical search: the exact coarse pools over ``codes`` (the stream's), re-ranked
    on the stream's float16 rows, drawn again; what a float16 index of the stream returns."""
    flat = HammingIndex(codes, data.bits)
    pools = coarse_pools(flat, query_codes, pool.radius, *pool.limits(k))
    needed = np.concatenate([idx for _, idx in pools] or [np.zeros(0, np.int64)])
    rows = pool_rows(data, stream, len(codes), needed)
    return hierarchical_search(flat, rows, query_codes, queries, k, pool).idx


def data_from(args: Any) -> SyntheticF7:
    """The ``SyntheticF7`` of the benchmark's options (``--dim``, ``--bits``, ``--clusters``, ...)."""
    return SyntheticF7(args.dim, args.bits, args.clusters, args.intrinsic_dim, args.noise, args.seed)
