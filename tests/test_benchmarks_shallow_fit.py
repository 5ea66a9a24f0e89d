"""The shallow-fit benchmark (deephash/benchmarks/shallow_fit.py): every method timed on synthetic data and on
MNIST's cnnh labelled subset, its JSON and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash import bench
from deephash.benchmarks.shallow_fit import mnist_subset
from deephash.methods.registry import SHALLOW
from tests.fixtures_data import write_mnist


def test_quick_run_times_every_method(tmp_path: Path) -> None:
    out = tmp_path / "shallow.json"
    assert bench.main(["shallow", "--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["config"]["n"] == 300 and results["config"]["bits"] == 8
    assert set(results["fits"]) == set(SHALLOW)
    for name, fit in results["fits"].items():
        assert fit["supervised"] == SHALLOW[name].supervised
        assert fit["wall_s"] >= 0 and fit["cpu_s"] >= 0 and fit["within_target"] is True


def test_mnist_subset_is_the_cnnh_labelled_draw(tmp_path: Path) -> None:
    write_mnist(tmp_path, train_per_class=100, test_per_class=10)  # 100 queries per class, then 5 labelled
    X, y = mnist_subset(tmp_path, 50, seed=0)
    assert X.shape == (50, 784) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 5))
    out = tmp_path / "mnist.json"
    argv = ["shallow", "--mnist", str(tmp_path), "--n", "50", "--bits", "8", "--methods", "lsh", "cca_itq"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["config"]["data"] == "MNIST pixels, 5 per class" and list(results["fits"]) == [
        "lsh",
        "cca_itq",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "kmeans"], "error: unknown shallow methods ['kmeans']; expected some of: "),
        (["--n", "0"], "error: --n must be positive, got 0"),
        (
            ["--mnist", "/nonexistent", "--n", "55"],
            "error: --n must be a multiple of the 10 MNIST classes, got 55",
        ),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["shallow", "--quick", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
