"""File lists of image folders and list files, built in parallel and cached.

A ``root/<class>/<image>`` tree is listed with one ``os.scandir`` walk per class folder and its files are
stat-ed in chunks, all on a thread pool (directory reads and stats are I/O bound and release the GIL).
The list is cached in ``cache_dir`` with the ``mtime_ns`` of every folder it read below the root (and the
size and mtime of a list file). Adding, removing or renaming a file changes its folder's mtime, so one
stat per folder, plus one listing of the root's class folders, tells whether the cached list still holds
(the root's own mtime is not used: the default cache folder is created inside it).
Zero-byte files are left out at scan time (their size comes with the stat) and reported as bad images
(the checks for unreadable images are in ``deephash.data.bad_images``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deephash.data.sources import PathList
from deephash.utils.errors import ConfigError, DataError
from deephash.utils.io import atomic_write_bytes
from deephash.utils.logging import get_logger

log = get_logger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CACHE_VERSION = 2  # 2: folder links out of a class folder are no longer followed
# a directory modified less than this before the scan started may change again within the same mtime
# tick without its mtime moving (coarse or 1 s filesystem clocks): it is stored as "changed" (-1) and
# the next load rescans, the way git treats racily clean index entries
RACY_NS = 1_000_000_000
STAT_CHUNK = 2048
_LABEL = re.compile(r"\d+")


def default_threads() -> int:
    return min(32, 4 * (os.cpu_count() or 1))


@dataclass
class FileList:
    """Images of one tree or list file, in a fixed order.

    paths: n relative paths; labels, sizes (bytes), mtimes (ns): (n,) int64; classes: the class folder
    names (empty for a list file); dropped: relative path -> why it was left out (zero bytes, cannot stat);
    dirs / dir_mtimes (len(dirs),) int64: the folders read (relative to root) and their mtime_ns
    (-1: changed while scanning); list_stat: ``[size, mtime_ns]`` of the list file.
    """

    paths: PathList
    labels: np.ndarray
    sizes: np.ndarray
    mtimes: np.ndarray
    classes: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    dir_mtimes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    list_stat: list[int] | None = None


# ---- scanning ---------------------------------------------------------------------------------------


def scan_tree(root: str, threads: int | None = None) -> FileList:
    """The images of a ``root/<class>/<image>`` tree: classes are the sorted non-hidden subfolders,
    images are found recursively (hidden files and folders skipped, extensions case-insensitive), ordered
    by folder then name like ``torchvision.datasets.ImageFolder``."""
    if not os.path.isdir(root):
        raise DataError(f"folder dataset root {root} does not exist or is not a directory")
    start = time.time_ns()
    classes = list_classes(root)
    if len(classes) < 2:
        plural = "class" if len(classes) == 1 else "classes"
        raise DataError(
            f"folder dataset at {root} has {len(classes)} {plural}; expected at least 2 class subfolders"
        )
    check_utf8_names(root, classes, "class folder names")
    check_distinct_classes(root, classes)
    with ThreadPoolExecutor(threads or default_threads()) as pool:
        walks = list(pool.map(lambda c: _walk_class(root, c), classes))
        dirs, dir_mtimes, rel, labels = [], [], [], []
        outside = [link for _, _, links in walks for link in links]
        if outside:
            log.warning(
                "%d folder link(s) under %s lead out of their class folder and were not followed, first: %s",
                len(outside),
                root,
                outside[0],
            )
        for label, (walk_dirs, files, _) in enumerate(walks):
            dirs += [d for d, _ in walk_dirs]
            dir_mtimes += [m for _, m in walk_dirs]
            rel += files
            labels += [label] * len(files)
        check_utf8_names(root, rel, "file names")
        sizes, mtimes, errors = stat_all(pool, root, rel)
    files = _drop_unusable(rel, np.array(labels, np.int64), sizes, mtimes, errors)
    counts = np.bincount(files.labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"class folder {os.path.join(root, empty[0])} has no images{more}; "
            f"expected files ending in {', '.join(IMG_EXTENSIONS)}"
        )
    files.classes = classes
    files.dirs, files.dir_mtimes = dirs, _racy(np.array(dir_mtimes, np.int64), start)
    return files


def check_utf8_names(root: str | os.PathLike, names: Sequence[str], what: str) -> None:
    """DataError naming the first of ``names`` (relative to ``root``) that is not UTF-8 (a Latin-1 name from an
    old camera or archive reaches Python as a string with surrogates), before any image is read: every record
    of a run (lists, indexes, class names) is UTF-8."""
    bad = [name for name in names if not _utf8(name)]
    if bad:
        raise DataError(
            f"{len(bad)} {what} under {root} are not UTF-8, first: {os.fsencode(bad[0])!r}; rename them to UTF-8 "
            f"(for Latin-1 names: convmv -f latin1 -t utf8 -r --notest {root})"
        )


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_classes(root: str) -> list[str]:
    """The sorted non-hidden subfolders of ``root``."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def check_distinct_classes(root: str, classes: list[str]) -> None:
    """DataError if two class folders are one directory, or one lies inside another (a linked class folder):
    its images would be listed under two labels."""
    real = {c: os.path.realpath(os.path.join(root, c)) for c in classes}
    owner: dict[str, str] = {}
    for c in classes:
        if real[c] in owner:
            raise DataError(
                f"class folders {owner[real[c]]!r} and {c!r} under {root} are the same directory "
                f"({real[c]}); its images would get two labels; remove one of them"
            )
        owner[real[c]] = c
    for c in classes:
        parent = os.path.dirname(real[c])
        while parent != os.path.dirname(parent):
            if parent in owner:
                raise DataError(
                    f"class folder {c!r} under {root} is inside class folder {owner[parent]!r} "
                    f"({real[c]}); its images would get two labels; move it out or remove the link"
                )
            parent = os.path.dirname(parent)


