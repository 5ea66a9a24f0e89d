"""deephash-compare on a fake sweep folder written in the real run-directory layout."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deephash.compare import main
from deephash.evaluation.plots import write_precision_curves
from deephash.tracking.compare import compare_runs, group_table
from deephash.tracking.figures import figure_name, plot_metric_vs_bits, plot_precision_curves
from deephash.tracking.sweep import NO_METRICS, dataset_from_target, find_jobs, load_jobs

HYDRA_CONFIG = """\
task_name: train
seed: {seed}
data:
  _target_: deephash.data.digits.DigitsDataModule
  seed: ${{seed}}
model:
  _target_: deephash.models.module.HashModule
  backbone: smallcnn
  bits: {bits}
paths:
  output_dir: ${{hydra:runtime.output_dir}}
"""


def metrics(bits: int, seed: int, hamming_map: float) -> dict[str, Any]:
    def mode(m: float, qps: float) -> dict[str, Any]:
        return {
            "mAP": m,
            "mAP@1000": m + 0.01,
            "precision@k": {"1": 1.0, "10": m + 0.02, "100": m - 0.03, "1000": m - 0.1},
            "queries_per_second": qps,
        }

    return {
        "status": "completed",
        "dataset": "digits",
        "backbone": "smallcnn",
        "bits": bits,
        "seed": seed,
        "val_acc": 0.97,
        "test_acc": 0.955,
        "method": "deephash",
        "modes": {
            "hamming": mode(hamming_map, 123456.7),
            "hamming_radius": {"precision": 0.9, "recall": 0.5, "queries_per_second": 2e5},
            "hierarchical": {**mode(hamming_map + 0.02, 2000.0), "ms_per_query": 0.5},
            "euclidean": mode(hamming_map + 0.01, 900.0),
        },
    }


def write_job(
    job: Path,
    bits: int,
    seed: int,
    result: dict[str, Any] | None = None,
    curve: bool = True,
    overrides: Sequence[str] = (),
) -> None:
    """A job folder as Hydra writes it; ``overrides`` come after ``model.bits`` and ``seed``."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(HYDRA_CONFIG.format(seed=seed, bits=bits))
    lines = [f"model.bits={bits}", f"seed={seed}", *overrides]
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in lines))
    if result is not None:
        (job / "metrics.json").write_text(json.dumps(result, indent=2))
    if curve and result is not None and result.get("status") == "completed":
        ks = np.array([1, 10, 100])
        m = result["modes"]["hamming"]["mAP"]
        write_precision_curves(
            {
                "hamming": (ks, np.array([1.0, m, m - 0.1])),
                "euclidean": (ks, np.array([1.0, m + 0.01, m - 0.05])),
            },
            job / "precision_at_k.csv",
            job / "precision_at_k.png",
        )


