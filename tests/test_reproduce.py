"""The paper-reproduction pipeline: preflight, job planning, resumption, W&B links and a tiny smoke run."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import reproduce
from experiments.reproduce import PAPER_RESULTS, Job, build_parser, load_paper_results, make_plan, preflight
from tests.conftest import compose_config
from tests.fixtures_data import write_image_tree

TINY = [
    "--smoke",
    "--epochs", "1",
    "--bits", "12", "48",
    "--methods", "lsh",
    "--logger", "none",
    "--override", "trainer.limit_train_batches=5",
    "--bench-args", "--n-database 2000 --n-queries 20 --dim 64 --repeat 1",
]  # fmt: skip


def plan_for(*argv: str):
    return make_plan(build_parser().parse_args(list(argv)), argv)


def results_table(markdown: str) -> list[list[str]]:
    """Rows (cells) of the "Paper vs ours" table of RESULTS.md."""
    section = markdown.split("## Paper vs ours", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines[2:]]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty torch hub cache."""
    monkeypatch.setattr(reproduce, "has_network", lambda *a, **k: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


# ------------------------------------------------------------------------------------- paper_results.yaml


def test_paper_results_entries_are_complete() -> None:
    entries = load_paper_results()
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids))
    for entry in entries:
        assert entry["source"] and entry["metric"] and entry["run"], entry["id"]
        assert entry["unit"] in ("percent", "x", "ms"), entry["id"]
        if entry.get("reported") == "figure-only":
            assert entry["value"] is None
        else:
            assert isinstance(entry["value"], (int, float)), entry["id"]
    by_id = {e["id"]: e for e in entries}
    # the numbers the paper states, each tied to the matching metric of ours
    expected = {
        "mnist_test_error_48": (0.47, "test_error"),
        "mnist_test_error_128": (0.50, "test_error"),
        "cifar10_test_acc_48": (89.4, "test_acc"),
        "cifar10_test_acc_128": (89.6, "test_acc"),
        "mnist_precision_48": (98.5, "modes.hamming.precision@k.1000"),
        "cifar10_precision_48": (89.0, "modes.hamming.precision@k.1000"),
        "yahoo_test_acc_128": (83.75, "test_acc"),
        "speed_hamming_over_l2": (971.3, "hamming_over_euclidean.speedup"),
    }
    for key, (value, metric) in expected.items():
        assert by_id[key]["value"] == pytest.approx(value) and by_id[key]["metric"] == metric
    assert any(e.get("reported") == "figure-only" and "lsh" in e["run"] for e in entries)


def test_paper_results_rejects_an_entry_without_source(tmp_path: Path) -> None:
    entries = yaml.safe_load(PAPER_RESULTS.read_text())["entries"]
    del entries[0]["source"]
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({"entries": entries}))
    with pytest.raises(reproduce.ConfigError, match="lacks source"):
        load_paper_results(path)


# ---------------------------------------------------------------------------------------------- preflight


def test_full_mode_without_data_stops_at_once(no_network: None, tmp_path: Path, capsys) -> None:
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


def test_preflight_accepts_local_data_and_weights(no_network: None, tmp_path: Path) -> None:
    raw = tmp_path / "data" / "mnist" / "MNIST" / "raw"
    batches = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    for folder, names in ((raw, reproduce.MNIST_FILES), (batches, reproduce.CIFAR10_FILES)):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"x")
    weights = tmp_path / "alexnet.pth"
    weights.write_bytes(b"x")
    plan = plan_for("--data-root", str(tmp_path / "data"), "--weights", str(weights))
    warnings = preflight(plan)
    assert all("GPU" in w for w in warnings)
    # one MNIST file missing is reported, with the weights found
    (raw / reproduce.MNIST_FILES[0]).unlink()
    with pytest.raises(reproduce.DataError, match="MNIST not found") as err:
        preflight(plan)
    assert "CIFAR-10" not in str(err.value) and "--weights" not in str(err.value)


