"""Multi-index hashing against the exact flat index and brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest

from deephash.benchmarks.sublinear import recall_at
from deephash.retrieval import HammingIndex, PoolRule, hierarchical_search, sublinear
from deephash.retrieval.codes import pack_codes
from deephash.retrieval.sublinear import BinaryHashIndex, MultiHashIndex, build_hamming_index
from deephash.utils.errors import ConfigError, IndexFormatError


def clustered(rng: np.random.Generator, n: int, bits: int, centres: int = 40, p: float = 0.05) -> np.ndarray:
    """(n, bits) bool: copies of a few centres with each bit flipped with probability p."""
    base = rng.random((centres, bits)) < 0.5
    return base[rng.integers(0, centres, n)] ^ (rng.random((n, bits)) < p)


def near(rng: np.random.Generator, db_bits: np.ndarray, q: int, flips: int = 2) -> np.ndarray:
    """(q, bits) bool: random database rows with ``flips`` bits flipped (a bit may flip twice)."""
    codes = db_bits[rng.integers(0, len(db_bits), q)].copy()
    codes[np.arange(q)[:, None], rng.integers(0, db_bits.shape[1], (q, flips))] ^= True
    return codes


def brute_distances(q_bits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    return (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1)


@pytest.fixture(params=[12, 20, 48, 128])
def data(request: pytest.FixtureRequest) -> tuple[int, np.ndarray, np.ndarray]:
    bits = request.param
    rng = np.random.default_rng(bits)
    db = clustered(rng, 3000, bits)
    return bits, db, np.vstack([near(rng, db, 40), rng.random((5, bits)) < 0.5])


def layouts(bits: int) -> list[tuple[type, dict]]:
    """Index classes and settings covering the default layout, explicit ones, nflip 0-2 and a single table."""
    b = min(16, bits // 2)
    return [
        (MultiHashIndex, {}),
        (MultiHashIndex, {"nhash": bits // b, "b": b, "nflip": 0}),
        (MultiHashIndex, {"nhash": 2, "b": b, "nflip": 2}),
        (BinaryHashIndex, {"b": min(bits, 12), "nflip": 1}),
    ]


def test_range_search_within_exact_radius_equals_flat(data) -> None:
    bits, db_bits, q_bits = data
    db, queries = pack_codes(db_bits), pack_codes(q_bits)
    flat = HammingIndex(db, bits)
    dist = brute_distances(q_bits, db_bits)
    for cls, params in layouts(bits):
        index = cls(db, bits, **params)
        nhash, nflip = (1 if cls is BinaryHashIndex else index.nhash), index.nflip
        assert index.exact_radius == nhash * (nflip + 1) - 1
        for radius in {0, index.exact_radius // 2, index.exact_radius}:
            expected, got = flat.range_search(queries, radius), index.range_search(queries, radius)
            assert len(got) == len(queries)
            for (exp_d, exp_i), (got_d, got_i) in zip(expected, got):
                np.testing.assert_array_equal(got_i, exp_i)
                np.testing.assert_array_equal(got_d, exp_d)
                assert got_d.dtype == np.int32 and got_i.dtype == np.int64
        if index.exact_radius >= 2:  # the 40 near queries have their source item within 2 bits
            assert sum(len(i) for _, i in index.range_search(queries, index.exact_radius)) >= 40
        # beyond the guaranteed radius: a subset of the exact answer, still ordered by (distance, index)
        wide = 3 * index.exact_radius + 3
        for row, (_, exp_i), (got_d, got_i) in zip(
            dist, flat.range_search(queries, wide), index.range_search(queries, wide)
        ):
            assert set(got_i) <= set(exp_i)
            np.testing.assert_array_equal(got_d, row[got_i])
            assert (np.lexsort((got_i, got_d)) == np.arange(len(got_i))).all()


def test_substrings_are_consecutive_code_bits(data) -> None:
    """With nflip 0, the candidates are exactly the items equal to the query on a whole substring."""
    bits, db_bits, q_bits = data
    for nhash, b in {(1, min(bits, 20)), (2, min(bits // 2, 20)), (bits // 4, 4), (3, min(bits // 3, 20))}:
        index = MultiHashIndex(pack_codes(db_bits), bits, nhash=nhash, b=b, nflip=0)
        same = np.zeros((len(q_bits), len(db_bits)), bool)
        for h in range(nhash):
            sl = slice(h * b, (h + 1) * b)
            same |= (q_bits[:, None, sl] == db_bits[None, :, sl]).all(axis=-1)
        for row, (_, got_i) in zip(same, index.range_search(pack_codes(q_bits), bits)):
            np.testing.assert_array_equal(np.sort(got_i), np.flatnonzero(row))
        np.testing.assert_array_equal(index.candidate_counts(pack_codes(q_bits)), same.sum(axis=1))


@pytest.mark.parametrize("k", [1, 5, 60])
def test_knn_is_the_best_of_the_candidates(data, k: int) -> None:
    bits, db_bits, q_bits = data
    db, queries = pack_codes(db_bits), pack_codes(q_bits)
    dist = brute_distances(q_bits, db_bits)
    exact_d, exact_i = HammingIndex(db, bits).search(queries, k)
    for cls, params in layouts(bits):
        index = cls(db, bits, **params)
        got_d, got_i = index.search(queries, k)
        assert got_d.shape == got_i.shape == (len(queries), k)
        assert got_d.dtype == np.int32 and got_i.dtype == np.int64
        for j, (_, cand_i) in enumerate(index.range_search(queries, bits)):
            # the k smallest (distance, index) pairs of the whole shortlist, then -1 padding
            m = min(k, len(cand_i))
            np.testing.assert_array_equal(got_i[j, :m], cand_i[:m])
            np.testing.assert_array_equal(got_d[j, :m], dist[j, cand_i[:m]])
            assert (got_i[j, m:] == -1).all() and (got_d[j, m:] == -1).all()
        # exact wherever the true k-th neighbour lies within the guaranteed radius
        easy = exact_d[:, -1] <= index.exact_radius
        np.testing.assert_array_equal(got_i[easy], exact_i[easy])
        np.testing.assert_array_equal(got_d[easy], exact_d[easy])
    # the default layout on clustered data: high tie-aware recall at small k (on 48 bits or more: shorter
    # codes get a single 16-bit-or-less table that finds little beyond one flipped bit)
    if k <= 5 and bits >= 48:
        got_d, got_i = MultiHashIndex(db, bits).search(queries[:40], k)
        assert recall_at(k, got_d, got_i, exact_d[:40], exact_i[:40])["recall"] >= 0.9


def test_knn_batches_and_sorting_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Query batching, the linear-time cut of long shortlists and the lexsort fallback agree."""
    rng = np.random.default_rng(3)
    db_bits = clustered(rng, 4000, 64, centres=8)
    db, queries = pack_codes(db_bits), pack_codes(near(rng, db_bits, 300))
    index = MultiHashIndex(db, 64, nhash=4, b=16, nflip=1)
    assert np.median(index.candidate_counts(queries)) > 200  # most shortlists are longer than k
    expected = index.search(queries, 50)
    monkeypatch.setattr(sublinear, "_FIRST_BATCH", 1)
    monkeypatch.setattr(sublinear, "_RESULT_BUDGET", 4000)  # query batches of a few queries
    monkeypatch.setattr(sublinear, "_PARTITION_ROWS", 0)
    monkeypatch.setattr(sublinear, "_PACKED_KEYS", 0)
    for a, b in zip(index.search(queries, 50), expected):
        np.testing.assert_array_equal(a, b)


