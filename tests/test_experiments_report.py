"""The reproduction's report inputs: paper_results.yaml and the runs' W&B links."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deephash.utils.errors import ConfigError
from experiments.paper import PAPER_RESULTS, load_paper_results
from experiments.report import wandb_link


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
