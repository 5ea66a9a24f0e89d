"""The evaluation pipeline against a brute-force numpy evaluation of every mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deephash.evaluation.pipeline import default_curve_ks, evaluate_retrieval
from deephash.retrieval import EncodedItems, HammingIndex, PoolRule, hierarchical_search
from deephash.retrieval.codes import pack_codes


def _data(seed: int, n: int = 400, q: int = 30, bits: int = 12, d: int = 16, classes: int = 4):
    """Clustered codes/features so rankings carry signal, with many Hamming ties (12 bits)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((classes, bits)) < 0.5
    fcentres = rng.normal(size=(classes, d)) * 3

    def make(m: int) -> EncodedItems:
        labels = rng.integers(0, classes, m)
        flips = rng.random((m, bits)) < 0.15
        codes = centres[labels] ^ flips
        f7 = (fcentres[labels] + rng.normal(size=(m, d))).astype(np.float16)
        return EncodedItems(codes=pack_codes(codes), f7=f7, labels=labels.astype(np.int64))

    return make(n), make(q), bits


def _unpacked(codes: np.ndarray, bits: int) -> np.ndarray:
    return np.unpackbits(codes, axis=1, count=bits).astype(np.int64)


def _ap(rel: np.ndarray, total: int) -> float:
    """Average precision normalised by all relevant items; 0 when there are none."""
    hits = np.cumsum(rel)
    ranks = np.arange(1, len(rel) + 1)
    return float((hits / ranks)[rel].sum() / total) if total else 0.0


def _ap_at(rel: np.ndarray, k: int) -> float:
    top = rel[:k]
    return _ap(top, int(top.sum()))


def _brute(rankings: list[np.ndarray], db: EncodedItems, queries: EncodedItems, ks, map_at) -> dict:
    rels = [db.labels[r] == label for r, label in zip(rankings, queries.labels)]
    totals = [int((db.labels == label).sum()) for label in queries.labels]
    return {
        "mAP": np.mean([_ap(r, t) for r, t in zip(rels, totals)]),
        f"mAP@{map_at}": np.mean([_ap_at(r, map_at) for r in rels]),
        "precision@k": {str(k): np.mean([r[:k].sum() / k for r in rels]) for k in ks},
    }


