"""Re-rank feature codecs: float16, pca<d>, pq<m>, opq<m> built, recorded, checked on load and searched, against
brute force in numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash.evaluation.pipeline import evaluate_retrieval
from deephash.retrieval import (
    HammingIndex,
    PoolRule,
    euclidean_search,
    hierarchical_search,
    load_index,
    save_index,
)
from deephash.retrieval.codecs import check_codec, parse_codec, sample_rows
from deephash.retrieval.distances import nearest_centroids
from deephash.retrieval.hierarchical import coarse_pools
from deephash.retrieval.index_reader import verify_index
from deephash.retrieval.manifest import MANIFEST, sha256_file
from deephash.utils.errors import ConfigError, IndexFormatError

N, D, BITS, K = 3000, 32, 16, 10
POOL = PoolRule(radius=2, min_pool=K, max_pool=400, pool_size=200)


def _data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, D)) * 3
    f7 = (centres[rng.integers(0, 20, N)] + rng.standard_normal((N, D))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, 12)] + rng.standard_normal((12, D))).astype(np.float32)
    return {
        "f7": f7,
        "codes": np.packbits(rng.random((N, BITS)) < 0.5, axis=1),
        "query_codes": np.packbits(rng.random((12, BITS)) < 0.5, axis=1),
        "queries": queries,
        "labels": rng.integers(0, 5, N),
    }


def _save(path: Path, data: dict, codec: str, **kw) -> Path:
    return save_index(
        path,
        codes_packed=data["codes"],
        f7=data["f7"],
        labels=data["labels"],
        ids=[f"item{i}" for i in range(N)],
        bits=BITS,
        meta={"class_names": [str(c) for c in range(5)]},
        codec=codec,
        codec_train_rows=2500,
        **kw,
    )


def _reconstructions(path: Path) -> np.ndarray:
    """The rows a PQ index stands for, decoded from its files by hand (float64)."""
    with np.load(path / "codec.npz") as params:
        centroids, rotation = params["centroids"].astype(np.float64), params.get("rotation")
    codes = np.load(path / "pq.npy")
    m = centroids.shape[0]
    rows = np.concatenate([centroids[j][codes[:, j]] for j in range(m)], axis=1)
    return rows @ rotation.astype(np.float64) if rotation is not None else rows


def _check_against(l2: np.ndarray, idx: np.ndarray, ref: np.ndarray, candidates: list[np.ndarray]) -> None:
    """Each query's results are the k nearest of its candidates under the reference distances ``ref`` (q, n)
    squared, float64: the same distances (to float32 rounding) and the reference's order."""
    for qi, cand in enumerate(candidates):
        d = ref[qi, cand]
        order = np.lexsort((cand, d))[:K]
        np.testing.assert_allclose(l2[qi] ** 2, d[order], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ref[qi, idx[qi]], d[order], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["pq8", "opq8", "pca16pq8"])
def test_pq_search_is_adc_over_the_pool_and_over_every_row(tmp_path: Path, spec: str) -> None:
    data = _data()
    store = load_index(_save(tmp_path / spec, data, spec))
    assert (
        store.codec.spec == spec
        and tuple(store.manifest["codec"].values())[:2] == parse_codec(spec)
        and not any((tmp_path / spec / name).exists() for name in ("f7.npy", "f7.crc32.npy"))
    )
    rows, queries = _reconstructions(tmp_path / spec), data["queries"].astype(np.float64)
    if spec.startswith("pca"):  # PCA first: distances between the projections on the 16 principal directions
        with np.load(tmp_path / spec / "codec.npz") as params:
            directions = params["rotation"].astype(np.float64)  # (16, D), orthonormal rows
        assert directions.shape == (16, D) and store.manifest["codec"]["reduced"] == 16
        np.testing.assert_allclose(directions @ directions.T, np.eye(16), atol=1e-5)
        rows, queries = rows @ directions.T, queries @ directions.T
    ref = ((queries[:, None, :] - rows[None]) ** 2).sum(-1)
    index = HammingIndex(store.codes, BITS)
    found = hierarchical_search(index, store.f7, data["query_codes"], data["queries"], K, POOL)
    pools = coarse_pools(index, data["query_codes"], *[POOL.radius, *POOL.limits(K)])
    _check_against(found.l2, found.idx, ref, [idx for _, idx in pools])
    l2, idx = euclidean_search(store.f7, data["queries"], K)
    _check_against(l2, idx, ref, [np.arange(N)] * len(ref))
    # the pool's ADC distances and the scan's are the same bits for the same pair
    pair = store.f7.pair_sqdist(data["queries"], np.arange(12), idx[:, 0])
    np.testing.assert_array_equal(pair, np.diag(store.f7.sqdist_block(data["queries"], 0, N)[:, idx[:, 0]]))


