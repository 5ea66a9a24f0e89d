"""The torch device path (retrieval.device) against the CPU path, run on CPU tensors: the same torch code
runs on a GPU. Hamming results, pools and rankings must be identical; metrics agree to 1e-12."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
from deephash.retrieval import exhaustive, hierarchical, torch_search
from deephash.retrieval.checksums import block_checksums
from deephash.retrieval.codes import pack_codes
from deephash.retrieval.features import F7File
from deephash.retrieval.hamming import HammingIndex
from deephash.retrieval.hierarchical import PoolRule
from deephash.retrieval.torch_search import TorchHammingIndex, popcount, torch_device
from deephash.utils.errors import ConfigError


def tied(rng: np.random.Generator, n: int, bits: int, centres: int = 8) -> np.ndarray:
    """(n, bits) bool copies of a few centres with 0-2 flipped bits: Hamming distances tie constantly."""
    codes = (rng.random((centres, bits)) < 0.5)[rng.integers(0, centres, n)]
    for _ in range(2):
        flip = rng.random(n) < 0.5
        codes[flip, rng.integers(0, bits, flip.sum())] ^= True
    return codes


def test_popcount_of_every_bit_pattern_class() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 1000, dtype=np.int64, endpoint=True)
    values = np.r_[values, 0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    expected = [bin(int(v) & (2**64 - 1)).count("1") for v in values]
    assert popcount(torch.from_numpy(values)).tolist() == expected


@pytest.mark.parametrize("bits", [12, 48, 64, 128, 200])
def test_torch_index_equals_hamming_index(bits: int) -> None:
    rng = np.random.default_rng(bits)
    db = pack_codes(tied(rng, 700, bits))
    queries = np.vstack([db[:3], pack_codes(tied(rng, 20, bits)), pack_codes(rng.random((4, bits)) < 0.5)])
    cpu, dev = HammingIndex(db, bits), TorchHammingIndex(db, bits, "cpu")
    assert dev.ntotal == cpu.ntotal and dev.code_bytes == cpu.code_bytes
    for k in (1, 17, 300, 700, 900):
        for got, want in zip(dev.search(queries, k), cpu.search(queries, k)):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
    for radius in (0, 2, 5, bits):
        for got, want in zip(dev.range_search_flat(queries, radius), cpu.range_search_flat(queries, radius)):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def test_torch_index_blocks_give_the_same_results(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    db, queries = pack_codes(tied(rng, 300, 48)), pack_codes(tied(rng, 40, 48))
    whole = TorchHammingIndex(db, 48).search(queries, 50)
    monkeypatch.setattr(torch_search, "_BLOCK_CELLS", 7 * 300)  # 7 queries per block
    blocked = TorchHammingIndex(db, 48)
    for got, want in zip(blocked.search(queries, 50), whole):
        np.testing.assert_array_equal(got, want)
    lims, dist, idx = blocked.range_search_flat(queries, 3)
    want = HammingIndex(db, 48).range_search_flat(queries, 3)
    for got, exp in zip((lims, dist, idx), want):
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize(
    "k,rule", [(5, PoolRule(2, 5, 400, 120)), (30, PoolRule(1, 30, 900, 200)), (3, PoolRule(48, 1, 900, 900))]
)
def test_device_hierarchical_search_equals_cpu_path(k: int, rule: PoolRule, tmp_path: Path) -> None:
    """Also on a loaded index's F7 file (checked, read by ``F7File.read`` and ``gather``)."""
    rng = np.random.default_rng(21)
    db_bits = tied(rng, 900, 48, centres=6)
    db_f7 = rng.standard_normal((900, 16)).astype(np.float16)
    db_f7[300:360] = db_f7[5]  # a tie group wider than the shortlist slack
    q_bits = np.vstack([db_bits[[5, 300, 17]], tied(rng, 20, 48, centres=6), rng.random((5, 48)) < 0.5])
    q_f7 = np.vstack(
        [db_f7[[5, 300, 17]].astype(np.float32), rng.standard_normal((25, 16)).astype(np.float32)]
    )
    codes, queries = pack_codes(db_bits), pack_codes(q_bits)
    want = hierarchical.hierarchical_search(
        HammingIndex(codes, 48), db_f7, queries, q_f7, k, rule, chunk_size=64
    )
    got = torch_search.hierarchical_search(
        TorchHammingIndex(codes, 48, "cpu"), db_f7, queries, q_f7, k, rule, chunk_size=64
    )
    np.save(tmp_path / "f7.npy", db_f7)
    checked = F7File(tmp_path / "f7.npy", checksums=block_checksums(db_f7, 1), block_rows=1)
    from_file = torch_search.hierarchical_search(
        TorchHammingIndex(codes, 48, "cpu"), checked, queries, q_f7, k, rule, chunk_size=64
    )
    for result in (got, from_file):
        for field in ("idx", "l2", "hamming", "pool_sizes"):
            np.testing.assert_array_equal(getattr(result, field), getattr(want, field))
    assert checked._verified.any()
    assert (want.pool_sizes > exhaustive._shortlist(k)).any()  # pools were scored, not just passed on


