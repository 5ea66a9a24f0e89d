"""Faults of a saved index: corruption of every file, a process killed mid-save, concurrent writers and a
full disk. Each ends with the old or the new index intact, or a one-line ``error: ...`` and status 2."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deephash.retrieval import PoolRule, hierarchical_search, index_lock, index_writer, load_index, save_index
from deephash.retrieval.checksums import block_checksums
from deephash.retrieval.features import F7File
from deephash.retrieval.index_lock import acquire_index_lock, release_index_lock
from deephash.retrieval.index_reader import verify_index
from deephash.retrieval.index_writer import IndexWriteError
from deephash.retrieval.manifest import sha256_file
from deephash.retrieval.npy import npy_layout
from deephash.utils.errors import ConfigError, IndexFormatError
from tests.faults_helpers import BITS, BLOCK_ROWS, CLASSES, DIM, N, make_items

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_writer, "_CHECK_BLOCK_BYTES", BLOCK_ROWS * DIM * 2)


def save(path: Path, seed: int = 0, checkpoint: Path | None = None, n: int = N) -> dict:
    items = make_items(seed, n)
    meta: dict = {"dataset": "digits", "class_names": [f"c{i}" for i in range(CLASSES)]}
    if checkpoint is not None:
        meta["checkpoint"] = str(checkpoint)
    save_index(path, **items, meta=meta)
    return items


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, dict]:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    path = tmp_path / "index"
    return path, save(path, checkpoint=ckpt)


def f7_row_offset(path: Path, row: int) -> int:
    offset, (_, d), dtype = npy_layout(path / "f7.npy")
    return offset + row * d * dtype.itemsize


def flip_byte(file: Path, at: int) -> None:
    data = bytearray(file.read_bytes())
    data[at] ^= 0x10
    file.write_bytes(bytes(data))


def edit_manifest(path: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def header_padding_to_tab(file: Path) -> None:
    """A change numpy's parser ignores (a padding space turned into a tab): only the header's hash sees it."""
    data = bytearray(file.read_bytes())
    offset = npy_layout(file)[0]
    assert data[offset - 2 : offset] == b" \n"
    data[offset - 2] = ord("\t")
    file.write_bytes(bytes(data))


def nan_row(path: Path, row: int) -> None:
    with open(path / "f7.npy", "r+b") as f:
        f.seek(f7_row_offset(path, row))
        f.write(np.full(DIM, np.nan, np.float16).tobytes())


def _native(**changes) -> dict:
    """A manifest's ``meta.preprocess`` for 1-channel 8x8 images, with ``changes``."""
    spec = {"transform": "native", "channels": 1, "image_size": 8, "resize": 8, "size": [8, 8]}
    return {**spec, "mean": [0.5], "std": [0.25], **changes}


# ---- the corruption matrix: every file, verify and load ------------------------------------------------

CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "f7 flipped byte": (
        lambda p: flip_byte(p / "f7.npy", f7_row_offset(p, 200) + 7),
        "do not match their checksum",
    ),
    "f7 NaN row": (lambda p: nan_row(p, 17), "rows 0:64 do not match their checksum"),
    "f7 header byte": (
        lambda p: header_padding_to_tab(p / "f7.npy"),
        "the header of f7.npy in .* does not match",
    ),
    "f7 truncated": (
        lambda p: (p / "f7.npy").write_bytes((p / "f7.npy").read_bytes()[:-10]),
        "f7.npy is truncated or corrupt",
    ),
    "f7 checksums flipped": (
        lambda p: flip_byte(p / "f7.crc32.npy", 130),
        "f7.crc32.npy in .* does not match its sha256",
    ),
    "codes flipped byte": (
        lambda p: flip_byte(p / "codes.npy", 200),
        "codes.npy in .* does not match its sha256",
    ),
    "labels flipped byte": (
        lambda p: flip_byte(p / "labels.npy", 300),
        "labels.npy in .* does not match its sha256",
    ),
    "ids flipped byte": (lambda p: flip_byte(p / "ids.txt", 20), "ids.txt in .* does not match its sha256"),
    "codes truncated": (
        lambda p: (p / "codes.npy").write_bytes((p / "codes.npy").read_bytes()[:-1]),
        "codes.npy is truncated or corrupt",
    ),
    "sha256 key missing": (
        lambda p: edit_manifest(p, lambda m: m["files"]["labels.npy"].pop("sha256")),
        "the entry of labels.npy lacks sha256",
    ),
    "sha256 key misspelt": (
        lambda p: edit_manifest(
            p, lambda m: m["files"]["ids.txt"].update(sha265=m["files"]["ids.txt"].pop("sha256"))
        ),
        r"the entry of ids.txt lacks sha256; has unknown key\(s\) sha265 \(misspelt\?\)",
    ),
    "f7 entry missing": (
        lambda p: edit_manifest(p, lambda m: m["files"].pop("f7.crc32.npy")),
        "no entry for f7.crc32.npy: every file's checksum is required",
    ),
    "checkpoint_sha256 null": (
        lambda p: edit_manifest(p, lambda m: m.update(checkpoint_sha256=None)),
        "without a valid checkpoint_sha256",
    ),
    "checkpoint_free claimed beside a checkpoint": (
        lambda p: edit_manifest(p, lambda m: m.update(checkpoint_free=True)),
        "says checkpoint_free but records checkpoint",
    ),
    "checkpoint_free missing": (
        lambda p: edit_manifest(p, lambda m: m.pop("checkpoint_free")),
        "lacks the 'checkpoint_free' field",
    ),
    "label outside class_names": (
        lambda p: edit_manifest(p, lambda m: m["meta"].update(class_names=["c0", "c1"])),
        r"labels.npy in .* holds label [2-4] \(item \d+\) but the index names 2 classes",
    ),
    "meta not an object": (
        lambda p: edit_manifest(p, lambda m: m.update(meta=["digits"])),
        "'meta' must be an object, got \\['digits'\\]",
    ),
    "class_names not names": (
        lambda p: edit_manifest(p, lambda m: m["meta"].update(class_names=list(range(5)))),
        "meta.class_names must be a list of names",
    ),
    "preprocess without its size": (
        lambda p: edit_manifest(p, lambda m: m["meta"].update(preprocess=_native(size=None))),
        r"meta.preprocess.size must be \[height, width\], two integers >= 1, got None; rebuild the index",
    ),
    "preprocess std of zero": (
        lambda p: edit_manifest(p, lambda m: m["meta"].update(preprocess=_native(std=[0.0]))),
        r"meta.preprocess.std must be a list of 1 numbers > 0 \(one per channel\), got \[0.0\]",
    ),
    "preprocess unknown transform": (
        lambda p: edit_manifest(p, lambda m: m["meta"].update(preprocess=_native(transform="caffe"))),
        "meta.preprocess.transform must be 'imagenet' or 'native', got 'caffe'",
    ),
    "preprocess crop beyond its resize": (
        lambda p: edit_manifest(
            p, lambda m: m["meta"].update(preprocess=_native(transform="imagenet", image_size=227, resize=64))
        ),
        r"meta.preprocess.resize must be at least image_size \(227\), got 64",
    ),
    "older format": (
        lambda p: edit_manifest(p, lambda m: m.update(format_version=1)),
        "format_version 1, from an older deephash without F7 checksums; rebuild it",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_a_one_line_error(built: tuple[Path, dict], case: str) -> None:
    path, _ = built
    assert verify_index(path)["f7_blocks"] == 5
    corrupt, message = CORRUPTIONS[case]
    corrupt(path)
    with pytest.raises(IndexFormatError, match=message) as err:
        verify_index(path)
    assert "\n" not in str(err.value)
    with pytest.raises(IndexFormatError, match=message):  # and loading, then reading every row, fails too
        store = load_index(path)
        store.f7[:]


def test_a_manifest_with_the_preprocessing_an_index_writes_loads(built: tuple[Path, dict]) -> None:
    """The control of the preprocess cases above: what ``preprocess_spec`` writes passes the checks."""
    path, _ = built
    pixels = {"features": "pixels", "channels": 1, "size": [8, 8], "resample": "bilinear", "scale": 1 / 255}
    for spec in (_native(), _native(transform="imagenet", channels=3, image_size=227, resize=256), pixels):
        edit_manifest(path, lambda m, spec=spec: m["meta"].update(preprocess=spec))
        assert load_index(path).manifest["meta"]["preprocess"] == spec


def test_deephash_index_verify_cli(built: tuple[Path, dict], tmp_path: Path) -> None:
    """``deephash-index verify``: one OK line and status 0, then ``error: ...`` and status 2 (both in one
    process: the entry point's imports dominate its run time)."""
    path, _ = built
    corrupt = tmp_path / "corrupt"
    save(corrupt)
    nan_row(corrupt, 290)
    code = "import sys; from deephash.index import main; main(['verify', sys.argv[1]]); main(['verify', sys.argv[2]])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), str(corrupt)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stdout.startswith(f"OK {path}: {N} items, {BITS} bits, {DIM}-d F7; 6 files (")
    assert proc.stdout.endswith("and 5 F7 blocks match their checksums\n") and proc.stdout.count("\n") == 1
    assert proc.stderr == (
        f"error: {corrupt}/f7.npy rows 256:300 do not match their checksum: the features were modified or "
        "corrupted; rebuild the index\n"
    )


def test_a_corrupt_f7_block_stops_a_search_that_reads_it(built: tuple[Path, dict]) -> None:
    """Before, a flipped byte changed hierarchical results and exited 0; now the read of its block fails,
    while searches touching only intact blocks still work."""
    path, items = built
    flip_byte(path / "f7.npy", f7_row_offset(path, 200) + 7)
    store = load_index(path)
    pool = PoolRule(radius=0, min_pool=N, max_pool=N, pool_size=N)  # every row is in the pool
    with pytest.raises(IndexFormatError, match=r"f7.npy rows 192:256 do not match their checksum"):
        hierarchical_search(
            store.hamming_index, store.f7, items["codes_packed"][:3], items["f7"][:3], 5, pool
        )
    np.testing.assert_array_equal(store.f7[:192], items["f7"][:192].astype(np.float16))  # other blocks read
    with pytest.raises(IndexFormatError):
        load_index(path, f7_in_memory=True)


def test_non_finite_rows_are_rejected_on_read_even_with_matching_checksums(built: tuple[Path, dict]) -> None:
    """A NaN row a writer let through (its checksums computed over the NaN) is still refused."""
    path, _ = built
    nan_row(path, 70)
    sums = block_checksums(np.load(path / "f7.npy"), BLOCK_ROWS)  # computed over the NaN
    f7 = F7File(path / "f7.npy")  # no checksums: the rows are checked as they are read
    with pytest.raises(IndexFormatError, match="f7.npy row 70 holds NaN or inf"):
        f7[60:80]
    np.testing.assert_array_equal(f7[:64], f7[:64])  # the rows before it read fine
    checked = F7File(path / "f7.npy", checksums=sums, block_rows=BLOCK_ROWS)
    with pytest.raises(IndexFormatError, match="f7.npy row 70 holds NaN or inf"):
        checked[[3, 100]]


def test_checkpoint_free_index_is_explicit(tmp_path: Path) -> None:
    path = tmp_path / "baseline"
    save(path)
    manifest = load_index(path).manifest
    assert manifest["checkpoint_free"] is True and manifest["checkpoint"] is None
    with pytest.raises(IndexFormatError, match="built from no checkpoint"):
        load_index(path, expect_checkpoint_sha256="ab" * 32)
    edit_manifest(path, lambda m: m.update(checkpoint_free=False))  # the claim cannot be dropped
    with pytest.raises(IndexFormatError, match="without a valid checkpoint_sha256"):
        load_index(path)


# ---- kill -9 mid-save ---------------------------------------------------------------------------------

# each crash point: what the child patches so that it kills itself right there
CRASH_POINTS = {
    "writing rows": "npy.NpyRowWriter.write_at = die_on_call(npy.NpyRowWriter.write_at, 3)",
    "before the manifest": "index_writer._write_manifest = die_on_call(index_writer._write_manifest, 1)",
    "before the swap": "index_writer.swap_into_place = die_on_call(index_writer.swap_into_place, 1)",
    "between the renames": (
        # calls of os.replace: the manifest's atomic write, the old index aside, then the new one in place
        "atomic_dir.exchange = lambda a, b: False\nos.replace = die_on_call(os.replace, 3)"
    ),
    "after the swap": "atomic_dir.remove_path = die_on_call(atomic_dir.remove_path, 1)",
}

CHILD = """
import os, signal, sys
import numpy as np
from deephash.retrieval import index_writer, npy
from deephash.utils import atomic_dir
from tests.faults_helpers import make_items, BLOCK_ROWS, DIM

def die_on_call(fn, nth):
    calls = [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper

index_writer._CHECK_BLOCK_BYTES = BLOCK_ROWS * DIM * 2
{patch}
index_writer.save_index(sys.argv[1], **make_items(seed=1), meta={{"dataset": "digits"}})
"""


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_kill_9_mid_save_leaves_the_old_or_the_new_index(tmp_path: Path, point: str) -> None:
    path = tmp_path / "index"
    old = save(path)
    proc = run_child(CHILD.format(patch=CRASH_POINTS[point]), str(path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = load_index(path)  # recovers an index left aside by the dead writer
    new = make_items(seed=1)
    expected = new if point == "after the swap" else old
    assert store.ids == expected["ids"]
    np.testing.assert_array_equal(store.f7[:], expected["f7"].astype(np.float16))
    verify_index(path)
    # the next writer removes what the dead one left, and succeeds
    save(path, seed=2)
    assert load_index(path).ids == make_items(seed=2)["ids"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_stale_leftovers_are_removed_by_the_next_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index"
    save(path)
    for name in (".index.tmp-abc", ".index.old-def", ".index.staging-database-ghi", ".index.encode-database"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f7.npy").write_bytes(b"x" * 100)
    assert len(index_lock.leftovers(path)) == 3
    save(path, seed=3)
    # an earlier version's shared staging name is reported, not removed: its writer holds no lock
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.encode-database", "index"]
    assert sum("left by an interrupted index write" in r.message for r in caplog.records) == 3
    assert sum(".index.encode-database looks like the staging" in r.message for r in caplog.records) == 1


# ---- concurrent writers -------------------------------------------------------------------------------

HOLDER = """
import sys, time
from deephash.retrieval.index_lock import acquire_index_lock
acquire_index_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_fails_with_one_line_while_the_first_holds_the_index(tmp_path: Path) -> None:
    path = tmp_path / "index"
    old = save(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            ConfigError, match=rf"index .*index is being written by another process \(pid {holder.pid},"
        ):
            save(path, seed=1)
        assert load_index(path).ids == old["ids"]  # readers are not blocked, the old index is intact
    finally:
        holder.kill()
        holder.wait()
    save(path, seed=1)  # a dead holder's lock is gone with it
    assert load_index(path).ids == make_items(seed=1)["ids"]


WRITER = """
import sys
from deephash.cli import exit_on_user_error
from deephash.retrieval import index_writer
from tests.faults_helpers import make_items

@exit_on_user_error
def main():
    index_writer.save_index(sys.argv[1], **make_items(seed=int(sys.argv[2]), n=50_000), meta={"dataset": "digits"})

main()
"""


def test_concurrent_saves_on_one_path_never_mix(tmp_path: Path) -> None:
    path = tmp_path / "index"
    save(path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(seed)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (5, 6)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for status, err in results:
        assert status in (0, 2), err
        if status == 2:  # the loser says why, in one line
            assert err.strip().splitlines() == [err.strip()] and "being written by another process" in err
    assert any(status == 0 for status, _ in results)
    store = verify_index(path)
    ids = load_index(path).ids
    assert store["count"] == 50_000 and ids[0] in ("item-5-0", "item-6-0")
    assert all(i.startswith(ids[0][:7]) for i in ids[::10_000])  # one writer's items, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


# ---- a full disk ----------------------------------------------------------------------------------------


def enospc_after(calls: int, real: Callable) -> Callable:
    count = [0]

    def write(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    return write


@pytest.mark.parametrize("where", ["pwrite", "manifest"])
def test_disk_full_is_one_line_and_leaves_nothing(
    built: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path, old = built
    before = sorted(p.name for p in path.parent.iterdir())
    if where == "pwrite":
        monkeypatch.setattr(os, "pwrite", enospc_after(2, os.pwrite))
    else:
        monkeypatch.setattr(index_writer, "_write_manifest", enospc_after(0, index_writer._write_manifest))
    with pytest.raises(IndexWriteError, match=r"cannot write index .*index: No space left on device") as err:
        save(path, seed=1)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == before  # no temporary files or lock left
    assert load_index(path).ids == old["ids"]
    verify_index(path)


FULL_DISK = """
import errno, os, sys
from deephash.cli import exit_on_user_error
from deephash.retrieval import index_writer
from tests.faults_helpers import make_items

def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

os.pwrite = full
exit_on_user_error(lambda: index_writer.save_index(sys.argv[1], **make_items(), meta={"dataset": "digits"}))()
"""


def test_disk_full_in_a_process_exits_2_with_one_line(built: tuple[Path, dict]) -> None:
    path, old = built
    proc = run_child(FULL_DISK, str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: cannot write index {path}: No space left on device")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["index", "model.ckpt"]
    assert load_index(path).ids == old["ids"]


def test_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    path = tmp_path / "index"
    acquire_index_lock(path)
    acquire_index_lock(path)  # e.g. a build holding it while its writer takes it again
    release_index_lock(path)
    assert (tmp_path / ".index.lock").exists()
    release_index_lock(path)
    assert not (tmp_path / ".index.lock").exists()
    save(path)
    assert sha256_file(path / "codes.npy") == load_index(path).manifest["files"]["codes.npy"]["sha256"]


def test_save_refuses_a_file_or_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    """Only an existing index or an empty directory may be replaced; nothing else is deleted."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.png").write_bytes(b"png")
    file = tmp_path / "file"
    file.write_text("x")
    for target in (data, file):
        with pytest.raises(ConfigError, match="not an index|not a directory"):
            save(target)
    assert (data / "image.png").read_bytes() == b"png" and file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file"]  # no lock or staging left
    empty = tmp_path / "empty"
    empty.mkdir()
    save(empty)
    items = save(empty, seed=1)  # an existing index is rebuilt in place
    assert np.array_equal(load_index(empty).codes, items["codes_packed"])


def test_a_reader_meeting_a_swap_reads_the_new_version_not_corruption(tmp_path, monkeypatch) -> None:
    """``deephash-index build`` swaps a new version in while a reader holds the old manifest: the reader's
    sha256 check of codes.npy fails, but the directory is another one now, so it reads that version whole.
    The same mismatch in a directory nobody swapped stays "modified or corrupted"."""
    from deephash.retrieval import index_reader
    from deephash.utils.atomic_dir import swap_into_place

    path, newer = tmp_path / "index", tmp_path / "newer"
    save(path, seed=0)
    new_items = save(newer, seed=1)
    read = index_reader.read_manifest
    swaps = []

    def read_then_swap(where: Path) -> dict:
        manifest = read(where)
        if not swaps:  # the writer swaps right after this reader read the old manifest
            swaps.append(swap_into_place(newer, path))
        return manifest

    monkeypatch.setattr(index_reader, "read_manifest", read_then_swap)
    store = load_index(path)
    assert len(swaps) == 1 and np.array_equal(store.codes, new_items["codes_packed"])
    monkeypatch.setattr(index_reader, "read_manifest", read)
    codes = path / "codes.npy"
    data = bytearray(codes.read_bytes())
    data[-1] ^= 0xFF
    codes.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="codes.npy .* was modified or corrupted"):
        load_index(path)
