"""The binary IVF coarse stage (``IVFIndex``) against brute force over the cells it probes."""

from __future__ import annotations

import numpy as np
import pytest

from deephash.evaluation.pipeline import EncodedItems, evaluate_retrieval
from deephash.retrieval import HammingIndex, PoolRule, hierarchical_search
from deephash.retrieval.codes import pack_codes, pad_codes
from deephash.retrieval.sublinear import IVFIndex, build_hamming_index, faiss_layout
from deephash.utils.errors import ConfigError
from tests.test_retrieval_sublinear import brute_distances, clustered, near


@pytest.fixture(params=[12, 48, 128])
def data(request: pytest.FixtureRequest) -> tuple[int, np.ndarray, np.ndarray]:
    bits = request.param
    rng = np.random.default_rng(bits)
    db = clustered(rng, 3000, bits)
    return bits, db, np.vstack([near(rng, db, 40), rng.random((5, bits)) < 0.5])


def probed_candidates(index: IVFIndex, db: np.ndarray, queries: np.ndarray) -> list[np.ndarray]:
    """Each query's shortlist from the quantiser alone: the items whose cell is one of its nprobe nearest."""
    quantizer = index.faiss_index.quantizer
    layout = lambda codes: faiss_layout(pad_codes(codes, index.padded_bytes))  # noqa: E731
    cell = quantizer.search(layout(db), 1)[1][:, 0]
    probed = quantizer.search(layout(queries), index.nprobe)[1]
    return [np.flatnonzero(np.isin(cell, p)) for p in probed]


@pytest.mark.parametrize("k", [1, 7, 80])
def test_knn_is_the_best_of_the_probed_cells_by_distance_then_index(data, k: int) -> None:
    bits, db_bits, q_bits = data
    db, queries = pack_codes(db_bits), pack_codes(q_bits)
    dist = brute_distances(q_bits, db_bits)
    index = IVFIndex(db, bits, nlist=32, nprobe=3)
    got_d, got_i = index.search(queries, k)
    assert got_d.dtype == np.int32 and got_i.dtype == np.int64 and got_i.shape == (len(queries), k)
    for j, cand in enumerate(probed_candidates(index, db, queries)):
        # many codes tie at the k-th distance: the lowest indices among them, as the exact index keeps
        best = cand[np.lexsort((cand, dist[j, cand]))][:k]
        m = len(best)
        np.testing.assert_array_equal(got_i[j, :m], best)
        np.testing.assert_array_equal(got_d[j, :m], dist[j, best])
        assert (got_i[j, m:] == -1).all() and (got_d[j, m:] == -1).all()


