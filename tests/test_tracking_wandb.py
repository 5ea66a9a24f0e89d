"""W&B tracking, offline: runs are read back from their ``.wandb`` record files with wandb's own protobufs."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytest
from lightning_utilities.core.rank_zero import rank_zero_only
from PIL import Image

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from deephash.evaluation.plots import (  # noqa: E402
    write_bit_balance,
    write_pr_curve,
    write_precision_curves,
    write_retrieval_grid,
)
from deephash.tracking.wandb import (  # noqa: E402
    build_wandb_logger,
    finish,
    hydra_job,
    resolve_mode,
    sweep_name,
)
from deephash.tracking.wandb_results import (  # noqa: E402
    flatten_metrics,
    log_artifacts,
    log_retrieval_results,
    make_artifacts,
    retrieval_scalars,
    wandb_summary,
)
from deephash.utils.errors import ConfigError  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

DIGITS = "deephash.data.digits.DigitsDataModule"
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline W&B with every wandb folder under tmp_path; closes any run left open."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for var, sub in (
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
    ):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()


# --- reading a run back -------------------------------------------------------------------------


def read_records(path: Path) -> list[Any]:
    """Records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of CRC-checked (possibly split) chunks."""
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    records, pos, pending = [], 7, b""
    block = 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a chunk header is zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last chunk of a split one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def run_files(root: Path) -> list[Path]:
    return sorted(root.glob("wandb/offline-run-*/run-*.wandb"))


def finished_records(path: Path, timeout: float = 30.0) -> list[Any]:
    """The records once the exit record is on disk: wandb-core may still be flushing when finish() returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def parse_run(path: Path) -> dict[str, Any]:
    """The run record, merged config, summary and history (nested keys joined back into dicts)."""
    out: dict[str, Any] = {
        "run": None,
        "config": {},
        "summary": {},
        "history": {},
        "exit": None,
        "dir": path.parent,
        "metrics": {},
        "artifacts": [],
    }
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            _apply(out["config"], record.run.config.update)
        elif kind == "config":
            _apply(out["config"], record.config.update)
        elif kind == "summary":
            _apply(out["summary"], record.summary.update)
        elif kind == "history":
            _apply(out["history"], record.history.item)
        elif kind == "metric":
            out["metrics"][record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "artifact" and not record.artifact.type.startswith("run_table"):
            out["artifacts"].append(record.artifact)
        elif kind == "exit":
            out["exit"] = record.exit
    return out


def _apply(target: dict[str, Any], items: Any) -> None:
    for item in items:
        keys = [item.key] if item.key else list(item.nested_key)
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)


# --- a realistic run directory ------------------------------------------------------------------


def fake_metrics(bits: int = 48, seed: int = 7) -> dict[str, Any]:
    def mode(m: float) -> dict[str, Any]:
        return {
            "mAP": m,
            "mAP@1000": m + 0.01,
            "precision@k": {"1": 0.99, "10": m + 0.02, "100": m - 0.05, "1000": m - 0.2},
            "queries_per_second": 1.25e5,
        }

    return {
        "status": "completed",
        "dataset": "digits",
        "backbone": "smallcnn",
        "bits": bits,
        "seed": seed,
        "val_acc": 0.975,
        "test_acc": 0.9611,
        "epochs": 3,
        "best_checkpoint": "/somewhere/checkpoints/best.ckpt",
        "method": "deephash",
        "protocol": "paper",
        "modes": {
            "hamming": {**mode(0.912), "precision@r2": 0.97},
            "hamming_radius": {
                "precision": 0.93,
                "recall": 0.4,
                "mean_results": 12.5,
                "empty_fraction": 0.02,
            },
            "hierarchical": {**mode(0.934), "ms_per_query": 0.8},
            "euclidean": mode(0.921),
        },
        "val_retrieval": {"mAP": 0.9},
    }


def write_run_dir(run_dir: Path, rng: np.random.Generator, bits: int = 48) -> np.ndarray:
    """The CSVs and PNGs the evaluation writes, with the real writers; returns the codes (n, bits) bool."""
    ks = np.array([1, 10, 100])
    write_precision_curves(
        {"hamming": (ks, np.array([0.99, 0.95, 0.9])), "euclidean": (ks[1:], np.array([0.96, 0.92]))},
        run_dir / "precision_at_k.csv",
        run_dir / "precision_at_k.png",
    )
    radius = np.arange(4)
    write_pr_curve(
        {"hamming": {"radius": radius, "precision": [1.0, 0.9, 0.8, 0.5], "recall": [0.1, 0.3, 0.6, 1.0]}},
        run_dir / "pr_curve.csv",
        run_dir / "pr_curve.png",
    )
    images = rng.integers(0, 255, size=(3, 8, 8), dtype=np.uint8)
    write_retrieval_grid(images[:1], [1], [list(images[1:])], [[1, 2]], run_dir / "retrieval_grid.png")
    codes = rng.random((50, bits)) < np.linspace(0.2, 0.8, bits)
    write_bit_balance(codes, run_dir / "bit_balance.png", csv_path=run_dir / "bit_balance.csv")
    return codes


