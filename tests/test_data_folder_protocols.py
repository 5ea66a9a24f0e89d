"""The image folder's protocols on a small tree: held_out (queries held out of the database) and whole_set
(the paper's Yahoo-1M protocol: trained on every image, queries drawn from the database), through
``experiment=paper_yahoo`` to metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash.data.folder import FolderDataModule
from deephash.train import train
from deephash.utils.errors import ConfigError
from tests.conftest import compose_config
from tests.fixtures_data import write_image_tree

PER_CLASS, CLASSES = 8, ("dress", "shoe", "skirt")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_image_tree(tmp_path / "images", classes=CLASSES, per_class=PER_CLASS)
    return tmp_path / "images"


def _splits(root: Path, protocol: str, **kwargs) -> dict[str, np.ndarray]:
    options = {"transform": "native", "image_size": 16, "n_queries": 5, "test_fraction": 0.25, **kwargs}
    dm = FolderDataModule(root=str(root), protocol=protocol, **options)
    dm.setup()
    assert dm.describe()["protocol"] == protocol
    return dm.splits


def test_whole_set_searches_every_image_with_queries_inside(root: Path) -> None:
    s = _splits(root, "whole_set", val_size=0)
    every = np.arange(PER_CLASS * len(CLASSES))
    np.testing.assert_array_equal(s["database"], every)
    np.testing.assert_array_equal(s["train"], every)  # the held-out test source is trained on too
    assert len(s["query"]) == 5 and np.isin(s["query"], s["database"]).all()
    assert s["val"].size == 0


def test_held_out_queries_are_left_out_of_the_database_and_training(root: Path) -> None:
    s = _splits(root, "held_out", val_size=0)
    n_test = 2 * len(CLASSES)  # 25% of 8 per class
    assert len(s["database"]) == PER_CLASS * len(CLASSES) - n_test
    assert len(s["query"]) == 5
    assert not np.isin(s["query"], s["database"]).any()
    assert not np.isin(s["query"], s["train"]).any()
    paper = _splits(root, "paper", val_size=0)  # the older name of the same split
    for name, idx in s.items():
        np.testing.assert_array_equal(idx, paper[name])


def test_a_cifar_protocol_is_refused_for_folders(root: Path) -> None:
    with pytest.raises(
        ConfigError, match="not available for folder; choose one of held_out, whole_set, paper"
    ):
        _splits(root, "cifar_1k5k")


def test_paper_yahoo_runs_the_whole_set_protocol_and_records_it(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = compose_config(
        "train",
        ["experiment=paper_yahoo", f"data.root={root}", "logger=none", "callbacks=none"]
        + ["model=smallcnn", "trainer=cpu", "trainer.max_steps=-1", "trainer.max_epochs=1"]
        + [
            "data.transform=native",
            "data.image_size=32",
            "data.num_workers=0",
            "data.persistent_workers=false",
        ]
        + ["data.n_queries=6", "data.batch_size=8", "retrieval.modes=[hamming,euclidean]"],
        run,
    )
    assert cfg.data.protocol == "whole_set" and cfg.data.val_size == 0
    metrics = train(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["protocol"] == "whole_set" and saved["data"]["protocol"] == "whole_set"
    assert saved["selection"] == "last"
    assert saved["n_queries"] == 6 and saved["n_database"] == PER_CLASS * len(CLASSES)
    splits = np.load(run / "splits.npz")
    assert np.isin(splits["query"], splits["database"]).all()
    # a query is in the database: its own F7 is at distance 0, so exhaustive L2 ranks it first
    assert metrics["modes"]["euclidean"]["precision@k"]["1"] == pytest.approx(1.0)
