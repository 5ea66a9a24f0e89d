"""deephash-bench f7: a trained run's F7 modes with the stored float16 F7 against float32 F7 recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deephash import bench
from deephash.benchmarks.f7_precision import compare_f7_precision
from deephash.data.digits import DigitsDataModule
from deephash.models.checkpoint import load_hash_module
from deephash.train import train
from deephash.utils.errors import ConfigError


def _l2_map(queries: np.ndarray, database: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """mAP of exhaustive L2 over the whole database (ties to the lower index)."""
    dist = ((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(axis=2)
    rel = db_labels[np.argsort(dist, axis=1, kind="stable")] == q_labels[:, None]
    precision = np.cumsum(rel, axis=1) / np.arange(1, len(db_labels) + 1)
    return float(((precision * rel).sum(axis=1) / rel.sum(axis=1)).mean())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from tests.conftest import compose_config

    out = tmp_path_factory.mktemp("f7") / "run"
    overrides = ["data=digits", "model=smallcnn", "trainer=cpu", "logger=none", "callbacks=none"]
    overrides += [
        "trainer.max_epochs=2",
        "retrieval.modes=[euclidean,hierarchical]",
        "retrieval.grid_queries=0",
    ]
    train(compose_config("train", overrides, out))
    return out


def test_float16_side_is_the_run_and_float32_side_is_exhaustive_l2_on_float32_f7(run: Path) -> None:
    results = compare_f7_precision(run)
    saved = json.loads((run / "metrics.json").read_text())
    assert results["checkpoint"] == saved["evaluated_checkpoint"]
    assert results["float16_rounding_agreement"] == {"database": 1.0, "query": 1.0}
    for mode in ("euclidean", "hierarchical"):
        assert results["modes"][mode]["mAP"]["float16"] == saved["modes"][mode]["mAP"]

    dm = DigitsDataModule(seed=42, n_queries=300, transform="native")
    dm.setup()
    net = load_hash_module(saved["evaluated_checkpoint"]).eval()
    with torch.no_grad():
        f7 = {
            s: torch.cat([net(x).f7 for x, _, _ in dm.encode_dataloader(s)]).numpy()
            for s in ("query", "database")
        }
    assert f7["database"].dtype == np.float32
    expected = _l2_map(f7["query"], f7["database"], dm.labels("query"), dm.labels("database"))
    euclidean = results["modes"]["euclidean"]["mAP"]
    assert euclidean["float32"] == pytest.approx(expected, abs=1e-9)
    assert euclidean["difference"] == euclidean["float16"] - euclidean["float32"]


def test_cli_writes_json_and_refuses_a_directory_without_a_run(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "f7.json"
    assert bench.main(["f7", str(run), "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["modes"]) == {"euclidean", "hierarchical"}
    assert "float16 vs float32 F7" in capsys.readouterr().out
    with pytest.raises(
        ConfigError, match="config.yaml not found: pass a run directory written by deephash-train"
    ):
        compare_f7_precision(tmp_path)
