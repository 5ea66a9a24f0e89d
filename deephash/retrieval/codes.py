"""Packed binary codes: packing, zero padding to FAISS's fast code sizes, exact Hamming distances.

Codes are stored as ``numpy.packbits(codes, axis=1)``: big-endian bit order within a byte, the last
byte zero padded, ``uint8 (n, ceil(bits / 8))``. Appending zero bytes (or zero padding bits) leaves
every Hamming distance unchanged, which is what lets the search pad codes to a size FAISS has a
specialised kernel for.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, IndexFormatError

# faiss/utils/hamming_distance/hamming_computer.h (``with_HammingComputer``) and hamdis-inl.h
# (``dispatch_HammingComputer``) switch on the code size: 4 and 8 bytes get a single popcount on a
# 32/64-bit word, 16/20/32/64 bytes get unrolled (SIMD on AVX2/AVX512/NEON builds) kernels; any other
# size falls to HammingComputerDefault, which loops over 8-byte words and then finishes byte by byte.
FAST_CODE_BYTES: tuple[int, ...] = (4, 8, 16, 20, 32, 64)

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # numpy >= 2.0
_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_BLOCK_CELLS = 1 << 22  # query x database x word cells per block of the distance computation


def code_bytes(bits: int) -> int:
    """Bytes of one packed code: ``ceil(bits / 8)``."""
    return (check_int(bits, "bits") + 7) // 8


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """codes: (n, bits) bool or 0/1 integers -> (n, ceil(bits / 8)) uint8, big-endian, zero padded."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ConfigError(f"expected codes of shape (n, bits), got shape {codes.shape}")
    if codes.dtype != np.bool_:
        if not np.issubdtype(codes.dtype, np.integer) or (
            codes.size and (codes.min() < 0 or codes.max() > 1)
        ):
            raise ConfigError(f"expected binary codes (bool or 0/1 integers), got {codes.dtype} values")
    return np.packbits(codes.astype(bool, copy=False), axis=1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """packed: (n, >= ceil(bits / 8)) uint8 -> (n, bits) bool (padding bits and bytes dropped)."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] * 8 < bits:
        raise ConfigError(
            f"expected packed uint8 codes (n, >= {code_bytes(bits)}), got {packed.dtype} {packed.shape}"
        )
    return np.unpackbits(packed, axis=1, count=bits).astype(bool)


def check_packed(packed: np.ndarray, bits: int, name: str = "codes") -> np.ndarray:
    """Validate packed codes for ``bits``-bit codes; returns them C-contiguous.

    packed: (n, ceil(bits / 8)) uint8 whose padding bits in the last byte are zero (a nonzero padding
    bit would silently add to Hamming distances).
    """
    packed = np.asarray(packed)
    nbytes = code_bytes(bits)
    if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != nbytes:
        raise IndexFormatError(
            f"{name} are {packed.dtype} {packed.shape}; {bits}-bit codes are packed as (n, {nbytes}) uint8"
        )
    spare = nbytes * 8 - bits
    if spare and len(packed) and (packed[:, -1] & np.uint8((1 << spare) - 1)).any():
        raise IndexFormatError(
            f"{name} have nonzero padding bits: pack {bits}-bit codes with numpy.packbits(codes, axis=1)"
        )
    return np.ascontiguousarray(packed)


def padded_code_bytes(nbytes: int) -> int:
    """Smallest size in FAST_CODE_BYTES that holds ``nbytes``; above 64, the next multiple of 8.

    HammingComputerDefault reads 8-byte words and finishes with single bytes, so a multiple of 8
    keeps it on the word loop.
    """
    if nbytes <= 0:
        raise ConfigError(f"code size must be positive, got {nbytes} bytes")
    for size in FAST_CODE_BYTES:
        if size >= nbytes:
            return size
    return -(-nbytes // 8) * 8


def pad_codes(packed: np.ndarray, nbytes: int) -> np.ndarray:
    """packed: (n, c) uint8 -> (n, nbytes) uint8 with zero bytes appended (distances unchanged)."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ConfigError(f"expected packed uint8 codes (n, bytes), got {packed.dtype} {packed.shape}")
    if nbytes < packed.shape[1]:
        raise ConfigError(f"cannot pad {packed.shape[1]}-byte codes to {nbytes} bytes")
    if nbytes == packed.shape[1]:
        return np.ascontiguousarray(packed)
    out = np.zeros((packed.shape[0], nbytes), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out


def padded_queries(query_packed: np.ndarray, bits: int, padded_bytes: int) -> np.ndarray:
    """Validated packed queries (q, ceil(bits / 8)) uint8, zero padded to (q, padded_bytes) like the index."""
    queries = np.asarray(query_packed)
    nbytes = code_bytes(bits)
    if queries.ndim != 2 or queries.dtype != np.uint8 or queries.shape[1] != nbytes:
        raise IndexFormatError(
            f"queries are {queries.dtype} {queries.shape} but the index holds {bits}-bit codes "
            f"packed as (n, {nbytes}) uint8"
        )
    return pad_codes(check_packed(queries, bits, "query codes"), padded_bytes)


def packed_words(packed: np.ndarray) -> np.ndarray:
    """(n, c) uint8 packed codes -> (n, ceil(c / 8)) uint64 words, zero padded: the same Hamming distances
    with 8x fewer popcounts. (A view of ``packed`` when c is a multiple of 8 and it is C-contiguous.)"""
    return pad_codes(packed, -(-packed.shape[1] // 8) * 8).view(np.uint64)


def _popcount_sum(x: np.ndarray) -> np.ndarray:
    """x: (..., w) unsigned -> (...) int32, the number of set bits along the last axis."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int32)
    return _POPCOUNT_TABLE[x.view(np.uint8)].sum(axis=-1, dtype=np.int32)


def iter_hamming_distances(
    query_packed: np.ndarray, db_packed: np.ndarray, chunk: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, dist)`` blocks of the exact Hamming distance matrix, database-chunk by chunk.

    query_packed: (q, c) uint8; db_packed: (n, c) uint8 -> blocks ``dist: (q, m) int32`` for database
    rows ``start:start + m``. ``chunk`` (database rows per block) defaults to about 4M cells per block.
    """
    query_packed, db_packed = np.asarray(query_packed), np.asarray(db_packed)
    if query_packed.ndim != 2 or db_packed.ndim != 2 or query_packed.shape[1] != db_packed.shape[1]:
        raise ConfigError(
            f"query and database codes must be (q, c) and (n, c) uint8, got {query_packed.shape} and {db_packed.shape}"
        )
    if query_packed.dtype != np.uint8 or db_packed.dtype != np.uint8:
        raise ConfigError(f"packed codes must be uint8, got {query_packed.dtype} and {db_packed.dtype}")
    query_words = packed_words(query_packed)
    nwords = query_words.shape[1]
    n = db_packed.shape[0]
    if chunk is None:
        chunk = max(1, _BLOCK_CELLS // max(1, len(query_words) * nwords))
    if chunk <= 0:
        raise ConfigError(f"chunk must be positive, got {chunk}")
    # Queries are split too, so one block's XOR never exceeds ~_BLOCK_CELLS words.
    qstep = max(1, _BLOCK_CELLS // (chunk * nwords))
    for start in range(0, n, chunk):
        db_words = packed_words(db_packed[start : start + chunk])
        out = np.empty((len(query_words), len(db_words)), dtype=np.int32)
        for q0 in range(0, len(query_words), qstep):
            xor = np.bitwise_xor(query_words[q0 : q0 + qstep, None, :], db_words[None, :, :])
            out[q0 : q0 + qstep] = _popcount_sum(xor)
        yield start, out


def hamming_distance_matrix(
    query_packed: np.ndarray, db_packed: np.ndarray, chunk: int | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Exact Hamming distances between packed codes.

    query_packed: (q, c) uint8; db_packed: (n, c) uint8 -> (q, n) int32. The computation runs in
    blocks (see ``iter_hamming_distances``); ``out`` may be a preallocated (q, n) int32 array or memmap
    for matrices too large for RAM.
    """
    q, n = np.shape(query_packed)[0], np.shape(db_packed)[0]
    if out is None:
        out = np.empty((q, n), dtype=np.int32)
    elif out.shape != (q, n):
        raise ConfigError(f"out must have shape {(q, n)}, got {out.shape}")
    for start, block in iter_hamming_distances(query_packed, db_packed, chunk):
        out[:, start : start + block.shape[1]] = block
    return out
