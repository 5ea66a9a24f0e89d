"""A quiet console: a run prints what it does and its results, not the libraries' start-up chatter."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import deephash  # noqa: F401  (importing the package quiets the libraries)
from deephash.data.base import describe_line
from deephash.retrieval.encode import progress_description
from deephash.runs import print_config_tree
from tests.conftest import CONF_DIR, compose_config

CHATTER = (
    "GPU available",
    "TPU available",
    "litlogger",
    "LeafSpec",
    "FLOPs",
    "Predicting",
    "anonymous setting",
    "Loading faiss",
    "Seed set to",
)


def test_library_chatter_is_filtered_but_warnings_pass(caplog):
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        lightning.info("GPU available: False, used: False")
        lightning.info("💡 Tip: For seamless cloud logging ... litlogger")
        lightning.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
        logging.getLogger("faiss.loader").info("Loading faiss with AVX512 support.")
        logging.getLogger("lightning_fabric.utilities.seed").info("Seed set to 42")
        logging.getLogger("faiss.loader").warning("faiss failed to load")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["`Trainer.fit` stopped: `max_epochs=1` reached.", "faiss failed to load"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import deephash.utils.logging as dl

        dl.quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_progress_bars_name_what_they_encode():
    assert progress_description("database") == "encoding database"
    assert progress_description("query") == "encoding queries"


def test_data_description_is_one_readable_line():
    line = describe_line(
        {
            "dataset": "digits",
            "protocol": "paper",
            "seed": 0,
            "num_classes": 10,
            "transform": "native",
            "input": [1, 8, 8],
            "sizes": {"train": 1293, "query": 300},
        }
    )
    assert line == "digits (paper protocol, 10 classes, 1x8x8 native): train 1293, query 300"


@pytest.mark.parametrize("variant", sorted(p.stem for p in Path(CONF_DIR, "debug").glob("*.yaml")))
def test_debug_variants_file_runs_under_task_name_debug(variant, tmp_path):
    cfg = compose_config("train", [f"debug={variant}"], tmp_path)
    assert cfg.task_name == "debug"
    assert compose_config("train", [], tmp_path).task_name == "train"


def test_print_config_tree_only_when_asked(tmp_path, capsys):
    cfg = compose_config("train", ["data=digits", "logger=none"], tmp_path)
    assert cfg.extras.print_config is False
    print_config_tree(cfg)
    assert capsys.readouterr().out == ""
    cfg.extras.print_config = True
    print_config_tree(cfg)
    out = capsys.readouterr().out
    assert out.startswith("CONFIG")
    for branch in ("data", "model", "trainer", "extras", "run"):
        assert f"── {branch}" in out
    assert "_target_: deephash.data.digits.DigitsDataModule" in out and "task_name: train" in out


def test_every_tool_config_offers_extras(tmp_path):
    for name in ("train", "eval", "index", "baseline"):
        cfg = compose_config(name, [], tmp_path)
        assert OmegaConf.select(cfg, "extras.print_config") is False
    assert compose_config("train", [], tmp_path).trainer.enable_model_summary is False


def test_a_run_prints_no_library_chatter(train_cfg, tmp_path, capfd, monkeypatch):
    """A whole run (W&B offline, the default callbacks, evaluation): none of the avoidable lines."""
    from deephash.train import train

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    cfg = train_cfg(
        "logger=wandb",
        "callbacks=default",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "evaluate=true",
        "retrieval.modes=[hamming]",
    )
    train(cfg)
    out, err = capfd.readouterr()
    console = out + err
    found = [c for c in CHATTER if c in console]
    assert found == [], found
    assert "encoding database" in console and "encoding queries" in console