def _check(result: dict, expected: dict) -> None:
    for key in ("mAP", "mAP@50"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    for k, value in expected["precision@k"].items():
        assert result["precision@k"][k] == pytest.approx(value, abs=1e-9), k


@pytest.mark.parametrize("seed", [0, 1])
def test_every_mode_matches_brute_force(seed: int) -> None:
    db, queries, bits = _data(seed)
    ks, map_at, radius = (1, 5, 10, 50), 50, 2
    report = evaluate_retrieval(db, queries, bits, ks=ks, map_at=map_at, pool=PoolRule(radius, 20, 120, 60))
    dbits, qbits = _unpacked(db.codes, bits), _unpacked(queries.codes, bits)
    ham = (qbits[:, None, :] != dbits[None, :, :]).sum(-1)
    f32_db, f32_q = db.f7.astype(np.float64), queries.f7.astype(np.float64)
    l2 = np.sqrt(((f32_q[:, None, :] - f32_db[None, :, :]) ** 2).sum(-1))
    order = np.arange(len(db.labels))

    hamming = [np.lexsort((order, ham[i])) for i in range(len(queries.labels))]
    _check(report.metrics["hamming"], _brute(hamming, db, queries, ks, map_at))
    euclid = [np.lexsort((order, l2[i])) for i in range(len(queries.labels))]
    _check(report.metrics["euclidean"], _brute(euclid, db, queries, ks, map_at))

    hier = []
    for i in range(len(queries.labels)):
        pool = np.flatnonzero(ham[i] <= radius)
        if not 20 <= len(pool) <= 120:
            pool = hamming[i][:60]
        pool = pool[np.lexsort((pool, l2[i][pool]))]
        rest = [j for j in hamming[i] if j not in set(pool.tolist())]
        hier.append(np.concatenate([pool, np.array(rest, dtype=np.int64)]))
    _check(report.metrics["hierarchical"], _brute(hier, db, queries, ks, map_at))

    # precision within radius 2: empty balls score 0
    balls = [(ham[i] <= radius) for i in range(len(queries.labels))]
    prec = [(db.labels[b] == label).mean() if b.any() else 0.0 for b, label in zip(balls, queries.labels)]
    assert report.metrics["hamming"]["precision@r2"] == pytest.approx(np.mean(prec), abs=1e-12)
    radius_mode = report.metrics["hamming_radius"]
    assert radius_mode["precision"] == pytest.approx(np.mean(prec), abs=1e-12)
    assert radius_mode["mean_results"] == pytest.approx(np.mean([b.sum() for b in balls]))
    # the top of each ranking is what the search returns
    assert np.array_equal(report.top["hamming"], np.stack([h[:10] for h in hamming]))
    assert np.array_equal(report.top["hierarchical"], np.stack([h[:10] for h in hier]))
    for mode in ("hamming", "hierarchical", "euclidean"):
        assert report.metrics[mode]["queries_per_second"] > 0
        assert report.curves[mode].shape == report.curve_ks.shape


def test_hierarchical_top_k_equals_search_result() -> None:
    db, queries, bits = _data(3)
    report = evaluate_retrieval(db, queries, bits, modes=["hierarchical"], pool=PoolRule(2, 20, 120, 60))
    index = HammingIndex(db.codes, bits)
    found = hierarchical_search(index, db.f7, queries.codes, queries.f7, 10, PoolRule(2, 20, 120, 60)).idx
    assert np.array_equal(report.top["hierarchical"], found)


def test_pr_curve_reaches_full_recall_at_max_radius() -> None:
    db, queries, bits = _data(4)
    report = evaluate_retrieval(db, queries, bits, modes=["hamming"])
    assert report.pr["radius"].tolist() == list(range(bits + 1))
    assert report.pr["recall"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(report.pr["recall"]) >= -1e-12)


def test_query_blocks_give_the_same_numbers(monkeypatch) -> None:
    import deephash.evaluation.rankings as rankings

    db, queries, bits = _data(5)
    whole = evaluate_retrieval(db, queries, bits, modes=["hamming", "euclidean"])
    monkeypatch.setattr(rankings, "_BLOCK_CELLS", 7 * len(db.labels))  # 7 queries per block
    blocked = evaluate_retrieval(db, queries, bits, modes=["hamming", "euclidean"])
    for mode in ("hamming", "euclidean"):
        assert blocked.metrics[mode]["mAP"] == pytest.approx(whole.metrics[mode]["mAP"], abs=1e-12)
        np.testing.assert_allclose(blocked.curves[mode], whole.curves[mode], atol=1e-12)


def test_unknown_mode_is_rejected() -> None:
    db, queries, bits = _data(6)
    with pytest.raises(ValueError, match=r"unknown retrieval mode\(s\) \['cosine'\]"):
        evaluate_retrieval(db, queries, bits, modes=["cosine"])


def test_default_curve_ks_stop_at_database_size() -> None:
    assert default_curve_ks(50)[-1] == 50
    assert default_curve_ks(10**6)[-1] == 1000


def test_multihash_coarse_stage_gives_the_same_hierarchical_results_within_its_exact_radius() -> None:
    from deephash.retrieval.sublinear import build_hamming_index

    rng = np.random.default_rng(7)
    bits, n = 48, 600
    centres = rng.random((6, bits)) < 0.5
    labels = rng.integers(0, 6, n)
    codes = pack_codes(centres[labels] ^ (rng.random((n, bits)) < 0.02))
    f7 = rng.normal(size=(n, 8)).astype(np.float16)
    db = EncodedItems(codes=codes, f7=f7, labels=labels)
    queries = EncodedItems(codes=codes[:20], f7=f7[:20], labels=labels[:20])
    kwargs = dict(modes=["hierarchical"], pool=PoolRule(radius=2, min_pool=1, max_pool=n, pool_size=50))
    flat = evaluate_retrieval(db, queries, bits, **kwargs)
    multi = build_hamming_index(codes, bits, method="multihash", nhash=3, b=16, nflip=1)  # exact to radius 5
    hashed = evaluate_retrieval(db, queries, bits, index=multi, **kwargs)
    assert hashed.metrics["hierarchical"]["mAP"] == flat.metrics["hierarchical"]["mAP"]
    assert np.array_equal(hashed.top["hierarchical"], flat.top["hierarchical"])
    # the sub-linear stage's pools against the exact ones: all found within its exact radius, not so beyond
    assert hashed.metrics["hierarchical"]["pool_recall"] == 1.0
    assert "pool_recall" not in flat.metrics["hierarchical"]
    # the first 16 bits' table misses the nearest codes that differ there (the pools are the 300 nearest)
    single = build_hamming_index(codes, bits, method="hash", b=16, nflip=0)
    wide = dict(modes=["hierarchical"], pool=PoolRule(radius=0, min_pool=300, max_pool=n, pool_size=300))
    report = evaluate_retrieval(db, queries, bits, index=single, **wide)
    assert 0 < report.metrics["hierarchical"]["pool_recall"] < 1


def test_device_path_gives_the_cpu_numbers(monkeypatch) -> None:
    import deephash.evaluation.pipeline as pipeline
    from deephash.retrieval.torch_search import TorchHammingIndex

    db, queries, bits = _data(7)
    options = {"ks": (1, 5, 10, 50), "map_at": 50, "pool": PoolRule(2, 20, 120, 60)}
    cpu = evaluate_retrieval(db, queries, bits, **options)
    # the torch code of retrieval.device=cuda, run on CPU tensors
    monkeypatch.setattr(pipeline, "torch_device", lambda name: torch.device("cpu"))
    made = []

    class Recorded(TorchHammingIndex):
        def __init__(self, *args) -> None:
            made.append(args)
            super().__init__(*args)

    monkeypatch.setattr(pipeline, "TorchHammingIndex", Recorded)
    dev = evaluate_retrieval(db, queries, bits, device="cuda", **options)
    assert len(made) == 1  # the coarse stage ran through the torch index
    for mode in ("hamming", "hierarchical", "euclidean"):
        np.testing.assert_array_equal(dev.top[mode], cpu.top[mode])
        np.testing.assert_allclose(dev.curves[mode], cpu.curves[mode], atol=1e-12, rtol=0)
        for key in ("mAP", "mAP@50"):
            assert dev.metrics[mode][key] == pytest.approx(cpu.metrics[mode][key], abs=1e-12, rel=0)
        assert dev.metrics[mode]["precision@k"] == cpu.metrics[mode]["precision@k"]
    for key in ("precision", "recall", "mean_results", "empty_fraction"):
        assert dev.metrics["hamming_radius"][key] == cpu.metrics["hamming_radius"][key]
    for key in ("precision", "recall"):
        np.testing.assert_array_equal(dev.pr[key], cpu.pr[key])


def test_settings_carry_the_device() -> None:
    from deephash.evaluation.pipeline import settings

    rcfg = {
        "modes": ["hamming"],
        "ks": [1],
        "map_at": 10,
        "radius": 2,
        "min_pool": 1,
        "max_pool": 9,
        "pool_size": 5,
    }
    assert settings(rcfg)["device"] == "cpu"
    assert settings({**rcfg, "device": "cuda"})["device"] == "cuda"
    db, queries, bits = _data(8)
    with pytest.raises(ValueError, match="unknown retrieval.device 'tpu'"):
        evaluate_retrieval(db, queries, bits, modes=["hamming"], device="tpu")


def test_float_rankings_order_ties_zeros_and_nan_like_a_stable_sort() -> None:
    from deephash.evaluation.rankings import stable_ranking

    rng = np.random.default_rng(11)
    dist = np.round(rng.random((6, 500)) * 20) / 4  # many exact ties
    dist[:, ::50] = 0.0
    expected = np.argsort(dist, axis=1, kind="stable")
    assert np.array_equal(stable_ranking(dist), expected)
    # -0.0 ties with 0.0 (its bit pattern would sort it last), NaN sorts last in index order
    odd = dist.copy()
    odd[:, 1::50] = -0.0
    odd[0, 7], odd[0, 3] = np.nan, np.nan
    assert np.array_equal(stable_ranking(odd), np.argsort(odd, axis=1, kind="stable"))


def test_euclidean_distances_read_in_database_blocks(tmp_path) -> None:
    from deephash.evaluation.rankings import euclidean_sqdist

    db, queries, _ = _data(8, n=103, d=24)
    path = tmp_path / "f7.npy"
    np.save(path, db.f7)
    memmap = np.load(path, mmap_mode="r")
    q = queries.f7.astype(np.float64)
    exact = ((q[:, None, :] - db.f7.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    for rows in (7, 103, 8192):  # blocks that do not divide n, one block, the default
        got = euclidean_sqdist(queries.f7, memmap, rows=rows)
        np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-9)
        assert not np.signbit(got).any()
