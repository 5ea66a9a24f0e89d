"""Small synthetic index items for the fault tests, importable by their child processes without the
heavy test modules (a killed or failing writer runs in a process of its own)."""

from __future__ import annotations

import numpy as np

from deephash.retrieval.codes import pack_codes

N, BITS, DIM, CLASSES = 300, 16, 64, 5
BLOCK_ROWS = 64  # F7 rows under one checksum in these tests (the tests shrink the check blocks to this)


def make_items(seed: int = 0, n: int = N) -> dict:
    """``save_index`` keyword arguments: n random items with ids ``item-<seed>-<row>``."""
    rng = np.random.default_rng(seed)
    return dict(
        codes_packed=pack_codes(rng.random((n, BITS)) < 0.5),
        f7=rng.random((n, DIM), dtype=np.float32),
        labels=rng.integers(0, CLASSES, n),
        ids=[f"item-{seed}-{i}" for i in range(n)],
        bits=BITS,
    )
