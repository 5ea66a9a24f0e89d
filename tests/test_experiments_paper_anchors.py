"""The anchors of the authors' release in paper_results.yaml and how RESULTS.md renders them: the README's
10k-vs-50k mAP@1000, the analysis files' baseline curves, the corrected timing, curve means over k = 100..1000
and the protocol of every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deephash.evaluation.plots import read_precision_curves
from deephash.utils.io import atomic_write_json
from experiments import paper
from experiments.paper import curve_stats, load_paper_results, resolve_run, run_protocol
from experiments.plan import CONF_DIR
from tests.test_experiments_plan import plan_for


def _by_id() -> dict[str, dict]:
    return {e["id"]: e for e in load_paper_results()}


@pytest.mark.parametrize(("bits", "value"), [(12, 89.30), (32, 89.72), (48, 89.73)])
def test_readme_map_at_1000_entries_point_at_their_experiment(bits: int, value: float) -> None:
    entry = _by_id()[f"cifar10_10k50k_map1000_{bits}"]
    assert entry["value"] == pytest.approx(value) and entry["unit"] == "percent"
    assert entry["metric"] == "modes.hamming.mAP@1000" and "README" in entry["source"]
    assert entry["run"] == f"cifar10_10k50k/bits{bits}"
    assert (Path(CONF_DIR) / "experiment" / f"paper_cifar10_10k50k_{bits}.yaml").is_file()


def test_authors_baseline_curves_and_timing_correction() -> None:
    by_id = _by_id()
    for method, value in (("lsh", 16.2), ("sh", 19.0), ("itq", 28.0)):
        entry = by_id[f"cifar10_{method}_precision_48"]
        assert entry["value"] == pytest.approx(value) and entry["metric"] == "modes.hamming.precision@k.1000"
        assert "analysis/" in entry["source"] and "hand-crafted" in entry["note"]
    readme = by_id["speed_hamming_over_l2_readme"]
    assert readme["value"] == pytest.approx(22.6e-6 / 23e-12, rel=1e-3)  # about 982,600x
    assert readme["metric"] == by_id["speed_hamming_over_l2"]["metric"]
    assert by_id["speed_hamming_over_l2"]["value"] == pytest.approx(971.3)
    assert by_id["yahoo_alexnet_precision"]["run"] == "yahoo/baselines/itq-pretrained_f7"


def test_curve_means_cover_k_100_to_1000(tmp_path: Path) -> None:
    path = tmp_path / "precision_at_k.csv"
    ks = np.arange(1, 1201)
    path.write_text(
        "k,hamming\n" + "".join(f"{k},{1.0 if k < 100 else 0.5 if k <= 1000 else 0.0}\n" for k in ks)
    )
    assert read_precision_curves(path)["hamming"][0][0] == 1
    mean, sd = curve_stats(path, "hamming")
    assert (mean, sd) == (pytest.approx(0.5), pytest.approx(0.0))  # k < 100 and k > 1000 left out


def test_readme_protocol_rows_say_why_they_are_not_run_in_smoke(tmp_path: Path) -> None:
    smoke = plan_for("--smoke", "--out", str(tmp_path))
    assert resolve_run(smoke, "cifar10_10k50k/bits48") == (None, "CIFAR-10 only (smoke trains digits)")
    full = plan_for("--data-root", str(tmp_path), "--datasets", "mnist", "--out", str(tmp_path))
    assert resolve_run(full, "cifar10_10k50k/bits48") == (None, "cifar10 not in --datasets")
    full = plan_for("--data-root", str(tmp_path), "--out", str(tmp_path))
    assert resolve_run(full, "cifar10_10k50k/bits48") == ("cifar10_10k50k/bits48", "")
    assert (
        paper.planned_reason(full, "cifar10_10k50k/bits12") == "no results in runs/cifar10_10k50k/bits12 yet"
    )


def test_run_protocol_is_read_from_the_run(tmp_path: Path) -> None:
    plan = plan_for("--smoke", "--out", str(tmp_path))
    atomic_write_json(
        plan.runs / "yahoo" / "bits128" / "metrics.json", {"status": "completed", "protocol": "whole_set"}
    )
    assert run_protocol(plan, "yahoo/bits128") == "whole_set"
    assert run_protocol(plan, "bench") is None and run_protocol(plan, "digits/bits12") is None
