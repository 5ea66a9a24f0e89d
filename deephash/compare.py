"""Entry point: ``python -m deephash.compare`` / ``deephash-compare <multirun dir> [--out DIR] [--metric mAP]``.

Tabulates every job of a sweep (failed ones included) into compare.md and compare.csv, averages the
seeds of each setting (jobs that differ in no swept override but the seed) into groups.csv, draws
<metric>_vs_bits and precision_curves (PNG, SVG, PDF), and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deephash.cli import ArgumentParser, accepts_version, exit_on_user_error
from deephash.tracking.compare import compare_runs


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="deephash-compare", description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("multirun_dir", help="a sweep folder, e.g. multirun/train/2024-05-01_12-00-00")
    parser.add_argument(
        "--out", default=None, help="where to write the comparison (default: <multirun_dir>/compare)"
    )
    parser.add_argument(
        "--metric",
        default="mAP",
        help="metric plotted against bits: mAP, mAP@1000, precision@10, queries_per_second... (default: mAP)",
    )
    return parser


@accepts_version("deephash-compare")
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    comparison = compare_runs(args.multirun_dir, args.out, args.metric)
    out_dir = comparison.files["markdown"].parent
    print(f"{len(comparison.jobs)} jobs compared; files in {out_dir}", file=sys.stderr)
    print(comparison.markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
