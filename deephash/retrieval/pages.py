"""Memory of file-backed F7 rows: unmapping a memmap's resident pages, tensors over read-only maps, and
float16 rows widened into a reused float32 buffer.

Pages of a memory-mapped file count toward the process's resident set for as long as they stay mapped, and a
fault maps a whole page-cache folio (on current Linux up to megabytes): whatever reads a memmap releases its
pages once the rows are copied out (``release_pages``).
"""

from __future__ import annotations

import mmap
import warnings
from typing import Any

import numpy as np
import torch


def release_pages(arr: Any) -> None:
    """Unmap the resident pages of a shared ``np.memmap`` (and its views); other arrays are left alone (an
    ``F7File``'s gather unmaps its own, ``F7File.release``).

    The data stays in the file and the page cache: the next access faults it back in. A copy-on-write
    memmap (mode ``c``) is skipped, since dropping its pages would drop its private changes.
    """
    mm = getattr(arr, "_mmap", None)  # numpy keeps the mmap.mmap behind every memmap view
    if isinstance(arr, np.memmap) and arr.mode != "c" and isinstance(mm, mmap.mmap) and not mm.closed:
        mm.madvise(mmap.MADV_DONTNEED)


def read_only_tensor(arr: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(arr)`` for an array only ever read through the tensor (a memmap opened "r"),
    without torch's warning that the array is not writable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def widen(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``src`` into ``out`` (same shape), converting to ``out``'s dtype; returns ``out``.

    float16 -> float32 goes through torch, which converts with F16C vector instructions on its threads where
    numpy casts half floats one element at a time. Every value but NaN, subnormals included, converts exactly
    either way (NaN stays NaN).
    """
    if src.dtype == np.float16 and out.dtype == np.float32 and src.shape == out.shape:
        torch.from_numpy(out).copy_(read_only_tensor(src))
    else:
        np.copyto(out, src, casting="unsafe")
    return out