def make_logger(save_dir: Path, **kwargs: Any) -> Any:
    defaults = {"data_target": DIGITS, "backbone": "smallcnn", "bits": 48, "seed": 7, "mode": "offline"}
    return build_wandb_logger(save_dir=save_dir, **{**defaults, **kwargs})


# --- tests --------------------------------------------------------------------------------------


def test_run_records_results_as_configured(offline: Path) -> None:
    run_dir = offline / "run"
    codes = write_run_dir(run_dir, np.random.default_rng(0))
    metrics = fake_metrics()
    logger = make_logger(run_dir, tags=["smoke"])
    logger.log_hyperparams({"model": {"bits": 48, "optimizer": {"lr": 0.003}}})
    logger.log_metrics({"train/loss": 0.5}, step=3)
    log_retrieval_results([object(), logger], metrics, run_dir)
    finish([logger])

    files = run_files(run_dir)
    assert len(files) == 1
    run = parse_run(files[0])
    assert run["run"].run_group == "digits-train"
    assert run["run"].display_name == "bits48-seed7"
    assert run["run"].job_type == "train"
    assert set(run["run"].tags) == {"smoke", "digits", "smallcnn", "bits48"}
    assert run["config"]["dataset"] == "digits" and run["config"]["bits"] == 48 and run["config"]["seed"] == 7
    assert run["config"]["model"]["optimizer"]["lr"] == 0.003
    assert run["exit"] is not None and run["exit"].exit_code == 0

    # the final retrieval numbers are one history row, against bits, under one name each
    history, summary = run["history"], run["summary"]
    expected = retrieval_scalars(metrics)
    assert expected["retrieval/hamming/mAP"] == 0.912
    assert expected["retrieval/hierarchical/precision@10"] == pytest.approx(0.954)
    assert expected["retrieval/hamming_radius/empty_fraction"] == 0.02
    assert expected["retrieval/val/mAP"] == 0.9
    assert len(expected) == 8 + 4 + 8 + 7 + 1  # every number of every mode, and the validation mAP
    for key, value in expected.items():
        assert history[key] == value, key
        assert summary[key] == value, key
    assert history["bits"] == 48
    expected_dev = np.abs(codes.mean(axis=0) - 0.5).mean()
    assert history["bit_balance/mean_abs_deviation"] == pytest.approx(expected_dev, abs=1e-5)
    # metrics.json's names for quantities Lightning logs become Lightning's (nothing logged them here)
    assert summary["val/acc"] == 0.975 and summary["test/acc"] == 0.9611 and summary["epoch"] == 3
    assert summary["train/loss"] == 0.5 and summary["status"] == "completed"
    duplicates = {"val_acc", "test_acc", "epochs", "best_checkpoint", "dataset", "backbone", "seed"}
    assert not duplicates & set(summary)
    assert not [k for k in summary if k.startswith(("modes/", "val_retrieval/"))]

    files_dir = run["dir"] / "files"
    table = history["retrieval/precision_at_k_values"]
    assert table["_type"] == "table-file"
    table_json = json.loads((files_dir / table["path"]).read_text())
    assert table_json["columns"] == ["k", "hamming", "euclidean"]
    assert table_json["data"] == [[1, 0.99, None], [10, 0.95, 0.96], [100, 0.9, 0.92]]
    pr_json = json.loads((files_dir / history["retrieval/pr_curve_table"]["path"]).read_text())
    assert pr_json["columns"] == ["mode", "radius", "precision", "recall"]
    assert [row[2] for row in pr_json["data"]] == [1.0, 0.9, 0.8, 0.5]
    charts = run["config"]["_wandb"]["visualize"]
    assert {"retrieval/precision_at_k", "retrieval/pr_curve"} <= set(charts)
    # the line series chart draws both modes: hamming at 3 k values, euclidean at 2
    series = json.loads((files_dir / history["retrieval/precision_at_k_table"]["path"]).read_text())
    assert series["columns"] == ["step", "lineKey", "lineVal"]
    assert sorted(map(tuple, series["data"])) == sorted(
        [
            (1, "hamming", 0.99),
            (10, "hamming", 0.95),
            (100, "hamming", 0.9),
            (10, "euclidean", 0.96),
            (100, "euclidean", 0.92),
        ]
    )

    grid = history["retrieval/grid"]
    assert grid["_type"] == "image-file"
    with (
        Image.open(run_dir / "retrieval_grid.png") as original,
        Image.open(files_dir / grid["path"]) as logged,
    ):
        assert logged.size == original.size == (grid["width"], grid["height"])
    assert history["retrieval/bit_balance_plot"]["_type"] == "image-file"
    assert history["retrieval/bit_fire_rates"]["_type"] == "histogram"
    assert sum(history["retrieval/bit_fire_rates"]["values"]) == 48


