"""Evaluation: retrieval metrics (pure functions) and report writers (CSV + PNG)."""

from deephash.evaluation.hamming_counts import HammingMetrics
from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
from deephash.evaluation.metrics import (
    KS,
    average_precision,
    average_precision_at_k,
    bit_balance,
    count_relevant,
    empty_ball_fraction,
    hamming_ball_precision,
    hamming_ranking,
    map_at_k,
    mean_average_precision,
    pr_curve_hamming,
    precision_at_k,
    precision_curve,
    precision_within_radius,
)
from deephash.evaluation.plots import (
    write_bit_balance,
    write_pr_curve,
    write_precision_curves,
    write_retrieval_grid,
)

__all__ = [
    "KS",
    "HammingMetrics",
    "average_precision",
    "average_precision_at_k",
    "bit_balance",
    "count_relevant",
    "empty_ball_fraction",
    "hamming_ball_precision",
    "hamming_retrieval_metrics",
    "hamming_ranking",
    "map_at_k",
    "mean_average_precision",
    "pr_curve_hamming",
    "precision_at_k",
    "precision_curve",
    "precision_within_radius",
    "write_bit_balance",
    "write_pr_curve",
    "write_precision_curves",
    "write_retrieval_grid",
]
