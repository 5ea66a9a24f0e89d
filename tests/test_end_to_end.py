"""Train -> encode -> index -> evaluate -> search on the bundled digits, checked from the outside."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deephash.retrieval import load_index
from deephash.train import train
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    cfg = compose_config(
        "train",
        [
            "experiment=demo",
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=6",
            "trainer.enable_model_summary=false",
            "retrieval.grid_queries=3",
        ],
        out,
    )
    train(cfg)
    return out


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def _search(index: Path, ckpt: str | Path, image: Path, *options: str) -> subprocess.CompletedProcess:
    """``deephash-search --index INDEX --ckpt CKPT IMAGE [options]`` in a fresh process."""
    return _cli("deephash.search", "--index", str(index), "--ckpt", str(ckpt), str(image), *options)


def _ap(rel: np.ndarray, total: int) -> float:
    hits = np.cumsum(rel)
    return float((hits / np.arange(1, len(rel) + 1))[rel].sum() / total) if total else 0.0


def test_run_writes_metrics_reports_and_index(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["n_queries"] == 300 and metrics["n_database"] == 1437 and metrics["protocol"] == "paper"
    for mode in ("hamming", "hierarchical", "euclidean"):
        m = metrics["modes"][mode]
        assert set(m["precision@k"]) == {"1", "10", "100", "1000"}
        assert 0 <= m["mAP"] <= 1 and 0 <= m["mAP@1000"] <= 1 and m["queries_per_second"] > 0
    assert "precision@r2" in metrics["modes"]["hamming"]
    # six epochs are plenty for digits; each mode has its own bar, so a broken re-rank or F7 shows
    assert metrics["modes"]["hamming"]["mAP"] > 0.8
    hierarchical, euclidean = metrics["modes"]["hierarchical"], metrics["modes"]["euclidean"]
    assert hierarchical["mAP@1000"] > 0.8 and hierarchical["precision@k"]["10"] > 0.9
    assert euclidean["mAP@1000"] > 0.8 and euclidean["precision@k"]["10"] > 0.9
    # the hierarchical top 10 re-ranks a Hamming pool by F7: at least as precise as Hamming alone
    assert hierarchical["precision@k"]["10"] >= metrics["modes"]["hamming"]["precision@k"]["10"] - 0.03
    assert 0 < metrics["val_retrieval"]["mAP"] <= 1
    for name in (
        "precision_at_k.csv",
        "precision_at_k.png",
        "pr_curve.csv",
        "retrieval_grid.png",
        "bit_balance.png",
    ):
        assert (run / name).stat().st_size > 0, name
    with Image.open(run / "retrieval_grid.png") as grid:
        assert grid.size[0] > 300
    header = (run / "precision_at_k.csv").read_text().splitlines()[0]
    assert header.startswith("k,") and "hamming" in header and "hierarchical" in header
    assert not (run / ".encode").exists()


def test_brute_force_on_saved_codes_agrees_with_metrics_json(run: Path) -> None:
    """An outside check: unpack the saved codes, rank by Hamming distance with numpy, recompute."""
    metrics = json.loads((run / "metrics.json").read_text())["modes"]["hamming"]
    db, queries = load_index(run / "index"), load_index(run / "queries")
    dbits = np.unpackbits(db.codes, axis=1, count=db.bits).astype(np.int16)
    qbits = np.unpackbits(queries.codes, axis=1, count=db.bits).astype(np.int16)
    ham = (qbits[:, None, :] != dbits[None, :, :]).sum(-1)
    aps, p10, ap1000 = [], [], []
    for i, label in enumerate(queries.labels):
        order = np.lexsort((np.arange(db.count), ham[i]))
        rel = db.labels[order] == label
        aps.append(_ap(rel, int(rel.sum())))
        p10.append(rel[:10].mean())
        ap1000.append(_ap(rel[:1000], int(rel[:1000].sum())))
    assert metrics["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert metrics["mAP@1000"] == pytest.approx(np.mean(ap1000), abs=1e-6)
    assert metrics["precision@k"]["10"] == pytest.approx(np.mean(p10), abs=1e-6)


def test_search_cli_finds_a_known_image(run: Path, tmp_path: Path) -> None:
    db = load_index(run / "index")
    ckpt = db.manifest["checkpoint"]
    from deephash.data.digits import DigitsDataModule

    dm = DigitsDataModule(seed=42, n_queries=300, transform="native")
    dm.setup()
    target = 17  # a database row: its own image must come back first, at distance 0
    pool_index = dm.splits["database"][target]
    image_path = tmp_path / "query.png"
    dm.pool.image(int(pool_index)).save(image_path)
    for mode in ("euclidean", "hierarchical"):
        proc = _search(run / "index", ckpt, image_path, "--k", "5", "--mode", mode)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = json.loads(proc.stdout)
        top = results[0]["results"][0]
        assert top["index"] == target and top["id"] == db.ids[target], mode
        # the index stores F7 in float16: the image's own distance is float16 rounding, not 0
        assert top["l2"] < 1e-2 * np.linalg.norm(db.f7[target].astype(np.float32)) and top["hamming"] == 0
        assert len(results[0]["results"]) == 5
        assert all(r["label"] == db.labels[r["index"]] for r in results[0]["results"])
    proc = _search(run / "index", ckpt, image_path, "--mode", "hamming")
    assert json.loads(proc.stdout)[0]["results"][0]["hamming"] == 0
    proc = _search(run / "index", ckpt, image_path, "--coarse", "multihash")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)[0]["results"][0]["index"] == target


def test_search_cli_rejects_a_non_image(run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    ckpt = load_index(run / "index").manifest["checkpoint"]
    proc = _search(run / "index", ckpt, bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: cannot read query image {bad}")


def test_search_cli_rejects_an_index_of_another_checkpoint(run: Path, tmp_path: Path) -> None:
    import torch

    db = load_index(run / "index")
    state = torch.load(db.manifest["checkpoint"], map_location="cpu", weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("latent.weight"))
    state["state_dict"][key] = state["state_dict"][key] + 0.5  # another model with the same shapes
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    proc = _search(run / "index", other, run / "retrieval_grid.png")
    assert proc.returncode == 2
    assert "its codes are not comparable; rebuild it with deephash-index build" in proc.stderr


def test_corrupt_index_is_a_clear_error(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "index"
    shutil.copytree(run / "index", copy)
    codes = copy / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-100])
    ckpt = load_index(run / "index").manifest["checkpoint"]
    proc = _search(copy, ckpt, run / "retrieval_grid.png")
    assert proc.returncode == 2
    assert "codes.npy" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_index_cli_builds_and_describes(run: Path, tmp_path: Path) -> None:
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = tmp_path / "rebuilt"
    proc = _cli(
        "deephash.index",
        "build",
        f"ckpt_path={ckpt}",
        f"index_dir={out}",
        f"hydra.run.dir={tmp_path / 'h'}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = load_index(out)
    assert store.count == 1437 and store.manifest["checkpoint"] == str(Path(ckpt).resolve())
    info = _cli("deephash.index", "info", str(out))
    assert json.loads(info.stdout)["count"] == 1437
    assert _cli("deephash.index", "info", str(tmp_path / "missing")).returncode == 2


@pytest.mark.slow
def test_evaluate_cli_on_a_checkpoint(run: Path, tmp_path: Path) -> None:
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    proc = _cli(
        "deephash.evaluate",
        f"ckpt_path={ckpt}",
        f"run_dir={out}",
        "retrieval.modes=[hamming]",
        f"hydra.run.dir={tmp_path / 'h'}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["modes"]) == {"hamming"} and metrics["n_database"] == 1437
    assert metrics["evaluated_checkpoint"] == str(ckpt)  # the record names the weights its numbers are of
    assert "mAP" in proc.stdout  # the summary table
    bad = _cli("deephash.evaluate", f"ckpt_path={tmp_path / 'none.ckpt'}", f"hydra.run.dir={tmp_path / 'h2'}")
    assert bad.returncode == 2 and "ckpt_path not found" in bad.stderr


@pytest.mark.slow
def test_index_cli_builds_shards_and_codecs_searched_like_the_whole(run: Path, tmp_path: Path) -> None:
    ckpt = str(run / "checkpoints" / "last.ckpt")
    shards = [tmp_path / f"shard-{k}" for k in range(2)]
    for k, out in enumerate(shards):
        build = ["build", f"ckpt_path={ckpt}", f"index_dir={out}", f"hydra.run.dir={tmp_path / f'h{k}'}"]
        proc = _cli("deephash.index", *build, f"shard={k}", "num_shards=2", timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert [load_index(s).count for s in shards] == [718, 719]
    proc = _cli("deephash.index", "shards", str(tmp_path / "all"), *map(str, shards))
    assert proc.returncode == 0 and "shards.json" in proc.stdout, proc.stderr[-2000:]
    image = tmp_path / "query.png"
    from PIL import Image

    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    whole, sharded = (
        json.loads(_search(index, ckpt, image, "--k", "7").stdout)
        for index in (run / "index", tmp_path / "all")
    )
    assert whole == sharded
    build = ["build", f"ckpt_path={ckpt}", f"index_dir={tmp_path / 'pq'}", f"hydra.run.dir={tmp_path / 'hp'}"]
    proc = _cli("deephash.index", *build, "codec=pq8", "codec_train_rows=500", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(_cli("deephash.index", "info", str(tmp_path / "pq")).stdout)
    assert info["codec"] == {"name": "pq", "size": 8}
    proc = _search(tmp_path / "pq", ckpt, image, "--k", "7", "--mode", "euclidean")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)[0]["results"]) == 7, proc.stderr[-2000:]
    bad = _cli("deephash.index", *build, "codec=pq9x", timeout=300)
    assert bad.returncode == 2 and "codec must be float16, pca<d>" in bad.stderr
