"""Integrity of F7 rows: a CRC-32 per block of rows, and the test for NaN and inf.

An index stores the CRC-32 of each block of ``block_rows`` F7 rows (``block_checksums``); a reader checks a
block the first time it touches it, and every row it hands out for NaN and inf (``non_finite_rows``), so a
flipped byte or a NaN row is an ``IndexFormatError`` instead of a silently different ranking.
"""

from __future__ import annotations

import numpy as np
from zlib_ng import zlib_ng

_CHECK_BYTES = 1 << 20  # rows tested for NaN/inf at a time

# zlib's CRC-32 (the same polynomial and values) computed with carry-less multiplies: checking the rows a
# search reads first must not become the largest part of a search on a freshly loaded index.
crc32 = zlib_ng.crc32


def non_finite_rows(rows: np.ndarray) -> np.ndarray:
    """Positions of the rows of ``rows`` (m, d) holding NaN or inf, tested ``_CHECK_BYTES`` at a time so the
    temporaries stay small. float16 is tested on its bits (an all-ones exponent), which numpy does far faster
    than ``isfinite`` on emulated half floats."""
    if not np.issubdtype(rows.dtype, np.floating) or rows.size == 0:
        return np.zeros(0, np.int64)
    rows = rows.reshape(len(rows), -1)
    step = max(1, _CHECK_BYTES // max(1, rows[0].nbytes))
    found = []
    for s in range(0, len(rows), step):
        part = rows[s : s + step]
        if part.dtype == np.float16:
            bad = ((part.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
        else:
            bad = ~np.isfinite(part).all(axis=1)
        found.append(s + np.flatnonzero(bad))
    return np.concatenate(found)


def block_checksums(data: np.ndarray, block_rows: int) -> np.ndarray:
    """CRC-32 of each block of ``block_rows`` rows of ``data`` (m, d) (the last block may be shorter):
    ``(ceil(m / block_rows),) uint32``."""
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    step = block_rows * (view.nbytes // max(1, len(data)))
    return np.array([crc32(view[s : s + step]) for s in range(0, view.nbytes, step)], np.uint32)
