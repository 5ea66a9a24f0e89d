"""``deephash-bench <name> [options]``: run one benchmark of :mod:`deephash.benchmarks`.

Each name maps to a module imported only when asked for (``train`` loads torch and Lightning); its
``main(argv)`` parses the options and returns the exit status. ``retrieval`` runs when no name is given.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from deephash.cli import accepts_version, exit_on_user_error
from deephash.utils.errors import ConfigError

COMMANDS: dict[str, str] = {
    "retrieval": "deephash.benchmarks.retrieval",
    "memory": "deephash.benchmarks.memory",
    "sublinear": "deephash.benchmarks.sublinear",
    "train": "deephash.benchmarks.train_speed",
    "scan": "deephash.benchmarks.scan",
    "eval": "deephash.benchmarks.evaluation",
    "f7": "deephash.benchmarks.f7_precision",
    "decode": "deephash.benchmarks.decode",
    "shallow": "deephash.benchmarks.shallow_fit",
    "codecs": "deephash.benchmarks.codecs",
}
DEFAULT = "retrieval"
USAGE = (
    f"usage: deephash-bench [{{{','.join(COMMANDS)}}}] [options]\n\n"
    f"Benchmarks ({DEFAULT} runs when no name is given); `deephash-bench <name> --help` lists the options.\n"
    + "".join(f"  {name:<10} {module}\n" for name, module in COMMANDS.items())
)


@accepts_version("deephash-bench")
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the named benchmark's ``main``; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    if not argv or argv[0].startswith("-"):
        argv = [DEFAULT, *argv]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise ConfigError(f"unknown benchmark {name!r}; expected one of: {', '.join(COMMANDS)}")
    return importlib.import_module(COMMANDS[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
