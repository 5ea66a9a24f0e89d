"""Shared fixtures: offline W&B, and the real Hydra config composed for in-process runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from deephash.config import CONFIG_PATH, rewrite_moved_keys

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

CONF_DIR = CONFIG_PATH  # the one config directory every entry point composes from


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would (moved keys such as ``model.bits`` renamed), with the
    run directory set to ``output_dir``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=rewrite_moved_keys(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """A fast CPU digits config with no logger; extra overrides are appended."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        base = [
            "data=digits",
            "model=smallcnn",
            "trainer=cpu",
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=2",
            "trainer.enable_model_summary=false",
            "evaluate=false",
        ]
        return compose_config("train", base + list(overrides), output_dir or tmp_path / "run")

    return make