def test_missing_slots_and_empty_inputs() -> None:
    rng = np.random.default_rng(4)
    db_bits = rng.random((4000, 64)) < 0.5  # uniform: few candidates beyond the source item
    db, queries = pack_codes(db_bits), pack_codes(near(rng, db_bits, 30))
    dist, idx = MultiHashIndex(db, 64, nhash=4, b=16, nflip=0).search(queries, 50)
    assert (idx[:, 0] >= 0).all() and (idx == -1).any()
    np.testing.assert_array_equal(idx == -1, dist == -1)
    empty = MultiHashIndex(db[:0], 64)
    assert empty.ntotal == 0 and (empty.search(queries[:3], 4)[1] == -1).all()
    assert empty.range_search(queries[:2], 64)[1][1].shape == (0,)
    assert MultiHashIndex(db, 64).search(queries[:0], 5)[0].shape == (0, 5)


def test_nflip_is_a_search_time_setting() -> None:
    rng = np.random.default_rng(14)
    db_bits = clustered(rng, 2000, 48)
    db, queries = pack_codes(db_bits), pack_codes(near(rng, db_bits, 30))
    index = MultiHashIndex(db, 48, nhash=3, b=16, nflip=0)
    narrow = index.candidate_counts(queries)
    index.nflip = 2
    assert index.exact_radius == 8
    wide = index.candidate_counts(queries)
    assert (wide >= narrow).all() and wide.sum() > narrow.sum()
    fresh = MultiHashIndex(db, 48, nhash=3, b=16, nflip=2)
    np.testing.assert_array_equal(fresh.candidate_counts(queries), wide)
    assert index.memory_bytes() >= 2000 * (8 + 3 * 8)


