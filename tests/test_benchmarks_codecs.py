"""``deephash-bench codecs`` at toy sizes: every codec's row, the float16 reference, the run variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash.bench import main
from deephash.retrieval import save_index

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