def test_pca_index_searches_like_a_float16_index_of_the_projected_features(tmp_path: Path) -> None:
    data = _data()
    pca = load_index(_save(tmp_path / "pca", data, "pca6"))
    with np.load(tmp_path / "pca" / "codec.npz") as params:
        mean, components = params["mean"], params["components"]
    assert components.shape == (D, 6) and pca.f7.shape == (N, 6) and pca.feature_dim == D
    projected = {**data, "f7": (data["f7"] - mean) @ components}
    plain = load_index(_save(tmp_path / "plain", projected, "float16"))
    queries = (data["queries"] - mean) @ components
    index = HammingIndex(pca.codes, BITS)
    a = hierarchical_search(index, pca.f7, data["query_codes"], pca.query_features(data["queries"]), K, POOL)
    b = hierarchical_search(index, plain.f7, data["query_codes"], queries, K, POOL)
    np.testing.assert_array_equal(a.idx, b.idx)
    np.testing.assert_array_equal(
        euclidean_search(pca.f7, pca.query_features(data["queries"]), K)[1],
        euclidean_search(plain.f7, queries, K)[1],
    )


def test_float16_is_the_default_and_an_index_without_a_codec_loads_as_before(tmp_path: Path) -> None:
    data = _data()
    path = _save(tmp_path / "f16", data, "float16")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format_version"] == 2 and manifest["codec"] == {"name": "float16", "size": 0}
    before = load_index(path)
    index = HammingIndex(before.codes, BITS)
    expected = hierarchical_search(index, before.f7, data["query_codes"], data["queries"], K, POOL).idx
    del manifest["codec"]  # as every index written before codecs
    (path / MANIFEST).write_text(json.dumps(manifest))
    store = load_index(path)
    assert store.codec.name == "float16" and store.query_features(data["queries"]) is data["queries"]
    np.testing.assert_array_equal(
        hierarchical_search(index, store.f7, data["query_codes"], data["queries"], K, POOL).idx, expected
    )


def test_codecs_work_in_every_evaluated_mode(tmp_path: Path) -> None:
    data = _data()
    queries = load_index(
        save_index(
            tmp_path / "queries",
            codes_packed=data["query_codes"],
            f7=data["queries"],
            labels=np.arange(12) % 5,
            ids=[str(i) for i in range(12)],
            bits=BITS,
        )
    )
    for spec in ("float16", "pca8", "pq8"):
        store = load_index(_save(tmp_path / spec, data, spec))
        report = evaluate_retrieval(store, queries, BITS, ks=(1, 10), map_at=100, pool=POOL)
        for mode in ("hierarchical", "euclidean"):
            assert 0 < report.metrics[mode]["mAP"] <= 1, (spec, mode)


def test_training_is_seeded(tmp_path: Path) -> None:
    data = _data()
    a, b = _save(tmp_path / "a", data, "pq4"), _save(tmp_path / "b", data, "pq4")
    c = _save(tmp_path / "c", data, "pq4", codec_seed=1)
    assert sha256_file(a / "codec.npz") == sha256_file(b / "codec.npz") != sha256_file(c / "codec.npz")
    np.testing.assert_array_equal(sample_rows(10, 20, 0), np.arange(10))
    assert len(np.unique(sample_rows(1000, 100, 3))) == 100


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pq", "codec must be float16, pca<d>"),
        ("pq0", "codec must be float16, pca<d>"),
        ("lsq8", "codec must be float16, pca<d>"),
        ("pq5", "do not split into 5 equal sub-vectors"),
        ("pca64", "cannot keep 64 principal directions of 32-d"),
        ("pca64pq8", "cannot keep 64 principal directions of 32-d"),
        ("pca12pq5", "12-d features do not split into 5 equal sub-vectors"),
        ("pca0pq4", "codec must be float16, pca<d>"),
    ],
)
def test_bad_codec_specs_are_one_line_errors(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_codec(spec, D)
    with pytest.raises(ConfigError, match=message):
        _save(tmp_path / "bad", _data(), spec)
    assert not (tmp_path / "bad").exists()


def test_pq_refuses_non_finite_rows_and_streamed_rows(tmp_path: Path) -> None:
    data = _data()
    data["f7"][7, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        _save(tmp_path / "nan", data, "pq4")
    with pytest.raises(ConfigError, match="pass f7 as an array"):
        save_index(
            tmp_path / "s",
            codes_packed=data["codes"],
            f7=iter([data["f7"]]),
            labels=data["labels"],
            ids=[str(i) for i in range(N)],
            bits=BITS,
            codec="pq4",
        )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pq.npy", "pq.npy .* does not match its sha256"),
        ("codec.npz", "codec.npz .* does not match its sha256"),
    ],
)
def test_the_new_files_are_checked_on_load(tmp_path: Path, name: str, message: str) -> None:
    path = _save(tmp_path / "pq", _data(), "pq4")
    assert verify_index(path)["files"] == 6
    raw = bytearray((path / name).read_bytes())
    raw[-1] ^= 0xFF
    (path / name).write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match=message):
        load_index(path)


