"""Retrieval: packed binary codes, the persistent index, and Hamming / hierarchical / L2 search."""

from deephash.retrieval.codes import (
    FAST_CODE_BYTES,
    check_packed,
    code_bytes,
    hamming_distance_matrix,
    iter_hamming_distances,
    pack_codes,
    pad_codes,
    padded_code_bytes,
    unpack_codes,
)
from deephash.retrieval.distances import exact_l2, l2_distances
from deephash.retrieval.exhaustive import euclidean_search
from deephash.retrieval.hamming import HammingIndex, HammingSearch
from deephash.retrieval.hierarchical import HierarchicalResult, PoolRule, hierarchical_search
from deephash.retrieval.index_reader import load_index
from deephash.retrieval.index_writer import IndexWriter, save_index
from deephash.retrieval.items import EncodedItems, IndexStore
from deephash.retrieval.manifest import sha256_file
from deephash.retrieval.modes import MODES
from deephash.retrieval.topk import select_topk

__all__ = [
    "FAST_CODE_BYTES",
    "check_packed",
    "code_bytes",
    "hamming_distance_matrix",
    "iter_hamming_distances",
    "pack_codes",
    "pad_codes",
    "padded_code_bytes",
    "unpack_codes",
    "MODES",
    "HammingIndex",
    "HierarchicalResult",
    "euclidean_search",
    "exact_l2",
    "HammingSearch",
    "PoolRule",
    "hierarchical_search",
    "l2_distances",
    "select_topk",
    "EncodedItems",
    "IndexStore",
    "IndexWriter",
    "load_index",
    "save_index",
    "sha256_file",
]
