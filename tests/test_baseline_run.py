"""Baselines through the real Hydra config, end to end on digits: metrics checked against brute force."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from deephash.baselines.run import fit_rows, run_baseline, wandb_defaults
from deephash.data.digits import DigitsDataModule
from deephash.methods.registry import SHALLOW, load_method
from deephash.models.checkpoint import load_hash_module
from deephash.retrieval import load_index
from deephash.train import train
from deephash.utils.errors import ConfigError
from tests.conftest import compose_config

FAST = ["logger=none", "retrieval.grid_queries=0", "retrieval.modes=[hamming,hamming_radius]"]


def _run(out: Path, *overrides: str) -> dict:
    return run_baseline(compose_config("baseline", [*FAST, *overrides], out))


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(seed=42, n_queries=300, transform="native")
    dm.setup()
    return dm


def _pixels(dm: DigitsDataModule, split: str) -> np.ndarray:
    """(n, 64) float pixels in [0, 1], read straight from the pool's 8x8 gray images."""
    images = [np.asarray(dm.pool.image(int(p)), dtype=np.float64) for p in dm.splits[split]]
    return np.stack(images).reshape(len(images), -1) / 255.0


def brute_force_map(query_packed: np.ndarray, db_packed: np.ndarray, q_labels, db_labels, bits: int) -> float:
    """Hamming mAP over the whole database (ties to the lower index), AP normalised by all relevant items."""
    q = np.unpackbits(query_packed, axis=1, count=bits).astype(bool)
    db = np.unpackbits(db_packed, axis=1, count=bits).astype(bool)
    dist = (q[:, None, :] != db[None, :, :]).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    rel = db_labels[order] == np.asarray(q_labels)[:, None]
    precision = np.cumsum(rel, axis=1) / np.arange(1, db.shape[0] + 1)
    return float(((precision * rel).sum(axis=1) / rel.sum(axis=1)).mean())


