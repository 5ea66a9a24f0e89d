"""Entry point: ``python -m deephash.dashboard`` / ``deephash-dashboard [--sweep-dir DIR | --group G] ...``.

Builds the W&B dashboard of a sweep (or a whole project): mAP and mAP@1000 against bits per mode with a
line per method, precision@k, training curves, and a runs table with the swept overrides. Online it saves
the workspace and prints its URL; offline it writes the workspace spec (JSON) and says how to push it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deephash.cli import ArgumentParser, accepts_version, exit_on_user_error
from deephash.evaluation.metrics import KS
from deephash.retrieval.modes import MODES
from deephash.tracking.dashboard import (
    dashboard_spec,
    read_spec,
    save_workspace,
    sweep_settings,
    write_spec,
)
from deephash.tracking.wandb import MODES as WANDB_MODES
from deephash.tracking.wandb import resolve_mode
from deephash.utils.checks import positive_int_arg
from deephash.utils.errors import ConfigError

SPEC_NAME = "wandb_dashboard.json"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="deephash-dashboard", description=__doc__.split("\n\n")[1].strip())
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--sweep-dir",
        help="a local sweep folder (multirun/<task>/<time>): its runs' group and swept overrides; run from "
        "the directory the sweep was launched from",
    )
    scope.add_argument("--group", help="a W&B group (default: every run of the project)")
    scope.add_argument("--push", metavar="SPEC", help="save a spec written offline earlier to W&B")
    parser.add_argument("--project", default="deephash", help="W&B project (default: deephash)")
    parser.add_argument("--entity", default=None, help="W&B user or team (default: your default entity)")
    parser.add_argument("--name", default=None, help="workspace name (default: deephash: <group or project>)")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), help=f"retrieval modes (default: {' '.join(MODES)})"
    )
    parser.add_argument(
        "--ks",
        nargs="+",
        type=positive_int_arg,
        default=list(KS),
        help=f"k of precision@k (default: {' '.join(map(str, KS))})",
    )
    parser.add_argument("--mode", default="auto", choices=WANDB_MODES, help="W&B mode (WANDB_MODE wins)")
    parser.add_argument(
        "--out", default=None, help=f"offline spec file (default: <sweep-dir or .>/{SPEC_NAME})"
    )
    return parser


@accepts_version("deephash-dashboard")
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    online = resolve_mode(args.mode) == "online"
    if args.push:
        spec = read_spec(args.push)
        if not online:
            raise ConfigError(
                "pushing a dashboard needs W&B online: run `wandb login` (or set WANDB_API_KEY)"
            )
        print(save_workspace(spec, args.entity))
        return 0
    group, swept = (args.group, []) if not args.sweep_dir else sweep_settings(args.sweep_dir)
    spec = dashboard_spec(
        project=args.project,
        entity=args.entity,
        group=group,
        name=args.name,
        modes=args.modes,
        ks=args.ks,
        swept=swept,
    )
    if online:
        print(save_workspace(spec, args.entity))
        return 0
    out = Path(args.out or Path(args.sweep_dir or ".") / SPEC_NAME)
    write_spec(spec, out)
    print(f"W&B is offline: wrote the dashboard spec to {out}", file=sys.stderr)
    print(f"after `wandb sync` of the runs, push it with: deephash-dashboard --push {out}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
