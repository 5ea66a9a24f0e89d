"""Training-throughput benchmark (deephash/benchmarks/train_speed.py): result keys, sample counts of both
loops, CLI options and bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from deephash.benchmarks.train_speed import (
    SyntheticBatches,
    TrainBenchConfig,
    add_train_arguments,
    benchmark_train,
    build_module,
    config_from_args,
    main,
    time_lightning,
    time_raw,
)
from deephash.utils.errors import ConfigError

TINY = {"backbone": "smallcnn", "image_size": 16, "batch_size": 8, "steps": 3, "warmup": 1, "device": "cpu"}
TOP_KEYS = {
    "benchmark",
    "device",
    "device_type",
    "torch",
    "lightning",
    "threads",
    "settings",
    "lightning_fit",
    "raw_pytorch",
    "ratio",
    "ratio_median",
    "ratio_target",
    "encode",
}
LOOP_KEYS = {
    "images_per_s",
    "images_per_s_median",
    "runs_images_per_s",
    "samples_per_run",
    "timed_samples_per_run",
    "warmup_seconds",
}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("precision", "channels_last", "repeats"), [("32-true", False, 2), ("bf16-mixed", True, 1)]
)
def test_benchmark_reports_every_key_and_equal_work(
    precision: str, channels_last: bool, repeats: int
) -> None:
    cfg = TrainBenchConfig(**TINY, precision=precision, channels_last=channels_last, repeats=repeats)
    results = benchmark_train(cfg)

    assert set(results) == TOP_KEYS
    assert results["device_type"] == "cpu" and results["torch"] == torch.__version__
    assert (
        results["settings"]["precision"] == precision
        and results["settings"]["channels_last"] is channels_last
    )
    for key in ("lightning_fit", "raw_pytorch"):
        loop = results[key]
        assert set(loop) == LOOP_KEYS
        assert len(loop["runs_images_per_s"]) == repeats
        assert all(rate > 0 for rate in loop["runs_images_per_s"])
        assert loop["images_per_s"] == max(loop["runs_images_per_s"])
        assert loop["samples_per_run"] == [(1 + 3) * 8] * repeats
        assert loop["timed_samples_per_run"] == [3 * 8] * repeats
    assert results["ratio"] == pytest.approx(
        results["lightning_fit"]["images_per_s"] / results["raw_pytorch"]["images_per_s"]
    )
    assert results["encode"]["images_per_s"] > 0 and results["encode"]["timed_samples"] == 3 * 8


@pytest.mark.parametrize("loop", [time_lightning, time_raw])
def test_each_loop_trains_the_counted_samples(loop) -> None:
    """Count the images the network really sees in training mode, independently of the timer."""
    cfg = TrainBenchConfig(**TINY, channels_last=True)
    device = torch.device("cpu")
    module = build_module(cfg)
    before = [p.detach().clone() for p in module.parameters()]
    seen: list[int] = []
    module.net.register_forward_pre_hook(
        lambda net, args: seen.append(len(args[0])) if net.training else None
    )
    data = SyntheticBatches(cfg, device, cfg.warmup + cfg.steps)

    timing = loop(module, DataLoader(data, batch_size=None), cfg, device)

    assert seen == [8] * 4
    assert timing.samples == sum(seen) and timing.timed_samples == 3 * 8
    assert timing.seconds > 0 and timing.images_per_s > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters())), "no optimizer step ran"


def test_both_loops_start_from_the_same_weights() -> None:
    cfg = TrainBenchConfig(**TINY)
    first, second = build_module(cfg).state_dict(), build_module(cfg).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cli_writes_the_results(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "train.json"
    status = main(
        ["--quick", "--device", "cpu", "--image-size", "16", "--batch-size", "8"]
        + ["--steps", "2", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert status == 0 and TOP_KEYS == set(saved)
    assert saved["settings"]["backbone"] == "smallcnn" and saved["settings"]["steps"] == 2
    assert saved["settings"]["image_size"] == 16 and saved["settings"]["batch_size"] == 8
    assert saved["lightning_fit"]["samples_per_run"] == saved["raw_pytorch"]["samples_per_run"] == [16]


def test_quick_defaults_yield_to_explicit_options() -> None:
    quick = config_from_args(_parse("--quick", "--device", "cpu"))
    assert (quick.backbone, quick.image_size, quick.batch_size) == ("smallcnn", 32, 16)
    full = config_from_args(_parse("--device", "cpu", "--batch-size", "32", "--precision", "bf16-mixed"))
    assert (full.backbone, full.image_size, full.batch_size, full.precision) == (
        "alexnet",
        224,
        32,
        "bf16-mixed",
    )
    assert full.steps >= 1 and full.warmup >= 0
    assert (
        config_from_args(_parse("--quick", "--backbone", "alexnet", "--device", "cpu")).backbone == "alexnet"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "16-mixed"}, "precision must be one of 32-true, bf16-mixed"),
        ({"backbone": "lenet"}, "unknown backbone 'lenet'"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
    ],
)
def test_bad_settings_raise_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainBenchConfig(**{**TINY, **overrides})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_exits_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda", "--quick"])
    assert exit_info.value.code == 2
    assert "device cuda requested but torch sees no CUDA device" in capsys.readouterr().err


def test_non_positive_batch_size_is_rejected_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        _parse("--batch-size", "0")


@pytest.mark.slow
def test_compiled_module_trains_in_both_loops() -> None:
    cfg = TrainBenchConfig(**TINY, compile=True)
    results = benchmark_train(cfg)
    assert results["settings"]["compile"] is True
    assert results["lightning_fit"]["samples_per_run"] == results["raw_pytorch"]["samples_per_run"] == [32]
    assert results["lightning_fit"]["images_per_s"] > 0 and results["encode"]["images_per_s"] > 0