def _walk_class(root: str, cls: str) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``([(directory, mtime_ns)], image paths, links not followed)`` under ``root/cls``, relative to root.

    Folder links are followed only while they stay inside the class folder: a link out of it (``loop -> ..``)
    would list other classes' images under this class, so it is skipped and reported. Each directory is
    walked once, so a link to a folder already listed (or a cycle inside the class) adds nothing."""
    found: dict[str, list[str]] = {}
    dirs: list[tuple[str, int]] = []
    outside: list[str] = []
    base = os.path.realpath(os.path.join(root, cls))
    seen: set[tuple[int, int]] = set()  # (device, inode): a link back up the tree is walked once
    stack = [cls]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel)
        st = os.stat(full)  # before listing: a change during the listing shows next time
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.append((rel, st.st_mtime_ns))
        names = []
        with os.scandir(full) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    if e.is_symlink() and not _inside(os.path.realpath(e.path), base):
                        outside.append(f"{rel}/{e.name}")
                        continue
                    stack.append(f"{rel}/{e.name}")
                elif e.name.lower().endswith(IMG_EXTENSIONS):
                    names.append(e.name)
        found[rel] = sorted(names)
    dirs.sort()
    return dirs, [f"{d}/{name}" for d, _ in dirs for name in found[d]], sorted(outside)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def stat_all(
    pool: ThreadPoolExecutor, root: str, rel: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """``(sizes, mtimes_ns, {i: error})`` of ``root/rel[i]`` (size -1 where stat fails or not a file)."""
    sizes = np.full(len(rel), -1, np.int64)
    mtimes = np.full(len(rel), -1, np.int64)
    errors: dict[int, str] = {}

    def chunk(lo: int) -> None:
        for i in range(lo, min(lo + STAT_CHUNK, len(rel))):
            try:
                st = os.stat(os.path.join(root, rel[i]))
            except OSError as e:
                errors[i] = f"cannot stat: {e.strerror or e}"
                continue
            if not stat.S_ISREG(st.st_mode):
                errors[i] = "not a regular file"
                continue
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns

    list(pool.map(chunk, range(0, len(rel), STAT_CHUNK)))
    return sizes, mtimes, errors


def _drop_unusable(
    rel: list[str], labels: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray, errors: dict[int, str]
) -> FileList:
    """Leave out the files that are empty or could not be stat-ed."""
    keep = sizes > 0
    dropped = {rel[i]: errors.get(i, "empty file (0 bytes)") for i in np.flatnonzero(~keep)}
    idx = np.flatnonzero(keep)
    paths = PathList.from_strings(rel)
    if len(idx) < len(rel):
        paths = paths.take(idx)
    return FileList(paths, labels[idx], sizes[idx], mtimes[idx], dropped=dropped)


def _racy(mtimes: np.ndarray, start_ns: int) -> np.ndarray:
    return np.where(mtimes >= start_ns - RACY_NS, -1, mtimes)


def parse_list_file(path: str, allow_outside_root: bool = False) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels (n,) int64)`` from ``relative/path label`` lines (blank and # lines skipped,
    a UTF-8 byte order mark ignored). A path listed twice, or one outside the root (absolute, or climbing out
    with ``..``) unless ``allow_outside_root``, is a DataError naming the line."""
    paths: list[str] = []
    labels: list[int] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)  # the path may contain spaces, the label is the last field
            if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
                raise DataError(
                    f"{path}, line {lineno}: expected 'relative/path label' with an integer label >= 0, got {line!r}"
                )
            rel = parts[0]
            if not allow_outside_root and (os.path.isabs(rel) or os.path.normpath(rel).startswith("..")):
                raise DataError(
                    f"{path}, line {lineno}: {rel} is outside the dataset root; list paths relative to "
                    f"data.root, or set data.allow_outside_root=true"
                )
            key = os.path.normpath(rel)
            if key in first_line:
                raise DataError(
                    f"{path}, lines {first_line[key]} and {lineno} both list {rel}; list each image once"
                )
            first_line[key] = lineno
            paths.append(rel)
            labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"list file {path} lists no images")
    return paths, np.array(labels, dtype=np.int64)


