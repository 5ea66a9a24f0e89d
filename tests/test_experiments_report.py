"""The reproduction's report inputs: paper_results.yaml, the runs' W&B links, and the rows of RESULTS.md
rendered from synthetic run directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from deephash.evaluation.plots import read_precision_curves
from deephash.utils.errors import ConfigError
from experiments.paper import PAPER_RESULTS, load_paper_results
from experiments.plan import build_parser, make_plan
from experiments.report import wandb_link, write_results


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
    with pytest.raises(ConfigError, match="lacks source"):
        load_paper_results(path)


def test_wandb_links(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    run = tmp_path / "run"
    assert wandb_link(run, {}) == "no W&B run"
    offline = run / "wandb" / "offline-run-20250101_000000-abc123"
    offline.mkdir(parents=True)
    assert wandb_link(run, {}) == f"offline: `wandb sync {offline}`"
    online = run / "wandb" / "run-20250102_000000-xyz789"
    (online / "files").mkdir(parents=True)
    assert wandb_link(run, {}) == "online run xyz789 in project deephash (URL not recorded)"
    (run / "config.yaml").write_text(
        yaml.safe_dump({"logger": {"wandb": {"entity": "lab", "project": "dh"}}})
    )
    assert wandb_link(run, {}) == "https://wandb.ai/lab/dh/runs/xyz789"
    url = "https://wandb.example.org/team/deephash/runs/xyz789"
    (online / "files" / "output.log").write_text(f"other https://x/runs/zzz\nView run at {url}\n")
    assert wandb_link(run, {}) == url
    assert wandb_link(run, {"wandb_url": "https://w/r"}) == "https://w/r"


def fake_run(run_dir: Path, backbone: str | None, precision: float, test_acc: float = 0.995) -> None:
    """A completed run as the report reads it: metrics.json and a flat Hamming precision@k curve."""
    run_dir.mkdir(parents=True)
    hamming = {"mAP": precision, "precision@k": {"10": precision, "100": precision, "1000": precision}}
    metrics = {
        "status": "completed",
        "protocol": "paper",
        "test_acc": test_acc,
        "modes": {"hamming": hamming},
    }
    if backbone is not None:
        metrics["backbone"] = backbone
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    rows = "".join(f"{k},{precision}\n" for k in range(100, 1001, 100))
    (run_dir / "precision_at_k.csv").write_text("k,hamming\n" + rows)


def mnist_report(out: Path, backbone: str) -> str:
    """RESULTS.md of two seeds of a 48-bit MNIST model on ``backbone`` and ITQ on pixels, report only."""
    for seed, precision in ((0, 0.99), (1, 0.97)):
        fake_run(out / "runs" / "mnist" / "bits48" / f"seed{seed}", backbone, precision)
        fake_run(out / "runs" / "mnist" / "baselines" / "itq-pixels" / f"seed{seed}", None, 0.4)
    argv = ["--report-only", "--datasets", "mnist", "--bits", "48", "--n-seeds", "2", "--out", str(out)]
    argv += ["--methods", "itq", "--features", "pixels"]
    return write_results(make_plan(build_parser().parse_args(argv), argv)).read_text()


def test_report_labels_small_cnn_mnist_rows(tmp_path: Path) -> None:
    text = mnist_report(tmp_path, "mnistcnn")
    label = "small CNN, not the paper's AlexNet"
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    for key in ("mnist_test_error_48", "mnist_precision_48", "mnist_precision_curve_48"):
        assert f"mnist/bits48/seed* (protocol paper; {label})" in rows[key]
    assert "98.00% ± 1.41% (2 seeds)" in rows["mnist_precision_48"]  # mean ± std over the two seeds
    assert label not in rows["mnist_itq_precision_48"]  # raw pixels: no CNN involved
    assert f"**mnist: {label}.**" in text and f"### mnist, 48 bits ({label})" in text
    # figure 4: our curve (mean of the seeds) beside ITQ on the same data, the curve named as the small CNN
    curves = read_precision_curves(tmp_path / "figures" / "mnist_precision_48.csv")
    assert sorted(curves) == ["itq (pixels)", "ours, small CNN hamming"]
    np.testing.assert_allclose(curves["ours, small CNN hamming"][1], 0.98)
    np.testing.assert_allclose(curves["itq (pixels)"][1], 0.4)
    assert (tmp_path / "figures" / "mnist_precision_48.png").is_file()


def test_report_keeps_alexnet_rows_unlabelled(tmp_path: Path) -> None:
    text = mnist_report(tmp_path, "alexnet")
    assert "small CNN" not in text
    assert "| mnist/bits48/seed* (protocol paper) |" in text
    assert sorted(read_precision_curves(tmp_path / "figures" / "mnist_precision_48.csv")) == [
        "itq (pixels)",
        "ours hamming",
    ]
