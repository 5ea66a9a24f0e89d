"""One markdown-table writer for the reports (``deephash-compare``, the reproduction's RESULTS.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_cell(value: Any) -> str:
    """A value on one line with pipes escaped; ``-`` for ``None`` or empty text."""
    if value is None:
        return "-"
    return " ".join(str(value).split()).replace("|", "\\|") or "-"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, one line per row, ending with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