def test_preflight_finds_weights_in_the_torch_cache(no_network: None, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    plan = plan_for("--datasets", "mnist", "--data-root", str(tmp_path))
    with pytest.raises(reproduce.DataError, match="ImageNet AlexNet weights not found"):
        preflight(plan)
    (cache / reproduce.ALEXNET_FILE).write_bytes(b"x")
    with pytest.raises(reproduce.DataError) as err:
        preflight(plan)
    assert "AlexNet" not in str(err.value) and "CIFAR-10" not in str(err.value)  # cifar10 not selected


def test_smoke_needs_no_data_but_an_existing_yahoo_folder(no_network: None, tmp_path: Path) -> None:
    assert preflight(plan_for("--smoke", "--data-root", str(tmp_path / "none"))) == []
    with pytest.raises(reproduce.DataError, match="Yahoo folder not found"):
        preflight(plan_for("--smoke", "--yahoo-root", str(tmp_path / "missing")))


def test_file_lists_match_the_datamodules() -> None:
    from deephash.data.cifar10 import FILES
    from deephash.data.mnist import RAW_FILES

    assert reproduce.MNIST_FILES == RAW_FILES
    assert sorted(reproduce.CIFAR10_FILES) == sorted(FILES)


def test_network_check_does_not_hang() -> None:
    start = time.perf_counter()
    assert reproduce.has_network(("127.0.0.1", 9), timeout=1.0) is False  # discard port: refused
    assert time.perf_counter() - start < 3


def test_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    assert reproduce.main(["--epochs", "3", "--out", str(tmp_path / "o")]) == 2
    assert "--epochs is for --smoke" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ job planning


def test_full_mode_jobs_compose_to_the_paper_configs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(reproduce, "_cuda", lambda: False)
    weights = tmp_path / "alex net.pth"  # a space: the override must be quoted
    plan = plan_for("--data-root", str(tmp_path / "d"), "--weights", str(weights), "--override", "seed=7")
    jobs = reproduce.training_jobs(plan)
    names = [j.name for j in jobs]
    assert names[:2] == ["mnist/bits48", "mnist/bits128"]  # the paper's runs before the sweep
    assert set(names) == {f"{ds}/bits{b}" for ds in ("mnist", "cifar10") for b in (12, 24, 32, 48, 128)}
    job = jobs[names.index("cifar10/bits24")]
    cfg = compose_config("train", job.overrides, tmp_path / "run")
    assert cfg.model.backbone == "alexnet" and cfg.model.bits == 24
    assert cfg.model.weights == str(weights)
    assert cfg.data.root == str(tmp_path / "d" / "cifar10")
    assert cfg.trainer.max_steps == 50000 and cfg.data.n_queries == 1000
    assert cfg.trainer.accelerator == "cpu"  # no GPU: trainer=cpu
    assert cfg.seed == 7
    (baseline,) = [j for j in reproduce.baseline_jobs(plan) if j.name == "mnist/baselines/itq-pixels"]
    cfg = compose_config("baseline", baseline.overrides, tmp_path / "b")
    assert cfg.method.name == "itq" and cfg.features.name == "pixels" and cfg.bits == 48
    assert cfg.data.root == str(tmp_path / "d" / "mnist")
    # no 48-bit model yet: no F7 baselines
    assert not [j for j in reproduce.baseline_jobs(plan) if j.name.endswith("-f7")]


def test_run_job_skips_completed_and_resumes_interrupted_runs(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[str]] = []

    def fake_run(entry: str, overrides: list[str], run_dir: Path) -> None:
        calls.append(overrides)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "modes": {"hamming": {}}}))

    monkeypatch.setattr(reproduce, "_run_inprocess", fake_run)
    plan = plan_for("--smoke", "--out", str(tmp_path))
    job = Job("digits/bits48", "train", ["experiment=demo"])
    run_dir = tmp_path / "runs" / "digits" / "bits48"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    # killed while evaluating: says completed but was never evaluated
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed"}))
    assert reproduce.run_job(plan, job)["status"] == "completed"
    assert calls[-1][-1] == f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    assert reproduce.run_job(plan, job) == {"status": "completed", "skipped": True}
    assert len(calls) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["digits/bits48"]["skipped"] is True


