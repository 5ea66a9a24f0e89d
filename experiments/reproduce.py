"""Regenerate the paper's results: ``python -m experiments.reproduce [--smoke] [--out DIR] ...``.

Stages, each a function writing under ``--out`` (default ``reports/reproduce``); the plan and its jobs
come from :mod:`experiments.plan` and :mod:`experiments.jobs`:

1. :func:`~experiments.preflight.preflight`: the datasets, ImageNet AlexNet weights and Yahoo folder a
   run needs exist; if not, stop at once (exit 2) saying what to put where.
2. :func:`~experiments.launch.run_training`: MNIST and CIFAR-10 at 48 and 128 bits with the paper's
   experiment configs, plus a code-length sweep, each run in ``runs/<dataset>/bits<k>``.
3. :func:`~experiments.launch.run_baselines`: LSH, PCAH, ITQ, SH at 48 bits on raw pixels and on the F7
   of our 48-bit model, in ``runs/<dataset>/baselines/<method>-<features>``.
4. :func:`~experiments.launch.run_cnnh`: the compared methods of figures 4 and 6 (LSH, SH, ITQ, BRE, MLH,
   CCA-ITQ, KSH and SDH at 12 to 48 bits, CNNH and CNNH+ at 48) under the protocol of Xia et al. (AAAI 2014),
   in ``runs/<dataset>/cnnh/<method>/bits<k>``.
5. :func:`~experiments.launch.run_methods`: the deep methods (the paper's latent layer, DPSH, HashNet, DSH,
   GreedyHash, CSQ) under one protocol, the paper's MNIST one on a CPU recipe (``experiment=mnist_methods``),
   three seeds at 48 bits and one at 12, 24 and 32, in ``runs/<dataset>/methods/<method>/bits<k>/seed<s>``.
6. :func:`~experiments.launch.run_yahoo`: the Yahoo-1M-style image folder run (``--yahoo-root``), in
   ``runs/yahoo/bits128``.
7. :func:`~experiments.launch.run_speed`: the ``deephash.bench`` retrieval timings, in ``bench/bench.json``.
8. :func:`~experiments.report.write_results`: ``RESULTS.md``, every entry of ``paper_results.yaml``
   against ours, the CNNH table, the deep methods' table and mAP-vs-bits figure, the precision figures with the baselines and the compared methods, the
   retrieval grids, the mAP-vs-bits sweep, the speed table and the runs' W&B links.

``--only STAGE ...`` runs some stages of 2 to 7 (``training``, ``baselines``, ``cnnh``, ``methods``, ``yahoo``,
``speed``), then writes ``RESULTS.md`` from whatever is on disk.

``--seeds S1 S2 ...`` (or ``--n-seeds N``: seeds 0 to N-1) runs every configuration once per seed, in ``<run>/seed<s>``, and
reports the mean ± std over the seeds.

A run whose metrics.json says completed is skipped and an interrupted training run resumes from its
``last.ckpt``, so the command can simply be re-run. ``--smoke`` runs every stage on the bundled digits on
CPU in minutes: digits stands in for MNIST and CIFAR-10, so its numbers are not comparable to the paper's.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from deephash.utils.errors import DeephashError
from deephash.utils.signals import handle_signals, interruption_status
from experiments import launch
from experiments.plan import BASELINE_BITS, build_parser, make_plan
from experiments.preflight import preflight

# a plain logger: this driver is one process (deephash.utils.get_logger needs Lightning's rank set)
log = logging.getLogger("experiments.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stages; 0 when every run completed, 1 when some failed, 2 on bad input or missing data, 130 or
    143 when Ctrl-C or SIGTERM stopped it (after the run under way wrote its checkpoint)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        from rich.logging import RichHandler

        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    plan = None
    try:
        with handle_signals():
            plan = make_plan(args, argv)
            return _run(args, plan)
    except DeephashError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:
        status = interruption_status(err)
        if status is None:
            raise
        print(interrupted_note(plan), file=sys.stderr)
        return status


def interrupted_note(plan: Any) -> str:
    """What an interrupted reproduction says: the runs that finished (``status.json``) and how to go on."""
    try:
        statuses = json.loads((plan.out / "status.json").read_text()) if plan is not None else {}
    except (OSError, ValueError):
        statuses = {}
    done = sorted(name for name, entry in statuses.items() if entry.get("status") == "completed")
    finished = f"{len(done)} runs finished ({', '.join(done)})" if done else "no run finished"
    return (
        f"interrupted: {finished}; running the same command again resumes (completed runs are skipped, an "
        "interrupted training continues from its checkpoints/last.ckpt)"
    )


def _run(args: Any, plan: Any) -> int:
    """The stages of :func:`main` under ``plan``; returns its exit status."""
    ran: dict[str, dict[str, Any]] = {}
    if not args.report_only:
        for warning in preflight(plan):
            log.warning(warning)
        plan.out.mkdir(parents=True, exist_ok=True)
        stages = [
            ("training", "training runs (" + ", ".join(plan.trained) + ")", launch.run_training),
            ("baselines", f"baselines at {BASELINE_BITS} bits", launch.run_baselines),
            ("cnnh", "the compared methods of figures 4 and 6 (CNNH protocol)", launch.run_cnnh),
            (
                "methods",
                "the deep methods under one protocol (" + (", ".join(plan.deep_methods) or "none") + ")",
                launch.run_methods,
            ),
            (
                "yahoo",
                "Yahoo-style folder run" + ("" if plan.yahoo_root else " (no --yahoo-root: left out)"),
                launch.run_yahoo,
            ),
            ("speed", "retrieval speed", launch.run_speed),
        ]
        for number, (stage, title, run) in enumerate(stages, start=2):
            if stage not in plan.stages:
                log.info("stage %d/8: %s: not in --only, skipped", number, stage)
                continue
            log.info("stage %d/8: %s", number, title)
            ran.update(run(plan))
    log.info("stage 8/8: RESULTS.md")
    from experiments.report import write_results  # matplotlib and FAISS: not before preflight answers

    path = write_results(plan)
    failed = sorted(name for name, entry in ran.items() if entry["status"] == "failed")
    print(f"results: {path}")
    if failed:
        print(f"failed runs: {', '.join(failed)} (see RESULTS.md and their run directories)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
