"""Image folders on the defaults of conf/data/folder.yaml: any folder big enough to split works, and the
loaders use the cores the machine has."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from deephash.data import folder as folder_module
from deephash.data.folder import DEFAULT_QUERIES, FolderDataModule, default_num_workers
from deephash.utils.errors import ConfigError
from tests.conftest import CONF_DIR


def _folder(root: Path, num_classes: int, per_class: int) -> Path:
    """A class-folder tree of tiny PNGs (the same 2x2 image each time: the scan reads names, not pixels)."""
    image = Image.new("RGB", (2, 2), (120, 30, 200))
    for c in range(num_classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            image.save(root / f"class{c}" / f"{i}.png")
    return root


def _defaults(root: Path, **overrides) -> FolderDataModule:
    """The datamodule exactly as conf/data/folder.yaml builds it (seed resolved)."""
    cfg = OmegaConf.load(f"{CONF_DIR}/data/folder.yaml")
    cfg.root, cfg.seed = str(root), 0
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    return FolderDataModule(**{**kwargs, **overrides})


def test_five_thousand_images_work_on_the_defaults(tmp_path, caplog):
    root = _folder(tmp_path / "photos", num_classes=10, per_class=500)
    dm = _defaults(root, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="deephash.data.folder"):
        dm.setup()
    n_test = len(dm.splits["test"])
    assert n_test == 500 < DEFAULT_QUERIES
    assert len(dm.splits["query"]) == n_test and set(dm.splits["query"]) == set(dm.splits["test"])
    assert len(dm.splits["database"]) == 4500
    assert any("500 queries" in r.getMessage() for r in caplog.records)


def test_default_queries_stay_at_1000_when_the_test_split_has_more(tmp_path, caplog):
    root = _folder(tmp_path / "photos", num_classes=2, per_class=600)
    dm = _defaults(root, cache_dir=str(tmp_path / "cache"), test_fraction=0.9)
    with caplog.at_level(logging.INFO, logger="deephash.data.folder"):
        dm.setup()
    assert len(dm.splits["test"]) > DEFAULT_QUERIES and len(dm.splits["query"]) == DEFAULT_QUERIES
    assert not any("queries" in r.getMessage() for r in caplog.records if r.name == "deephash.data.folder")


def test_whole_set_caps_at_every_image(tmp_path):
    root = _folder(tmp_path / "photos", num_classes=3, per_class=20)
    dm = _defaults(root, cache_dir=str(tmp_path / "cache"), protocol="whole_set")
    dm.setup()
    assert len(dm.splits["query"]) == 60


def test_an_explicit_query_count_larger_than_the_test_split_is_still_an_error(tmp_path):
    root = _folder(tmp_path / "photos", num_classes=2, per_class=20)
    dm = _defaults(root, cache_dir=str(tmp_path / "cache"), n_queries=1000)
    with pytest.raises(ConfigError, match=r"data.n_queries=1000 but the test set has only 4 images"):
        dm.setup()


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 2), (6, 6), (64, 8)])
def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch, tmp_path, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_num_workers() == workers
    root = _folder(tmp_path / "photos", num_classes=2, per_class=4)
    assert _defaults(root).num_workers == workers
    assert _defaults(root, num_workers=0).num_workers == 0


def test_folder_yaml_leaves_workers_and_queries_to_the_data(tmp_path):
    cfg = OmegaConf.load(f"{CONF_DIR}/data/folder.yaml")
    assert cfg.num_workers is None and cfg.n_queries is None
    assert folder_module.MAX_DEFAULT_WORKERS == 8
