"""FAISS's bundled OpenBLAS gets the kernels that match the CPU, whichever module imports FAISS first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deephash.retrieval.faiss_blas import CORETYPE_VARIABLE, cpu_flags, openblas_coretype

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}

# prints, as JSON, the kernel family each loaded OpenBLAS chose and whether the variable was left set
PROBE = """
import ctypes, json, os, sys
import {module}
cores = {{}}
for path in sorted({{line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}}):
    if not path.endswith(".so") and ".so." not in path:
        continue
    lib = ctypes.CDLL(path)
    for symbol in ("openblas_get_corename", "scipy_openblas_get_corename64_", "openblas_get_corename64_"):
        get = getattr(lib, symbol, None)
        if get is not None:
            get.restype = ctypes.c_char_p
            cores[os.path.basename(path)] = get().decode()
            break
print(json.dumps({{"cores": cores, "left": os.environ.get("{variable}"), "faiss": "faiss" in sys.modules}}))
"""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (AVX512 | {"avx2", "fma", "avx"}, "SkylakeX"),
        ({"avx2", "fma", "avx"}, "Haswell"),
        # AVX-512F alone (no BW/VL, as on Knights Landing) cannot run the SkylakeX kernels
        ({"avx512f", "avx2", "fma"}, "Haswell"),
        ({"avx2", "avx"}, None),  # AVX2 without FMA: OpenBLAS's own detection decides
        ({"sse4_2", "avx"}, None),
        (set(), None),
    ],
)
def test_coretype_follows_the_instruction_set(flags: set[str], expected: str | None) -> None:
    assert openblas_coretype(frozenset(flags)) == expected


def test_cpu_flags_reads_the_first_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 fma avx512f\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse", "avx2", "fma", "avx512f"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _probe(module: str, env: dict[str, str]) -> dict:
    code = PROBE.format(module=module, variable=CORETYPE_VARIABLE)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _faiss_cores(result: dict) -> list[str]:
    """The kernel families of the OpenBLAS libraries that came with FAISS (not numpy's scipy_openblas)."""
    return [core for name, core in result["cores"].items() if "scipy_openblas" not in name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps and /proc/cpuinfo")
@pytest.mark.parametrize(
    "module",
    [
        "deephash.retrieval",
        "deephash.search",
        "deephash.benchmarks.retrieval",
        "deephash.benchmarks.sublinear",
    ],
)
def test_faiss_blas_kernels_match_the_cpu(module: str) -> None:
    expected = openblas_coretype(cpu_flags())
    if expected is None:
        pytest.skip("this CPU has neither AVX-512 nor AVX2 + FMA: OpenBLAS's own detection applies")
    env = {key: value for key, value in os.environ.items() if key != CORETYPE_VARIABLE}
    result = _probe(module, env)
    assert result["faiss"], f"{module} no longer imports FAISS; probe another module"
    cores = _faiss_cores(result)
    if not cores:
        pytest.skip("this FAISS build does not bundle OpenBLAS")
    assert cores == [expected] * len(cores)
    assert result["left"] is None  # the variable does not leak into numpy, torch or child processes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_coretype_the_user_set_is_kept() -> None:
    result = _probe("deephash.retrieval", {**os.environ, CORETYPE_VARIABLE: "Prescott"})
    cores = _faiss_cores(result)
    if not cores:
        pytest.skip("this FAISS build does not bundle OpenBLAS")
    assert cores == ["Prescott"] * len(cores)
    assert result["left"] == "Prescott"