def test_a_failed_run_is_recorded_and_the_rest_goes_on(tmp_path: Path, monkeypatch) -> None:
    def failing(entry: str, overrides: list[str], run_dir: Path) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(reproduce, "_run_inprocess", failing)
    plan = plan_for("--smoke", "--out", str(tmp_path))
    entry = reproduce.run_job(plan, Job("digits/bits12", "train", []))
    assert entry["status"] == "failed" and "CUDA out of memory" in entry["error"]
    assert reproduce.planned_reason(plan, "digits/bits12") == "failed: RuntimeError: CUDA out of memory"


def test_failed_runs_exit_1_with_every_row_explained(tmp_path: Path, monkeypatch) -> None:
    def training(plan):
        entry = {"status": "failed", "error": "RuntimeError: boom"}
        return {"digits/bits48": reproduce._record(plan, "digits/bits48", entry)}

    monkeypatch.setattr(reproduce, "run_training", training)
    for stage in ("run_baselines", "run_yahoo", "run_speed"):
        monkeypatch.setattr(reproduce, stage, lambda plan: {})
    assert reproduce.main(["--smoke", "--out", str(tmp_path)]) == 1
    rows = {row[0].strip("`"): row for row in results_table((tmp_path / "RESULTS.md").read_text())}
    assert all(all(cell for cell in row) for row in rows.values())
    assert rows["mnist_test_error_48"][4] == "not run: failed: RuntimeError: boom"
    assert rows["mnist_test_error_128"][4] == "not run: no results in runs/digits/bits128 yet"
    assert rows["mnist_lsh_precision_48"][4] == "not run: no results in runs/digits/baselines/lsh-pixels yet"
    assert rows["speed_hamming_over_l2"][4] == "not run: no bench/bench.json yet"
    # rebuilding the report alone runs nothing and fails nothing
    assert reproduce.main(["--smoke", "--out", str(tmp_path), "--report-only"]) == 0


# ------------------------------------------------------------------------------------------------ W&B


def test_wandb_links(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    run = tmp_path / "run"
    assert reproduce.wandb_link(run, {}) == "no W&B run"
    offline = run / "wandb" / "offline-run-20250101_000000-abc123"
    offline.mkdir(parents=True)
    assert reproduce.wandb_link(run, {}) == f"offline: `wandb sync {offline}`"
    online = run / "wandb" / "run-20250102_000000-xyz789"
    (online / "files").mkdir(parents=True)
    assert reproduce.wandb_link(run, {}) == "online run xyz789 in project deephash (URL not recorded)"
    (run / "config.yaml").write_text(
        yaml.safe_dump({"logger": {"wandb": {"entity": "lab", "project": "dh"}}})
    )
    assert reproduce.wandb_link(run, {}) == "https://wandb.ai/lab/dh/runs/xyz789"
    url = "https://wandb.example.org/team/deephash/runs/xyz789"
    (online / "files" / "output.log").write_text(f"other https://x/runs/zzz\nView run at {url}\n")
    assert reproduce.wandb_link(run, {}) == url
    assert reproduce.wandb_link(run, {"wandb_url": "https://w/r"}) == "https://w/r"


# ------------------------------------------------------------------------------------------- tiny smoke


@pytest.fixture(scope="module")
def tiny_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("reproduce")
    return out, reproduce.main([*TINY, "--out", str(out)])


def test_tiny_smoke_writes_every_stage(tiny_smoke: tuple[Path, int]) -> None:
    out, code = tiny_smoke
    assert code == 0
    for run in ("digits/bits12", "digits/bits48", "digits/baselines/lsh-pixels", "digits/baselines/lsh-f7"):
        assert json.loads((out / "runs" / run / "metrics.json").read_text())["status"] == "completed", run
    assert (out / "figures" / "digits_precision_48.png").stat().st_size > 0
    with (out / "figures" / "digits_precision_48.csv").open() as f:
        assert next(csv.reader(f)) == ["k", "ours hamming", "ours hierarchical", "lsh (pixels)", "lsh (f7)"]
    assert (out / "compare" / "digits" / "map_vs_bits.png").is_file()
    assert json.loads((out / "bench" / "bench.json").read_text())["config"]["n_database"] == 2000


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
    uniform = [p for k, p in curve if k % 10 == 0]
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
