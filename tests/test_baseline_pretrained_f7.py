"""features=pretrained_f7: the F7 of a pretrained backbone that is not fine-tuned, through the baselines' index,
metrics and reports (the paper's figure 8 "AlexNet" curve), with weights from a local file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deephash.baselines.run import run_baseline
from deephash.data.digits import DigitsDataModule
from deephash.models.backbones import SmallCNN
from deephash.retrieval import load_index
from deephash.utils.errors import ConfigError
from tests.conftest import compose_config

BASE = ["logger=none", "retrieval.grid_queries=0", "data=digits", "data.transform=native", "bits=16"]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A 'pretrained' small CNN: seeded, saved as a state dict the way model.weights expects one."""
    torch.manual_seed(7)
    path = tmp_path / "smallcnn.pt"
    torch.save(SmallCNN(in_channels=1).state_dict(), path)
    return path


def _f7(net: torch.nn.Module, dm: DigitsDataModule, split: str) -> np.ndarray:
    """F7 (n, 256) of ``split`` through ``net`` in evaluation mode, in split order."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x) for x, _, _ in dm.encode_dataloader(split)]).numpy()


def _brute_force_l2_map(queries: np.ndarray, database: np.ndarray, q_labels, db_labels) -> float:
    """mAP of exhaustive L2 over the whole database (ties to the lower index)."""
    dist = ((queries[:, None, :] - database[None, :, :]) ** 2).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    rel = db_labels[order] == np.asarray(q_labels)[:, None]
    precision = np.cumsum(rel, axis=1) / np.arange(1, len(db_labels) + 1)
    return float(((precision * rel).sum(axis=1) / rel.sum(axis=1)).mean())


def test_pretrained_f7_is_the_loaded_network_s_f7_searched_by_l2(weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_config(
        "baseline",
        [*BASE, "method=lsh", "features=pretrained_f7", "features.backbone=smallcnn"]
        + [f"features.weights={weights}", "retrieval.modes=[euclidean,hamming]"],
        out,
    )
    metrics = run_baseline(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["features"] == "pretrained_f7" and saved["features_backbone"] == "smallcnn"
    assert saved["features_weights"] == str(weights) and "checkpoint" not in saved

    dm = DigitsDataModule(seed=42, n_queries=300, transform="native")
    dm.setup()
    net = SmallCNN(in_channels=1)
    net.load_state_dict(torch.load(weights, weights_only=True))
    index, queries = (
        load_index(out / "index", f7_in_memory=True),
        load_index(out / "queries", f7_in_memory=True),
    )
    np.testing.assert_array_equal(index.labels, dm.labels("database"))
    # the stored features are the pretrained network's F7 (float16 on disk) ...
    np.testing.assert_allclose(index.f7, _f7(net, dm, "database").astype(np.float16), rtol=0, atol=0)
    np.testing.assert_allclose(queries.f7, _f7(net, dm, "query").astype(np.float16), rtol=0, atol=0)
    # ... of the weights in the file, not of a fresh initialisation
    torch.manual_seed(8)
    assert not np.allclose(index.f7, _f7(SmallCNN(in_channels=1), dm, "database").astype(np.float16))
    # the euclidean mode is exhaustive L2 on them
    expected = _brute_force_l2_map(
        np.asarray(queries.f7, np.float32), np.asarray(index.f7, np.float32), queries.labels, index.labels
    )
    assert metrics["modes"]["euclidean"]["mAP"] == pytest.approx(expected, abs=1e-6)
    assert (out / "precision_at_k.csv").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["features.weights=null"], "features=pretrained_f7 needs features.weights"),
        (["ckpt_path=/x.ckpt"], "ckpt_path is only used with features=f7"),
        (["features.backbone=alexnet"], "features.backbone=alexnet needs 3-channel ImageNet-style input"),
        (["features.backbone=lenet"], "unknown features.backbone 'lenet'"),
    ],
)
def test_pretrained_f7_bad_input_is_one_clear_error(
    overrides: list[str], message: str, weights: Path, tmp_path: Path
) -> None:
    cfg = compose_config(
        "baseline",
        [*BASE, "method=lsh", "features=pretrained_f7", "features.backbone=smallcnn"]
        + [f"features.weights={weights}", *overrides],
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match=message):
        run_baseline(cfg)