def test_axes_and_best_value_summaries_are_defined(offline: Path) -> None:
    """The epoch and bits axes, val/acc summarised by its best value: one name per quantity."""
    logger = make_logger(offline / "run")
    for epoch, (acc, loss) in enumerate([(0.5, 2.0), (0.9, 1.0), (0.7, 1.5)]):
        logger.log_metrics({"val/acc": acc, "val/loss": loss, "epoch": epoch}, step=10 * epoch)
    logger.log_metrics({"test/acc": 0.88, "epoch": 2}, step=30)
    log_retrieval_results(logger, {**fake_metrics(), "val_acc": 0.9, "test_acc": 0.88, "epochs": 3}, offline)
    finish(logger)
    run = parse_run(run_files(offline / "run")[0])

    metrics = run["metrics"]
    assert metrics["val/acc"].step_metric == "epoch" and metrics["val/acc"].summary.max
    assert metrics["val/loss"].summary.min and metrics["val/*"].step_metric == "epoch"
    assert metrics["retrieval/*"].step_metric == "bits" and metrics["train/acc"].step_metric == "epoch"
    assert {"epoch", "bits", "test/*", "trainer/global_step"} <= set(metrics)
    summary = run["summary"]
    assert summary["val/acc"] == {"max": 0.9}  # the best epoch, not the last (0.7)
    assert summary["val/loss"] == {"min": 1.0}
    assert summary["test/acc"] == 0.88 and summary["epoch"] == 2  # Lightning's, not metrics.json's
    assert not {"val_acc", "test_acc", "epochs"} & set(summary)


def test_wandb_summary_keeps_what_was_logged() -> None:
    metrics = {**fake_metrics(), "global_step": 42, "train_seconds": 1.5, "index_dir": "/x/index"}
    metrics["data"] = {"dataset": "digits", "protocol": "paper", "seed": 7, "sizes": {"train": 10}}
    summary = wandb_summary(metrics, {"val/acc"})
    assert "val/acc" not in summary  # logged already: the best value stays
    assert summary["test/acc"] == 0.9611 and summary["epoch"] == 3 and summary["trainer/global_step"] == 42
    assert summary["train_seconds"] == 1.5 and summary["method"] == "deephash"
    assert summary["data/sizes/train"] == 10 and summary["protocol"] == "paper"
    assert not {"index_dir", "bits", "val_acc", "modes/hamming/mAP", "data/dataset", "data/seed"} & set(
        summary
    )


def test_missing_files_are_skipped_and_explicit_rates_win(offline: Path) -> None:
    logger = make_logger(offline / "run")
    rates = np.array([0.5, 0.5, 0.9, 0.1])
    log_retrieval_results(logger, {"bits": 4, "modes": {"hamming": {"mAP": 0.5}}}, offline / "empty", rates)
    finish(logger)
    run = parse_run(run_files(offline / "run")[0])
    assert run["summary"]["retrieval/hamming/mAP"] == 0.5
    assert run["history"]["bit_balance/mean_abs_deviation"] == pytest.approx(0.2)
    assert set(run["history"]) - {"_runtime", "_step", "_timestamp", "trainer/global_step"} == {
        "retrieval/bit_fire_rates",
        "retrieval/hamming/mAP",
        "bit_balance/mean_abs_deviation",
        "bits",
    }


