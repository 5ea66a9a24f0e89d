"""One writer per index directory, and what interrupted writers leave beside it.

A writer holds ``.<name>.lock`` beside the index (``deephash.utils.atomic_dir.try_lock``; a second writer
fails with one line) and works in ``.<name>.tmp-*`` and ``.<name>.staging-*`` directories beside it, which the
next writer removes if this one dies. An index set aside by a swap that died half-way (``.<name>.old-*``) is
put back by the next writer, or by a reader that finds no index there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deephash.retrieval.manifest import MANIFEST
from deephash.utils.atomic_dir import (
    holds,
    remove_path,
    restore_set_aside,
    sibling_dir,
    siblings,
    try_lock,
    unlock,
)
from deephash.utils.errors import ConfigError

# plain logging, not the rank-zero logger: only the rank that writes or opens an index gets to these
# messages, and the store works without Lightning having set the process's rank
log = logging.getLogger(__name__)


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def acquire_index_lock(path: str | os.PathLike) -> None:
    """Take the write lock of the index at ``path`` (re-entrant within a process; ``flock``, so a dead
    process's lock is released by the kernel). Another live writer -> one-line ``ConfigError``. The first
    acquisition removes what interrupted writers left (``clean_leftovers``)."""
    path = Path(path).absolute()
    lock = _lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    first = not holds(lock)
    holder = try_lock(lock)
    if holder is not None:
        raise ConfigError(
            f"index {path} is being written by another process (pid {holder}, lock {lock}); "
            "wait for it to finish or choose another index_dir"
        )
    if not first:
        return
    try:
        clean_leftovers(path)
    except BaseException:
        release_index_lock(path)
        raise


def release_index_lock(path: str | os.PathLike) -> None:
    """Give back one hold of ``acquire_index_lock``; the last one removes the lock file and releases it."""
    unlock(_lock_path(Path(path).absolute()), remove=True)


@contextmanager
def index_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the index's write lock for a whole build (encoding and saving)."""
    acquire_index_lock(path)
    try:
        yield
    finally:
        release_index_lock(path)


def check_index_target(path: str | os.PathLike) -> None:
    """Refuse to write an index over anything but an index: an existing ``path`` must be an index directory
    (``manifest.json`` in it) or an empty directory. A file, a run directory or a folder of data given as
    ``index_dir`` would otherwise be replaced, and its contents deleted, by the commit's swap."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir():
        raise ConfigError(
            f"{path} exists and is not a directory; an index is written to a new path or over an existing index"
        )
    if (path / MANIFEST).is_file() or not any(path.iterdir()):
        return
    raise ConfigError(
        f"{path} is a non-empty directory without {MANIFEST}, not an index; refusing to replace it "
        "(choose a new index_dir, or an existing index to rebuild)"
    )


def staging_dir(path: str | os.PathLike, label: str) -> Path:
    """A fresh private working directory ``.<name>.staging-<label>-XXXX`` beside the index at ``path``
    (one per writer; removed with the other leftovers if the writer dies)."""
    return sibling_dir(path, f"staging-{label}")


def leftovers(path: str | os.PathLike) -> list[Path]:
    """What interrupted writers of the index at ``path`` left beside it: temporary, set-aside and staging
    directories. (Only writers holding the lock create these names, so under the lock they are stale.)"""
    return siblings(path, ("tmp", "old", "staging"))


def legacy_staging(path: str | os.PathLike) -> list[Path]:
    """Staging directories under the shared name of earlier versions (``.<name>.encode-*``): reported, not
    removed, since a process outside the lock (an older deephash) may still be writing them."""
    return siblings(path, ("encode",))


def recover_index(path: str | os.PathLike) -> bool:
    """Put back an index a writer renamed aside (``.<name>.old-*``) and died before replacing; True if one
    was restored. Only while no writer holds the lock."""
    restored = restore_set_aside(path, MANIFEST)
    if restored is not None:
        log.warning("restored index %s from %s (a writer died while replacing it)", Path(path), restored)
    return restored is not None


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Under the index lock: restore an index left aside, then remove the other leftovers; returns them."""
    path = Path(path)
    recover_index(path)
    removed = leftovers(path)
    for p in removed:
        remove_path(p)
        log.warning("removed %s, left by an interrupted index write", p)
    for p in legacy_staging(path):
        log.warning("%s looks like the staging of an interrupted earlier index build; remove it if unused", p)
    return removed