def scan_list_file(
    list_path: str, root: str, threads: int | None = None, allow_outside_root: bool = False
) -> FileList:
    """The images a list file names (paths relative to ``root``); DataError if any is missing (see
    :func:`parse_list_file` for the paths refused)."""
    start = time.time_ns()
    st = os.stat(list_path)
    rel, labels = parse_list_file(list_path, allow_outside_root)
    with ThreadPoolExecutor(threads or default_threads()) as pool:
        sizes, mtimes, errors = stat_all(pool, root, rel)
        missing = [rel[i] for i in sorted(errors)]
        if missing:
            raise DataError(
                f"{list_path}: {len(missing)} listed file(s) not found under {root}, first: {missing[0]}"
            )
        dirs = sorted({os.path.dirname(p) for p in rel})
        dir_mtimes = list(pool.map(lambda d: os.stat(os.path.join(root, d)).st_mtime_ns, dirs))
    files = _drop_unusable(rel, labels, sizes, mtimes, {})
    files.dirs, files.dir_mtimes = dirs, _racy(np.array(dir_mtimes, np.int64), start)
    files.list_stat = [st.st_size, int(_racy(np.array([st.st_mtime_ns]), start)[0])]
    return files


# ---- the cache ----------------------------------------------------------------------------------------


def resolve_cache_dir(root: str, cache_dir: str | None = None) -> Path:
    """``cache_dir`` if given, else ``<root>/.deephash-cache`` if writable, else ``~/.cache/deephash``."""
    if cache_dir:
        path = Path(cache_dir).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"data.cache_dir {cache_dir} cannot be created: {e.strerror or e}") from None
        if not os.access(path, os.W_OK):
            raise ConfigError(f"data.cache_dir {cache_dir} is not writable; expected a writable directory")
        return path
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deephash"
    for candidate in (Path(root) / ".deephash-cache", user_cache):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise ConfigError(
        f"no writable cache directory (tried {root}/.deephash-cache and {user_cache}); set data.cache_dir"
    )