def test_range_search_is_the_probed_cells_within_the_radius(data) -> None:
    bits, db_bits, q_bits = data
    db, queries = pack_codes(db_bits), pack_codes(q_bits)
    dist = brute_distances(q_bits, db_bits)
    index = IVFIndex(db, bits, nlist=16, nprobe=2)
    radius = max(1, bits // 8)
    for j, ((got_d, got_i), cand) in enumerate(
        zip(index.range_search(queries, radius), probed_candidates(index, db, queries))
    ):
        inside = cand[dist[j, cand] <= radius]  # inclusive, as HammingIndex's
        want = inside[np.lexsort((inside, dist[j, inside]))]
        np.testing.assert_array_equal(got_i, want)
        np.testing.assert_array_equal(got_d, dist[j, want])


def test_probing_every_cell_is_the_exact_search(data) -> None:
    bits, db_bits, q_bits = data
    db, queries = pack_codes(db_bits), pack_codes(q_bits)
    flat, index = HammingIndex(db, bits), IVFIndex(db, bits, nlist=8, nprobe=8)
    for a, b in zip(index.search(queries, 50), flat.search(queries, 50)):
        np.testing.assert_array_equal(a, b)
    for (ad, ai), (bd, bi) in zip(index.range_search(queries, 3), flat.range_search(queries, 3)):
        np.testing.assert_array_equal(ai, bi)
        np.testing.assert_array_equal(ad, bd)
    # identical codes share a cell: distance 0 is always found, whatever nprobe
    index.nprobe = 1
    assert index.exact_radius == 0
    for j, (_, i) in enumerate(index.range_search(pack_codes(db_bits[:20]), 0)):
        assert j in i.tolist()


def test_fewer_than_k_candidates_and_seeded_cells() -> None:
    rng = np.random.default_rng(3)
    db = pack_codes(clustered(rng, 400, 32, centres=8))
    index = IVFIndex(db, 32, nlist=8, nprobe=1, seed=5)
    d, i = index.search(db[:10], 399)
    sizes = (i >= 0).sum(axis=1)
    assert (sizes < 399).all() and (sizes > 0).all()  # one cell of about 50 codes each
    assert all((d[j, sizes[j] :] == -1).all() for j in range(10))
    again = IVFIndex(db, 32, nlist=8, nprobe=1, seed=5)
    np.testing.assert_array_equal(again.search(db[:10], 399)[1], i)
    assert index.memory_bytes() >= 400 * (index.padded_bytes + 8)


def test_hierarchical_search_and_evaluation_accept_ivf() -> None:
    rng = np.random.default_rng(4)
    bits, n = 48, 800
    db_bits = clustered(rng, n, bits, centres=10, p=0.03)
    codes, f7 = pack_codes(db_bits), rng.normal(size=(n, 16)).astype(np.float32)
    pool = PoolRule(radius=2, min_pool=1, max_pool=n, pool_size=60)
    every = IVFIndex(codes, bits, nlist=16, nprobe=16)
    flat = hierarchical_search(HammingIndex(codes, bits), f7, codes[:30], f7[:30], 10, pool)
    ivf = hierarchical_search(every, f7, codes[:30], f7[:30], 10, pool)
    np.testing.assert_array_equal(ivf.idx, flat.idx)
    db = EncodedItems(codes=codes, f7=f7.astype(np.float16), labels=rng.integers(0, 3, n))
    queries = EncodedItems(codes=codes[:30], f7=f7[:30].astype(np.float16), labels=db.labels[:30])
    one = build_hamming_index(codes, bits, "ivf", nlist=16, nprobe=1)
    report = evaluate_retrieval(db, queries, bits, index=one, modes=["hierarchical"], pool=pool)
    assert 0 < report.metrics["hierarchical"]["pool_recall"] < 1  # one cell of 16 misses part of the pools


def test_bad_arguments() -> None:
    db = pack_codes(np.zeros((10, 48), bool))
    cases = [
        (lambda: IVFIndex(db, 48, nlist=11), "nlist must be an integer in 1..10, got 11"),
        (lambda: IVFIndex(db, 48, nlist=4, nprobe=5), "nprobe must be an integer in 1..4, got 5"),
        (lambda: IVFIndex(db, 48, nlist=4, nprobe=0), "nprobe must be an integer in 1..4, got 0"),
        (lambda: IVFIndex(db, 48, nlist=4, train_rows=3), "train_rows must be an integer >= 4, got 3"),
        (lambda: build_hamming_index(db, 48, "ivf", nflip=1), "ivf index takes .*; got unknown nflip"),
    ]
    for fn, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            fn()
        assert "\n" not in str(err.value)


def test_the_retrieval_config_selects_ivf_with_its_params() -> None:
    from omegaconf import OmegaConf

    from deephash.evaluation.run import coarse_index

    rng = np.random.default_rng(5)
    codes = pack_codes(clustered(rng, 300, 48))
    store = EncodedItems(codes=codes, f7=np.zeros((300, 4), np.float16), labels=np.zeros(300, np.int64))
    store.bits = 48
    rcfg = OmegaConf.create({"coarse": {"method": "ivf", "params": {"nlist": 8, "nprobe": 2, "seed": 3}}})
    index = coarse_index(store, rcfg)
    assert isinstance(index, IVFIndex) and (index.nlist, index.nprobe) == (8, 2)
    bad = OmegaConf.create({"coarse": {"method": "ivf", "params": {"nflip": 1}}})
    with pytest.raises(
        ConfigError, match="ivf index takes nlist, nprobe, pad, seed, train_rows; got unknown nflip"
    ):
        coarse_index(store, bad)