def test_a_manifest_naming_an_unknown_codec_or_the_wrong_version_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "pq", _data(), "pq4")
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(IndexFormatError, match="format_version 2 does not go with codec"):
        load_index(path)
    (path / MANIFEST).write_text(json.dumps({**manifest, "codec": {"name": "pq", "size": 8}}))
    with pytest.raises(IndexFormatError, match="the pq codec's parameters are"):
        load_index(path)
    for entry in ({"name": "pcapq", "size": 4}, {"name": "pq", "size": 4, "reduced": 16}):
        (path / MANIFEST).write_text(json.dumps({**manifest, "codec": entry}))
        with pytest.raises(IndexFormatError, match="codec reduced must be the PCA width of a pcapq codec"):
            load_index(path)
    (path / MANIFEST).write_text(
        json.dumps({**manifest, "codec": {"name": "pcapq", "size": 4, "reduced": 16}})
    )
    with pytest.raises(IndexFormatError, match=r"the pcapq codec's parameters are .*'rotation': \(16, 32\)"):
        load_index(path)


def test_a_training_run_indexes_its_database_with_the_configured_codec(tmp_path: Path) -> None:
    from deephash.config import validate_config
    from deephash.train import train
    from tests.conftest import compose_config

    overrides = ["data=digits", "model=smallcnn", "model.bits=16", "trainer=cpu", "logger=none"]
    overrides += [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=1",
        "test=false",
    ]
    overrides += ["retrieval.modes=[hierarchical,euclidean]", "retrieval.codec_train_rows=600"]
    with pytest.raises(ConfigError, match="codec must be float16, pca<d>"):
        validate_config(compose_config("train", [*overrides, "retrieval.codec=pq"], tmp_path / "bad"))
    metrics = train(compose_config("train", [*overrides, "retrieval.codec=pq8"], tmp_path / "run"))
    assert load_index(tmp_path / "run" / "index").codec.spec == "pq8"
    assert load_index(tmp_path / "run" / "queries").codec.spec == "float16"
    for mode in ("hierarchical", "euclidean"):
        assert 0 < metrics["modes"][mode]["mAP"] <= 1


def test_pq_with_rerank_orders_its_top_r_by_exact_l2_on_the_kept_float16_rows(tmp_path: Path) -> None:
    from deephash.retrieval.modes import SEARCHES, ModeQuery

    data, r = _data(), 30
    store = load_index(_save(tmp_path / "pq", data, "pq8", codec_rerank=r))
    assert store.manifest["codec"] == {"name": "pq", "size": 8, "rerank": r}
    assert verify_index(store.path)["f7_blocks"] > 0 and store.f7.exact.shape == (N, D)
    half = data["f7"].astype(np.float16).astype(np.float64)
    exact = ((data["queries"][:, None, :].astype(np.float64) - half[None]) ** 2).sum(-1)
    index = HammingIndex(store.codes, BITS)
    pools = [idx for _, idx in coarse_pools(index, data["query_codes"], POOL.radius, *POOL.limits(K))]
    for mode, candidates in (("hierarchical", pools), ("euclidean", [np.arange(N)] * 12)):
        got = SEARCHES[mode](ModeQuery(index, store.f7, data["query_codes"], data["queries"], K, POOL))
        for qi, cand in enumerate(candidates):
            adc = store.f7.pair_sqdist(data["queries"], np.full(len(cand), qi), cand)
            top = cand[np.lexsort((cand, adc))[:r]]  # the top R by ADC, ties by index
            want = top[np.lexsort((top, exact[qi, top]))][:K]  # re-ranked by exact L2
            np.testing.assert_array_equal(got[qi], want)
    with pytest.raises(ConfigError, match="codec_rerank re-ranks a PQ index"):
        _save(tmp_path / "pca", data, "pca8", codec_rerank=r)
    with pytest.raises(ConfigError, match="re-ranks its PQ results exactly"):
        from deephash.retrieval.shards import load_shards

        load_shards([store.path, store.path])


@pytest.mark.parametrize(("m", "dsub"), [(4, 2), (8, 16), (3, 64)])
def test_pq_codes_are_each_sub_vectors_nearest_centroid(m: int, dsub: int) -> None:
    import faiss

    rng = np.random.default_rng(m)
    x = (rng.random((3000, m * dsub), dtype=np.float32) * 4).astype(np.float32)
    centroids = rng.random((m, 256, dsub), dtype=np.float32) * 4
    got = nearest_centroids(x, centroids)
    assert got.shape == (3000, m) and got.dtype == np.uint8
    # float64 brute force: the code is the nearest centroid, up to float32 rounding of near-equal distances
    sub = x.reshape(3000, m, 1, dsub).astype(np.float64)
    dist = ((sub - centroids[None].astype(np.float64)) ** 2).sum(-1)  # (n, m, 256)
    best = dist.min(axis=2)
    mine = np.take_along_axis(dist, got[..., None].astype(np.int64), axis=2)[..., 0]
    assert np.all(mine - best <= 1e-5 * np.maximum(best, 1))
    assert (got == dist.argmin(axis=2)).mean() > 0.999
    pq = faiss.ProductQuantizer(m * dsub, m, 8)  # FAISS's own encoder agrees
    faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
    assert (pq.compute_codes(x) == got).mean() > 0.999
