"""A sharded index searched as one gives exactly the results of a single index of the same rows, in every mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash.retrieval import PoolRule, load_index, save_index
from deephash.retrieval.hierarchical import hierarchical_search
from deephash.retrieval.modes import MODES, SEARCHES, ModeQuery
from deephash.retrieval.pairs import score_pairs
from deephash.retrieval.shards import SHARD_LIST, load_shards, write_shard_list
from deephash.utils.errors import IndexFormatError

N, D, BITS, K = 2000, 16, 12, 25
CUTS = [0, 300, 1100, 1101, N]  # shards of 300, 800, 1 and 899 items


def _data(seed: int = 0) -> dict:
    """Few bits and few distinct codes (Hamming ties everywhere) and duplicated F7 rows (L2 ties across
    shards), so that only a (distance, global id) merge gives the single index's order."""
    rng = np.random.default_rng(seed)
    centres = rng.random((8, BITS)) < 0.5
    bits = centres[rng.integers(0, 8, N)] ^ (rng.random((N, BITS)) < 0.1)
    f7 = rng.standard_normal((N, D)).astype(np.float32)
    f7[1500:1700] = f7[100:300]  # the same rows in the first and the last shard
    q = 30
    return {
        "codes": np.packbits(bits, axis=1),
        "f7": f7,
        "labels": rng.integers(0, 4, N),
        "query_codes": np.packbits(centres[rng.integers(0, 8, q)] ^ (rng.random((q, BITS)) < 0.1), axis=1),
        "queries": np.vstack([f7[1600:1610], rng.standard_normal((q - 10, D)).astype(np.float32)]),
    }


def _save(path: Path, data: dict, a: int, b: int) -> Path:
    return save_index(
        path,
        codes_packed=data["codes"][a:b],
        f7=data["f7"][a:b],
        labels=data["labels"][a:b],
        ids=[f"item{i}" for i in range(a, b)],
        bits=BITS,
        meta={"class_names": ["a", "b", "c", "d"]},
    )


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list[Path]]:
    root, data = tmp_path_factory.mktemp("shards"), _data()
    single = _save(root / "single", data, 0, N)
    shards = [_save(root / f"shard-{s}", data, a, b) for s, (a, b) in enumerate(zip(CUTS[:-1], CUTS[1:]))]
    return data, single, shards


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "pool", [PoolRule(2, K, 300, 100), PoolRule(1, 1, 50, 40), PoolRule(0, 5, 10_000, 5)]
)
def test_shards_search_as_one_index(indexes: tuple, mode: str, pool: PoolRule) -> None:
    data, single, shards = indexes
    one, many = load_index(single), load_shards(shards)
    assert many.count == N and many.ids == one.ids and np.array_equal(many.labels, one.labels)
    got = {}
    for name, store in (("one", one), ("many", many)):
        search = ModeQuery(store.hamming_index, store.f7, data["query_codes"], data["queries"], K, pool)
        got[name] = SEARCHES[mode](search)
    np.testing.assert_array_equal(got["many"], got["one"])


def test_hierarchical_distances_and_pools_are_the_same_bits(indexes: tuple) -> None:
    data, single, shards = indexes
    one, many = load_index(single), load_shards(shards)
    pool = PoolRule(2, K, 300, 100)
    a = hierarchical_search(one.hamming_index, one.f7, data["query_codes"], data["queries"], K, pool)
    b = hierarchical_search(many.hamming_index, many.f7, data["query_codes"], data["queries"], K, pool)
    for field in ("l2", "idx", "hamming", "pool_sizes"):
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
    items = np.array([0, 299, 300, 1100, 1101, N - 1])
    owner = np.arange(len(items)) % 3
    np.testing.assert_array_equal(
        score_pairs(many.f7, data["queries"], owner, items, 8),
        score_pairs(one.f7, data["queries"], owner, items, 8),
    )
    np.testing.assert_array_equal(many.f7[items], np.asarray(one.f7[items], np.float32))


def test_a_shard_list_is_written_and_checked(indexes: tuple, tmp_path: Path) -> None:
    data, single, shards = indexes
    listing = write_shard_list(tmp_path / "all", shards)
    assert listing == tmp_path / "all" / SHARD_LIST
    assert json.loads(listing.read_text())["count"] == N
    store = load_shards(tmp_path / "all")
    assert store.count == N and store.manifest["shards"] == [str(p.resolve()) for p in shards]
    entries = json.loads(listing.read_text())
    entries["shards"][1]["manifest_sha256"] = "0" * 64
    listing.write_text(json.dumps(entries))
    with pytest.raises(IndexFormatError, match="was rebuilt since the list was written"):
        load_shards(listing)


def test_shards_of_different_models_are_refused(indexes: tuple, tmp_path: Path) -> None:
    data, single, shards = indexes
    other = save_index(
        tmp_path / "other",
        codes_packed=np.zeros((3, 1), np.uint8),
        f7=np.zeros((3, 8), np.float32),
        labels=np.zeros(3, np.int64),
        ids=["x", "y", "z"],
        bits=8,
    )
    with pytest.raises(IndexFormatError, match="has bits 8 but shard"):
        load_shards([shards[0], other])
