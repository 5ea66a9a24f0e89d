"""Unreadable images of an image folder: decode checks (parallel, cached by size and mtime) and the log
of images that failed while loading, shared by DataLoader workers and DDP ranks."""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from deephash.data.scan import default_threads, stat_all
from deephash.data.sources import PathList, load_rgb
from deephash.utils.errors import DataError
from deephash.utils.io import atomic_write_bytes
from deephash.utils.logging import get_logger

log = get_logger(__name__)


def check_image(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or None if it can. The full decode the training uses:
    truncated files fail because PIL's ``LOAD_TRUNCATED_IMAGES`` is left False."""
    try:
        load_rgb(path)
    except DataError as e:
        return error_reason(e)
    return None


def error_reason(err: BaseException) -> str:
    """The one-line cause of a failed image read (the error ``load_rgb`` wrapped)."""
    cause = err.__cause__ or err
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def check_images(
    root: str, rel: Sequence[str], cache_path: Path | None = None, threads: int | None = None
) -> dict[str, str]:
    """``{relative path: reason}`` of the images in ``rel`` that cannot be decoded, checked in parallel.

    Results are cached at ``cache_path`` with each file's size and mtime_ns; a later call re-stats every
    file and decodes only the new or changed ones.
    """
    rel = list(rel)
    with ThreadPoolExecutor(threads or default_threads()) as pool:
        sizes, mtimes, errors = stat_all(pool, root, rel)
        known = _load_checks(cache_path) if cache_path else {}
        reasons: list[str | None] = [None] * len(rel)
        todo = []
        for i, p in enumerate(rel):
            if i in errors:
                reasons[i] = errors[i]
            elif sizes[i] == 0:
                reasons[i] = "empty file (0 bytes)"
            elif p in known and known[p][:2] == (int(sizes[i]), int(mtimes[i])):
                reasons[i] = known[p][2] or None
            else:
                todo.append(i)
        checked = pool.map(lambda i: check_image(os.path.join(root, rel[i])), todo)
        for i, reason in zip(todo, checked):
            reasons[i] = reason
    if cache_path is not None and todo:
        for i, p in enumerate(rel):
            if sizes[i] >= 0:
                known[p] = (int(sizes[i]), int(mtimes[i]), reasons[i] or "")
        try:
            _save_checks(cache_path, known)
        except OSError as e:
            log.warning("could not cache image checks in %s: %s", cache_path, e)
    log.info("checked %d images (%d decoded, the rest unchanged since the last check)", len(rel), len(todo))
    return {p: r for p, r in zip(rel, reasons) if r}


def _load_checks(path: Path) -> dict[str, tuple[int, int, str]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            paths = PathList(z["blob"], z["offsets"]).tolist()
            bad = json.loads(str(z["bad"]))
            sizes, mtimes = z["sizes"].tolist(), z["mtimes"].tolist()
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable image-check cache %s: %s", path, e)
        return {}
    return {p: (s, m, bad.get(p, "")) for p, s, m in zip(paths, sizes, mtimes)}


def _save_checks(path: Path, known: dict[str, tuple[int, int, str]]) -> None:
    paths = PathList.from_strings(list(known))
    values = list(known.values())
    buffer = io.BytesIO()
    np.savez(
        buffer,
        blob=paths.blob,
        offsets=paths.offsets,
        sizes=np.array([v[0] for v in values], np.int64),
        mtimes=np.array([v[1] for v in values], np.int64),
        bad=np.array(json.dumps({p: v[2] for p, v in known.items() if v[2]})),
    )
    atomic_write_bytes(path, buffer.getvalue())


class BadImageLog:
    """Unreadable images met while loading, shared by DataLoader worker processes and DDP ranks.

    Workers cannot change the parent's state, so each process appends JSON lines to its own file in
    ``directory``. ``read`` merges them and keeps only files whose size and mtime are still those they had
    when they failed (a replaced file is no longer reported).
    """

    def __init__(self, directory: str | os.PathLike, root: str) -> None:
        self.directory = os.fspath(directory)
        self.root = root

    def record(self, rel_path: str, reason: str) -> None:
        try:
            st = os.stat(os.path.join(self.root, rel_path))
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        line = json.dumps({"path": rel_path, "reason": reason, "size": size, "mtime_ns": mtime})
        os.makedirs(self.directory, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}.jsonl"
        with open(os.path.join(self.directory, name), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def read(self) -> dict[str, str]:
        """``{relative path: reason}`` of the recorded files that are still unchanged."""
        found: dict[str, dict[str, Any]] = {}
        if not os.path.isdir(self.directory):
            return {}
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(self.directory, name), encoding="utf-8") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a killed worker
                        continue
                    found[item["path"]] = item
        still: dict[str, str] = {}
        for path, item in found.items():
            try:
                st = os.stat(os.path.join(self.root, path))
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) == (item["size"], item["mtime_ns"]):
                still[path] = item["reason"]
        return still
