"""One writer per directory, and directories replaced in one step.

Locks: ``try_lock`` takes an exclusive lock file without waiting, through ``filelock``'s ``FileLock`` (an
``flock``, which the kernel drops when its holder dies, even on kill -9, so a stale file never blocks anyone).
A hold is this process's, shared by its threads and re-entrant; the holder's pid is written into the file
so that a refused writer can say who holds it.

Atomic directories: a new version of a directory is written beside it (``sibling_dir``) and moved into
place by ``swap_into_place``, in one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (``filelock`` does
not swap directories), else through a set-aside ``.<name>.old-*`` that ``restore_set_aside`` puts back if
the process dies between the two renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock, Timeout

_HELD: dict[Path, FileLock] = {}  # lock file -> this process's hold on it (kept alive while held)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_ASIDE = "index"  # the entry a set-aside directory ``.<name>.old-*`` holds


def try_lock(path: str | os.PathLike) -> str | None:
    """Take the exclusive lock file ``path`` (created if missing) without waiting, or take it again.

    Returns None once this process holds it (one more hold, for ``unlock``), else the pid the live holder
    wrote into the file (``"unknown"`` if none). A holder may remove the file as it lets go (``unlock(path,
    remove=True)``): a lock won on a file removed meanwhile is not held, so the attempt is made again on
    the file now at ``path``.
    """
    key = Path(path).absolute()
    if key in _HELD:
        _HELD[key].acquire()
        return None
    while True:
        lock = FileLock(key, mode=0o644, thread_local=False, blocking=False, on_acquired=_write_pid)
        try:
            lock.acquire()
        except Timeout:
            if key.exists():
                return _holder(key)
            continue  # the holder removed the file between our open and our flock: lock the new one
        _HELD[key] = lock
        return None


def unlock(path: str | os.PathLike, *, remove: bool = False) -> None:
    """Give back one hold of ``try_lock``; the last one releases the lock, after removing the file with
    ``remove`` (while still locked, so that the next writer locks a fresh file). Not held: nothing."""
    key = Path(path).absolute()
    lock = _HELD.get(key)
    if lock is None:
        return
    if lock.lock_counter == 1:
        del _HELD[key]
        if remove:
            key.unlink(missing_ok=True)
    lock.release()


def holds(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock file ``path``."""
    return Path(path).absolute() in _HELD


def _write_pid(fd: int) -> None:
    """Who holds the lock, for a refused process's message (informative only: a full disk may refuse it)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


def _holder(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def sibling_dir(path: str | os.PathLike, kind: str) -> Path:
    """A fresh private directory ``.<name>.<kind>-XXXX`` beside ``path`` (its parent created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-", dir=path.parent))


def siblings(path: str | os.PathLike, kinds: Sequence[str]) -> list[Path]:
    """The entries ``.<name>.<kind>-*`` beside ``path``, for each of ``kinds``, sorted."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefixes = tuple(f".{path.name}.{kind}-" for kind in kinds)
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))


def fsync_path(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk before a rename publishes it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``. An existing ``path`` is exchanged with ``tmp`` atomically and then removed;
    without ``renameat2`` it is renamed aside to ``.<name>.old-*`` first (``restore_set_aside`` puts it back
    should the process die before the second rename)."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    if exchange(tmp, path):
        fsync_path(path.parent)
        remove_path(tmp)
        return
    old = sibling_dir(path, "old")
    os.replace(path, old / _ASIDE)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old / _ASIDE, path)
        raise
    fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def restore_set_aside(path: str | os.PathLike, marker: str) -> Path | None:
    """Put back the directory ``swap_into_place`` set aside for ``path`` when its process died before moving
    the new one in: of those holding the file ``marker`` (written last, so the directory is whole), the one
    whose marker is newest. Returns the set-aside directory it came from, or None. Only for a missing
    ``path``, and only under the lock of its writers."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return None
    candidates = [p / _ASIDE for p in siblings(path, ("old",))]
    candidates = [p for p in candidates if (p / marker).is_file()]
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: (p / marker).stat().st_mtime)
    os.replace(newest, path)
    return newest.parent


def remove_path(path: Path) -> None:
    """Remove a file, a link or a whole directory (a directory's errors ignored)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
