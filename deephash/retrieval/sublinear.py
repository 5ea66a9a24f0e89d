"""Sub-linear Hamming search by multi-index hashing (Norouzi et al., TPAMI 2014) over FAISS hash tables.

``MultiHashIndex`` wraps ``faiss.IndexBinaryMultiHash``: each code is cut into ``nhash`` disjoint
substrings of ``b`` bits, substring ``h`` holding code bits ``[h * b, (h + 1) * b)``, and each substring
keys its own hash table. A query probes, in every table, the buckets whose key differs from its own
substring in at most ``nflip`` bits; the union of those buckets is the candidate shortlist, whose exact
distances FAISS then computes. By the pigeonhole principle an item at distance
``d <= nhash * (nflip + 1) - 1`` has some substring within ``nflip`` bits of the query's, so it is
always a candidate (``exact_radius``): a ``range_search`` with ``radius <= exact_radius`` is exact. The
k-NN returns the k best candidates by (distance, index), so it is approximate: an item beyond
``exact_radius`` is only found when one of its substrings happens to be close enough.
``BinaryHashIndex`` (``faiss.IndexBinaryHash``) is the single-table case, exact up to ``nflip``.
``IVFIndex`` (``faiss.IndexBinaryIVF``) instead partitions the codes into ``nlist`` cells by binary k-means
and scans the ``nprobe`` cells nearest a query: its cost is ``nprobe / nlist`` of the exhaustive scan's,
whatever the code length, and its recall is measured, not guaranteed (only identical codes share a cell
for sure: ``exact_radius`` 0).

Cost: a query reads ``nhash * sum_{i <= nflip} C(b, i)`` buckets; beyond its true near neighbours each
bucket holds about ``n / 2**b`` unrelated codes, so the search stays sub-linear while ``b`` grows like
``log2(n)`` (the paper's choice). The default ``b = 16`` keeps every table at most 65536 buckets (each
non-empty bucket costs ~80 bytes in FAISS's ``unordered_map``), so past a few million codes its cost grows
linearly again, though with a constant far below the exhaustive scan's.

Both implement the ``HammingSearch`` protocol of ``deephash.retrieval.hamming`` (``search``,
``range_search``, ``range_search_flat``, ``ntotal``, ``code_bytes``, ``bits``), so ``hierarchical_search``
accepts them; its radius pool is exact whenever ``radius <= exact_radius``.
"""

from __future__ import annotations

from collections.abc import Iterator
from math import comb
from typing import Any

import numpy as np

from deephash.retrieval.codecs import sample_rows
from deephash.retrieval.codes import check_packed, code_bytes, pad_codes, padded_code_bytes, padded_queries
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.hamming import HammingIndex, range_radius, split_ranges
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

COARSE_METHODS = ("flat", "multihash", "hash", "ivf")  # the coarse Hamming index of retrieval.coarse.method
DEFAULT_SUBSTRING_BITS = 16
MAX_SUBSTRING_BITS = 56  # FAISS reads a substring as one 8-byte word shifted by up to 7 bits
MAX_IVF_LISTS = 4096  # default cell count cap: k-means on 64 codes a cell stays seconds at 10M codes
MAX_PROBES = 1 << 20  # buckets probed per table per query: sum_{i <= nflip} C(b, i)
_RESULT_BUDGET = 1 << 22  # candidates per k-NN query batch (~200 MB of temporaries)
# The first batch measures the shortlist size. It is small because a skewed table (say, a constant code
# bit) can make every shortlist the whole database; FAISS only runs batches of over 100 queries in parallel.
_FIRST_BATCH = 4
_MAX_BATCH = 1024
_PARTITION_ROWS = 4096  # shortlists longer than this (and than k) are cut in linear time before sorting
_PACKED_KEYS = 1 << 62  # (owner, key) pairs sort as one int64 owner * span + key below this bound
# Bytes per non-empty bucket of std::unordered_map<int64, std::vector<int64>>: node, vector header,
# hash slot and allocator headers. Only used for the memory estimate.
_BUCKET_OVERHEAD = 80