def test_device_hierarchical_search_equals_cpu_path_on_near_ties_beyond_the_slack() -> None:
    # 4096-d rows with squared norms ~1e5, all within a hair of one centre: the fast distances' error
    # (~200 in squared distance) covers the whole pool, so a fixed shortlist of k + 16 would cut through
    # hundreds of near-ties and disagree with the CPU path's exact pool ranking
    rng = np.random.default_rng(3)
    centre = np.maximum(rng.normal(2.0, 6.0, 4096), 0)
    db_f7 = (centre + rng.normal(0, 0.002, (400, 4096))).astype(np.float32)
    q_f7 = (centre + rng.normal(0, 0.002, (6, 4096))).astype(np.float32)
    codes = pack_codes(np.zeros((400, 48), bool))
    queries = pack_codes(np.zeros((6, 48), bool))
    rule = PoolRule(2, 1, 1000, 400)  # every pool is the whole database
    want = hierarchical.hierarchical_search(HammingIndex(codes, 48), db_f7, queries, q_f7, 10, rule)
    got = torch_search.hierarchical_search(
        TorchHammingIndex(codes, 48, "cpu"), db_f7, queries, q_f7, 10, rule
    )
    for field in ("idx", "l2", "hamming", "pool_sizes"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    l2 = np.sqrt(((q_f7[:, None].astype(np.float64) - db_f7[None].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_array_equal(want.idx, np.argsort(l2, axis=1, kind="stable")[:, :10])


@pytest.mark.parametrize("bits,radius", [(12, 2), (48, 3), (128, 10)])
def test_device_hamming_metrics_equal_cpu_metrics(bits: int, radius: int) -> None:
    rng = np.random.default_rng(bits + 1)
    db_codes, q_codes = pack_codes(tied(rng, 800, bits)), pack_codes(tied(rng, 37, bits))
    db_labels, q_labels = rng.integers(0, 5, 800), rng.integers(0, 6, 37)  # label 5: no relevant items
    options = {
        "ks": (1, 10, 100, 1000),
        "map_at": 100,
        "radius": radius,
        "curve_ks": (1, 5, 50, 900),
        "top_n": 10,
    }
    want = hamming_retrieval_metrics(q_codes, db_codes, q_labels, db_labels, bits, **options)
    got = hamming_retrieval_metrics(q_codes, db_codes, q_labels, db_labels, bits, device="cpu", **options)
    assert set(got.metrics) == set(want.metrics)
    for key in ("mAP", "mAP@100", f"precision@r{radius}"):
        assert got.metrics[key] == pytest.approx(want.metrics[key], abs=1e-12, rel=0)
    assert got.metrics["precision@k"] == want.metrics["precision@k"]  # ratios of the same integer counts
    np.testing.assert_array_equal(got.top, want.top)
    np.testing.assert_array_equal(got.curve, want.curve)
    for key in ("radius", "precision", "recall"):
        np.testing.assert_array_equal(got.pr[key], want.pr[key])


def test_device_names_are_checked() -> None:
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown retrieval.device 'gpu'; expected one of: cpu, cuda"):
        torch_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="retrieval.device=cuda but torch sees no CUDA device"):
            torch_device("cuda")


def test_config_check_refuses_an_unknown_device() -> None:
    from omegaconf import OmegaConf

    from deephash.config import validate_retrieval

    retrieval = OmegaConf.load(Path(__file__).parents[1] / "conf" / "retrieval" / "default.yaml")
    assert retrieval.device == "cpu"
    validate_retrieval(retrieval)
    retrieval.device = "tpu"
    with pytest.raises(ConfigError, match="unknown retrieval.device 'tpu'"):
        validate_retrieval(retrieval)
