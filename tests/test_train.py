"""Training runs through the real Hydra config, in-process: every datamodule, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deephash.runs import run_data_config
from deephash.train import train
from deephash.utils.errors import ConfigError
from tests.fixtures_data import write_cifar10, write_image_tree, write_mnist

# the paper's transform at a size AlexNet still accepts (its trunk needs >= 63 px)
SMALL_IMAGENET = ["data.transform=imagenet", "data.resize=72", "data.image_size=64", "data.num_workers=0"]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_digits_default_run_reaches_098(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg(
        "experiment=demo", "logger=none", "callbacks=none", "evaluate=false", "trainer.max_epochs=15"
    )
    metrics = train(cfg)
    assert metrics["val_acc"] >= 0.98
    saved = _metrics(tmp_path / "run")
    for key in ("dataset", "backbone", "bits", "seed", "val_acc", "test_acc", "epochs", "train_seconds"):
        assert key in saved
    assert saved["dataset"] == "digits" and saved["bits"] == 48 and saved["epochs"] == 15
    assert saved["test_acc"] > 0.9
    splits = dict(__import__("numpy").load(tmp_path / "run" / "splits.npz"))
    assert set(splits) == {"train", "val", "test", "query", "database"}
    assert json.loads((tmp_path / "run" / "classes.json").read_text())["class_names"] == [
        str(i) for i in range(10)
    ]


@pytest.mark.parametrize(
    ("write", "overrides", "backbone"),
    [
        (
            write_mnist,
            ["data=mnist", "data.transform=native", "data.num_workers=0", "model.bits=12"],
            "smallcnn",
        ),
        (
            write_cifar10,
            ["data=cifar10", "data.verify_checksums=false", "data.train_per_class=2", "data.batch_size=8"]
            + ["model=alexnet", "model.weights=null", "trainer.limit_train_batches=2", *SMALL_IMAGENET],
            "alexnet",
        ),
    ],
    ids=["mnist-idx", "cifar10-pickles-alexnet"],
)
def test_release_files_train_offline(train_cfg, tmp_path: Path, write, overrides, backbone) -> None:
    write(tmp_path / "data", train_per_class=6, test_per_class=3)
    cfg = train_cfg(*overrides, f"data.root={tmp_path / 'data'}", "data.n_queries=10", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert metrics["dataset"] == overrides[0].removeprefix("data=")
    assert metrics["backbone"] == backbone and metrics["bits"] == cfg.model.net.bits
    assert 0.0 <= metrics["test_acc"] <= 1.0


def test_folder_tree_trains_and_saves_class_mapping(train_cfg, tmp_path: Path, monkeypatch) -> None:
    """Also: a relative data.root means the launch directory for good. Evaluating or indexing the run from
    another directory (which may hold its own ``images``) must read the images it was trained on."""
    write_image_tree(tmp_path / "images", classes=("dress", "shoe", "skirt"), per_class=10)
    monkeypatch.chdir(tmp_path)
    cfg = train_cfg(
        "data=folder",
        "data.root=images",
        "data.n_queries=3",
        "data.test_fraction=0.2",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        *SMALL_IMAGENET,
    )
    metrics = train(cfg)
    assert metrics["dataset"] == "folder"
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["class_to_idx"] == {"dress": 0, "shoe": 1, "skirt": 2}
    elsewhere = tmp_path / "elsewhere"
    write_image_tree(elsewhere / "images", classes=("cat", "dog"), per_class=4)
    monkeypatch.chdir(elsewhere)
    assert run_data_config(tmp_path / "run").root == str(tmp_path / "images")


def test_run_data_config_anchors_relative_paths_at_the_launch_directory(tmp_path: Path) -> None:
    """A run whose config.yaml kept a relative root: Hydra's record of the launch directory anchors it."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  root: photos\n  cache_dir: null\n  list_file: train.txt\n")
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {tmp_path / 'launch'}\n")
    data = run_data_config(run)
    assert data.root == str(tmp_path / "launch" / "photos") and data.cache_dir is None
    assert data.list_file == "train.txt"  # not under the launch directory: the datamodule looks under root
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "train.txt").write_text("")
    assert run_data_config(run).list_file == str(tmp_path / "launch" / "train.txt")


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues(train_cfg, tmp_path: Path) -> None:
    first = train(train_cfg("trainer.max_epochs=1", output_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert last.is_file() and first["epochs"] == 1
    step_after_one = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    resumed = train(train_cfg("trainer.max_epochs=3", f"ckpt_path={last}", output_dir=tmp_path / "b"))
    assert resumed["epochs"] == 3
    # resumed training ran two more epochs on top of the first one, not three from scratch
    assert resumed["global_step"] == 3 * step_after_one


@pytest.mark.slow
def test_a_resume_with_the_csv_logger_continues_its_metrics_csv(train_cfg, tmp_path: Path) -> None:
    """Lightning's CSV writer deletes the metrics.csv it finds; a resumed run must keep the epochs before
    its checkpoint, and drop the rows the interrupted run logged after it (they are logged again)."""
    import csv

    run = tmp_path / "run"
    train(train_cfg("logger=csv", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"))
    table = run / "csv" / "metrics.csv"
    first = list(csv.DictReader(table.open()))
    assert {row["epoch"] for row in first if row["train/loss"]} == {"0"} and any(
        row["val/acc"] for row in first
    )
    with table.open("a", newline="") as file:  # what the interrupted run logged after its checkpoint
        csv.DictWriter(file, fieldnames=list(first[0])).writerow(
            {**first[-1], "epoch": "1", "step": "100000"}
        )
    last = run / "checkpoints" / "last.ckpt"
    resume_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    train(train_cfg("logger=csv", "trainer.max_epochs=3", "trainer.log_every_n_steps=1", f"ckpt_path={last}"))
    rows = list(csv.DictReader(table.open()))
    before = [row for row in first if int(row["step"]) < resume_step]
    assert before and rows[: len(before)] == before  # the epoch before the checkpoint, as it was
    assert "100000" not in {row["step"] for row in rows}
    assert [row["epoch"] for row in rows if row["val/acc"]] == ["0", "1", "2"]  # one validation per epoch
    assert len([row for row in rows if row["test/acc"]]) == 1  # the earlier run's test row was re-logged


@pytest.mark.slow
def test_last_checkpoint_is_the_final_epoch_even_when_the_score_stops_improving(
    train_cfg, tmp_path: Path
) -> None:
    """With lr 0 val/acc never improves after the first epoch, so the best checkpoint stays at epoch 0; the
    resume point (last.ckpt, and the one metrics.json names) must still be the final epoch, or a resume
    retrains epochs. (Lightning's own ``save_last`` beside a monitor writes it only on an improvement.)"""
    metrics = train(
        train_cfg(
            "trainer.max_epochs=3", "model.optimizer.lr=0", "model.scheduler=null", output_dir=tmp_path / "r"
        )
    )
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert metrics["last_checkpoint"] == str(last)
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and metrics["evaluated_checkpoint"] == metrics["best_checkpoint"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.bits=0", r"model.net.bits must be an integer in 1..4096, got 0"),
        ("model.bits=5000", r"model.net.bits must be an integer in 1..4096, got 5000"),
        (
            "model.backbone=lenet",
            r"unknown backbone 'lenet'; expected one of: alexnet, vgg16, resnet50, smallcnn",
        ),
        ("data.batch_size=0", r"data.batch_size must be an integer >= 1, got 0"),
        ("model.weights=/no/such/weights.pth", r"model.net.weights file not found: /no/such/weights.pth"),
        ("ckpt_path=/no/such.ckpt", r"ckpt_path not found: /no/such.ckpt"),
        ("model.optimizer.lr=-1", r"^model.optimizer.lr must be a number >= 0, got -1$"),
        ("model.optimizer.lr=abc", r"^model.optimizer.lr must be a number >= 0, got 'abc'$"),
        ("model.optimizer.lr=nan", r"^model.optimizer.lr must be a number >= 0, got nan$"),
        (
            "model.optimizer.weight_decay=-0.1",
            r"^model.optimizer.weight_decay must be a number >= 0, got -0.1$",
        ),
        ("model.scheduler.step_size=0", r"^model.scheduler.step_size must be an integer >= 1, got 0$"),
        (
            "~model.bits",
            r"^model.net.bits is required \(the model config sets it; was it removed with ~model.net.bits\?\)$",
        ),
    ],
)
def test_bad_config_fails_fast_with_one_line(train_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train(train_cfg(override))


def test_missing_mnist_is_one_clear_error(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("data=mnist", f"data.root={tmp_path / 'empty'}", "data.transform=native")
    with pytest.raises(Exception, match=r"MNIST not found in .*empty.*train-images-idx3-ubyte"):
        train(cfg)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deephash.train", "model.bits=0", "logger=none", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1] == "error: model.net.bits must be an integer in 1..4096, got 0"
    )
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_unknown_dataset_lists_choices(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deephash.train", "data=imagenet21k", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Could not find 'data/imagenet21k'" in proc.stderr
    for choice in ("cifar10", "digits", "folder", "mnist"):
        assert choice in proc.stderr


@pytest.mark.slow
def test_multirun_over_bits_with_basic_launcher(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deephash.train",
            "-m",
            "model.bits=12,48",
            "logger=none",
            "callbacks=none",
            "evaluate=false",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    bits = sorted(_metrics(tmp_path / str(i))["bits"] for i in range(2))
    assert bits == [12, 48]


def test_folder_with_broken_images_trains_indexes_and_lists_them(train_cfg, tmp_path: Path) -> None:
    from deephash.retrieval import load_index
    from tests.test_data_folder_scale import write_bad_tree

    root = tmp_path / "images"
    bad = write_bad_tree(root, per_class=12)
    common = [
        "data=folder",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        "data.n_queries=4",
        "data.test_fraction=0.25",
        "data.batch_size=8",
        "data.transform=native",
        "data.image_size=16",
        "trainer.max_epochs=1",
        "retrieval.modes=[hamming]",
    ]
    metrics = train(
        train_cfg(*common, "data.on_bad_image=skip", "evaluate=true", output_dir=tmp_path / "skip")
    )
    assert metrics["status"] == "completed"
    listed = set((tmp_path / "skip" / "bad_images.txt").read_text().split())
    unreadable = {rel for rel, kind in bad.items() if kind != "empty"}
    assert unreadable <= listed
    index = load_index(tmp_path / "skip" / "index")
    assert not set(index.ids) & set(bad)  # left out of the index ...
    assert unreadable <= set(index.manifest["meta"]["bad_images"])  # ... and listed in its manifest

    with pytest.raises(Exception, match=r"cannot read image .*(corrupt|notes|truncated|empty)\.jpg"):
        train(train_cfg(*common, "data.on_bad_image=error", output_dir=tmp_path / "error"))