# packbits stores code bit j at bit 7 - j % 8 of byte j // 8; FAISS reads substrings from little-endian
# words, least significant bit first. Reversing each byte's bits (the same permutation for database and
# queries, so distances are unchanged) makes substring h exactly code bits [h * b, (h + 1) * b) and
# keeps the zero padding bits out of every substring.
_REVERSE_BITS = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)


def faiss_layout(padded: np.ndarray) -> np.ndarray:
    """(n, c) uint8 big-endian codes -> (n, c) bit-reversed codes followed by 8 spare zero bytes.

    FAISS reads every substring (and IndexBinaryHash its key) as a full 8-byte word, which may run up
    to 7 bytes past the last code: the spare bytes keep that read inside our buffer.
    """
    n, c = padded.shape
    buf = np.zeros(n * c + 8, dtype=np.uint8)
    out = buf[: n * c].reshape(n, c)
    np.take(_REVERSE_BITS, padded, out=out)
    return out


def _top_keys(lims: np.ndarray, key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k smallest keys of each query -> (owner, rank, key), each (m,), sorted by (owner, key).

    lims: (q + 1,) int64 bounds of each query's keys in key: (lims[-1],) int64, unique within a query.
    """
    counts = np.diff(lims)
    owner = np.repeat(np.arange(len(counts)), counts)
    long = np.flatnonzero(counts > max(k, _PARTITION_ROWS))
    if long.size:
        keep = np.ones(len(key), bool)
        for row in long:
            seg = key[lims[row] : lims[row + 1]]
            keep[lims[row] : lims[row + 1]] = seg <= np.partition(seg, k - 1)[k - 1]
        owner, key = owner[keep], key[keep]
    span = int(key.max(initial=0)) + 1
    if len(counts) * span < _PACKED_KEYS:
        packed = owner * span + key
        packed.sort()
        owner, key = packed // span, packed % span
    else:
        order = np.lexsort((key, owner))
        owner, key = owner[order], key[order]
    # each query's keys are now consecutive: rank = position - the query's first position
    rank = np.arange(len(key)) - np.searchsorted(owner, owner)
    top = rank < k
    return owner[top], rank[top], key[top]


class MultiHashIndex:
    """Multi-index hashing over packed codes, wrapping ``faiss.IndexBinaryMultiHash``.

    codes_packed: (n, ceil(bits / 8)) uint8. ``b`` defaults to min(16, bits) (at most 65536 buckets
    per table) and ``nhash`` to ``bits // b``; ``nhash * b <= bits``. Every item within
    ``exact_radius = nhash * (nflip + 1) - 1`` of a query is found; see the module docstring.
    ``nflip`` is a search-time setting and may be changed after building.
    """

    method = "multihash"

    def __init__(
        self,
        codes_packed: np.ndarray,
        bits: int,
        *,
        nhash: int | None = None,
        b: int | None = None,
        nflip: int = 1,
        pad: bool = True,
    ) -> None:
        self._hold_codes(codes_packed, bits, pad)
        self.b, self.nhash = self._substrings(nhash, b)
        self.faiss_index = self._new_faiss_index()
        self.nflip = nflip
        self.faiss_index.add(faiss_layout(pad_codes(self.codes, self.padded_bytes)))

    def _hold_codes(self, codes_packed: np.ndarray, bits: int, pad: bool) -> None:
        """Validate and keep the database codes, and the code width FAISS sees (padded to 8-byte words)."""
        self.bits = check_int(bits, "bits", 1)
        self.codes = check_packed(codes_packed, self.bits, "database codes")
        self.code_bytes = code_bytes(self.bits)
        self.padded_bytes = padded_code_bytes(self.code_bytes) if pad else self.code_bytes

    def _substrings(self, nhash: int | None, b: int | None) -> tuple[int, int]:
        """Validated (b, nhash) with the defaults filled in."""
        if b is None:
            b = min(DEFAULT_SUBSTRING_BITS, self.bits)
        b = check_int(b, "b (bits per substring)", 1, min(MAX_SUBSTRING_BITS, self.bits))
        nhash = self.bits // b if nhash is None else check_int(nhash, "nhash", 1)
        if nhash * b > self.bits:
            raise ConfigError(
                f"nhash * b must not exceed the code length: {nhash} x {b} = {nhash * b} > {self.bits} bits"
            )
        return b, nhash

    def _new_faiss_index(self) -> Any:
        return faiss.IndexBinaryMultiHash(8 * self.padded_bytes, self.nhash, self.b)

    @property
    def nflip(self) -> int:
        return int(self.faiss_index.nflip)

    @nflip.setter
    def nflip(self, value: int) -> None:
        nflip = check_int(value, "nflip", 0, self.b)
        probes = sum(comb(self.b, i) for i in range(nflip + 1))
        if probes > MAX_PROBES:
            raise ConfigError(
                f"nflip={nflip} probes {probes:,} buckets per table per query with b={self.b} "
                f"(limit {MAX_PROBES:,}): lower nflip or b"
            )
        self.faiss_index.nflip = nflip

    @property
    def exact_radius(self) -> int:
        """Largest radius within which every item is found: ``nhash * (nflip + 1) - 1``."""
        return self.nhash * (self.nflip + 1) - 1

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def memory_bytes(self) -> int:
        """Estimated resident size: stored codes, one int64 id per item and table, bucket overhead."""
        return (
            self.ntotal * (self.padded_bytes + 8 * self.nhash)
            + int(self.faiss_index.hashtable_size()) * _BUCKET_OVERHEAD
        )

    def _queries(self, query_packed: np.ndarray) -> np.ndarray:
        """Validated queries zero padded to ``padded_bytes`` (the layout ``HammingIndex._queries`` gives)."""
        return padded_queries(query_packed, self.bits, self.padded_bytes)

    def _range_faiss(self, padded_queries: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        """Candidates within ``radius`` (inclusive) -> (lims int64, dist int32, idx int64), FAISS order."""
        # FAISS keeps d < radius (strict); ours is inclusive, hence radius + 1.
        lims, dist, idx = self.faiss_index.range_search(faiss_layout(padded_queries), int(radius) + 1)
        return lims.astype(np.int64, copy=False), dist.astype(np.int32, copy=False), idx

    def _range_sorted(self, padded_queries: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        """Range search on padded queries -> (lims, dist int32, idx int64) ordered by (query, dist, idx)."""
        lims, dist, idx = self._range_faiss(padded_queries, radius)
        owner = np.repeat(np.arange(len(padded_queries)), np.diff(lims))
        order = np.lexsort((idx, dist, owner))
        return lims, dist[order], idx[order]

    def range_search(self, query_packed: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every found item within Hamming distance ``radius`` (inclusive) of each query.

        query_packed: (q, ceil(bits / 8)) uint8 -> per query ``(dist (m,) int32, idx (m,) int64)``,
        ordered by (distance, index). Exact (equal to ``HammingIndex.range_search``) when
        ``radius <= exact_radius``; beyond it, a subset.
        """
        return split_ranges(self, query_packed, radius)

    def range_search_flat(self, query_packed: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        """``range_search`` as flat arrays (lims, dist int32, idx int64), ordered by (query, dist, idx)."""
        return self._range_sorted(self._queries(query_packed), range_radius(radius, self.bits))

    def _shortlists(
        self, padded_queries: np.ndarray
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Each query's whole shortlist -> batches (q0, lims int64, dist int32, idx int64), FAISS order.

        A range search past the largest distance returns every candidate. The first batch is small and
        sizes the next ones, so a batch holds about ``_RESULT_BUDGET`` candidates.
        """
        q0, batch, largest = 0, _FIRST_BATCH, 1
        while q0 < len(padded_queries):
            lims, dist, idx = self._range_faiss(padded_queries[q0 : q0 + batch], self.bits)
            yield q0, lims, dist, idx
            largest = max(largest, int(np.diff(lims).max(initial=0)))
            q0 += batch
            batch = max(1, min(_MAX_BATCH, _RESULT_BUDGET // largest))

    def candidate_counts(self, query_packed: np.ndarray) -> np.ndarray:
        """(q,) int64 shortlist size of each query: the items whose exact distance FAISS computes."""
        counts = [np.diff(lims) for _, lims, _, _ in self._shortlists(self._queries(query_packed))]
        return np.concatenate(counts) if counts else np.zeros(0, np.int64)

    def search(self, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best candidates of each query (approximate k nearest codes).

        query_packed: (q, ceil(bits / 8)) uint8 -> (dist (q, k) int32, idx (q, k) int64), ordered by
        (distance, index) over the whole shortlist, ties going to the lower index; slots beyond the
        shortlist size hold distance -1 and index -1. Equal to ``HammingIndex.search`` for every query
        whose exact k-th distance is at most ``exact_radius``.
        """
        queries, k = self._queries(query_packed), check_int(k, "k", 1)
        dist_out = np.full((len(queries), k), -1, np.int32)
        idx_out = np.full((len(queries), k), -1, np.int64)
        n = max(self.ntotal, 1)
        # FAISS's own k-NN keeps an arbitrary subset of the items tied at the k-th distance, so the whole
        # shortlist comes back and is cut here on the unique key dist * n + idx; this costs about what
        # FAISS's heap k-NN over the same shortlist does.
        for q0, lims, dist, idx in self._shortlists(queries):
            owner, rank, key = _top_keys(lims, dist.astype(np.int64) * n + idx, k)
            dist_out[q0 + owner, rank], idx_out[q0 + owner, rank] = key // n, key % n
        return dist_out, idx_out


class BinaryHashIndex(MultiHashIndex):
    """One hash table on code bits ``[0, b)``, wrapping ``faiss.IndexBinaryHash`` (codes live in the buckets).

    The ``nhash = 1`` case of ``MultiHashIndex``: every item within ``exact_radius = nflip`` is found.
    """

    method = "hash"

    def __init__(
        self, codes_packed: np.ndarray, bits: int, *, b: int | None = None, nflip: int = 1, pad: bool = True
    ) -> None:
        super().__init__(codes_packed, bits, nhash=1, b=b, nflip=nflip, pad=pad)

    def _new_faiss_index(self) -> Any:
        return faiss.IndexBinaryHash(8 * self.padded_bytes, self.b)

    def memory_bytes(self) -> int:
        """Estimated resident size: each item's code and int64 id in its bucket, plus bucket overhead."""
        buckets = int(self.faiss_index.hashtable_size())
        return self.ntotal * (self.padded_bytes + 8) + buckets * 2 * _BUCKET_OVERHEAD


class IVFIndex(MultiHashIndex):
    """Inverted lists over binary k-means cells, wrapping ``faiss.IndexBinaryIVF``.

    codes_packed: (n, ceil(bits / 8)) uint8. ``nlist`` cells (default: the power of two nearest sqrt(n),
    at most 4096) are trained on ``train_rows`` codes (default 64 per cell) drawn with ``seed``; a query
    scans the codes of its ``nprobe`` nearest cells (default nlist / 32, at least 1), its shortlist.
    ``nprobe`` may be changed after building. Results are ordered as ``MultiHashIndex``'s: by (distance,
    index) over the shortlist, ties going to the lower index.
    """

    method = "ivf"

    def __init__(
        self,
        codes_packed: np.ndarray,
        bits: int,
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        train_rows: int | None = None,
        seed: int = 0,
        pad: bool = True,
    ) -> None:
        self._hold_codes(codes_packed, bits, pad)
        n = len(self.codes)
        default = min(MAX_IVF_LISTS, 1 << max(0, round(np.log2(max(n, 1)) / 2)))
        self.nlist = check_int(default if nlist is None else nlist, "nlist", 1, max(1, n))
        self._quantizer = faiss.IndexBinaryFlat(8 * self.padded_bytes)  # owned here: FAISS keeps a pointer
        self.faiss_index = faiss.IndexBinaryIVF(self._quantizer, 8 * self.padded_bytes, self.nlist)
        self.faiss_index.cp.seed = check_int(seed, "seed", 0)
        layout = faiss_layout(pad_codes(self.codes, self.padded_bytes))
        rows = check_int(64 * self.nlist if train_rows is None else train_rows, "train_rows", self.nlist)
        if n:
            self.faiss_index.train(layout[sample_rows(n, rows, seed)])
            self.faiss_index.add(layout)
        self.nprobe = max(1, self.nlist // 32) if nprobe is None else nprobe

    @property
    def nprobe(self) -> int:
        return int(self.faiss_index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.faiss_index.nprobe = check_int(value, "nprobe", 1, self.nlist)

    @property
    def exact_radius(self) -> int:
        """Identical codes fall in the same cell; beyond distance 0 nothing is guaranteed."""
        return 0

    def memory_bytes(self) -> int:
        """Resident size: each code and its int64 id in its list, plus the cell centroids."""
        return self.ntotal * (self.padded_bytes + 8) + self.nlist * self.padded_bytes

    def search(self, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best codes of each query's shortlist by (distance, index); -1 slots past the shortlist.

        FAISS's k-NN gives the k-th distance D of each query but keeps an arbitrary subset of the codes tied
        at D; a range search to D (queries grouped by D) then returns all of them, cut here by (distance,
        index). The range pass scans the same cells again, so a search costs about two scans.
        """
        queries, k = self._queries(query_packed), check_int(k, "k", 1)
        dist_out = np.full((len(queries), k), -1, np.int32)
        idx_out = np.full((len(queries), k), -1, np.int64)
        if not len(queries) or not self.ntotal:
            return dist_out, idx_out
        layout = faiss_layout(queries)
        dist, idx = self.faiss_index.search(layout, k)
        # fewer than k candidates: the whole shortlist (every distance is at most bits)
        kth = np.where(idx[:, -1] >= 0, dist[:, -1], self.bits).astype(np.int64)
        n = max(self.ntotal, 1)
        for radius in np.unique(kth):
            rows = np.flatnonzero(kth == radius)
            lims, d, i = self._range_faiss(queries[rows], int(radius))
            owner, rank, key = _top_keys(lims, d.astype(np.int64) * n + i, k)
            dist_out[rows[owner], rank], idx_out[rows[owner], rank] = key // n, key % n
        return dist_out, idx_out


COARSE_PARAMS = {  # the params each coarse method takes (retrieval.coarse.params)
    "flat": {"pad"},
    "multihash": {"nhash", "b", "nflip", "pad"},
    "hash": {"b", "nflip", "pad"},
    "ivf": {"nlist", "nprobe", "train_rows", "seed", "pad"},
}


def check_coarse_params(method: str, params: Any) -> None:
    """One-line ConfigError for a param ``method``'s index does not take (values are checked on building)."""
    unknown = sorted(set(params) - COARSE_PARAMS[method])
    if unknown:
        raise ConfigError(
            f"{method} index takes {', '.join(sorted(COARSE_PARAMS[method]))}; got unknown {', '.join(unknown)}"
        )


def build_hamming_index(
    codes_packed: np.ndarray, bits: int, method: str = "flat", **params: Any
) -> HammingIndex | MultiHashIndex | IVFIndex:
    """A Hamming index over packed codes: exhaustive ``flat`` (exact), ``multihash`` or ``hash`` (sub-linear).

    codes_packed: (n, ceil(bits / 8)) uint8; params: ``pad`` for every method, ``nhash``, ``b``, ``nflip``
    for ``multihash``, ``b``, ``nflip`` for ``hash``, ``nlist``, ``nprobe``, ``train_rows``, ``seed`` for ``ivf``.
    """
    if method not in COARSE_PARAMS:
        raise ConfigError(
            f"unknown Hamming index method {method!r}; expected one of: {', '.join(COARSE_METHODS)}"
        )
    check_coarse_params(method, params)
    if method == "flat":
        return HammingIndex(codes_packed, bits, **params)
    if method == "hash":
        return BinaryHashIndex(codes_packed, bits, **params)
    if method == "ivf":
        return IVFIndex(codes_packed, bits, **params)
    return MultiHashIndex(codes_packed, bits, **params)
