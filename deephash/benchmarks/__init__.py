"""Speed benchmarks: training and encoding throughput of HashModule against a plain PyTorch loop."""

from __future__ import annotations

from typing import Any

__all__ = ["TrainBenchConfig", "add_train_arguments", "benchmark_train", "run_train_bench"]


def __getattr__(name: str) -> Any:
    # Imported lazily so ``python -m deephash.benchmarks.train_speed`` does not load the module twice.
    if name in __all__:
        from deephash.benchmarks import train_speed

        return getattr(train_speed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
