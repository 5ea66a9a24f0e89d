"""Every search mode against brute-force numpy, compared the FAISS way: sorted by (distance, index)."""

from __future__ import annotations

import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from deephash.retrieval import (
    HammingIndex,
    PoolRule,
    distances,
    euclidean_search,
    exact_l2,
    exhaustive,
    hamming,
    hierarchical,
    hierarchical_search,
    pairs,
    select_topk,
)
from deephash.retrieval.checksums import block_checksums
from deephash.retrieval.codes import pack_codes
from deephash.retrieval.exhaustive import L2_BACKENDS
from deephash.retrieval.features import F7File
from deephash.retrieval.rows import row_blocks
from deephash.utils.errors import ConfigError, IndexFormatError

BITS = [12, 48, 64, 128]


def tied_codes(rng: np.random.Generator, n: int, bits: int, centres: int = 12) -> np.ndarray:
    """(n, bits) bool: copies of a few centre codes with 0-2 flipped bits, so distances tie constantly."""
    base = rng.random((centres, bits)) < 0.5
    codes = base[rng.integers(0, centres, n)]
    for _ in range(2):
        flip = rng.random(n) < 0.5
        codes[flip, rng.integers(0, bits, flip.sum())] ^= True
    return codes


def brute_distances(q_bits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    return (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1)


def brute_knn(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort of each row by distance: (distance, index) order, first k."""
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def brute_l2(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(q, d), (n, d) -> (q, n) float64 Euclidean distances by direct differences."""
    diff = query.astype(np.float64)[:, None, :] - rows.astype(np.float64)[None, :, :]
    return np.sqrt((diff**2).sum(axis=-1))


@pytest.fixture(params=BITS)
def tied_data(request: pytest.FixtureRequest) -> tuple[int, np.ndarray, np.ndarray]:
    bits = request.param
    rng = np.random.default_rng(bits)
    db = tied_codes(rng, 2000, bits)
    near = db[rng.integers(0, len(db), 25)].copy()
    near[np.arange(25), rng.integers(0, bits, 25)] ^= True
    queries = np.vstack([db[:3], near, rng.random((5, bits)) < 0.5])
    return bits, db, queries


@pytest.mark.parametrize("k", [1, 10, 137, 2000, 2500])
def test_knn_matches_brute_force_with_ties(tied_data, k: int) -> None:
    bits, db_bits, q_bits = tied_data
    dist = brute_distances(q_bits, db_bits)
    exp_d, exp_i = brute_knn(dist, k)
    got_d, got_i = HammingIndex(pack_codes(db_bits), bits).search(pack_codes(q_bits), k)
    assert got_d.dtype == np.int32 and got_i.dtype == np.int64 and got_d.shape == (len(q_bits), k)
    kk = min(k, len(db_bits))
    np.testing.assert_array_equal(got_i[:, :kk], exp_i)
    np.testing.assert_array_equal(got_d[:, :kk], exp_d)
    # the k-th distance really is shared with items left out: the tie-break is exercised
    if k < len(db_bits):
        assert (dist <= exp_d[:, -1:]).sum(axis=1).max() > k
    assert (got_i[:, kk:] == -1).all() and (got_d[:, kk:] == -1).all()


@pytest.mark.parametrize("bits", [48, 128])  # the counting search at 48 bits, the heap search at 128 (k=10)
@pytest.mark.parametrize("k", [10, 137, 900])
def test_knn_split_between_threads_matches_brute_force(
    bits: int, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries shared out between threads, each a one-thread FAISS call, give brute force's (distance, index)
    order in the original query order, and leave the caller's FAISS thread count alone."""
    monkeypatch.setattr(hamming, "_SPLIT_MIN_QUERIES", 1)
    rng = np.random.default_rng(8)
    db_bits, q_bits = tied_codes(rng, 1000, bits), tied_codes(rng, 9, bits)
    exp_d, exp_i = brute_knn(brute_distances(q_bits, db_bits), k)
    index = HammingIndex(pack_codes(db_bits), bits)
    before = hamming.faiss.omp_get_max_threads()
    hamming.faiss.omp_set_num_threads(3)
    try:
        got_d, got_i = index.search(pack_codes(q_bits), k)
        assert hamming.faiss.omp_get_max_threads() == 3
    finally:
        hamming.faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(got_i, exp_i)
    np.testing.assert_array_equal(got_d, exp_d)


@pytest.mark.parametrize("pad", [True, False])
def test_single_query_and_unpadded_index(pad: bool) -> None:
    # one query on a large database takes FAISS's database-parallel path when threads allow
    rng = np.random.default_rng(5)
    db_bits = tied_codes(rng, 20000, 48, centres=4)
    q_bits = db_bits[:1]
    exp_d, exp_i = brute_knn(brute_distances(q_bits, db_bits), 300)
    index = HammingIndex(pack_codes(db_bits), 48, pad=pad)
    assert index.padded_bytes == (8 if pad else 6)
    got_d, got_i = index.search(pack_codes(q_bits), 300)
    np.testing.assert_array_equal(got_i, exp_i)
    np.testing.assert_array_equal(got_d, exp_d)


def test_large_k_numpy_path_matches_faiss_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    db_bits, q_bits = tied_codes(rng, 3000, 20), tied_codes(rng, 12, 20)
    exp_d, exp_i = brute_knn(brute_distances(q_bits, db_bits), 700)
    index = HammingIndex(pack_codes(db_bits), 20)
    monkeypatch.setattr(hamming, "_COUNTING_BUDGET_BYTES", 1)
    got_d, got_i = index.search(pack_codes(q_bits), 700)
    np.testing.assert_array_equal(got_i, exp_i)
    np.testing.assert_array_equal(got_d, exp_d)


def test_flat_range_results_and_empty_queries() -> None:
    rng = np.random.default_rng(7)
    db, q = pack_codes(tied_codes(rng, 500, 12)), pack_codes(tied_codes(rng, 6, 12))
    index = HammingIndex(db, 12)
    lims, dist, idx = index.range_search_flat(q, 3)
    for j, (d, i) in enumerate(index.range_search(q, 3)):
        np.testing.assert_array_equal(dist[lims[j] : lims[j + 1]], d)
        np.testing.assert_array_equal(idx[lims[j] : lims[j + 1]], i)
    d, i = index.search(q[:0], 5)
    assert d.shape == i.shape == (0, 5)


def test_a_radius_beyond_the_code_length_finds_everything_on_every_index() -> None:
    """FAISS takes the (exclusive) radius as an int32 and the torch index builds (distance, index) int64
    keys from it: a radius of 2**31 or 2**62 must mean "everything", not wrap around to nothing."""
    from deephash.retrieval.sublinear import BinaryHashIndex
    from deephash.retrieval.torch_search import TorchHammingIndex

    rng = np.random.default_rng(3)
    bits = 12
    db, q = pack_codes(tied_codes(rng, 300, bits)), pack_codes(tied_codes(rng, 5, bits))
    indexes = (
        HammingIndex(db, bits),
        BinaryHashIndex(db, bits, nflip=bits),
        TorchHammingIndex(db, bits, "cpu"),
    )
    for index in indexes:
        want = index.range_search_flat(q, bits)
        assert np.array_equal(np.diff(want[0]), [300] * 5)
        for radius in (2**31 - 1, 2**31, 2**62, 10**30):
            for got, expected in zip(index.range_search_flat(q, radius), want):
                np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("radius_from", ["zero", "median", "all"])
def test_radius_search_is_inclusive(tied_data, radius_from: str) -> None:
    bits, db_bits, q_bits = tied_data
    dist = brute_distances(q_bits, db_bits)
    radius = {"zero": 0, "median": int(np.median(dist)), "all": bits}[radius_from]
    results = HammingIndex(pack_codes(db_bits), bits).range_search(pack_codes(q_bits), radius)
    assert len(results) == len(q_bits)
    on_boundary = 0
    for row, (got_d, got_i) in zip(dist, results):
        members = np.flatnonzero(row <= radius)
        expected = members[np.argsort(row[members], kind="stable")]
        np.testing.assert_array_equal(got_i, expected)
        np.testing.assert_array_equal(got_d, row[expected])
        assert got_d.dtype == np.int32 and got_i.dtype == np.int64
        on_boundary += int((got_d == radius).sum())
    if radius_from == "all":
        assert all(len(i) == len(db_bits) for _, i in results)
    else:
        assert on_boundary > 0  # items at exactly the radius are included


def test_bad_arguments() -> None:
    index = HammingIndex(pack_codes(np.zeros((10, 48), bool)), 48)
    with pytest.raises(IndexFormatError, match="48-bit codes"):
        index.search(pack_codes(np.zeros((2, 128), bool)), 3)
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        index.search(pack_codes(np.zeros((2, 48), bool)), 0)
    with pytest.raises(ConfigError, match="radius"):
        index.range_search(pack_codes(np.zeros((2, 48), bool)), -1)


def test_select_topk_breaks_ties_by_index() -> None:
    rng = np.random.default_rng(8)
    dist = rng.integers(0, 4, (20, 300)).astype(np.float32)
    idx = np.tile(rng.permutation(300), (20, 1))
    for k in (1, 5, 299, 300, 400):
        got_d, got_i = select_topk(dist, idx, k)
        order = np.lexsort((idx, dist), axis=-1)[:, :k]
        np.testing.assert_array_equal(got_i, np.take_along_axis(idx, order, axis=1))
        np.testing.assert_array_equal(got_d, np.take_along_axis(dist, order, axis=1))


# ------------------------------------------------------------------ euclidean


def features(rng: np.random.Generator, n: int, d: int, duplicates: bool = True) -> np.ndarray:
    f7 = rng.standard_normal((n, d)).astype(np.float16)
    if duplicates:
        f7[n // 2 : n // 2 + 40] = f7[:40]  # exact ties, broken by index
    return f7


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
@pytest.mark.parametrize("chunk_size", [7, 100, 333, 5000])
def test_euclidean_chunked_matches_brute_force(chunk_size: int, backend: str) -> None:
    rng = np.random.default_rng(9)
    db = features(rng, 1000, 32)
    queries = np.vstack([db[:5].astype(np.float32), rng.standard_normal((10, 32)).astype(np.float32)])
    dist = brute_l2(queries, db)
    exp_i = np.argsort(dist, axis=1, kind="stable")[:, :50]
    got_d, got_i = euclidean_search(db, queries, 50, chunk_size=chunk_size, backend=backend)
    assert got_d.dtype == np.float32 and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_i, exp_i)
    np.testing.assert_allclose(got_d, np.take_along_axis(dist, exp_i, axis=1), rtol=1e-5, atol=1e-6)
    # a query equal to a duplicated row finds both copies at distance 0, lower index first
    assert list(got_i[0, :2]) == [0, 500] and (got_d[0, :2] == 0).all()
    one_d, one_i = euclidean_search(db, queries, 50, chunk_size=len(db), backend="numpy")
    np.testing.assert_array_equal(got_i, one_i)
    np.testing.assert_array_equal(got_d, one_d)
    # the reported distances are exact_l2's, bit for bit
    np.testing.assert_array_equal(got_d, exact_l2(queries, db[got_i].astype(np.float32)))


@pytest.mark.parametrize("copies", [30, 100, 400])  # within the slack, across the cut, beyond the heap
@pytest.mark.parametrize("chunk_size", [64, 1000])
def test_euclidean_backends_agree_on_duplicate_rows(copies: int, chunk_size: int, monkeypatch) -> None:
    rng = np.random.default_rng(13)
    db = features(rng, 1000, 16, duplicates=False)
    spots = np.sort(rng.choice(1000, copies, replace=False))
    db[spots] = db[spots[0]]
    queries = np.vstack(
        [db[spots[:2]].astype(np.float32), db[spots[0]] + 0.01, rng.standard_normal((5, 16))]
    ).astype(np.float32)
    rescanned = []
    rows_within = exhaustive._rows_within
    monkeypatch.setattr(
        exhaustive,
        "_rows_within",
        lambda db_f7, q, *a: rescanned.append(len(q)) or rows_within(db_f7, q, *a),
    )
    dist = brute_l2(queries, db)
    for k in (1, 50, 120):
        rescanned.clear()
        fd, fi = euclidean_search(db, queries, k, chunk_size=chunk_size)
        # a shortlist cut through the tied copies is rescanned (the two copies of the row and the query
        # beside them, and a random query whose top k reaches the copies), once they outnumber it
        assert (sum(rescanned) >= 3) == (copies > exhaustive._shortlist(k))
        nd, ni = euclidean_search(db, queries, k, chunk_size=chunk_size, backend="numpy")
        np.testing.assert_array_equal(fi, ni)
        np.testing.assert_array_equal(fd, nd)
        np.testing.assert_array_equal(fi, np.argsort(dist, axis=1, kind="stable")[:, :k])
        # the copies of the duplicated row come first, in index order
        np.testing.assert_array_equal(fi[0, : min(k, copies)], spots[: min(k, copies)])
    with pytest.raises(ConfigError, match="unknown L2 backend 'cuda'; expected one of: faiss, numpy"):
        euclidean_search(db, queries, 3, backend="cuda")


def test_euclidean_memmap_equals_in_ram_and_pads(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    db = features(rng, 300, 16)
    mm = np.lib.format.open_memmap(tmp_path / "f7.npy", "w+", np.float16, db.shape)
    mm[:] = db
    mm.flush()
    queries = rng.standard_normal((4, 16))
    ram = euclidean_search(db, queries, 20, chunk_size=64)
    mapped = euclidean_search(np.load(tmp_path / "f7.npy", mmap_mode="r"), queries, 20, chunk_size=64)
    for a, b in zip(ram, mapped):
        np.testing.assert_array_equal(a, b)
    d, i = euclidean_search(db, queries, 400)
    assert (i[:, 300:] == -1).all() and np.isinf(d[:, 300:]).all() and (i[:, :300] >= 0).all()
    with pytest.raises(ConfigError, match="query F7"):
        euclidean_search(db, queries[:, :8], 3)


# --------------------------------------------------------------- hierarchical


@pytest.fixture
def hier_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    db_bits = tied_codes(rng, 1500, 48, centres=30)
    near = db_bits[rng.integers(0, len(db_bits), 8)].copy()
    near[np.arange(8), rng.integers(0, 48, 8)] ^= True
    q_bits = np.vstack([near, rng.random((4, 48)) < 0.5])
    db_f7 = features(rng, 1500, 24)
    q_f7 = rng.standard_normal((len(q_bits), 24)).astype(np.float32)
    return db_bits, q_bits, db_f7, q_f7


def expected_hierarchical(db_bits, q_bits, db_f7, q_f7, k, radius, min_pool, max_pool, pool_size):
    """The documented pool rule and re-rank, written the slow obvious way."""
    ham = brute_distances(q_bits, db_bits)
    l2 = brute_l2(q_f7, db_f7)
    rows = []
    for j in range(len(q_bits)):
        pool = np.flatnonzero(ham[j] <= radius)
        if len(pool) < min_pool or len(pool) > max_pool:
            pool = np.argsort(ham[j], kind="stable")[:pool_size]
        pool = np.sort(pool)
        top = pool[np.argsort(l2[j, pool], kind="stable")[:k]]
        rows.append((len(pool), top, ham[j, top], l2[j, top]))
    return rows


@pytest.mark.parametrize(
    "radius,min_pool,max_pool,pool_size,expect",
    [
        (3, 5, 2000, 50, "within"),  # pools of tied codes within radius 3 fit the limits
        (0, 60, 2000, 80, "too_small"),  # radius 0 pools are tiny: fall back to the 80 nearest
        (48, 5, 600, 100, "too_large"),  # radius 48 holds the whole database: fall back too
    ],
)
def test_hierarchical_pool_rule_and_rerank(hier_data, radius, min_pool, max_pool, pool_size, expect) -> None:
    db_bits, q_bits, db_f7, q_f7 = hier_data
    k = 5
    res = hierarchical_search(
        HammingIndex(pack_codes(db_bits), 48),
        db_f7,
        pack_codes(q_bits),
        q_f7,
        k,
        PoolRule(radius, min_pool, max_pool, pool_size),
    )
    expected = expected_hierarchical(db_bits, q_bits, db_f7, q_f7, k, radius, min_pool, max_pool, pool_size)
    n_within = (brute_distances(q_bits, db_bits) <= radius).sum(axis=1)
    in_limits = (min_pool <= n_within) & (n_within <= max_pool)
    for j, (size, top, ham, l2) in enumerate(expected):
        assert res.pool_sizes[j] == size == (n_within[j] if in_limits[j] else pool_size)
        np.testing.assert_array_equal(res.idx[j, : len(top)], top)
        np.testing.assert_array_equal(res.hamming[j, : len(top)], ham)
        np.testing.assert_allclose(res.l2[j, : len(top)], l2, rtol=1e-5, atol=1e-6)
    # the case named by the parameters really occurs
    assert in_limits.sum() >= len(q_bits) // 2 if expect == "within" else not in_limits.any()
    assert res.idx.dtype == np.int64 and res.hamming.dtype == np.int32 and res.l2.dtype == np.float32


def test_hierarchical_short_pool_is_padded(hier_data) -> None:
    db_bits, q_bits, db_f7, q_f7 = hier_data
    index = HammingIndex(pack_codes(db_bits), 48)
    res = hierarchical_search(
        index, db_f7, pack_codes(q_bits), q_f7, 50, PoolRule(radius=0, min_pool=1, pool_size=10)
    )
    sizes = (brute_distances(q_bits, db_bits) == 0).sum(axis=1)
    sizes = np.where(sizes < 1, 10, sizes)
    np.testing.assert_array_equal(res.pool_sizes, sizes)
    for j, size in enumerate(sizes):
        got = min(size, 50)
        assert (res.idx[j, :got] >= 0).all() and (res.idx[j, got:] == -1).all()
        assert np.isinf(res.l2[j, got:]).all() and (res.hamming[j, got:] == -1).all()


def test_hierarchical_database_smaller_than_pool_size() -> None:
    # the k-NN pass returns the whole database, which settles the radius pool without a range search
    rng = np.random.default_rng(12)
    db_bits = tied_codes(rng, 30, 16, centres=3)
    q_bits, db_f7 = db_bits[:4], features(rng, 30, 8, duplicates=False)
    q_f7 = rng.standard_normal((4, 8)).astype(np.float32)
    index = HammingIndex(pack_codes(db_bits), 16)
    q = pack_codes(q_bits)
    res = hierarchical_search(index, db_f7, q, q_f7, 3, PoolRule(1, 2, 60, 50))
    expected = expected_hierarchical(db_bits, q_bits, db_f7, q_f7, 3, 1, 2, 60, 50)
    for j, (size, top, ham, _) in enumerate(expected):
        assert res.pool_sizes[j] == size
        np.testing.assert_array_equal(res.idx[j], top)
        np.testing.assert_array_equal(res.hamming[j], ham)
    assert (res.pool_sizes < 30).any()  # some pools are the radius pool, not the whole database


def test_hierarchical_whole_database_pool_equals_euclidean(hier_data, tmp_path: Path) -> None:
    db_bits, q_bits, db_f7, q_f7 = hier_data
    index = HammingIndex(pack_codes(db_bits), 48)
    mm = np.lib.format.open_memmap(tmp_path / "f7.npy", "w+", np.float16, db_f7.shape)
    mm[:] = db_f7
    mm.flush()
    mapped = np.load(tmp_path / "f7.npy", mmap_mode="r")
    pool = PoolRule(radius=48, min_pool=1, max_pool=len(db_bits), pool_size=1)
    res = hierarchical_search(index, db_f7, pack_codes(q_bits), q_f7, 30, pool)
    res_mm = hierarchical_search(index, mapped, pack_codes(q_bits), q_f7, 30, pool, chunk_size=100)
    for field in ("l2", "idx", "hamming", "pool_sizes"):
        np.testing.assert_array_equal(getattr(res, field), getattr(res_mm, field))
    assert (res.pool_sizes == len(db_bits)).all()
    l2, idx = euclidean_search(db_f7, q_f7, 30)
    np.testing.assert_array_equal(res.idx, idx)
    np.testing.assert_array_equal(res.l2, l2)


def test_hierarchical_bad_arguments(hier_data) -> None:
    db_bits, q_bits, db_f7, q_f7 = hier_data
    index = HammingIndex(pack_codes(db_bits), 48)
    q = pack_codes(q_bits)
    with pytest.raises(ConfigError, match="min_pool <= pool_size <= max_pool"):
        hierarchical_search(index, db_f7, q, q_f7, 10, PoolRule(min_pool=100, pool_size=50))
    with pytest.raises(IndexFormatError, match="rows but the Hamming index holds"):
        hierarchical_search(index, db_f7[:-1], q, q_f7, 10)
    with pytest.raises(ConfigError, match="query codes but"):
        hierarchical_search(index, db_f7, q[:-1], q_f7, 10)


def test_pool_rule_is_validated_frozen_and_resolves_defaults() -> None:
    with pytest.raises(ConfigError, match="radius must be an integer >= 0"):
        PoolRule(radius=-1)
    with pytest.raises(ConfigError, match="pool_size must be an integer >= 1"):
        PoolRule(pool_size=0)
    rule = PoolRule(radius=1)
    with pytest.raises(AttributeError):
        rule.radius = 3  # type: ignore[misc]
    # min_pool defaults to k, pool_size to max(min_pool, 1000), max_pool to max(10000, pool_size)
    assert rule.limits(20) == (20, 10_000, 1000)
    assert rule.limits(5000) == (5000, 10_000, 5000)
    assert rule.resolved(20) == PoolRule(1, 20, 10_000, 1000)


def test_batched_pool_shortlist_matches_brute_force_on_ties(monkeypatch) -> None:
    # tied codes, a block of 60 exact duplicate F7 rows (a tie group wider than the shortlist slack),
    # queries that copy database rows, pools shared by many queries and pools of their own
    rng = np.random.default_rng(21)
    db_bits = tied_codes(rng, 900, 48, centres=6)
    db_f7 = features(rng, 900, 16, duplicates=False)
    db_f7[300:360] = db_f7[5]
    dup = [5, 300, 359, 17]
    q_bits = np.vstack([db_bits[dup], db_bits[rng.integers(0, 900, 20)], rng.random((6, 48)) < 0.5])
    q_f7 = np.vstack([db_f7[dup].astype(np.float32), rng.standard_normal((26, 16)).astype(np.float32)])
    index = HammingIndex(pack_codes(db_bits), 48)
    # several batches, closed by their query count or by their pairs
    monkeypatch.setattr(hierarchical, "_POOL_QUERY_BATCH", 3)
    monkeypatch.setattr(hierarchical, "_SHORTLIST_QUERY_BATCH", 7)
    monkeypatch.setattr(hierarchical, "_SHORTLIST_PAIRS", 1500)
    for k, rule, chunk_size in [
        (5, PoolRule(2, 5, 400, 120), 37),
        (40, PoolRule(1, 40, 900, 300), 65536),
        (3, PoolRule(48, 1, 900, 900), 50),  # every pool is the whole database
    ]:
        res = hierarchical_search(index, db_f7, pack_codes(q_bits), q_f7, k, rule, chunk_size=chunk_size)
        expected = expected_hierarchical(db_bits, q_bits, db_f7, q_f7, k, *astuple(rule.resolved(k)))
        for j, (size, top, ham, l2) in enumerate(expected):
            assert res.pool_sizes[j] == size
            np.testing.assert_array_equal(res.idx[j, : len(top)], top)
            np.testing.assert_array_equal(res.hamming[j, : len(top)], ham)
            np.testing.assert_allclose(res.l2[j, : len(top)], l2, rtol=1e-5, atol=1e-6)
        assert (res.pool_sizes > _shortlist_width(k)).sum() >= 10  # the batched path really ran
    # a copy of the duplicated row finds the 61 copies at distance 0, lowest indices first
    res = hierarchical_search(index, db_f7, pack_codes(q_bits), q_f7, 5, PoolRule(48, 1, 900, 900))
    assert list(res.idx[2]) == [5, 300, 301, 302, 303] and (res.l2[2] == 0).all()


def test_pair_distances_match_float64_and_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((9, 40)).astype(np.float32)
    rows = rng.standard_normal((30, 40)).astype(np.float32)
    # row 0 shared by every query, rows 25.. by none, the rest at random; pairs in any order, repeats too
    owner = np.r_[np.arange(9), rng.integers(0, 9, 60)]
    inverse = np.r_[np.zeros(9, np.int64), rng.integers(1, 25, 60)]
    perm = rng.permutation(len(owner))
    owner, inverse = owner[perm], inverse[perm]
    got = distances.pair_sqdist(queries, owner, rows, inverse)
    q64, r64 = queries.astype(np.float64)[owner], rows.astype(np.float64)[inverse]
    assert got.dtype == np.float32 and got.shape == owner.shape
    np.testing.assert_allclose(got, ((q64 - r64) ** 2).sum(axis=1), rtol=1e-5)
    # a pair scored alone, with its row elsewhere in memory, gets the same bits
    for i in (0, 17, 68):
        moved = np.vstack([rows[5:7], rows[inverse[i]][None]])
        alone = distances.pair_sqdist(queries[owner[i]][None], np.array([0]), moved, np.array([2]))
        assert alone.view(np.uint32)[0] == got.view(np.uint32)[i]
    assert distances.pair_sqdist(queries, owner[:0], rows, inverse[:0]).shape == (0,)


@pytest.mark.parametrize(
    "source", ["float16 memmap", "float16 array", "float32 array", "F7File", "checked F7File"]
)
def test_fused_pair_scoring_gives_pair_sqdist_bits_across_blocks(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scoring that gathers, widens and scores a few rows at a time gives every pair the bits of
    ``pair_sqdist`` on the float32 rows, with blocks of 5 distinct rows scored 2 rows at a time (an offset
    slip between a sub-block's rows, its sharing list and its output would pair rows with wrong queries),
    pairs in any order, a row shared by every query, and a memmap's pages released after each block. An
    ``F7File`` is gathered from its memory map, with no positional read per row."""
    released = []
    monkeypatch.setattr(pairs, "release_pages", lambda arr: released.append(arr))
    monkeypatch.setattr(pairs, "_SCORE_BLOCK_ROWS", 5)
    monkeypatch.setattr(pairs, "_FUSED_BYTES", 2 * 4 * 24)
    rng = np.random.default_rng(9)
    db16 = (rng.standard_normal((60, 24)) * 4).astype(np.float16)
    path = tmp_path / "f7.npy"
    np.save(path, db16)
    db = {
        "float16 memmap": np.load(path, mmap_mode="r"),
        "float16 array": db16,
        "float32 array": db16.astype(np.float32),
        "F7File": F7File(path),
        "checked F7File": F7File(path, checksums=block_checksums(db16, 4), block_rows=4),
    }[source]
    if isinstance(db, F7File):
        monkeypatch.setattr(F7File, "_pread_into", lambda *a: pytest.fail("a row was read by a system call"))
    queries = rng.standard_normal((7, 24)).astype(np.float32)
    owner = np.r_[np.arange(7), rng.integers(0, 7, 80)]
    items = np.r_[np.full(7, 31), rng.integers(0, 60, 80)]
    perm = rng.permutation(len(owner))
    owner, items = owner[perm], items[perm]
    got = pairs.score_pairs(db, queries, owner, items, chunk_size=64)
    expected = distances.pair_sqdist(queries, owner, db16.astype(np.float32), items)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    blocks = -(-len(np.unique(items)) // 5)
    assert len(released) == blocks and all(arr is db for arr in released)
    if source == "checked F7File":
        assert np.flatnonzero(db._verified).tolist() == np.unique(items // 4).tolist()
    assert pairs.score_pairs(db, queries, owner[:0], items[:0], 64).shape == (0,)


def test_pair_order_is_lexsort_with_equal_distances_and_nan() -> None:
    """The one-key sort of (query, distance) pairs orders equal distances by item like ``np.lexsort``, also
    when they straddle a query boundary or sit at either end (a tie fix-up off by one would not)."""
    rng = np.random.default_rng(3)
    owner = np.sort(rng.integers(0, 6, 400))
    # NaN of both signs (x86's default NaN has the sign bit set), which lexsort puts last, tied
    values = np.array([0.0, 0.5, 1.5, 2.25, np.inf, np.nan, -np.nan], np.float32)
    sq = values[rng.integers(0, len(values), 400)]
    sq[:3], sq[-3:] = 0.5, 7.0
    items = rng.permutation(1000)[:400]
    expected = np.lexsort((items, sq, owner))
    np.testing.assert_array_equal(hierarchical._pair_order(owner, sq, items), expected)
    distinct = rng.permutation(400).astype(np.float32)
    np.testing.assert_array_equal(
        hierarchical._pair_order(owner, distinct, items), np.lexsort((items, distinct, owner))
    )


@pytest.mark.parametrize("backend", L2_BACKENDS)
def test_exhaustive_search_is_exact_on_near_ties_beyond_the_shortlist(backend: str) -> None:
    # 4096-d rows with squared norms ~1e5 within a hair of one centre: the fast distances misorder
    # them, far beyond the shortlist's slack; the rescan still returns the stable exact order
    rng = np.random.default_rng(4)
    centre = np.maximum(rng.normal(2.0, 6.0, 4096), 0)
    db = (centre + rng.normal(0, 0.002, (500, 4096))).astype(np.float32)
    queries = (centre + rng.normal(0, 0.002, (4, 4096))).astype(np.float32)
    l2 = np.sqrt(((queries[:, None].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1))
    for k in (1, 10, 100):
        _, idx = euclidean_search(db, queries, k, chunk_size=128, backend=backend)
        np.testing.assert_array_equal(idx, np.argsort(l2, axis=1, kind="stable")[:, :k])


def _shortlist_width(k: int) -> int:
    return exhaustive._shortlist(k)


# ---- realistic F7 magnitudes: 4096-d rows with squared norms around 1e5 ---------------------------------


def _large_norm_f7(rng: np.random.Generator, n: int, d: int = 4096) -> np.ndarray:
    """(n, d) float32 ReLU-like rows with squared norms ~1e5: beyond float16 (max 65504) once squared."""
    return np.maximum(rng.normal(2.0, 6.0, (n, d)), 0).astype(np.float32)


def test_large_norm_4096d_features_match_brute_force() -> None:
    rng = np.random.default_rng(4096)
    db = _large_norm_f7(rng, 300)
    assert np.einsum("ij,ij->i", db, db).min() > 65504  # a float16 shortlist would overflow to inf
    queries = np.vstack([db[[7, 150]] + rng.normal(0, 0.5, (2, 4096)), _large_norm_f7(rng, 3)])
    queries = queries.astype(np.float32)
    expected = brute_l2(queries, db)
    order = np.lexsort((np.broadcast_to(np.arange(300), expected.shape), expected), axis=-1)[:, :10]
    l2, idx = euclidean_search(db, queries, 10, chunk_size=64)
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(l2, np.take_along_axis(expected, order, axis=1), rtol=1e-5)
    assert list(idx[:2, 0]) == [7, 150]
    # hierarchical: every pool is the whole database, so it must agree with the exhaustive search
    db_bits = rng.random((300, 64)) < 0.5
    q_bits = rng.random((len(queries), 64)) < 0.5
    res = hierarchical_search(
        HammingIndex(pack_codes(db_bits), 64), db, pack_codes(q_bits), queries, 10, PoolRule(64, 1, 300, 300)
    )
    np.testing.assert_array_equal(res.idx, order)
    np.testing.assert_allclose(res.l2, l2, rtol=1e-5)


@pytest.mark.parametrize("seed", range(20))
def test_shortlist_under_heavy_cancellation_keeps_its_stated_guarantee(seed: int) -> None:
    """Many items at almost the same distance from a large-norm query: the BLAS shortlist cannot order them
    (its rounding error exceeds their spread), so the module docstring promises exact, sorted distances and
    items within the rounding bound of the true k nearest, not brute force's exact order."""
    rng = np.random.default_rng(seed)
    d, n, k = 4096, 400, 10
    query = _large_norm_f7(rng, 1)
    directions = rng.standard_normal((n, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 1.0 + 1e-4 * rng.random(n)  # spread ~1e-4, far below the float32 error at |q|^2 ~ 1e5
    db = (query + radii[:, None] * directions).astype(np.float32)
    l2, idx = euclidean_search(db, query, k, chunk_size=128)
    exact = brute_l2(query, db)[0]
    np.testing.assert_allclose(l2[0], exact[idx[0]], rtol=1e-5)  # reported distances are exact
    assert np.all(np.diff(l2[0]) >= 0) and len(set(idx[0])) == k
    kth = np.sort(exact)[k - 1]
    # the bound the module docstring states: 4 (d + 2) 2^-24 (|q|^2 + max |x|^2) on squared distances
    bound = 4 * (d + 2) * 2.0**-24 * (float(query[0] @ query[0]) + float(np.einsum("ij,ij->i", db, db).max()))
    assert np.all(exact[idx[0]] ** 2 <= kth**2 + bound)


@pytest.mark.parametrize("bits", [256, 512, 4096])
def test_long_codes_search_matches_brute_force(bits: int) -> None:
    """Distances above 255 (a byte-wide popcount sum would wrap): k-NN, radius, the numpy large-k path and
    hierarchical search against brute force, with a query's complement at distance ``bits``."""
    rng = np.random.default_rng(bits)
    db_bits = tied_codes(rng, 240, bits, centres=5)
    db_bits[7] = ~db_bits[3]
    q_bits = np.vstack([db_bits[[3, 8]], rng.random((4, bits)) < 0.5, ~db_bits[11:12]])
    dist = brute_distances(q_bits, db_bits)
    assert dist.max() == bits  # query 0 against its complement, item 7
    index = HammingIndex(pack_codes(db_bits), bits)
    for k in (5, 240):
        exp_d, exp_i = brute_knn(dist, k)
        got_d, got_i = index.search(pack_codes(q_bits), k)
        np.testing.assert_array_equal(got_i, exp_i)
        np.testing.assert_array_equal(got_d, exp_d)
    radius = bits // 2
    for row, (got_d, got_i) in zip(dist, index.range_search(pack_codes(q_bits), radius)):
        members = np.flatnonzero(row <= radius)
        np.testing.assert_array_equal(got_i, members[np.argsort(row[members], kind="stable")])
        np.testing.assert_array_equal(got_d, row[got_i])
    db_f7 = features(rng, 240, 8, duplicates=False)
    q_f7 = rng.standard_normal((len(q_bits), 8)).astype(np.float32)
    rule = PoolRule(radius, 5, 240, 60)
    res = hierarchical_search(index, db_f7, pack_codes(q_bits), q_f7, 5, rule)
    expected = expected_hierarchical(db_bits, q_bits, db_f7, q_f7, 5, *astuple(rule.resolved(5)))
    for j, (size, top, ham, _l2) in enumerate(expected):
        assert res.pool_sizes[j] == size
        np.testing.assert_array_equal(res.idx[j, : len(top)], top)
        np.testing.assert_array_equal(res.hamming[j, : len(top)], ham)


@pytest.mark.parametrize(
    ("distinct", "step", "blocks"), [(10, 3, 4), (9, 3, 3), (7, 7, 1), (5, 100, 1), (1, 1, 1)]
)
def test_row_blocks_cover_every_pair_once_in_equal_blocks(distinct: int, step: int, blocks: int) -> None:
    """Each block holds at most ``step`` distinct rows, the blocks are as few and as equal as can be, and a
    block's rows stay intact while the worker thread reads the next block (the two buffers alternate)."""
    rng = np.random.default_rng(4)
    db = rng.standard_normal((50, 8)).astype(np.float16)
    rows = np.sort(rng.choice(50, distinct, replace=False))
    items = np.repeat(rows, rng.integers(1, 4, distinct))  # sorted pairs, 1 to 3 per row
    seen, sizes = [], []
    for a, b, block, inverse in row_blocks(db, items, step):
        time.sleep(0.02)  # the read of the next block, already submitted, completes meanwhile
        assert block.dtype == np.float32 and len(block) <= step
        np.testing.assert_array_equal(block[inverse], db[items[a:b]].astype(np.float32))
        seen.append((a, b))
        sizes.append(len(block))
    assert seen[0][0] == 0 and seen[-1][1] == len(items)
    assert all(b == a2 for (_, b), (a2, _) in zip(seen, seen[1:]))
    assert len(sizes) == blocks and max(sizes) - min(sizes) <= 1


def test_refine_over_many_row_blocks_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact re-rank scores its shortlisted rows in blocks of ``_SCORE_BLOCK_ROWS`` distinct rows, gathered
    ``_FUSED_BYTES`` at a time: with blocks of 3 rows gathered 2 at a time the results are those of brute force."""
    rng = np.random.default_rng(12)
    db = features(rng, 400, 16)
    queries = np.vstack([db[:3].astype(np.float32), rng.standard_normal((6, 16)).astype(np.float32)])
    monkeypatch.setattr(pairs, "_SCORE_BLOCK_ROWS", 3)
    monkeypatch.setattr(pairs, "_FUSED_BYTES", 2 * 4 * 16)
    dist = brute_l2(queries, db)
    exp_i = np.argsort(dist, axis=1, kind="stable")[:, :20]
    got_d, got_i = euclidean_search(db, queries, 20, chunk_size=64)
    np.testing.assert_array_equal(got_i, exp_i)
    np.testing.assert_array_equal(got_d, exact_l2(queries, db[got_i].astype(np.float32)))


@pytest.mark.parametrize(
    "min_pool,max_pool,pool_size",
    [
        (6, 100, 20),  # exactly min_pool codes inside the radius: the pool is those, not the 20 nearest
        (1, 6, 6),  # exactly max_pool inside, as many as pool_size
        (2, 6, 4),  # exactly max_pool inside, more than pool_size: found by the range search
    ],
)
def test_pool_rule_keeps_a_pool_of_exactly_min_pool_or_max_pool_codes(min_pool, max_pool, pool_size) -> None:
    """Both limits are inclusive: a radius holding exactly ``min_pool`` (or ``max_pool``) codes is the pool."""
    rng = np.random.default_rng(5)
    bits, n, inside = 16, 40, 6
    db_bits = np.zeros((n, bits), bool)
    db_bits[inside:, :8] = True  # 34 codes 8 bits away
    db_bits[np.arange(1, inside), np.arange(1, inside)] = True  # 6 codes within distance 1 of the query
    order = rng.permutation(n)
    db_bits = db_bits[order]
    q_bits = np.zeros((1, bits), bool)
    db_f7, q_f7 = features(rng, n, 8, duplicates=False), rng.standard_normal((1, 8)).astype(np.float32)
    res = hierarchical_search(
        HammingIndex(pack_codes(db_bits), bits),
        db_f7,
        pack_codes(q_bits),
        q_f7,
        3,
        PoolRule(1, min_pool, max_pool, pool_size),
    )
    assert res.pool_sizes[0] == inside
    assert set(res.idx[0].tolist()) <= set(np.flatnonzero(order < inside).tolist())
    assert (res.hamming[0] <= 1).all()
