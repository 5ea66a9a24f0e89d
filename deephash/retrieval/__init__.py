"""Retrieval: packed binary codes, the persistent index store, and Hamming / hierarchical / L2 search."""

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
from deephash.retrieval.search import (
    HammingIndex,
    HammingSearch,
    HierarchicalResult,
    PoolRule,
    euclidean_search,
    exact_l2,
    hierarchical_search,
    l2_distances,
    select_topk,
)
from deephash.retrieval.store import (
    EncodedItems,
    IndexStore,
    IndexWriter,
    load_index,
    save_index,
    sha256_file,
)

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
