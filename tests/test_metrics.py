"""Retrieval metrics against hand-computed values and slow loop references on random data with ties."""

from __future__ import annotations

import numpy as np
import pytest

from deephash.evaluation import metrics as M
from deephash.utils.errors import ConfigError

# ---------------------------------------------------------------- loop references


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


def test_relevance_and_counts():
    query_labels = np.array([0, 2, 5])
    db_labels = np.array([2, 0, 2, 1, 2])
    ranking = np.array([[1, 0, 2], [4, 3, 0], [0, 1, 2]])
    rel = M.ranked_relevance(query_labels, ranking, db_labels)
    np.testing.assert_array_equal(rel, [[True, False, False], [True, False, True], [False, False, False]])
    np.testing.assert_array_equal(M.ranked_relevance(query_labels, ranking, db_labels, chunk=1), rel)
    np.testing.assert_array_equal(M.relevance_matrix(query_labels, db_labels[ranking]), rel)
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
    rel = M.ranked_relevance(query_labels, ranking, db_labels)
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

    out = M.retrieval_metrics(rel, n_relevant, ks=ks, map_k=20, chunk=chunk)
    assert set(out) == {"mAP", "mAP@20", "precision@k"}
    assert out["mAP"] == pytest.approx(ap.mean())
    assert list(out["precision@k"]) == [str(k) for k in ks]
    assert out["precision@k"]["10"] == pytest.approx(expected_p[2])


def test_radius_precision_and_pr_curve_match_loops(hamming_data):
    bits, dist, query_labels, db_labels = hamming_data
    rel = M.relevance_matrix(query_labels, np.broadcast_to(db_labels, dist.shape))
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
    with pytest.raises(ValueError, match="query_labels"):
        M.relevance_matrix(np.array([1, 2]), np.array([[1, 2]]))


# ---------------------------------------------------------------- scale


def test_scale_1000_queries_60000_items():
    """The paper's MNIST protocol size: must run in seconds, with bounded memory blocks."""
    rng = np.random.default_rng(0)
    q, n, bits = 1000, 60000, 48
    dist = rng.integers(0, bits + 1, (q, n), dtype=np.int32)
    query_labels, db_labels = rng.integers(0, 10, q), rng.integers(0, 10, n)
    ranking = M.hamming_ranking(dist)
    assert ranking.shape == (q, n)
    out = M.retrieval_metrics(
        M.ranked_relevance(query_labels, ranking, db_labels), M.count_relevant(query_labels, db_labels)
    )
    # random codes: every metric sits near the class prior 1/10
    assert 0.08 < out["mAP"] < 0.12
    assert 0.08 < out["precision@k"]["1000"] < 0.12
    rel = M.relevance_matrix(query_labels, np.broadcast_to(db_labels, (q, n)))
    curve = M.pr_curve_hamming(dist, rel, bits)
    assert curve["recall"][-1] == pytest.approx(1.0)