def test_jobs_in_one_process_get_distinct_runs_in_one_group(offline: Path) -> None:
    first = make_logger(offline / "job0", seed=1)
    first.log_metrics({"val/acc": 0.5}, step=1)
    # the next job's factory closes the run the previous job left open
    second = make_logger(offline / "job1", seed=2)
    second.log_metrics({"val/acc": 0.7}, step=1)
    assert second.experiment.id != first.experiment.id
    finish()
    assert wandb.run is None

    runs = [parse_run(run_files(offline / f"job{i}")[0]) for i in range(2)]
    assert [r["run"].display_name for r in runs] == ["bits48-seed1", "bits48-seed2"]
    assert {r["run"].run_group for r in runs} == {"digits-train"}
    assert [r["summary"]["val/acc"] for r in runs] == [{"max": 0.5}, {"max": 0.7}]
    assert all(r["exit"] is not None for r in runs)


def test_mode_resolution(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode("auto") == "offline"  # no key, no netrc under the empty HOME
    assert resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("offline") == "offline"
    for env, expected in (("disabled", "disabled"), ("dryrun", "offline"), ("Offline", "offline")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert resolve_mode("auto") == expected
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes' is not one of online, offline, disabled"):
        resolve_mode()
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ConfigError, match="W&B mode 'cloud' is not one of auto, online, offline, disabled"):
        resolve_mode("cloud")

    monkeypatch.delenv("WANDB_API_KEY")
    netrc = offline / "home" / ".netrc"
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text(
        f"machine example.org login me password secret\nmachine api.wandb.ai login user password {FAKE_KEY}\n"
    )
    netrc.chmod(0o600)
    assert resolve_mode("auto") == "online"
    netrc.write_text("machine example.org login me password secret\n")
    assert resolve_mode("auto") == "offline"


def test_hydra_config_builds_an_offline_logger(offline: Path) -> None:
    cfg = compose_config("train", ["logger=wandb", "model.bits=32", "seed=3"], offline / "out")
    logger = hydra.utils.instantiate(cfg.logger.wandb)
    init = logger._wandb_init
    assert (init["group"], init["name"], init["job_type"], init["project"]) == (
        "digits-train",
        "latent-bits32-seed3",
        "train",
        "deephash",
    )
    assert init["mode"] == "offline" and init["dir"] == str(offline / "out")
    assert set(init["tags"]) == {"digits", "latent", "smallcnn", "bits32"}
    assert (
        logger._log_model is False
    )  # Lightning cannot upload checkpoints offline; log_artifacts records one
    assert wandb.run is None  # the run starts on first use, not when the logger is built


def test_top_level_tags_and_group(offline: Path) -> None:
    cfg = compose_config(
        "train", ["logger=wandb", "tags=[baseline,lr-study]", "group=my-study"], offline / "o"
    )
    init = hydra.utils.instantiate(cfg.logger.wandb)._wandb_init
    assert init["group"] == "my-study"
    assert set(init["tags"]) == {"baseline", "lr-study", "digits", "latent", "smallcnn", "bits48"}
    cfg = compose_config("train", ["logger=wandb", "tags=smoke"], offline / "o")
    assert "smoke" in hydra.utils.instantiate(cfg.logger.wandb)._wandb_init["tags"]
    # `+tags=` (the lightning-hydra-template habit) reaches the run as well, and so does `+group=`
    cfg = compose_config("train", ["logger=wandb", "+tags=[x,y]", "+group=g"], offline / "o")
    init = hydra.utils.instantiate(cfg.logger.wandb)._wandb_init
    assert {"x", "y"} <= set(init["tags"]) and init["group"] == "g"


@pytest.fixture
def multirun_job(offline: Path) -> Any:
    """The Hydra runtime of job 3 of a sweep launched from ``offline`` into multirun/train/<time>."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    overrides = [
        "model.net.bits=32",
        "seed=3",
        "logger=wandb",
        "tags=[a]",
        "paths.data_dir=/d",
        "hydra.verbose=1",
    ]
    cfg = compose_config("train", overrides[:3], offline / "out")
    hydra_cfg = compose_config_with_hydra(overrides[:3])
    with open_dict(hydra_cfg):
        hydra_cfg.hydra.mode = "MULTIRUN"
        hydra_cfg.hydra.sweep.dir = "multirun/train/${now:%H-%M-%S-%f}"  # differs each time it is resolved
        hydra_cfg.hydra.runtime.output_dir = str(offline / "multirun/train/2024-05-01_12-00-00/3")
        hydra_cfg.hydra.runtime.cwd = str(offline)
        hydra_cfg.hydra.job.num = 3
        hydra_cfg.hydra.overrides.task = overrides
    HydraConfig.instance().set_config(hydra_cfg)
    yield cfg
    HydraConfig.instance().cfg = None


def compose_config_with_hydra(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_a_sweep_is_one_group_with_its_overrides_as_tags(multirun_job: Any) -> None:
    assert hydra_job() == (
        "multirun/train/2024-05-01_12-00-00",
        ["model.net.bits=32", "seed=3", "logger=wandb", "tags=[a]", "paths.data_dir=/d", "hydra.verbose=1"],
    )
    init = hydra.utils.instantiate(multirun_job.logger.wandb)._wandb_init
    assert init["group"] == "multirun/train/2024-05-01_12-00-00"
    # the settings are tags; where the job writes or logs, and the tags override itself, are not
    assert set(init["tags"]) == {"digits", "latent", "smallcnn", "bits32", "model.net.bits=32", "seed=3"}
    assert init["config"]["overrides"] == "model.net.bits=32 seed=3"
    assert init["config"]["method"] == "latent"
    assert init["config"]["sweep_dir"] == "multirun/train/2024-05-01_12-00-00"


def test_a_baseline_sweep_is_one_group_too(multirun_job: Any, offline: Path) -> None:
    from deephash.baselines.run import wandb_defaults

    cfg = compose_config("baseline", ["logger=wandb", "method=sh", "bits=32"], offline / "b")
    wandb_defaults(cfg, "mnist")
    assert cfg.logger.wandb.group is None  # not mnist-baselines: the builder picks the sweep's group
    assert (
        hydra.utils.instantiate(cfg.logger.wandb)._wandb_init["group"] == "multirun/train/2024-05-01_12-00-00"
    )


def test_group_names(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sweep_name(offline / "multirun" / "x", offline) == "multirun/x"
    assert sweep_name("/elsewhere/sweep", offline) == "/elsewhere/sweep"
    long_dir = "m/" + "d" * 200
    logger = make_logger(offline / "run", sweep_dir=long_dir, overrides=["x" * 100])
    init = logger._wandb_init
    assert init["group"] == long_dir[-128:] and max(map(len, init["tags"])) == 64  # W&B's limits
    assert make_logger(offline / "run", group="g", sweep_dir="s")._wandb_init["group"] == "g"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")  # a `wandb agent` job
    assert make_logger(offline / "run", sweep_dir="s")._wandb_init["group"] == "sweep-abc123"


def test_helpers_only_act_on_rank_zero(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logger = make_logger(offline / "run")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    log_retrieval_results(logger, fake_metrics(), offline)
    assert logger._experiment is None and wandb.run is None
    assert run_files(offline / "run") == []


def test_artifacts(offline: Path) -> None:
    ckpt = offline / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    index = offline / "index"
    index.mkdir()
    (index / "manifest.json").write_text(json.dumps({"bits": 48, "n": 10}))
    np.save(index / "codes.npy", np.zeros((10, 6), np.uint8))
    (offline / "metrics.json").write_text(json.dumps(fake_metrics()))

    model, idx = make_artifacts("abc123", ckpt, index, metrics_path=offline / "metrics.json")
    assert (model.name, model.type, idx.name, idx.type) == ("model-abc123", "model", "index-abc123", "index")
    assert set(model.manifest.entries) == {"model.ckpt"}
    assert set(idx.manifest.entries) == {"manifest.json", "codes.npy"}
    assert model.metadata["bits"] == 48 and idx.metadata["n"] == 10
    assert make_artifacts("abc123", offline / "missing.ckpt", offline / "nothing") == []

    # offline too: recorded in the run, uploaded by `wandb sync` from where the files are
    logger = make_logger(offline / "run")
    names = log_artifacts(logger, offline, ckpt, index)
    assert names == [f"model-{logger.experiment.id}", f"index-{logger.experiment.id}"]
    finish(logger)
    run = parse_run(run_files(offline / "run")[0])
    recorded = {a.type: a for a in run["artifacts"]}
    assert set(recorded) == {"model", "index"}
    entries = {e.path: e.local_path for e in recorded["index"].manifest.contents}
    assert set(entries) == {"manifest.json", "codes.npy"}
    assert Path(entries["codes.npy"]).read_bytes() == (index / "codes.npy").read_bytes()
    (model_entry,) = recorded["model"].manifest.contents
    assert model_entry.path == "model.ckpt" and Path(model_entry.local_path).read_bytes() == b"weights"
    assert log_artifacts(None, offline, ckpt, index) == []  # no active run


def test_flatten_metrics() -> None:
    flat = flatten_metrics(
        {"a": {"b": {"c": np.float32(0.5)}, "d": None}, "e": [1, 2], "last_checkpoint": "x", "s": "ok"}
    )
    assert flat == {"a/b/c": 0.5, "s": "ok"}
    assert isinstance(flat["a/b/c"], float)
