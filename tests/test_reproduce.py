"""``python -m experiments.reproduce`` end to end: exit statuses, RESULTS.md and a tiny smoke run."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import launch, reproduce
from experiments import preflight as checks
from experiments.paper import load_paper_results
from tests.fixtures_data import write_image_tree

TINY = [
    "--smoke",
    "--epochs", "1",
    "--bits", "12", "48",
    "--methods", "lsh",
    "--cnnh-methods", "lsh",
    "--logger", "none",
    "--override", "trainer.limit_train_batches=5",
    "--bench-args", "--n-database 2000 --n-queries 20 --dim 64 --repeat 1",
]  # fmt: skip


def results_table(markdown: str) -> list[list[str]]:
    """Rows (cells) of the "Paper vs ours" table of RESULTS.md."""
    section = markdown.split("## Paper vs ours", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines[2:]]


def test_full_mode_without_data_stops_at_once(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(checks, "has_network", lambda *a, **k: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    start = time.perf_counter()
    code = reproduce.main(["--data-root", str(empty), "--out", str(out)])
    assert time.perf_counter() - start < 5
    assert code == 2
    err = capsys.readouterr().err
    assert f"MNIST not found at {empty}/mnist/MNIST/raw" in err
    assert f"CIFAR-10 not found at {empty}/cifar10/cifar-10-batches-py" in err
    assert "data.root" in err and "model.weights" in err and "--weights" in err
    assert not out.exists()  # no run directory, nothing trained


def test_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    assert reproduce.main(["--epochs", "3", "--out", str(tmp_path / "o")]) == 2
    assert "--epochs is for --smoke" in capsys.readouterr().err


def test_failed_runs_exit_1_with_every_row_explained(tmp_path: Path, monkeypatch) -> None:
    def training(plan):
        entry = {"status": "failed", "error": "RuntimeError: boom"}
        return {"digits/bits48": launch.record_status(plan, "digits/bits48", entry)}

    monkeypatch.setattr(launch, "run_training", training)
    for stage in ("run_baselines", "run_cnnh", "run_methods", "run_yahoo", "run_speed"):
        monkeypatch.setattr(launch, stage, lambda plan: {})
    assert reproduce.main(["--smoke", "--out", str(tmp_path)]) == 1
    rows = {row[0].strip("`"): row for row in results_table((tmp_path / "RESULTS.md").read_text())}
    assert all(all(cell for cell in row) for row in rows.values())
    assert rows["mnist_test_error_48"][4] == "not run: failed: RuntimeError: boom"
    assert rows["mnist_test_error_128"][4] == "not run: no results in runs/digits/bits128 yet"
    assert rows["mnist_lsh_precision_48"][4] == "not run: no results in runs/digits/baselines/lsh-pixels yet"
    assert rows["speed_hamming_over_l2"][4] == "not run: no bench/bench.json yet"
    # rebuilding the report alone runs nothing and fails nothing
    assert reproduce.main(["--smoke", "--out", str(tmp_path), "--report-only"]) == 0


# ------------------------------------------------------------------------------------------- tiny smoke


@pytest.fixture(scope="module")
def tiny_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("reproduce")
    return out, reproduce.main([*TINY, "--out", str(out)])


@pytest.mark.slow
def test_tiny_smoke_writes_every_stage(tiny_smoke: tuple[Path, int]) -> None:
    out, code = tiny_smoke
    assert code == 0
    for run in ("digits/bits12", "digits/bits48", "digits/baselines/lsh-pixels", "digits/baselines/lsh-f7"):
        assert json.loads((out / "runs" / run / "metrics.json").read_text())["status"] == "completed", run
    assert (out / "figures" / "digits_precision_48.png").stat().st_size > 0
    with (out / "figures" / "digits_precision_48.csv").open() as f:
        assert next(csv.reader(f)) == ["k", "ours hamming", "ours hierarchical", "lsh (pixels)", "lsh (f7)"]
    assert (out / "figures" / "digits_precision_48.svg").stat().st_size > 0
    compare = out / "compare" / "digits"
    assert all((compare / f"map_vs_bits.{ext}").stat().st_size > 0 for ext in ("png", "svg", "pdf"))
    # in-process runs record their overrides as Hydra does, so the comparison tells the settings apart
    overrides = yaml.safe_load((out / "runs" / "digits" / "bits48" / ".hydra" / "overrides.yaml").read_text())
    assert "model.net.bits=48" in overrides and "experiment=demo" in overrides
    with (compare / "groups.csv").open() as f:
        groups = [r for r in csv.DictReader(f) if r["mode"] == "hamming"]
    assert sorted((g["method"], g["features"], g["bits"]) for g in groups) == [
        ("latent", "", "12"),
        ("latent", "", "48"),
        ("lsh", "f7", "48"),
        ("lsh", "pixels", "48"),
    ]  # the cnnh protocol's and the deep methods' runs have sections of their own
    assert json.loads((out / "bench" / "bench.json").read_text())["config"]["n_database"] == 2000
    # the compared methods of figures 4 and 6 under the cnnh protocol: their table and figure
    lsh = json.loads((out / "runs" / "digits" / "cnnh" / "lsh" / "bits48" / "metrics.json").read_text())
    assert lsh["protocol"] == "cnnh" and lsh["method_params"]["centre"] is False
    section = (out / "RESULTS.md").read_text().split("## The compared methods of figures 4 and 6")[1]
    section = section.split("\n## ", 1)[0]
    assert (
        f"| LSH | - (0.187) | - (0.209) | - (0.235) | {lsh['modes']['hamming']['mAP']:.3f} (0.243) |"
        in section
    )
    assert "| KSH | - (0.872) |" in section and "not run: ksh not in --cnnh-methods" in section
    with (out / "figures" / "digits_compared_48.csv").open() as f:
        assert next(csv.reader(f)) == ["k", "ours hamming", "LSH"]


@pytest.mark.slow
def test_tiny_smoke_compares_the_deep_methods(tiny_smoke: tuple[Path, int]) -> None:
    """Stage 5: each method of --deep-methods (smoke: latent and DPSH) at 12 and 48 bits, its table row read from
    its own run, and the mAP-vs-bits figure with a line per method and mode."""
    out, _ = tiny_smoke
    runs = out / "runs" / "digits" / "methods"
    metrics = {
        (m, b): json.loads((runs / m / f"bits{b}" / "seed1" / "metrics.json").read_text())
        for m in ("latent", "dpsh")
        for b in (12, 48)
    }
    assert all(v["status"] == "completed" and v["method"] == m for (m, _), v in metrics.items())
    assert {v["bits"] for v in metrics.values()} == {12, 48}
    assert all(set(v["modes"]) == {"hamming", "hierarchical"} for v in metrics.values())
    section = (
        (out / "RESULTS.md").read_text().split("## Deep methods under one protocol")[1].split("\n## ")[0]
    )
    for method, label in (("latent", "latent (ours, Lin et al. 2015)"), ("dpsh", "DPSH (Li et al. 2016)")):
        m48, m12 = metrics[(method, 48)]["modes"], metrics[(method, 12)]["modes"]
        cells = [
            label,
            f"{m48['hamming']['mAP']:.4f}",
            f"{m48['hamming']['precision@k']['1000']:.4f}",
            f"{m48['hierarchical']['mAP']:.4f}",
            f"{m48['hierarchical']['precision@k']['1000']:.4f}",
            f"{m12['hamming']['mAP']:.4f}",
        ]
        assert "| " + " | ".join(cells) + " |" in section, (method, section)
    assert "1 of 1 seeds at 48 bits" in section
    compare = out / "compare" / "digits-methods"
    assert (compare / "map_vs_bits.png").stat().st_size > 0
    with (compare / "groups.csv").open() as f:
        groups = {(r["method"], r["bits"], r["mode"]) for r in csv.DictReader(f)}
    assert groups == {
        (m, b, mode) for m in ("latent", "dpsh") for b in ("12", "48") for mode in ("hamming", "hierarchical")
    }


def test_only_runs_the_stages_asked_for(tmp_path: Path) -> None:
    """--only methods: the deep methods' runs and RESULTS.md, no other run (the paper's rows say why)."""
    out = tmp_path / "only"
    args = [*TINY, "--only", "methods", "--deep-methods", "dpsh", "--out", str(out)]
    assert reproduce.main(args) == 0
    runs = sorted(p.parent.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("metrics.json"))
    assert runs == ["digits/methods/dpsh/bits12/seed1", "digits/methods/dpsh/bits48/seed1"]
    assert not (out / "bench").exists()
    rows = {row[0].strip("`"): row for row in results_table((out / "RESULTS.md").read_text())}
    assert rows["mnist_test_error_48"][4] == "not run: stage training not in --only"
    assert rows["mnist_lsh_precision_48"][4] == "not run: stage baselines not in --only"


@pytest.mark.slow
def test_tiny_smoke_results_table_is_filled(tiny_smoke: tuple[Path, int]) -> None:
    out, _ = tiny_smoke
    markdown = (out / "RESULTS.md").read_text()
    assert "smoke: digits stands in for MNIST/CIFAR-10; numbers are not comparable" in markdown
    rows = results_table(markdown)
    entries = load_paper_results()
    assert sorted(row[0].strip("`") for row in rows) == sorted(e["id"] for e in entries)
    for row in rows:
        assert len(row) == 8 and all(cell for cell in row), row
        ours = row[4]
        assert ours[0].isdigit() or ours.startswith(("not run: ", "not available: ")), row
    by_id = {row[0].strip("`"): row for row in rows}
    # ours is read from the run's own files
    metrics = json.loads((out / "runs" / "digits" / "bits48" / "metrics.json").read_text())
    assert by_id["mnist_test_error_48"][4] == f"{100 * (1 - metrics['test_acc']):.2f}%"
    assert by_id["mnist_test_error_48"][3] == "0.47%"
    p1000 = metrics["modes"]["hamming"]["precision@k"]["1000"]
    assert by_id["mnist_precision_48"][4] == f"{100 * p1000:.2f}%"
    assert by_id["mnist_precision_48"][5] == f"{100 * p1000 - 98.5:+.2f} pp"
    with (out / "runs" / "digits" / "bits48" / "precision_at_k.csv").open() as f:
        curve = [(int(r["k"]), float(r["hamming"])) for r in csv.DictReader(f)]
    uniform = [p for k, p in curve if k % 10 == 0 and 100 <= k <= 1000]  # the authors' plotted range
    assert (
        by_id["mnist_precision_curve_48"][4]
        == f"{100 * np.mean(uniform):.2f}% (sd {100 * np.std(uniform):.2f}%)"
    )
    assert (
        by_id["mnist_lsh_precision_48"][3] == "- (figure only)"
        and by_id["mnist_lsh_precision_48"][4][0].isdigit()
    )
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert by_id["speed_hamming_over_l2"][4] == f"{bench['hamming_over_euclidean']['speedup']:.1f}x"
    # what was left out says why
    assert by_id["mnist_test_error_128"][4] == "not run: 128 bits not in --bits"
    assert by_id["mnist_itq_precision_48"][4] == "not run: itq not in --methods"
    assert by_id["yahoo_test_acc_128"][4].startswith("not run: no --yahoo-root")


@pytest.mark.slow
def test_tiny_smoke_rerun_skips_completed_runs(tiny_smoke: tuple[Path, int]) -> None:
    out, _ = tiny_smoke
    before = (out / "runs" / "digits" / "bits48" / "metrics.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert reproduce.main([*TINY, "--out", str(out)]) == 0
    assert time.perf_counter() - start < 30
    assert (out / "runs" / "digits" / "bits48" / "metrics.json").stat().st_mtime_ns == before
    status = json.loads((out / "status.json").read_text())
    assert all(entry.get("skipped") for entry in status.values())


@pytest.mark.slow
def test_smoke_with_a_yahoo_style_folder(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "yahoo", per_class=12)
    out = tmp_path / "out"
    argv = [*TINY, "--bits", "48", "--features", "pixels", "--out", str(out)]
    argv += ["--yahoo-root", str(tmp_path / "yahoo"), "--yahoo-override", "data.n_queries=3"]
    assert reproduce.main(argv) == 0
    metrics = json.loads((out / "runs" / "yahoo" / "bits128" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["bits"] == 128 and metrics["n_queries"] == 3
    rows = {row[0].strip("`"): row for row in results_table((out / "RESULTS.md").read_text())}
    assert rows["yahoo_test_acc_128"][4] == f"{100 * metrics['test_acc']:.2f}%"
    assert (out / "runs" / "yahoo" / "bits128" / "retrieval_grid.png").stat().st_size > 0
    with (out / "figures" / "yahoo_precision_128.csv").open() as f:
        assert next(csv.reader(f))[:3] == ["k", "hamming", "hierarchical"]


def fake_run(run_dir: Path, seed: int, acc: float, hamming_map: float, overrides: list[str]) -> None:
    """A completed run as the pipeline leaves it: metrics.json, precision_at_k.csv, .hydra/overrides.yaml."""
    from deephash.evaluation.plots import write_precision_curves

    modes = {
        mode: {"mAP": hamming_map + d, "precision@k": {"10": hamming_map, "100": 0.5, "1000": 0.1}}
        for mode, d in (("hamming", 0.0), ("hierarchical", 0.01))
    }
    metrics = {"status": "completed", "dataset": "digits", "backbone": "smallcnn", "method": "deephash"}
    metrics.update({"bits": 48, "seed": seed, "test_acc": acc, "modes": modes})
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    ks = np.array([10, 100])
    curves = {
        "hamming": (ks, np.array([hamming_map, 0.5])),
        "hierarchical": (ks, np.array([hamming_map, 0.6])),
    }
    write_precision_curves(curves, run_dir / "precision_at_k.csv", run_dir / "precision_at_k.png")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [*overrides, f"seed={seed}"])
    )


def test_seeds_are_reported_as_mean_and_std(tmp_path: Path) -> None:
    """Two of three seeds completed: every number of RESULTS.md is their mean ± std, the third said missing."""
    runs = tmp_path / "runs" / "digits" / "bits48"
    for seed, acc, m in ((0, 0.90, 0.70), (1, 0.94, 0.80)):
        fake_run(runs / f"seed{seed}", seed, acc, m, ["experiment=demo", "model.bits=48"])
    argv = ["--smoke", "--n-seeds", "3", "--bits", "48", "--methods", "lsh", "--features", "pixels"]
    assert reproduce.main([*argv, "--out", str(tmp_path), "--report-only"]) == 0
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "seeds 0, 1, 2" in markdown
    rows = {row[0].strip("`"): row for row in results_table(markdown)}
    errors = [100 * (1 - 0.90), 100 * (1 - 0.94)]
    assert rows["mnist_test_error_48"][4] == (
        f"{np.mean(errors):.2f}% ± {np.std(errors, ddof=1):.2f}% (2 seeds); "
        "1 of 3 seeds missing: not run: no results in runs/digits/bits48/seed2 yet"
    )
    assert rows["mnist_test_error_48"][6] == "digits/bits48/seed*"
    curve_means = [
        0.5,
        0.5,
    ]  # the curve mean is over k = 100..1000 (the authors' plot range): k=10 is left out
    assert rows["mnist_precision_curve_48"][4].startswith(
        f"{100 * np.mean(curve_means):.2f}% ± {100 * np.std(curve_means, ddof=1):.2f}% (2 seeds)"
    )
    hamming = f"{0.75:.4f} ± {np.std([0.7, 0.8], ddof=1):.4f}"
    assert f"| ours hamming | {hamming} |" in markdown  # the precision section
    assert f"| 48 | {92:.2f} ± {np.std([90, 94], ddof=1):.2f} | {hamming} |" in markdown  # the sweep table
    with (tmp_path / "figures" / "digits_precision_48.csv").open() as f:
        mean_curve = [(r["k"], float(r["ours hamming"])) for r in csv.DictReader(f)]
    assert mean_curve == [("10", pytest.approx(0.75)), ("100", pytest.approx(0.5))]
    compare = tmp_path / "compare" / "digits"
    assert all((compare / f"map_vs_bits.{ext}").stat().st_size > 0 for ext in ("png", "svg", "pdf"))
    with (compare / "groups.csv").open() as f:
        groups = [r for r in csv.DictReader(f) if r["mode"] == "hamming"]
    assert [(g["seeds"], float(g["mAP mean"])) for g in groups] == [("2", pytest.approx(0.75))]
    # the grid is the first completed seed's; the Yahoo run was not asked for
    examples = markdown.split("## Retrieval examples", 1)[1].split("\n## ", 1)[0]
    assert "### digits, 48 bits: figure 3 and figure 5" in examples
    assert "no retrieval grid in runs/digits/bits48/seed0" in examples
    (runs / "seed1" / "retrieval_grid.png").write_bytes(b"png")
    assert reproduce.main([*argv, "--out", str(tmp_path), "--report-only"]) == 0
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "![digits retrieval examples](runs/digits/bits48/seed1/retrieval_grid.png)" in markdown
    assert (
        "not run: no --yahoo-root (or YAHOO_ROOT) given" in markdown.split("### Yahoo-style image folder")[1]
    )


def test_folder_run_precision_and_grid_in_results(tmp_path: Path) -> None:
    """Figure 8: the folder run's precision at k for each search mode, with its retrieval grid."""
    run = tmp_path / "runs" / "yahoo" / "bits128"
    fake_run(run, 0, 0.8, 0.6, ["experiment=paper_yahoo"])
    (run / "retrieval_grid.png").write_bytes(b"png")
    (tmp_path / "photos").mkdir()
    missing = tmp_path / "without-run"
    argv = ["--smoke", "--bits", "48", "--yahoo-root", str(tmp_path / "photos"), "--out", str(missing)]
    assert reproduce.main([*argv, "--report-only"]) == 0
    rows = {row[0].strip("`"): row for row in results_table((missing / "RESULTS.md").read_text())}
    assert rows["yahoo_test_acc_128"][4] == "not run: no results in runs/yahoo/bits128 yet"  # not: --bits
    argv = ["--smoke", "--bits", "48", "--yahoo-root", str(tmp_path / "photos"), "--out", str(tmp_path)]
    assert reproduce.main([*argv, "--report-only"]) == 0
    section = (tmp_path / "RESULTS.md").read_text().split("### Yahoo-style image folder, 128 bits")[1]
    section = section.split("\n## ", 1)[0]
    assert "![yahoo retrieval examples](runs/yahoo/bits128/retrieval_grid.png)" in section
    assert "![image folder, 128 bits](figures/yahoo_precision_128.png)" in section
    assert "| hamming | 0.6000 | 0.6000 | 0.5000 | 0.1000 | yahoo/bits128 |" in section
    assert "| euclidean | - | - | - | - | no euclidean curve in runs/yahoo/bits128 |" in section
    for ext in ("csv", "png", "svg", "pdf"):
        assert (tmp_path / "figures" / f"yahoo_precision_128.{ext}").stat().st_size > 0
    with (tmp_path / "figures" / "yahoo_precision_128.csv").open() as f:
        assert next(csv.reader(f)) == ["k", "hamming", "hierarchical"]