def test_hierarchical_search_accepts_multihash() -> None:
    """Every query has its source item within the radius, so each pool is the exact radius pool."""
    rng = np.random.default_rng(5)
    db_bits = clustered(rng, 2000, 48)
    q_bits = near(rng, db_bits, 20, flips=1)
    db, queries = pack_codes(db_bits), pack_codes(q_bits)
    f7 = rng.standard_normal((2000, 16)).astype(np.float16)
    query_f7 = rng.standard_normal((20, 16)).astype(np.float32)
    index = MultiHashIndex(db, 48, nflip=1)
    limits = PoolRule(radius=index.exact_radius, min_pool=1, max_pool=2000, pool_size=30)
    exact = hierarchical_search(HammingIndex(db, 48), f7, queries, query_f7, 10, limits)
    got = hierarchical_search(index, f7, queries, query_f7, 10, limits)
    assert (exact.pool_sizes > 30).any()  # some pools need the range search
    for name in ("idx", "l2", "hamming", "pool_sizes"):
        np.testing.assert_array_equal(getattr(got, name), getattr(exact, name))


def test_build_hamming_index() -> None:
    rng = np.random.default_rng(6)
    db_bits = clustered(rng, 500, 20)
    db, queries = pack_codes(db_bits), pack_codes(near(rng, db_bits, 5))
    flat = build_hamming_index(db, 20)
    assert type(flat) is HammingIndex and flat.padded_bytes == 4
    assert build_hamming_index(db, 20, pad=False).padded_bytes == 3
    for a, b in zip(flat.search(queries, 7), HammingIndex(db, 20).search(queries, 7)):
        np.testing.assert_array_equal(a, b)
    multi = build_hamming_index(db, 20, "multihash", nhash=2, b=8, nflip=1)
    assert type(multi) is MultiHashIndex and (multi.nhash, multi.b, multi.exact_radius) == (2, 8, 3)
    single = build_hamming_index(db, 20, "hash", b=10, nflip=2)
    assert type(single) is BinaryHashIndex and single.exact_radius == 2 and single.method == "hash"
    assert (multi.ntotal, multi.bits, multi.code_bytes) == (500, 20, 3)


def test_bad_arguments() -> None:
    db = pack_codes(np.zeros((10, 48), bool))
    cases = [
        (
            lambda: MultiHashIndex(db, 48, nhash=4, b=16),
            "nhash \\* b must not exceed .* 4 x 16 = 64 > 48 bits",
        ),
        (lambda: MultiHashIndex(db, 48, b=49), "b \\(bits per substring\\) must be an integer in 1..48"),
        (lambda: MultiHashIndex(db, 48, b=0), "b \\(bits per substring\\)"),
        (lambda: MultiHashIndex(db, 48, nhash=0), "nhash must be an integer >= 1, got 0"),
        (lambda: MultiHashIndex(db, 48, b=16, nflip=17), "nflip must be an integer in 0..16, got 17"),
        (lambda: MultiHashIndex(db, 48, nflip=-1), "nflip must be"),
        (lambda: MultiHashIndex(db, 48, nflip=True), "nflip must be"),
        (lambda: MultiHashIndex(db, 48, b=40, nhash=1, nflip=6), "probes 4,.* buckets .* lower nflip or b"),
        (lambda: MultiHashIndex(db, 48).search(db, 0), "k must be an integer >= 1, got 0"),
        (lambda: MultiHashIndex(db, 48).range_search(db, -1), "radius must be an integer >= 0, got -1"),
        (lambda: build_hamming_index(db, 48, "lsh"), "unknown Hamming index method 'lsh'; expected one of"),
        (
            lambda: build_hamming_index(db, 48, "hash", nhash=2),
            "hash index takes b, nflip, pad; got unknown nhash",
        ),
        (lambda: build_hamming_index(db, 48, "flat", nflip=1), "flat index takes pad; got unknown nflip"),
    ]
    for fn, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            fn()
        assert "\n" not in str(err.value)
    with pytest.raises(IndexFormatError, match="48-bit codes"):
        MultiHashIndex(db, 48).search(pack_codes(np.zeros((2, 128), bool)), 3)
    with pytest.raises(IndexFormatError, match="nonzero padding bits"):
        MultiHashIndex(np.full((3, 2), 255, np.uint8), 12)
