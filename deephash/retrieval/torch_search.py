"""Search on a torch device (``retrieval.device``): the coarse Hamming stage and the pool scoring of
hierarchical search in torch, on ``cuda`` or, with the very same code, on ``cpu``.

Results equal those of the CPU search exactly:

* Hamming distances are integers (popcounts of 64-bit words); the k nearest are the k smallest keys
  ``distance * n + index``, which are unique, so any top-k or sort returns the (distance, index) order of
  ``deephash.retrieval.hamming.HammingIndex``.
* Hierarchical search is ``deephash.retrieval.hierarchical.hierarchical_search`` over
  :class:`TorchHammingIndex` with the device as its pool scorer (``distances.device_pair_sqdist``): the same
  pools, scored on the device to a shortlist of the exact top k, then the same exact re-rank
  (``pairs.refine``, a few rows per query) on the CPU, so the reported L2 distances are the CPU path's to
  the bit.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from deephash.retrieval import hierarchical
from deephash.retrieval.codes import check_packed, code_bytes, packed_words, padded_queries
from deephash.retrieval.distances import device_pair_sqdist
from deephash.retrieval.features import F7File
from deephash.retrieval.hamming import range_radius, split_ranges
from deephash.retrieval.rows import ScoredRows
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

DEVICES = ("cpu", "cuda")  # retrieval.device: cpu runs the numpy/FAISS path, cuda this module
_BLOCK_CELLS = 1 << 24  # query x database distance cells per block (128 MB of int64 keys)
_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def torch_device(name: str) -> torch.device:
    """The device of ``retrieval.device``; ConfigError when it is unknown or absent on this machine."""
    if name not in DEVICES:
        raise ConfigError(f"unknown retrieval.device {name!r}; expected one of: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("retrieval.device=cuda but torch sees no CUDA device; use retrieval.device=cpu")
    return torch.device(name)


def code_words(packed: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(n, c) uint8 packed codes -> (n, ceil(c / 8)) int64 words on ``device`` (``codes.packed_words``, copied)."""
    return torch.tensor(packed_words(packed).view(np.int64), device=device)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 (SWAR; each shift is masked, so arithmetic shifts are harmless)."""
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56  # int64 products wrap; the top byte holds the count (< 128)


def hamming_distances(query_words: torch.Tensor, db_words: torch.Tensor) -> torch.Tensor:
    """(b, w) and (n, w) int64 words -> (b, n) int64 Hamming distances."""
    dist = torch.zeros((len(query_words), len(db_words)), dtype=torch.int64, device=db_words.device)
    for w in range(db_words.shape[1]):
        dist += popcount(query_words[:, w, None] ^ db_words[None, :, w])
    return dist


class TorchHammingIndex:
    """Exact Hamming search on a torch device; the ``HammingSearch`` protocol with the results of
    ``hamming.HammingIndex`` (numpy in, numpy out).

    codes_packed: (n, ceil(bits / 8)) uint8, kept on ``device`` as int64 words.
    """

    def __init__(self, codes_packed: np.ndarray, bits: int, device: torch.device | str = "cpu") -> None:
        self.bits = check_int(bits, "bits")
        self.codes = check_packed(codes_packed, self.bits, "database codes")
        self.code_bytes = code_bytes(self.bits)
        self.device = torch.device(device)
        self.words = code_words(self.codes, self.device)
        self._idx = torch.arange(len(self.codes), dtype=torch.int64, device=self.device)

    @property
    def ntotal(self) -> int:
        return len(self.codes)

    def _blocks(self, query_packed: np.ndarray):
        """(start, keys (b, n) int64 = distance * n + index) per block of validated queries."""
        queries = padded_queries(query_packed, self.bits, self.code_bytes)
        words = code_words(queries, self.device)
        step = max(1, _BLOCK_CELLS // max(1, self.ntotal))
        for start in range(0, len(words), step):
            yield start, hamming_distances(words[start : start + step], self.words) * self.ntotal + self._idx

    def search(self, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like ``HammingIndex.search``: (dist (q, k) int32, idx (q, k) int64), -1 beyond the database."""
        k, n = check_int(k, "k"), self.ntotal
        q = len(query_packed)
        dist, idx = np.full((q, k), -1, np.int32), np.full((q, k), -1, np.int64)
        kk = min(k, n)
        for start, keys in self._blocks(query_packed):
            if kk == 0:
                break
            top = torch.topk(keys, kk, dim=1, largest=False, sorted=True).values.cpu().numpy()
            dist[start : start + len(top), :kk], idx[start : start + len(top), :kk] = top // n, top % n
        return dist, idx

    def range_search_flat(self, query_packed: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        """Like ``HammingIndex.range_search_flat``: (lims, dist int32, idx int64) by (query, distance, index)."""
        radius, n = range_radius(radius, self.bits), self.ntotal
        counts, keys_found = [], []
        for _, keys in self._blocks(query_packed):
            inside = keys < (radius + 1) * n
            keys = torch.sort(torch.where(inside, keys, torch.iinfo(torch.int64).max), dim=1).values
            count = inside.sum(dim=1)
            keys_found.append(
                keys[torch.arange(keys.shape[1], device=keys.device) < count[:, None]].cpu().numpy()
            )
            counts.append(count.cpu().numpy())
        counts_all = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        found = np.concatenate(keys_found) if keys_found else np.zeros(0, np.int64)
        lims = np.r_[0, np.cumsum(counts_all)].astype(np.int64)
        return lims, (found // n).astype(np.int32), found % n

    def range_search(self, query_packed: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return split_ranges(self, query_packed, radius)


def hierarchical_search(
    index: TorchHammingIndex,
    db_f7: np.ndarray | F7File,
    query_packed: np.ndarray,
    query_f7: np.ndarray,
    k: int,
    pool: hierarchical.PoolRule | None = None,
    *,
    chunk_size: int = 65536,
) -> hierarchical.HierarchicalResult:
    """``hierarchical.hierarchical_search`` with the coarse stage and the pool scoring on ``index.device``.

    The pools' distinct F7 rows are read once per block (the sorted gather of the CPU path), moved to the
    device and scored there against their queries; the exact re-rank of each query's shortlist follows
    on the CPU. Same arguments (``pool`` None: ``PoolRule()``) and results as the CPU search. A ``ScoredRows``
    database (PQ codes, shards) scores its pools itself, on the CPU.
    """
    return hierarchical.hierarchical_search(
        index,
        db_f7,
        query_packed,
        query_f7,
        k,
        pool or hierarchical.PoolRule(),
        chunk_size=chunk_size,
        pool_scorer=None if isinstance(db_f7, ScoredRows) else partial(device_pair_sqdist, index.device),
    )


__all__ = [
    "DEVICES",
    "TorchHammingIndex",
    "code_words",
    "hamming_distances",
    "hierarchical_search",
    "torch_device",
]