@pytest.fixture(params=["crashed", "recorded"])
def sweep(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Jobs 0 and 2 completed; job 10 failed, before writing metrics.json or with a recorded failure."""
    root = tmp_path / "multirun" / "train" / "2024-05-01_12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    write_job(root / "0", bits=16, seed=1, result=metrics(16, 1, 0.80))
    write_job(root / "2", bits=48, seed=1, result=metrics(48, 1, 0.90))
    failed = None
    if request.param == "recorded":
        failed = {"status": "failed", "error": "RuntimeError: CUDA out of memory\nmore detail", "bits": 64}
    write_job(root / "10", bits=64, seed=1, result=failed)
    (root / "10" / "checkpoints").mkdir()
    return root


def test_compare_writes_every_job(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    out_dir = sweep / "compare"
    stdout = capsys.readouterr().out
    md = (out_dir / "compare.md").read_text()
    assert stdout == md
    jobs_section = md.split("## Jobs", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in jobs_section.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3  # header, separator, one row per job
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:11] == [
        "job",
        "status",
        "dataset",
        "backbone",
        "method",
        "features",
        "bits",
        "seed",
        "overrides",
        "val_acc",
        "test_acc",
    ]
    assert header[-1] == "error"
    for mode in ("hamming", "hierarchical", "euclidean"):
        assert [c for c in header if c.startswith(mode + "/")] == [
            f"{mode}/{m}" for m in ("mAP", "mAP@1000", "P@10", "P@100", "qps")
        ]
    assert not any(c.startswith("hamming_radius") for c in header)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in cells] == ["0", "2", "10"]  # natural order
    assert cells[0][header.index("hamming/mAP")] == "0.8000"
    assert cells[0][header.index("hamming/qps")] == "123457"
    failed = dict(zip(header, cells[2]))
    assert failed["status"] == "failed"
    assert (failed["dataset"], failed["backbone"], failed["bits"]) == ("digits", "smallcnn", "64")
    assert failed["hamming/mAP"] == "-"

    with (out_dir / "compare.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "2", "10"]
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert float(rows[1]["hamming/mAP"]) == 0.9
    assert float(rows[1]["euclidean/P@100"]) == pytest.approx(0.88)
    assert float(rows[0]["hierarchical/qps"]) == 2000.0
    assert rows[2]["hamming/mAP"] == "" and rows[2]["error"]
    if "CUDA" in rows[2]["error"]:
        assert rows[2]["error"] == "RuntimeError: CUDA out of memory more detail"
        assert "CUDA out of memory" in failed["error"]
    else:
        assert rows[2]["error"] == NO_METRICS

    for name in ("map_vs_bits", "precision_curves"):
        with Image.open(out_dir / f"{name}.png") as image:
            image.load()
            assert image.format == "PNG" and image.width > 100 and image.height > 100
        assert (out_dir / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert b"<svg" in (out_dir / f"{name}.svg").read_bytes()[:2000]


def test_out_dir_and_metric(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--metric", "precision@10"]) == 0
    figures = [
        f"{stem}.{ext}"
        for stem in ("precision_at_10_vs_bits", "precision_curves")
        for ext in ("pdf", "png", "svg")
    ]
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md", "groups.csv", *figures]
    assert not (sweep / "compare").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--metric", "F1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: metric 'F1' is in no run's results: use e.g. mAP, mAP@1000, precision@10, queries_per_second"
    )


def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SystemExit) as exit_info:
        main([str(missing)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: multirun directory {missing} does not exist: pass a sweep folder (multirun/<task>/<time>)"
    )
    empty = tmp_path / "empty"
    (empty / "0" / "wandb").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(empty)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: no runs found in {empty}: expected job folders with metrics.json or .hydra/config.yaml"
    )


def test_module_entry_point_reports_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deephash.compare", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: multirun directory {tmp_path / 'nope'} does not exist: pass a sweep folder (multirun/<task>/<time>)"
    ]


def test_seeds_are_averaged_per_bit_count(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for job, (bits, seed, m) in enumerate(
        [(16, 1, 0.7), (16, 2, 0.8), (32, 1, 0.9), (32, 2, 0.95), (64, 1, 0.97)]
    ):
        write_job(root / str(job), bits=bits, seed=seed, result=metrics(bits, seed, m))
    write_job(root / "5", bits=128, seed=1, result=None)  # a crash: no point at 128 bits
    jobs = load_jobs(root)
    assert len(jobs) == 6 and jobs[5].status == "failed"

    ax = plot_metric_vs_bits(jobs, "mAP").axes[0]
    lines = {bars.get_label(): bars.lines[0] for bars in ax.containers}  # errorbar: (data line, caps, bars)
    assert set(lines) == {"hamming", "hierarchical", "euclidean"}
    # one setting: one colour, a line style per mode
    assert len({line.get_color() for line in lines.values()}) == 1
    assert len({line.get_linestyle() for line in lines.values()}) == 3
    assert lines["hamming"].get_xdata().tolist() == [16, 32, 64]
    np.testing.assert_allclose(np.asarray(lines["hamming"].get_ydata(), float), [0.75, 0.925, 0.97])
    np.testing.assert_allclose(np.asarray(lines["hierarchical"].get_ydata(), float), [0.77, 0.945, 0.99])
    # error bars: the sample standard deviation over the seeds, none for the single seed at 64 bits
    (bars,) = [c for c in ax.containers if c.get_label() == "hamming"][0].lines[2]
    half_heights = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
    np.testing.assert_allclose(half_heights, [np.std([0.7, 0.8], ddof=1), np.std([0.9, 0.95], ddof=1), 0.0])
    assert ax.get_xscale() == "log" and ax.get_title() == "mAP vs code length, digits"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "32", "64"]

    fig = plot_precision_curves(jobs)
    assert [ax.get_title() for ax in fig.axes] == ["hamming", "euclidean"]
    curves = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert sorted(curves) == ["16 bits", "32 bits", "64 bits"]
    np.testing.assert_allclose(curves["16 bits"].get_ydata(), [1.0, 0.75, 0.65])


def test_find_jobs_and_dataset_names(tmp_path: Path) -> None:
    write_job(tmp_path / "a" / "1", bits=8, seed=0, result=metrics(8, 0, 0.5))
    (tmp_path / "a" / "1" / "index").mkdir()
    (tmp_path / "a" / "1" / "index" / "metrics.json").write_text("{}")  # inside a job: not a job
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text("not json")
    assert [p.relative_to(tmp_path).as_posix() for p in find_jobs(tmp_path)] == ["a/1", "b"]
    jobs = load_jobs(tmp_path)
    assert jobs[0].info == {
        "dataset": "digits",
        "backbone": "smallcnn",
        "method": "deephash",
        "bits": 8,
        "seed": 0,
    }
    assert jobs[1].status == "failed" and jobs[1].error.startswith("unreadable metrics.json")
    names = [dataset_from_target(f"deephash.data.x.{c}") for c in ("DigitsDataModule", "MNISTDataModule")]
    assert names + [dataset_from_target("CIFAR10DataModule"), dataset_from_target("FolderDataModule")] == [
        "digits",
        "mnist",
        "cifar10",
        "folder",
    ]


def test_markdown_escapes_pipes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_job(tmp_path / "0", bits=8, seed=0, result={"status": "failed", "error": "bad | value"})
    assert main([str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert "bad \\| value" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "compare" / "compare.csv").read_text())))
    assert rows[0]["error"] == "bad | value"


def read_groups(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "groups.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweeps_that_differ_in_one_override_are_not_averaged(tmp_path: Path) -> None:
    """Two learning rates at the same seeds: two lines, two groups, each the mean of its own seeds only."""
    root = tmp_path / "sweep"
    values = {("0.01", 1): 0.5, ("0.01", 2): 0.6, ("0.001", 1): 0.8, ("0.001", 2): 0.9}
    for i, ((lr, seed), m) in enumerate(values.items()):
        write_job(root / str(i), 32, seed, metrics(32, seed, m), overrides=[f"model.optimizer.lr={lr}"])
    jobs = load_jobs(root)
    ax = plot_metric_vs_bits(jobs).axes[0]
    means = {c.get_label(): float(c.lines[0].get_ydata()[0]) for c in ax.containers}
    assert means["model.optimizer.lr=0.01 hamming"] == pytest.approx(0.55)
    assert means["model.optimizer.lr=0.001 hamming"] == pytest.approx(0.85)
    assert len(means) == 2 * 3  # two settings, three modes

    comparison = compare_runs(root)
    rows = [r for r in read_groups(comparison.files["groups"].parent) if r["mode"] == "hamming"]
    assert [(r["overrides"], r["seeds"]) for r in rows] == [
        ("model.optimizer.lr=0.001", "2"),
        ("model.optimizer.lr=0.01", "2"),
    ]
    assert float(rows[0]["mAP mean"]) == pytest.approx(0.85)
    assert float(rows[0]["mAP std"]) == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert "| 0.8500 ± 0.0707 |" in comparison.markdown
    with (root / "compare" / "compare.csv").open(newline="") as f:
        assert [r["overrides"] for r in csv.DictReader(f)] == [
            "model.optimizer.lr=0.01",
            "model.optimizer.lr=0.01",
            "model.optimizer.lr=0.001",
            "model.optimizer.lr=0.001",
        ]


def test_seeds_of_one_setting_are_averaged_whatever_else_differs_per_seed(tmp_path: Path) -> None:
    """The seed, the checkpoint a job resumed from and where it logs do not split a setting."""
    root = tmp_path / "sweep"
    for seed, m in ((0, 0.6), (1, 0.7), (2, 0.8)):
        extra = [
            f"ckpt_path=/runs/seed{seed}/last.ckpt",
            f"paths.output_dir=/out/{seed}",
            "model.optimizer.lr=0.01",
        ]
        write_job(root / f"seed{seed}", 48, seed, metrics(48, seed, m), overrides=extra)
    (group,) = [r for r in group_table(load_jobs(root))[1] if r["mode"] == "hamming"]
    assert group["seeds"] == 3 and group["overrides"] == "-"
    assert group["mAP mean"] == pytest.approx(0.7) and group["mAP std"] == pytest.approx(0.1)
    fig = plot_precision_curves(load_jobs(root))
    assert len(fig.axes[0].collections) == 1  # one band of one standard deviation around the mean
    assert fig.texts[0].get_text() == "Precision at k, digits"


def test_baselines_with_different_features_are_not_merged(tmp_path: Path) -> None:
    """A training sweep and LSH on pixels and on F7 at 48 bits: three settings, labelled without 'None'."""
    root = tmp_path / "runs" / "digits"
    write_job(root / "bits48", 48, 0, metrics(48, 0, 0.9), overrides=["experiment=demo"])
    for features, m in (("pixels", 0.3), ("f7", 0.7)):
        result = {**metrics(48, 0, m), "method": "lsh", "features": features, "backbone": None}
        job = root / "baselines" / f"lsh-{features}"
        extra = ["method=lsh", "data=digits", f"features={features}", "bits=48"]
        write_job(job, 48, 0, result, overrides=extra)
    jobs = load_jobs(root)
    assert [j.info.get("features") for j in jobs] == ["f7", "pixels", None]
    ax = plot_metric_vs_bits(jobs).axes[0]
    means = {c.get_label(): float(c.lines[0].get_ydata()[0]) for c in ax.containers}
    assert means["lsh pixels hamming"] == pytest.approx(0.3)
    assert means["lsh f7 hamming"] == pytest.approx(0.7)
    assert means["deephash hamming"] == pytest.approx(0.9)
    assert not [label for label in means if "None" in label]
    rows = [r for r in group_table(jobs)[1] if r["mode"] == "hamming"]
    assert sorted((r["method"], r["features"], r["seeds"]) for r in rows) == [
        ("deephash", None, 1),
        ("lsh", "f7", 1),
        ("lsh", "pixels", 1),
    ]


def test_jobs_without_overrides_group_by_what_metrics_say(tmp_path: Path) -> None:
    for seed, m in ((1, 0.4), (2, 0.6)):
        write_job(tmp_path / str(seed), 16, seed, metrics(16, seed, m))
        (tmp_path / str(seed) / ".hydra" / "overrides.yaml").unlink()
    (group,) = [r for r in group_table(load_jobs(tmp_path))[1] if r["mode"] == "hamming"]
    assert group["seeds"] == 2 and group["mAP mean"] == pytest.approx(0.5)


def test_figure_names_follow_the_metric() -> None:
    assert figure_name("mAP") == "map_vs_bits"
    assert figure_name("mAP@1000") == "map_at_1000_vs_bits"
    assert figure_name("precision@10") == "precision_at_10_vs_bits"
    assert figure_name("queries_per_second") == "queries_per_second_vs_bits"


def test_a_completed_run_without_results_does_not_break_the_comparison(tmp_path: Path) -> None:
    """A run stopped while it evaluated may say completed without modes (releases before the interrupted
    status wrote that): the comparison averages the runs that have results and still writes every file."""
    root = tmp_path / "sweep"
    write_job(root / "0", bits=16, seed=1, result=metrics(16, 1, 0.8))
    unfinished = metrics(16, 2, 0.9)
    del unfinished["modes"]
    write_job(root / "1", bits=16, seed=2, result=unfinished, curve=False)
    comparison = compare_runs(root, tmp_path / "out")
    with comparison.files["groups"].open() as f:
        hamming = [row for row in csv.DictReader(f) if row["mode"] == "hamming"]
    assert len(hamming) == 1 and float(hamming[0]["mAP mean"]) == pytest.approx(0.8)