@pytest.mark.parametrize("method", ["lsh", "pcah", "itq", "sh"])
def test_each_baseline_end_to_end_matches_brute_force(method: str, digits, tmp_path: Path) -> None:
    modes = ["retrieval.modes=[hamming,hamming_radius,hierarchical,euclidean]"] if method == "itq" else []
    metrics = _run(tmp_path, f"method={method}", "data=digits", "bits=16", *modes)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["status"] == "completed" and saved["method"] == method and saved["features"] == "pixels"
    assert (saved["dataset"], saved["bits"], saved["seed"], saved["protocol"]) == ("digits", 16, 42, "paper")
    assert (saved["n_queries"], saved["n_database"], saved["fit_samples"]) == (300, 1437, 1293)

    index, queries = load_index(tmp_path / "index"), load_index(tmp_path / "queries")
    assert queries.ids == digits.sample_ids("query") and index.ids == digits.sample_ids("database")
    np.testing.assert_array_equal(index.labels, digits.labels("database"))
    expected = brute_force_map(queries.codes, index.codes, queries.labels, index.labels, 16)
    assert abs(saved["modes"]["hamming"]["mAP"] - expected) < 1e-9
    assert expected > 0.3  # chance is about 0.1

    # the saved codes are the fitted method's codes of the images, and it was fitted on the train split
    fitted = load_method(tmp_path / "method.npz")
    db_pixels, q_pixels = _pixels(digits, "database"), _pixels(digits, "query")
    np.testing.assert_array_equal(np.unpackbits(index.codes, axis=1, count=16), fitted.encode(db_pixels))
    np.testing.assert_array_equal(np.unpackbits(queries.codes, axis=1, count=16), fitted.encode(q_pixels))
    np.testing.assert_allclose(fitted.mean, _pixels(digits, "train").mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(index.f7, db_pixels, atol=1e-3)  # pixels stand in for F7
    if method == "itq":
        assert set(saved["modes"]) == {"hamming", "hamming_radius", "hierarchical", "euclidean"}
        assert saved["method_params"]["n_iter"] == 50
        for name in ("precision_at_k.csv", "precision_at_k.png", "pr_curve.csv", "bit_balance.png"):
            assert (tmp_path / name).is_file(), name
        header = (tmp_path / "precision_at_k.csv").read_text().splitlines()[0]
        assert header == "k,hamming,hierarchical,euclidean"


def test_itq_beats_lsh_on_digits_pixels(tmp_path: Path) -> None:
    itq = _run(tmp_path / "itq", "method=itq", "bits=32")["modes"]["hamming"]["mAP"]
    lsh = _run(tmp_path / "lsh", "method=lsh", "bits=32")["modes"]["hamming"]["mAP"]
    assert itq > lsh + 0.05, (itq, lsh)


def test_fit_subsample_and_method_options(digits, tmp_path: Path) -> None:
    metrics = _run(tmp_path, "method=itq", "bits=8", "fit_samples=200", "method.n_iter=3")
    assert metrics["fit_samples"] == 200 and metrics["method_params"]["n_iter"] == 3
    rows = fit_rows(len(digits.splits["train"]), 200, 42)
    fitted = load_method(tmp_path / "method.npz")
    np.testing.assert_allclose(fitted.mean, _pixels(digits, "train")[rows].mean(axis=0), atol=1e-9)


def test_fit_rows_is_a_seeded_sorted_subsample() -> None:
    rows = fit_rows(1000, 100, 0)
    assert (
        len(rows) == 100 and len(np.unique(rows)) == 100 and (np.diff(rows) > 0).all() and rows.max() < 1000
    )
    np.testing.assert_array_equal(rows, fit_rows(1000, 100, 0))
    assert not np.array_equal(rows, fit_rows(1000, 100, 1))
    np.testing.assert_array_equal(fit_rows(50, 100, 0), np.arange(50))
    np.testing.assert_array_equal(fit_rows(50, None, 0), np.arange(50))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    overrides = ["data=digits", "model=smallcnn", "trainer=cpu", "logger=none", "callbacks=none"]
    overrides += ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1"]
    overrides += ["evaluate=false", "test=false", "trainer.enable_model_summary=false"]
    train(compose_config("train", overrides, out))
    return out / "checkpoints" / "last.ckpt"


def test_f7_features_of_a_checkpoint(checkpoint: Path, digits, tmp_path: Path) -> None:
    metrics = _run(tmp_path, "method=itq", "bits=16", "features=f7", f"ckpt_path={checkpoint}")
    assert metrics["features"] == "f7" and metrics["feature_dim"] == 256
    index, queries = load_index(tmp_path / "index"), load_index(tmp_path / "queries")
    assert index.manifest["meta"]["features_checkpoint"] == str(checkpoint.resolve())
    module = load_hash_module(checkpoint)
    images = torch.stack([digits.dataset("database")[i][0] for i in range(len(index.labels))])
    with torch.no_grad():
        f7 = module(images).f7.numpy()
    np.testing.assert_allclose(index.f7, f7, rtol=2e-3, atol=2e-3)  # float16 on disk
    fitted = load_method(tmp_path / "method.npz")
    np.testing.assert_array_equal(
        np.unpackbits(index.codes, axis=1, count=16), fitted.encode(np.asarray(index.f7, np.float32))
    )
    expected = brute_force_map(queries.codes, index.codes, queries.labels, index.labels, 16)
    assert abs(metrics["modes"]["hamming"]["mAP"] - expected) < 1e-9


def test_f7_checkpoint_must_match_the_input_channels(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"was trained on other data \(1x8x8 input, not 3x227x227\)"):
        _run(tmp_path, "features=f7", f"ckpt_path={checkpoint}", "data.transform=imagenet")


def test_pixel_features_are_described_as_what_they_are(tmp_path: Path, caplog) -> None:
    """Pixels as stored, not the model input the data line describes under data.transform=imagenet."""
    caplog.set_level("INFO", logger="deephash")
    metrics = _run(tmp_path, "features=pixels", "data.transform=imagenet", "method=lsh")
    assert metrics["data"]["input"] == [3, 227, 227] and metrics["features_input"] == [1, 8, 8]
    assert "features: pixels as stored, 1x8x8 = 64-d (not the imagenet transform's 3x227x227)" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["features=f7"], "features=f7 needs ckpt_path="),
        (["features=f7", "ckpt_path=/nonexistent/last.ckpt"], "ckpt_path not found: /nonexistent/last.ckpt"),
        (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path is only used with features=f7"),
        (["bits=0"], "bits must be an integer >= 1, got 0"),
        (
            ["method.name=kmeans"],
            f"unknown shallow hashing method 'kmeans', expected one of: {', '.join(SHALLOW)}",
        ),
        (["+method.rounds=3"], r"itq got unknown options \['rounds'\], accepted: n_iter"),
        (["method.n_iter=-1"], "itq n_iter must be an integer >= 0"),
        (["features.size=0"], r"features.size \(pixels per side, or null\) must be an integer >= 1, got 0"),
        (["features.name=hog"], "features must be one of pixels, f7, pretrained_f7, got 'hog'"),
        (["fit_samples=1"], r"fit_samples \(or null: the whole train split\) must be an integer >= 2, got 1"),
        (["~method"], re.escape(f"no hashing method selected; pass method=<{'|'.join(SHALLOW)}>")),
    ],
)
def test_bad_input_is_one_line_before_any_work(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _run(tmp_path, *overrides)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_method_group_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("baseline", ["method=kmeans"], tmp_path)
    assert all(name in str(err.value.__cause__ or err.value) for name in ("lsh", "pcah", "itq", "sh"))


def test_wandb_group_and_name_default_to_the_baseline(tmp_path: Path) -> None:
    cfg = compose_config("baseline", ["logger=wandb", "method=sh", "bits=32", "seed=7"], tmp_path)
    wandb_defaults(cfg, "mnist")
    assert (cfg.logger.wandb.group, cfg.logger.wandb.name, cfg.logger.wandb.bits) == (
        "mnist-baselines",
        "sh-bits32-seed7",
        32,
    )
    assert {"sh", "pixels"} <= set(cfg.logger.wandb.tags)
    cfg = compose_config(
        "baseline", ["logger=wandb", "logger.wandb.group=mine", "logger.wandb.name=x"], tmp_path
    )
    wandb_defaults(cfg, "mnist")
    assert (cfg.logger.wandb.group, cfg.logger.wandb.name) == ("mine", "x")
    cfg = compose_config("baseline", ["logger=none"], tmp_path)
    wandb_defaults(cfg, "mnist")  # no W&B logger: nothing to fill
    assert "wandb" not in (cfg.get("logger") or {})


def test_cli_records_a_failed_run_and_exits_2(tmp_path: Path) -> None:
    """pcah needs bits <= the 64 pixels of a digit: found once the features exist, so the run is marked failed."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "deephash.baseline",
        "method=pcah",
        "bits=65",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent.parent
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: pcah needs bits <= feature dimension (64), got 65"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["method"] == "pcah" and "feature dimension" in saved["error"]


def test_baseline_honours_the_coarse_stage_of_retrieval_config(tmp_path: Path, monkeypatch) -> None:
    """retrieval.coarse selects the Hamming index of a baseline's evaluation, as it does for a model."""
    import deephash.evaluation.run as evaluation_run

    built: list[tuple[str, dict]] = []
    real = evaluation_run.build_hamming_index

    def spy(codes, bits, method="flat", **params):
        index = real(codes, bits, method=method, **params)
        built.append((method, params))
        return index

    monkeypatch.setattr(evaluation_run, "build_hamming_index", spy)
    coarse = ["retrieval.coarse.method=multihash", "+retrieval.coarse.params={nhash: 2, b: 8, nflip: 1}"]
    flat = _run(tmp_path / "flat", "method=itq", "data=digits", "bits=16")
    assert built == []
    multihash = _run(tmp_path / "mh", "method=itq", "data=digits", "bits=16", *coarse)
    assert built == [("multihash", {"nhash": 2, "b": 8, "nflip": 1})]
    # radius 2 lies within the multi-index's exact radius nhash * (nflip + 1) - 1 = 3: same results
    for key in ("precision", "recall", "mean_results"):
        assert multihash["modes"]["hamming_radius"][key] == flat["modes"]["hamming_radius"][key]
