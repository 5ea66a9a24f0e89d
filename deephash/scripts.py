"""The console scripts of ``pyproject.toml`` (``[project.scripts]``).

Each imports its command's module only when run: those import torch, Lightning and FAISS, seconds on a
cold disk, and a Ctrl-C then would otherwise end in a KeyboardInterrupt traceback from deep inside an
import. Here it prints ``interrupted`` and exits with status 130, as a Ctrl-C during the command does
(``deephash.cli``).
"""

from __future__ import annotations

import importlib
import sys

INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by SIGINT (as deephash.cli)


def _run(module: str) -> None:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    main()


def train() -> None:
    _run("deephash.train")


def evaluate() -> None:
    _run("deephash.evaluate")


def index() -> None:
    _run("deephash.index")


def search() -> None:
    _run("deephash.search")


def compare() -> None:
    _run("deephash.compare")


def bench() -> None:
    _run("deephash.bench")


def baseline() -> None:
    _run("deephash.baseline")


def data() -> None:
    _run("deephash.data_cli")


def dashboard() -> None:
    _run("deephash.dashboard")
