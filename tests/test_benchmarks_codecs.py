"""``deephash-bench codecs`` at toy sizes: every codec's row, the float16 reference, the run variant, the
streamed build and its reference drawn again, the cold timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash.bench import main
from deephash.benchmarks.synthetic_f7 import BLOCK, SyntheticF7, exact_reference, pool_rows, stream_index
from deephash.retrieval import HammingIndex, PoolRule, load_index, save_index
from deephash.retrieval.modes import SEARCHES, ModeQuery
from deephash.utils.errors import ConfigError

TINY = ["--n-database", "3000", "--dim", "32", "--bits", "16", "--clusters", "20", "--n-queries", "20"]
TINY += ["--euclidean-queries", "5", "--train-rows", "1500", "--repeat", "1", "--threads", "1"]


@pytest.mark.slow
def test_synthetic_rows_and_the_float16_reference(tmp_path: Path) -> None:
    out = tmp_path / "codecs.json"
    argv = ["codecs", *TINY, "--codecs", "pq8", "pca8", "pq8:r150", "--coarse", "flat", "multihash:4x4:1"]
    assert main([*argv, "--workdir", str(tmp_path), "--out", str(out)]) == 0
    rows = {(r["codec"], r["coarse"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        ("float16", "flat"),
        ("pq8", "flat"),
        ("pca8", "flat"),
        ("pq8:r150", "flat"),
        ("float16", "multihash:4x4:1"),
    }
    # the top 150 by ADC re-ranked exactly: the top 100 of float16 wherever ADC keeps them in its top 150
    assert rows["pq8:r150", "flat"]["recall@100"] > rows["pq8", "flat"]["recall@100"]
    assert rows["pq8:r150", "flat"]["rows_mb"] > rows["float16", "flat"]["rows_mb"]
    assert (
        rows["float16", "flat"]["recall@100"] == 1.0
        and rows["float16", "flat"]["euclidean_recall@100"] == 1.0
    )
    assert rows["pq8", "flat"]["rows_mb"] * 8 == pytest.approx(rows["float16", "flat"]["rows_mb"], rel=0.01)
    for key in ("pq8", "flat"), ("pca8", "flat"), ("float16", "multihash:4x4:1"):
        assert 0 < rows[key]["recall@100"] <= 1
    assert 0 < rows["float16", "multihash:4x4:1"]["pool_recall"] <= 1
    assert rows["pq8", "flat"]["build_peak_mb"] >= 0 and rows["pq8", "flat"]["build_s"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["codecs.json"]  # the indexes are removed


def test_a_run_directory_gives_map_per_codec(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.random((4, 16)) * 4
    for name, n in (("index", 600), ("queries", 40)):
        labels = rng.integers(0, 4, n)
        f7 = (centres[labels] + rng.standard_normal((n, 16))).astype(np.float32)
        save_index(
            tmp_path / "run" / name,
            codes_packed=np.packbits(f7[:, :8] > 2, axis=1),
            f7=f7,
            labels=labels,
            ids=[str(i) for i in range(n)],
            bits=8,
            meta={"class_names": list("abcd")},
        )
    out = tmp_path / "run.json"
    argv = ["codecs", "--run", str(tmp_path / "run"), "--codecs", "pq4", "--train-rows", "500", "--k", "10"]
    assert main([*argv, "--workdir", str(tmp_path), "--out", str(out)]) == 0
    rows = {r["codec"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["float16"]["hierarchical_mAP_delta"] == 0 and rows["float16"]["euclidean_mAP_delta"] == 0
    assert 0 < rows["pq4"]["hierarchical_mAP"] <= 1 and "euclidean_mAP_delta" in rows["pq4"]


def test_bad_options_are_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["codecs", *TINY, "--codecs", "pq7x"])
    assert exit_info.value.code == 2 and "codec must be float16, pca<d>" in capsys.readouterr().err


def test_a_block_drawn_alone_is_the_same_rows_as_in_its_stream() -> None:
    data = SyntheticF7(dim=24, bits=16, clusters=5, intrinsic_dim=4)
    n = 2 * BLOCK + 100
    whole = list(data.blocks(7, n))
    assert [start for start, *_ in whole] == [0, BLOCK, 2 * BLOCK] and len(whole[-1][3]) == 100
    for got, want in zip(next(data.blocks(7, n, np.array([2, 2]))), whole[2]):
        np.testing.assert_array_equal(got, want)
    codes, f7 = data.rows(7, n, BLOCK + 5)
    np.testing.assert_array_equal(f7, np.concatenate([whole[0][3], whole[1][3][:5]]))
    np.testing.assert_array_equal(codes[:BLOCK], whole[0][2])
    other = next(SyntheticF7(dim=24, bits=16, clusters=5, intrinsic_dim=4).blocks(8, n))  # another stream
    assert not np.array_equal(other[3], whole[0][3]) and (whole[0][3] >= 0).all()


def test_the_reference_drawn_again_is_the_float16_index_search(tmp_path: Path) -> None:
    data = SyntheticF7(dim=32, bits=16, clusters=20, intrinsic_dim=4)
    n = BLOCK + 900
    stream_index(data, tmp_path / "f16", n, 1, "float16", 1, 0)
    store = load_index(tmp_path / "f16")
    query_codes, queries = data.rows(2, 50, 50)
    pool = PoolRule(1, min_pool=5, max_pool=400, pool_size=150)
    search = ModeQuery(HammingIndex(store.codes, 16), store.f7, query_codes, queries, 20, pool)
    want = SEARCHES["hierarchical"](search)
    got = exact_reference(data, 1, np.asarray(store.codes), query_codes, queries, 20, pool)
    np.testing.assert_array_equal(got, want)
    rows = pool_rows(data, 1, n, np.array([3, BLOCK + 1]))
    with pytest.raises(ConfigError, match="outside the pools"):
        rows.pair_sqdist(queries[:1], np.zeros(1, np.int64), np.array([4]))


def test_streamed_indexes_and_cold_timings(tmp_path: Path) -> None:
    out = tmp_path / "codecs.json"
    argv = [
        "codecs",
        *TINY,
        "--codecs",
        "float16",
        "pq8",
        "--coarse",
        "flat",
        "ivf:8:2",
        "--stream",
        "--cold",
    ]
    assert main([*argv, "--workdir", str(tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["codec"], r["coarse"]): r for r in result["rows"]}
    assert result["reference"] == "float16 rows drawn again" and result["cold"] is True
    # the float16 index, searched, is the reference drawn again: recall exactly 1
    assert rows["float16", "flat"]["recall@100"] == 1.0
    assert 0 < rows["pq8", "flat"]["recall@100"] < 1 and rows["pq8", "flat"]["cold_qps"] > 0
    assert 0 < rows["float16", "ivf:8:2"]["pool_recall"] < 1 and "cold_qps" not in rows["float16", "ivf:8:2"]
    assert [p.name for p in tmp_path.iterdir()] == ["codecs.json"]
