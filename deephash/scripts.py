"""The console scripts of ``pyproject.toml`` (``[project.scripts]``).

Each imports its command's module only when run: those import torch, Lightning and FAISS, seconds on a
cold disk, and a Ctrl-C then would otherwise end in a KeyboardInterrupt traceback from deep inside an
import. Here it prints ``interrupted`` and exits with status 130, as a Ctrl-C during the command does
(``deephash.cli``).
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

from deephash.cli import INTERRUPTED_STATUS


def _run(module: str) -> None:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    main()


# script function -> command module (pyproject.toml names the functions)
train = partial(_run, "deephash.train")
evaluate = partial(_run, "deephash.evaluate")
index = partial(_run, "deephash.index")
search = partial(_run, "deephash.search")
compare = partial(_run, "deephash.compare")
bench = partial(_run, "deephash.bench")
baseline = partial(_run, "deephash.baseline")
data = partial(_run, "deephash.data_cli")
dashboard = partial(_run, "deephash.dashboard")
