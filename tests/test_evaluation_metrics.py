"""Retrieval metrics against hand-computed values and slow loop references on random data with ties;
the Hamming-mode metrics from packed codes against a brute-force evaluation, to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

from deephash.evaluation import hamming_metrics as H
from deephash.evaluation import metrics as M
from deephash.retrieval.codes import hamming_distance_matrix
from deephash.utils.errors import ConfigError, IndexFormatError

# ---------------------------------------------------------------- loop references


def ranked_relevance(query_labels: np.ndarray, ranking: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(q,), (q, n) database indices, (N,) -> (q, n) bool relevance of each ranked list."""
    return db_labels[ranking] == np.asarray(query_labels)[:, None]


def ref_ranking(dist_row: np.ndarray) -> list[int]:
    return sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))


def ref_ap(rel_row: np.ndarray, n_relevant: int) -> float:
    hits, total = 0, 0.0
    for j, r in enumerate(rel_row):
        if r:
            hits += 1
            total += hits / (j + 1)
    return total / n_relevant if n_relevant else 0.0


def ref_ap_at_k(rel_row: np.ndarray, k: int) -> float:
    top = rel_row[:k]
    return ref_ap(top, int(sum(top)))


def ref_precision_at_k(rel_row: np.ndarray, k: int) -> float:
    return sum(1 for r in rel_row[:k] if r) / k


def ref_ball(dist_row: np.ndarray, rel_row: np.ndarray, radius: int) -> tuple[float, float]:
    inside = [j for j in range(len(dist_row)) if dist_row[j] <= radius]
    hits = sum(1 for j in inside if rel_row[j])
    total_rel = int(sum(rel_row))
    precision = hits / len(inside) if inside else 0.0
    recall = hits / total_rel if total_rel else 0.0
    return precision, recall


@pytest.fixture
def hamming_data():
    """6-bit codes (distances tie constantly), 3 classes, one class absent from the database."""
    rng = np.random.default_rng(0)
    bits, q, n = 6, 17, 90
    db_codes = rng.integers(0, 2, (n, bits), dtype=np.uint8)
    query_codes = rng.integers(0, 2, (q, bits), dtype=np.uint8)
    dist = (query_codes[:, None, :] != db_codes[None, :, :]).sum(-1)
    db_labels = rng.integers(0, 3, n)
    query_labels = rng.integers(0, 4, q)
    query_labels[0] = 3  # no relevant item in the database
    return bits, dist, query_labels, db_labels


# ---------------------------------------------------------------- hand-computed