def cache_key(root: str, list_file: str | None) -> str:
    """A short name for the file list of ``root`` (or of ``list_file`` under root)."""
    spec = f"{os.path.realpath(root)}\0{os.path.realpath(list_file) if list_file else ''}"
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]


def cached_file_list(
    root: str,
    list_file: str | None,
    cache_dir: Path,
    threads: int | None = None,
    allow_outside_root: bool = False,
) -> FileList:
    """The file list of ``root`` (or of ``list_file``), from ``cache_dir`` while nothing changed, else scanned.
    ``allow_outside_root``: a list file may name files outside ``root`` (cached apart from the strict list)."""
    outside = "-outside" if list_file and allow_outside_root else ""
    cache_path = Path(cache_dir) / f"files-{cache_key(root, list_file)}{outside}.npz"
    t0 = time.perf_counter()
    files = load_file_list(cache_path)
    if files is not None and is_unchanged(files, root, list_file, threads):
        log.info(
            "file list of %s reused from %s: %d images (%.2f s)",
            list_file or root,
            cache_path,
            len(files.paths),
            time.perf_counter() - t0,
        )
        return files
    t0 = time.perf_counter()
    files = (
        scan_list_file(list_file, root, threads, allow_outside_root)
        if list_file
        else scan_tree(root, threads)
    )
    n_classes = len(files.classes) or len(np.unique(files.labels))
    log.info(
        "scanned %s in %.2f s: %d images in %d classes (%d left out)",
        list_file or root,
        time.perf_counter() - t0,
        len(files.paths),
        n_classes,
        len(files.dropped),
    )
    try:
        save_file_list(cache_path, files)
    except OSError as e:
        log.warning("could not cache the file list in %s: %s", cache_path, e)
    return files


def is_unchanged(files: FileList, root: str, list_file: str | None, threads: int | None = None) -> bool:
    """True when every folder (and the list file) still has the mtime stored in ``files`` and, for a tree,
    the root still holds the same class folders."""
    if np.any(files.dir_mtimes < 0) or (list_file and (files.list_stat is None or files.list_stat[1] < 0)):
        return False
    if not list_file:
        try:
            if list_classes(root) != files.classes:
                return False
        except OSError:
            return False
    else:
        try:
            st = os.stat(list_file)
        except OSError:
            return False
        if [st.st_size, st.st_mtime_ns] != list(files.list_stat or []):
            return False

    def mtime(d: str) -> int:
        try:
            return os.stat(os.path.join(root, d)).st_mtime_ns
        except OSError:
            return -2

    if len(files.dirs) > 64:
        with ThreadPoolExecutor(threads or default_threads()) as pool:
            now = list(pool.map(mtime, files.dirs))
    else:
        now = [mtime(d) for d in files.dirs]
    return bool(np.array_equal(np.array(now, np.int64), files.dir_mtimes))


def save_file_list(path: Path, files: FileList) -> None:
    dirs = PathList.from_strings(files.dirs)
    meta = {
        "version": CACHE_VERSION,
        "classes": files.classes,
        "dropped": files.dropped,
        "list_stat": files.list_stat,
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.array(json.dumps(meta)),
        blob=files.paths.blob,
        offsets=files.paths.offsets,
        labels=files.labels,
        sizes=files.sizes,
        mtimes=files.mtimes,
        dir_blob=dirs.blob,
        dir_offsets=dirs.offsets,
        dir_mtimes=files.dir_mtimes,
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_file_list(path: Path) -> FileList | None:
    """The cached list at ``path``, or None if there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION:
                return None
            return FileList(
                paths=PathList(z["blob"], z["offsets"]),
                labels=z["labels"],
                sizes=z["sizes"],
                mtimes=z["mtimes"],
                classes=list(meta["classes"]),
                dropped=dict(meta["dropped"]),
                dirs=PathList(z["dir_blob"], z["dir_offsets"]).tolist(),
                dir_mtimes=z["dir_mtimes"],
                list_stat=meta["list_stat"],
            )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable file list cache %s: %s", path, e)
        return None
