"""FAISS, imported so that its bundled BLAS uses kernels that match the CPU.

The faiss-cpu wheels bundle their own OpenBLAS (0.3.15 in faiss-cpu 1.15), whose run-time CPU detection
predates Sapphire and Emerald Rapids: there it falls back to its generic "Prescott" SSE3 kernels, far slower
than the vector kernels numpy's own OpenBLAS uses for the GEMM behind ``faiss.knn`` (exhaustive L2 search).
OpenBLAS reads ``OPENBLAS_CORETYPE`` when it is loaded, so FAISS is imported with the kernel family
the CPU's instruction set supports (AVX-512 -> SkylakeX, AVX2 + FMA -> Haswell), which are also the kernels
that OpenBLAS picks on every CPU it recognises. numpy is imported first, so its newer OpenBLAS keeps its
own choice; the variable is removed again afterwards, and a value the user set is left alone.

Every module of this package takes ``faiss`` from here (``from deephash.retrieval.faiss_blas import faiss``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy  # noqa: F401  (its OpenBLAS is loaded, and detects the CPU, before the variable is set)

CORETYPE_VARIABLE = "OPENBLAS_CORETYPE"
_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})  # SkylakeX kernels
_AVX2 = frozenset({"avx2", "fma"})  # Haswell kernels


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU in ``cpuinfo`` (Linux); empty where it cannot be read."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def openblas_coretype(flags: frozenset[str]) -> str | None:
    """The OpenBLAS kernel family for a CPU with these flags, or None to leave OpenBLAS's detection alone."""
    if _AVX512 <= flags:
        return "SkylakeX"
    if _AVX2 <= flags:
        return "Haswell"
    return None


def _import_faiss():  # noqa: ANN202  (the faiss module)
    settled = (
        "faiss" in sys.modules or CORETYPE_VARIABLE in os.environ or not sys.platform.startswith("linux")
    )
    core = None if settled else openblas_coretype(cpu_flags())
    if core is None:
        import faiss

        return faiss
    os.environ[CORETYPE_VARIABLE] = core
    try:
        import faiss
    finally:
        del os.environ[CORETYPE_VARIABLE]
    return faiss


faiss = _import_faiss()