def test_average_precision_by_hand():
    rel = np.array([[1, 0, 1, 0]], dtype=bool)
    assert M.average_precision(rel, np.array([3]))[0] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert M.average_precision(rel)[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert M.map_at_k(rel, 4) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert M.map_at_k(rel, 2) == pytest.approx(1.0)
    assert M.map_at_k(np.array([[0, 1, 0, 1]], dtype=bool), 4) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_queries_without_relevant_items_score_zero():
    rel = np.array([[0, 0, 0], [1, 1, 0]], dtype=bool)
    np.testing.assert_allclose(M.average_precision(rel, np.array([0, 2])), [0.0, 1.0])
    assert M.mean_average_precision(rel, np.array([0, 2])) == pytest.approx(0.5)
    # relevant items exist but none in the top 1
    assert M.map_at_k(np.array([[0, 1, 1]], dtype=bool), 1) == 0.0


def test_map_at_k_normalises_by_relevant_found_not_all_relevant():
    rel = np.array([[1, 0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 1]], dtype=bool)
    n_relevant = rel.sum(1)
    at_3 = M.map_at_k(rel, 3)
    assert at_3 == pytest.approx((1.0 + 1 / 2) / 2)
    # the same top 3 normalised by all relevant items: (1/4 + (1/2)/2) / 2
    truncated = M.mean_average_precision(rel[:, :3], n_relevant)
    assert truncated == pytest.approx((1 / 4 + (1 / 2) / 2) / 2)
    assert at_3 > truncated


def test_precision_at_k_by_hand_and_k_beyond_ranking():
    rel = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    p = M.precision_at_k(rel, [1, 2, 3, 6])
    assert p == pytest.approx({1: 0.5, 2: 0.25, 3: 0.5, 6: 0.25})
    # k > n keeps the denominator k: 2 hits in a list of 3, k = 6 -> 2/6
    assert M.precision_at_k(rel[:1], [6])[6] == pytest.approx(2 / 6)


def test_count_relevant():
    query_labels = np.array([0, 2, 5])
    db_labels = np.array([2, 0, 2, 1, 2])
    np.testing.assert_array_equal(M.count_relevant(query_labels, db_labels), [1, 3, 0])


def test_precision_within_radius_with_empty_balls():
    dist = np.array([[0, 1, 3, 5], [4, 3, 6, 3], [2, 2, 0, 9]])
    rel = np.array([[1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=bool)
    precision, empty = M.hamming_ball_precision(dist, rel, radius=2)
    np.testing.assert_allclose(precision, [1 / 2, 0.0, 1 / 3])
    np.testing.assert_array_equal(empty, [False, True, False])
    assert M.precision_within_radius(dist, rel, radius=2) == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)
    assert M.empty_ball_fraction(dist, radius=2) == pytest.approx(1 / 3)
    assert M.empty_ball_fraction(dist, radius=3) == 0.0


def test_bit_balance():
    codes = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_allclose(M.bit_balance(codes), [1.0, 0.25, 0.25])


# ---------------------------------------------------------------- random data against loops


def test_hamming_ranking_breaks_ties_by_index(hamming_data):
    _, dist, _, _ = hamming_data
    full = M.hamming_ranking(dist)
    assert full.dtype == np.int64
    for i in range(len(dist)):
        assert full[i].tolist() == ref_ranking(dist[i])
    np.testing.assert_array_equal(M.hamming_ranking(dist, k=7, chunk=4), full[:, :7])
    np.testing.assert_array_equal(M.hamming_ranking(dist, k=500), full)
    # distances beyond 16 bits take the partition path; the order must not change
    wide = dist * 70_000
    np.testing.assert_array_equal(M.hamming_ranking(wide), full)
    np.testing.assert_array_equal(M.hamming_ranking(wide, k=7, chunk=4), full[:, :7])


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_metrics_match_loop_references(hamming_data, chunk):
    _, dist, query_labels, db_labels = hamming_data
    ranking = M.hamming_ranking(dist)
    rel = ranked_relevance(query_labels, ranking, db_labels)
    n_relevant = M.count_relevant(query_labels, db_labels)
    assert n_relevant[0] == 0

    ap = M.average_precision(rel, n_relevant, chunk=chunk)
    np.testing.assert_allclose(ap, [ref_ap(r, R) for r, R in zip(rel, n_relevant)])
    for k in (1, 5, 20, 90, 200):
        expected = np.mean([ref_ap_at_k(r, k) for r in rel])
        assert M.map_at_k(rel, k, chunk=chunk) == pytest.approx(expected)
    ks = [1, 3, 10, 90, 150]
    expected_p = [np.mean([ref_precision_at_k(r, k) for r in rel]) for k in ks]
    np.testing.assert_allclose(M.precision_curve(rel, ks, chunk=chunk), expected_p)
    assert M.precision_at_k(rel, ks, chunk=chunk)[10] == pytest.approx(expected_p[2])
    assert M.mean_average_precision(rel, n_relevant, chunk=chunk) == pytest.approx(ap.mean())


def test_radius_precision_and_pr_curve_match_loops(hamming_data):
    bits, dist, query_labels, db_labels = hamming_data
    rel = db_labels[None, :] == query_labels[:, None]
    curve = M.pr_curve_hamming(dist, rel, bits, chunk=3)
    assert curve["radius"].tolist() == list(range(bits + 1))
    for r in range(bits + 1):
        ref = [ref_ball(d, rl, r) for d, rl in zip(dist, rel)]
        assert curve["precision"][r] == pytest.approx(np.mean([p for p, _ in ref]))
        assert curve["recall"][r] == pytest.approx(np.mean([c for _, c in ref]))
        assert M.precision_within_radius(dist, rel, radius=r) == pytest.approx(curve["precision"][r])
    # the whole database is inside radius = bits: recall is 1 for every query with a relevant item
    assert curve["recall"][-1] == pytest.approx((rel.sum(1) > 0).mean())
    assert np.all(np.diff(curve["recall"]) >= 0)
    # the ball is a set: permuting the columns of both arrays changes nothing
    perm = np.random.default_rng(1).permutation(dist.shape[1])
    shuffled = M.pr_curve_hamming(dist[:, perm], rel[:, perm], bits)
    np.testing.assert_allclose(shuffled["precision"], curve["precision"])


# ---------------------------------------------------------------- bad input


def test_bad_input_messages():
    rel = np.ones((2, 3), dtype=bool)
    with pytest.raises(ConfigError, match="positive integer k"):
        M.precision_at_k(rel, [0, 5])
    with pytest.raises(ConfigError, match="positive k"):
        M.map_at_k(rel, 0)
    with pytest.raises(ConfigError, match="chunk must be a positive"):
        M.mean_average_precision(rel, chunk=0)
    with pytest.raises(ValueError, match=r"q >= 1"):
        M.mean_average_precision(np.zeros((0, 3), dtype=bool))
    with pytest.raises(ValueError, match="n_relevant is smaller"):
        M.average_precision(rel, np.array([3, 2]))
    with pytest.raises(ValueError, match=r"n_relevant of shape \(2,\)"):
        M.average_precision(rel, np.array([3]))
    with pytest.raises(ValueError, match="same shape"):
        M.precision_within_radius(np.zeros((2, 4), dtype=int), rel)
    with pytest.raises(ConfigError, match="radius must be >= 0"):
        M.precision_within_radius(np.zeros((2, 3), dtype=int), rel, radius=-1)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\]"):
        M.pr_curve_hamming(np.full((2, 3), 5), rel, bits=4)
    with pytest.raises(ValueError, match="integer Hamming distances"):
        M.hamming_ranking(np.zeros((2, 3), dtype=float))


# ---------------------------------------------------------------- Hamming metrics from packed codes


def brute_hamming(qbits, dbits, query_labels, db_labels, ks, map_at, radius, curve_ks, top_n) -> dict:
    """Every Hamming-mode number by loops: distances by comparing unpacked bits, rankings by (distance,
    index) with Python's sort, one query at a time."""
    bits = qbits.shape[1]
    out = {"ap": [], "ap_at": [], "p": [], "curve": [], "ball": [], "top": []}
    for code, label in zip(qbits, query_labels):
        dist = (dbits != code).sum(axis=1)
        ranking = ref_ranking(dist)
        rel = db_labels[ranking] == label
        out["ap"].append(ref_ap(rel, int(rel.sum())))
        out["ap_at"].append(ref_ap_at_k(rel, map_at))
        out["p"].append([ref_precision_at_k(rel, k) for k in ks])
        out["curve"].append([ref_precision_at_k(rel, k) for k in curve_ks])
        out["ball"].append([ref_ball(dist, db_labels == label, r) for r in range(bits + 1)])
        out["top"].append(ranking[:top_n])
    ball = np.array(out["ball"])  # (q, bits + 1, [precision, recall])
    return {
        "mAP": np.mean(out["ap"]),
        f"mAP@{map_at}": np.mean(out["ap_at"]),
        "precision@k": dict(zip(map(str, ks), np.mean(out["p"], axis=0))),
        f"precision@r{radius}": ball[:, min(radius, bits), 0].mean(),
        "curve": np.mean(out["curve"], axis=0),
        "precision": ball[:, :, 0].mean(axis=0),
        "recall": ball[:, :, 1].mean(axis=0),
        "top": np.array(out["top"]),
    }


def assert_same(found: H.HammingMetrics, expected: dict, tol: float = 1e-12) -> None:
    keys = [k for k in expected if k.startswith(("mAP", "precision@r"))]
    assert list(found.metrics) == keys[:2] + ["precision@k"] + keys[2:]
    for key in keys:
        assert found.metrics[key] == pytest.approx(expected[key], abs=tol, rel=0), key
    assert list(found.metrics["precision@k"]) == list(expected["precision@k"])
    for k, p in expected["precision@k"].items():
        assert found.metrics["precision@k"][k] == pytest.approx(p, abs=tol, rel=0), k
    np.testing.assert_allclose(found.curve, expected["curve"], atol=tol, rtol=0)
    np.testing.assert_allclose(found.pr["precision"], expected["precision"], atol=tol, rtol=0)
    np.testing.assert_allclose(found.pr["recall"], expected["recall"], atol=tol, rtol=0)
    np.testing.assert_array_equal(found.pr["radius"], np.arange(len(expected["recall"])))
    np.testing.assert_array_equal(found.top, expected["top"])


def coded(rng: np.random.Generator, kind: str, m: int, bits: int, labels: np.ndarray, centres: np.ndarray):
    """(m, bits) bool codes: uniform, or a centre per class with a few flipped bits (many exact ties)."""
    if kind == "uniform":
        return rng.random((m, bits)) < 0.5
    return centres[labels] ^ (rng.random((m, bits)) < min(0.1, 2 / bits))


@pytest.mark.parametrize("bits", [1, 5, 8, 13, 48, 64, 65, 127, 128, 255, 256, 300, 512, 4096])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_hamming_metrics_match_brute_force(bits, kind, monkeypatch):
    """Several blocks, several threads, k beyond the database, a label absent from the database."""
    rng = np.random.default_rng(bits)
    q, n, classes = 23, 157, 4
    centres = rng.random((classes, bits)) < 0.5
    db_labels, query_labels = rng.integers(0, classes, n), rng.integers(0, classes + 1, q)
    query_labels[:2] = classes  # no relevant item in the database
    dbits = coded(rng, kind, n, bits, db_labels, centres)
    qbits = coded(rng, kind, q, bits, np.minimum(query_labels, classes - 1), centres)
    qbits[2] = dbits[5]  # an exact copy: distance 0
    qbits[3] = ~dbits[6]  # the complement: distance = bits, beyond uint8 at 256 bits
    ks, curve_ks, map_at = (1, 3, 10, n, 400), np.arange(1, n + 30, 7), 50 if bits % 2 else 1000
    monkeypatch.setattr(H, "_BLOCK_CELLS", 5 * n)  # blocks of a few queries
    found = H.hamming_retrieval_metrics(
        np.packbits(qbits, axis=1), np.packbits(dbits, axis=1), query_labels, db_labels, bits,
        ks=ks, map_at=map_at, radius=2, curve_ks=curve_ks, top_n=n + 5, threads=3,
    )  # fmt: skip
    expected = brute_hamming(qbits, dbits, query_labels, db_labels, ks, map_at, 2, curve_ks, n)
    assert_same(found, expected)


@pytest.mark.parametrize("radius", [0, 3, 7, 50])
def test_hamming_radius_and_one_thread(radius):
    rng = np.random.default_rng(radius)
    bits, q, n = 7, 11, 60
    dbits, qbits = rng.random((n, bits)) < 0.5, rng.random((q, bits)) < 0.5
    db_labels, query_labels = rng.integers(0, 3, n), rng.integers(0, 3, q)
    found = H.hamming_retrieval_metrics(
        np.packbits(qbits, axis=1), np.packbits(dbits, axis=1), query_labels, db_labels, bits,
        ks=[5], map_at=20, radius=radius, curve_ks=[], top_n=0, threads=1,
    )  # fmt: skip
    expected = brute_hamming(qbits, dbits, query_labels, db_labels, [5], 20, radius, [], 0)
    assert_same(found, expected | {"curve": np.zeros(0), "top": np.zeros((q, 0), np.int64)})


def test_complement_at_256_bits_ranks_last():
    """Distance 256 must not wrap to 0 in an 8-bit popcount sum."""
    bits = 256
    db = np.zeros((4, bits), bool)
    db[0] = True  # distance 256 from the all-zero query
    db[2, :3] = True
    found = H.hamming_retrieval_metrics(
        np.packbits(np.zeros((1, bits), bool), axis=1), np.packbits(db, axis=1), [1], [1, 0, 1, 0], bits,
        ks=[1, 2], map_at=4, radius=2, top_n=4,
    )  # fmt: skip
    np.testing.assert_array_equal(found.top, [[1, 3, 2, 0]])
    assert found.metrics["precision@k"] == {"1": 0.0, "2": 0.0}
    assert found.metrics["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    np.testing.assert_array_equal(np.flatnonzero(np.diff(found.pr["recall"])), [2, 255])


def test_hamming_metrics_match_the_ranking_based_metrics():
    """The same numbers, to 1e-12, as the metrics above applied to the full stable ranking (the way the
    evaluation computed them before), on class-clustered 48-bit codes."""
    rng = np.random.default_rng(7)
    bits, q, n, classes = 48, 120, 3000, 10
    centres = rng.random((classes, bits)) < 0.5
    db_labels, query_labels = rng.integers(0, classes, n), rng.integers(0, classes, q)
    db = np.packbits(centres[db_labels] ^ (rng.random((n, bits)) < 0.15), axis=1)
    queries = np.packbits(centres[query_labels] ^ (rng.random((q, bits)) < 0.15), axis=1)
    ks, curve_ks = (1, 10, 100, 1000), np.arange(1, 1001, 3)
    found = H.hamming_retrieval_metrics(
        queries, db, query_labels, db_labels, bits, ks=ks, curve_ks=curve_ks, top_n=10
    )

    dist = hamming_distance_matrix(queries, db)
    ranking = np.argsort(dist, axis=1, kind="stable")
    rel = ranked_relevance(query_labels, ranking, db_labels)
    relevant = db_labels[None, :] == query_labels[:, None]
    pr = M.pr_curve_hamming(dist, relevant, bits)
    expected = {
        "mAP": M.mean_average_precision(rel, M.count_relevant(query_labels, db_labels)),
        "mAP@1000": M.map_at_k(rel, 1000),
        "precision@k": {str(k): p for k, p in M.precision_at_k(rel, ks).items()},
        "precision@r2": M.precision_within_radius(dist, relevant, 2),
        "curve": M.precision_curve(rel, curve_ks),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "top": ranking[:, :10],
    }
    assert 0.3 < expected["mAP"] < 0.95  # informative codes, not a degenerate case
    assert_same(found, expected)


def test_hamming_metrics_bad_input():
    codes, labels = np.zeros((3, 2), np.uint8), np.arange(3)
    with pytest.raises(ConfigError, match="one label each"):
        H.hamming_retrieval_metrics(codes, codes, labels[:2], labels, 12)
    with pytest.raises(ConfigError, match="precision@k needs positive integer k"):
        H.hamming_retrieval_metrics(codes, codes, labels, labels, 12, ks=[0])
    with pytest.raises(ConfigError, match="mAP@k must be an integer >= 1, got 0"):
        H.hamming_retrieval_metrics(codes, codes, labels, labels, 12, map_at=0)
    with pytest.raises(ConfigError, match="Hamming radius must be an integer >= 0, got -1"):
        H.hamming_retrieval_metrics(codes, codes, labels, labels, 12, radius=-1)
    with pytest.raises(IndexFormatError, match="nonzero padding bits"):
        H.hamming_retrieval_metrics(codes, codes + 1, labels, labels, 12)
    with pytest.raises(IndexFormatError, match="packed as"):
        H.hamming_retrieval_metrics(codes, codes, labels, labels, 24)
