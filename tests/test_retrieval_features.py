"""F7 on disk without memory maps: the row reader and writer against numpy, searches through them against
in-RAM features, and the encode writer's row semantics."""

from __future__ import annotations

import os
import pickle
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deephash.retrieval import (
    HammingIndex,
    IndexWriter,
    PoolRule,
    euclidean_search,
    hierarchical_search,
    index_writer,
    load_index,
    save_index,
)
from deephash.retrieval import features as features_mod
from deephash.retrieval.checksums import block_checksums
from deephash.retrieval.codes import pack_codes
from deephash.retrieval.encode import _RowWriter
from deephash.retrieval.features import F7File
from deephash.retrieval.npy import NpyRowWriter, create_npy, npy_layout
from deephash.retrieval.pages import release_pages, widen
from deephash.utils.errors import ConfigError, IndexFormatError


@pytest.fixture
def f7_file(tmp_path: Path) -> tuple[np.ndarray, F7File]:
    arr = np.random.default_rng(0).standard_normal((200, 12)).astype(np.float16)
    np.save(tmp_path / "f7.npy", arr)
    with F7File(tmp_path / "f7.npy") as f:
        yield arr, f


KEYS = [
    5,
    -1,
    np.int64(7),
    slice(None),
    slice(10, 50),
    slice(50, 10),
    slice(-30, None),
    slice(3, 190, 7),
    slice(None, None, -4),
    np.array([5, 3, 3, 199, 0, -1]),
    [9, 8, 7],
    [],
    np.array([], np.int64),
    np.array([[1, 2], [3, 3]]),
    np.arange(200) % 3 == 0,
    np.zeros(200, bool),
    (np.array([4, 2]), slice(1, 5)),
    (7, 3),
    (slice(None), [0, 11]),
    Ellipsis,
]


@pytest.mark.parametrize("key", KEYS, ids=[repr(k)[:40] for k in KEYS])
def test_f7file_indexes_like_an_ndarray(f7_file, key, monkeypatch: pytest.MonkeyPatch) -> None:
    arr, f = f7_file
    monkeypatch.setattr(features_mod, "_BLOCK_BYTES", 100)  # several staging blocks per converting read
    want = arr[key]
    got = f[key]
    assert got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    got32 = f.read(key, np.float32)
    assert got32.dtype == np.float32
    np.testing.assert_array_equal(got32, want.astype(np.float32))
    # into a caller's buffer (left over from an earlier block): filled in full and returned
    for dtype in (np.float32, np.float16):
        for buffer in (np.full(want.shape, 7.0, dtype), np.full(want.shape, 7.0, dtype, order="F")):
            assert f.read(key, dtype, out=buffer) is buffer
            np.testing.assert_array_equal(buffer, want.astype(dtype))


def test_f7file_read_into_a_buffer_checks_it(f7_file) -> None:
    arr, f = f7_file
    with pytest.raises(ValueError, match=r"out has shape \(5, 12\), but the rows read have shape \(4, 12\)"):
        f.read(slice(0, 4), out=np.empty((5, 12), np.float16))
    with pytest.raises(ValueError, match="out has dtype float16, but float32 was asked for"):
        f.read(slice(0, 4), np.float32, out=np.empty((4, 12), np.float16))
    out = np.empty((4, 12), np.float16)
    np.testing.assert_array_equal(f.read([3, 1, 1, 0], out=out), arr[[3, 1, 1, 0]])


def test_widen_converts_every_float16_exactly_from_read_only_and_strided_sources(tmp_path: Path) -> None:
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)  # subnormals, inf, NaN
    want = every.astype(np.float32)
    out = np.full(every.shape, 3.0, np.float32)
    assert widen(every, out) is out
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(out), nan)  # NaN stays NaN (torch quiets signalling ones)
    # the rest bit for bit
    np.testing.assert_array_equal(out.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    np.save(tmp_path / "h.npy", every)
    mapped = np.load(tmp_path / "h.npy", mmap_mode="r")  # read-only: no torch warning, no copy needed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        widen(mapped[::3, 1::2], out[::3, 1::2])
    np.testing.assert_array_equal(out[::3, 1::2], want[::3, 1::2])
    doubles = np.linspace(-2, 2, 12).reshape(3, 4)  # other dtypes go through numpy
    np.testing.assert_array_equal(widen(doubles, np.empty((3, 4), np.float32)), doubles.astype(np.float32))


def test_f7file_array_protocol_and_errors(f7_file, tmp_path: Path) -> None:
    arr, f = f7_file
    assert f.shape == (200, 12) and len(f) == 200 and f.ndim == 2 and f.dtype == np.float16
    assert f.nbytes == arr.nbytes and f.size == arr.size
    np.testing.assert_array_equal(np.asarray(f), arr)
    np.testing.assert_array_equal(np.asarray(f, np.float32), arr.astype(np.float32))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(f))[[3, 1]], arr[[3, 1]])
    for bad in (200, -201, np.array([0, 200]), [-201]):
        with pytest.raises(IndexError, match="out of bounds"):
            f[bad]
    with pytest.raises(IndexError, match="integers, slices or a bool mask"):
        f[np.array([0.5])]
    with pytest.raises(IndexError, match=r"boolean mask must have shape \(200,\)"):
        f[np.ones(3, bool)]
    with pytest.raises(IndexError, match="too many indices"):
        f[1, 2, 3]
    np.save(tmp_path / "vector.npy", np.zeros(5, np.float16))
    with pytest.raises(IndexFormatError, match="1-d array"):
        F7File(tmp_path / "vector.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(IndexFormatError, match="not a readable .npy"):
        F7File(tmp_path / "junk.npy")
    data = (tmp_path / "f7.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-24])
    with pytest.raises(IndexFormatError, match="truncated"):
        F7File(tmp_path / "short.npy")
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f[0]


def test_row_writer_matches_ndarray_assignment(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    offset = create_npy(tmp_path / "a.npy", (50, 3), np.int32)
    assert offset % 64 == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.zeros((50, 3), np.int32))
    want = np.zeros((50, 3), np.int32)
    first, second = NpyRowWriter(tmp_path / "a.npy"), NpyRowWriter(tmp_path / "a.npy")  # two "ranks"
    for writer in (first, second, first, second):
        rows = rng.integers(0, 50, 17)  # unsorted, with repeats: the last value of a row wins
        values = rng.integers(-9, 9, (17, 3)).astype(np.int32)
        writer.write_rows(rows, values)
        want[rows] = values
    first.write_at(47, np.full((3, 3), 5, np.int32))
    want[47:] = 5
    first.write_rows(np.array([], np.int64), np.zeros((0, 3), np.int32))
    first.close()
    second.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want)
    create_npy(tmp_path / "flags.npy", (10,), np.bool_)
    with NpyRowWriter(tmp_path / "flags.npy") as flags:
        flags.write_rows(np.array([9, 2, 2]), np.ones(3, bool))
        with pytest.raises(IndexError, match="rows outside"):
            flags.write_rows(np.array([10]), np.ones(1, bool))
        with pytest.raises(IndexError, match="outside"):
            flags.write_at(8, np.ones(3, bool))
        with pytest.raises(ValueError, match="rows of"):
            flags.write_at(0, np.ones((2, 2), bool))
    assert np.flatnonzero(np.load(tmp_path / "flags.npy")).tolist() == [2, 9]


def _rss_file_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def test_release_pages_unmaps_a_memmap_but_keeps_its_data(tmp_path: Path) -> None:
    arr = np.arange(8 << 20, dtype=np.float32).reshape(-1, 1024)  # 32 MB
    np.save(tmp_path / "big.npy", arr)
    mm = np.load(tmp_path / "big.npy", mmap_mode="r")
    before = _rss_file_kb()
    if before is None:
        pytest.skip("needs /proc/self/status")
    assert float(mm.sum(dtype=np.float64)) == float(arr.sum(dtype=np.float64))
    mapped = _rss_file_kb()
    release_pages(mm[10:20])  # a view releases the whole mapping
    released = _rss_file_kb()
    assert mapped - before > 16 << 10 and mapped - released > 16 << 10
    np.testing.assert_array_equal(mm[5], arr[5])  # faults back in from the file
    cow = np.load(tmp_path / "big.npy", mmap_mode="c")
    cow[0, 0] = -1.0
    release_pages(cow)  # skipped: a private page would be lost
    assert cow[0, 0] == -1.0
    release_pages(arr)  # plain arrays are left alone


# --------------------------------------------------------------- searches through the reader


@pytest.fixture
def search_data(tmp_path: Path):
    rng = np.random.default_rng(2)
    centres = rng.random((6, 24)) < 0.5
    db_bits = centres[rng.integers(0, 6, 1500)]
    db_bits[rng.random(db_bits.shape) < 0.05] ^= True
    q_bits = db_bits[rng.integers(0, 1500, 30)].copy()
    q_bits[rng.random(q_bits.shape) < 0.05] ^= True
    db_f7 = rng.standard_normal((1500, 40)).astype(np.float16)
    db_f7[700] = db_f7[3]  # an exact duplicate: ties go to the lower index
    q_f7 = rng.standard_normal((30, 40)).astype(np.float32)
    q_f7[0] = db_f7[3]
    np.save(tmp_path / "f7.npy", db_f7)
    return pack_codes(db_bits), pack_codes(q_bits), db_f7, q_f7, tmp_path / "f7.npy"


@pytest.mark.parametrize("pools", [dict(radius=2, min_pool=5, max_pool=400, pool_size=60), dict(radius=0)])
def test_hierarchical_through_the_reader_equals_in_ram(search_data, pools, monkeypatch) -> None:
    db_codes, q_codes, db_f7, q_f7, path = search_data
    monkeypatch.setattr(features_mod, "_BLOCK_BYTES", 1000)
    index = HammingIndex(db_codes, 24)
    ram = hierarchical_search(index, db_f7, q_codes, q_f7, 25, PoolRule(**pools))
    with F7File(path) as f:
        on_disk = hierarchical_search(index, f, q_codes, q_f7, 25, PoolRule(**pools), chunk_size=37)
    mapped = hierarchical_search(index, np.load(path, mmap_mode="r"), q_codes, q_f7, 25, PoolRule(**pools))
    for field in ("l2", "idx", "hamming", "pool_sizes"):
        np.testing.assert_array_equal(getattr(ram, field), getattr(on_disk, field))
        np.testing.assert_array_equal(getattr(ram, field), getattr(mapped, field))
    valid = ram.idx >= 0
    assert valid.any() and len(set(ram.pool_sizes.tolist())) > 1
    # reported distances are the rows' exact L2, ascending; empty slots hold inf
    rows = db_f7.astype(np.float32)[np.where(valid, ram.idx, 0)]
    exact = np.linalg.norm(rows - q_f7[:, None, :], axis=-1)
    np.testing.assert_allclose(ram.l2[valid], exact[valid], rtol=1e-5, atol=1e-5)
    assert np.isinf(ram.l2[~valid]).all()
    assert all((np.diff(ram.l2[j][valid[j]]) >= 0).all() for j in range(len(q_f7)))


def test_euclidean_through_the_reader_equals_in_ram(search_data) -> None:
    _, _, db_f7, q_f7, path = search_data
    ram = euclidean_search(db_f7, q_f7, 30)
    with F7File(path) as f:
        for chunk in (64, 1000, 5000):
            got = euclidean_search(f, q_f7, 30, chunk_size=chunk)
            np.testing.assert_array_equal(got[0], ram[0])
            np.testing.assert_array_equal(got[1], ram[1])
    brute = np.sqrt(((q_f7[:, None, :] - db_f7.astype(np.float32)[None]) ** 2).sum(-1))
    order = np.lexsort((np.broadcast_to(np.arange(1500), brute.shape), np.round(brute, 3)), axis=-1)[:, :30]
    assert list(ram[1][0, :2]) == [3, 700]  # the duplicate ties at distance 0, lower index first
    assert (np.abs(np.take_along_axis(brute, order, axis=1) - ram[0]) < 1e-3).all()


# --------------------------------------------------------------- index store and encode writer


def _items(rng: np.random.Generator, n: int, d: int) -> dict:
    return {
        "codes_packed": pack_codes(rng.random((n, 20)) < 0.5),
        "labels": rng.integers(0, 5, n),
        "ids": [f"img{i}.png" for i in range(n)],
        "bits": 20,
    }


def test_store_streams_f7_in_blocks_from_memmaps_and_readers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(index_writer, "_F7_BLOCK_BYTES", 4 * 8 * 7)  # 7 rows of 8 floats per block
    rng = np.random.default_rng(3)
    items = _items(rng, 90, 8)
    f7 = rng.standard_normal((90, 8)).astype(np.float32)
    np.save(tmp_path / "src.npy", f7.astype(np.float16))
    first = save_index(tmp_path / "a", f7=np.load(tmp_path / "src.npy", mmap_mode="r"), **items)
    store = load_index(first)
    assert isinstance(store.f7, F7File) and isinstance(load_index(first, f7_in_memory=True).f7, np.ndarray)
    np.testing.assert_array_equal(np.asarray(store.f7), f7.astype(np.float16))
    second = save_index(tmp_path / "b", f7=store.f7, **items)  # an index re-saved from its reader
    assert (second / "f7.npy").read_bytes() == (first / "f7.npy").read_bytes()
    with IndexWriter(tmp_path / "c", 90, 20, 8) as writer:  # blocks in any order
        for start in (60, 0, 30):
            sl = slice(start, start + 30)
            writer.write(start, items["codes_packed"][sl], f7[sl], items["labels"][sl], items["ids"][sl])
        writer.commit()
    assert (tmp_path / "c" / "f7.npy").read_bytes() == (first / "f7.npy").read_bytes()
    np.testing.assert_array_equal(load_index(tmp_path / "c").codes, items["codes_packed"])
    f7[85, 3] = np.nan  # in the last block: rejected although earlier blocks were written
    with pytest.raises(ConfigError, match="NaN or values beyond float16"):
        save_index(tmp_path / "d", f7=f7, **items)
    assert not (tmp_path / "d").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "a",
        "b",
        "c",
        "src.npy",
    ]


def test_encode_writer_puts_each_sample_at_its_row(tmp_path: Path) -> None:
    """Two writers stand in for two DDP ranks: rank 0 allocates, both write shuffled, padded batches."""
    rng = np.random.default_rng(4)
    pool_index = np.sort(rng.choice(1000, 120, replace=False))
    codes, f7 = rng.random((120, 20)) < 0.5, rng.standard_normal((120, 6)).astype(np.float16)
    labels = rng.integers(0, 9, 120)
    ranks = [
        SimpleNamespace(is_global_zero=zero, strategy=SimpleNamespace(barrier=lambda name=None: None))
        for zero in (True, False)
    ]
    writers = [_RowWriter(tmp_path / "enc", pool_index, 20, 6) for _ in ranks]
    for writer, trainer in zip(writers, ranks):
        writer.on_predict_start(trainer, None)
    order = np.concatenate([rng.permutation(120), [5, 5, 17]])  # padding repeats samples
    for b, rows in enumerate(np.array_split(order, 9)):
        prediction = {
            "codes": torch.from_numpy(codes[rows]),
            "f7": torch.from_numpy(f7[rows]),
            "labels": torch.from_numpy(labels[rows]),
            "index": torch.from_numpy(pool_index[rows]),
        }
        writers[b % 2].write_on_batch_end(ranks[b % 2], None, prediction, None, None, b, 0)
    for writer, trainer in zip(writers, ranks):
        writer.on_predict_end(trainer, None)
    assert np.load(tmp_path / "enc" / "written.npy").all()
    np.testing.assert_array_equal(np.load(tmp_path / "enc" / "codes.npy"), np.packbits(codes, axis=1))
    np.testing.assert_array_equal(np.load(tmp_path / "enc" / "f7.npy"), f7)
    np.testing.assert_array_equal(np.load(tmp_path / "enc" / "labels.npy"), labels)


def test_checked_reads_verify_only_the_blocks_they_touch(tmp_path: Path) -> None:
    """Block checksums: gathers (duplicates, any order, the short last block) read the same rows as an
    unchecked file, each touched block is checked once, and a pickled file keeps its checksums."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((103, 8)).astype(np.float16)
    np.save(tmp_path / "f7.npy", data)
    sums = block_checksums(data, 10)
    assert sums.shape == (11,) and sums[-1] == zlib.crc32(data[100:].tobytes())
    f7 = F7File(tmp_path / "f7.npy", checksums=sums, block_rows=10)
    rows = np.array([102, 3, 57, 3, 58, 0])
    np.testing.assert_array_equal(f7[rows], data[rows])
    assert np.flatnonzero(f7._verified).tolist() == [0, 5, 10]
    np.testing.assert_array_equal(f7.read(slice(20, 40), np.float32), data[20:40].astype(np.float32))
    assert f7._verified.sum() == 5
    f7.verify_all()
    assert f7._verified.all()
    again = pickle.loads(pickle.dumps(f7))
    assert again.block_rows == 10 and not again._verified.any()
    np.testing.assert_array_equal(again[:], data)
    with pytest.raises(IndexFormatError, match=r"has 103 rows in blocks of 10, so 11 checksums, got \(10,\)"):
        F7File(tmp_path / "f7.npy", checksums=sums[:10], block_rows=10)


def test_blocks_held_whole_by_a_read_are_checked_from_it(tmp_path: Path) -> None:
    """A gather that holds whole blocks checks them from the rows it read (one-row blocks, the 4096-d case,
    always); a changed byte is caught on that path too, converting to float32 or not."""
    rng = np.random.default_rng(6)
    data = rng.standard_normal((60, 4)).astype(np.float16)
    np.save(tmp_path / "f7.npy", data)
    ones = F7File(tmp_path / "f7.npy", checksums=block_checksums(data, 1), block_rows=1)
    np.testing.assert_array_equal(ones.read([41, 2, 7], np.float32), data[[41, 2, 7]].astype(np.float32))
    assert np.flatnonzero(ones._verified).tolist() == [2, 7, 41]
    tens = F7File(tmp_path / "f7.npy", checksums=block_checksums(data, 10), block_rows=10)
    rows = np.r_[10:20, 35, 50:60]
    np.testing.assert_array_equal(tens[rows], data[rows])
    assert np.flatnonzero(tens._verified).tolist() == [1, 3, 5]
    sums = block_checksums(data, 1)
    changed = data.copy()
    changed[7, 1] = np.float16(123.0)
    np.save(tmp_path / "f7.npy", changed)
    for dtype in (None, np.float32):
        f7 = F7File(tmp_path / "f7.npy", checksums=sums, block_rows=1)
        np.testing.assert_array_equal(f7.read([3, 9], dtype), data[[3, 9]].astype(dtype or np.float16))
        with pytest.raises(IndexFormatError, match=r"f7.npy rows 7:8 do not match their checksum"):
            f7.read([3, 7, 30], dtype)


def test_reads_of_many_runs_gather_from_the_map_with_the_same_checks(tmp_path: Path, monkeypatch) -> None:
    """A read of ``_GATHER_MIN_RUNS`` runs or more of a float16 file goes through ``gather`` (no read per
    run), float16 or float32, checked block by block as before; fewer runs are read by system calls."""
    data = np.random.default_rng(7).standard_normal((300, 64)).astype(np.float16)
    path = tmp_path / "f7.npy"
    np.save(path, data)
    sums = block_checksums(data, 1)
    many, few = np.arange(1, 300, 3)[: features_mod._GATHER_MIN_RUNS], np.r_[1:4, 50]
    f7 = F7File(path, checksums=sums, block_rows=1)
    with monkeypatch.context() as m:
        m.setattr(F7File, "_pread_into", lambda *a: pytest.fail("a row was read by a system call"))
        for dtype in (None, np.float32):
            np.testing.assert_array_equal(f7.read(many, dtype), data[many].astype(dtype or np.float16))
    assert np.flatnonzero(f7._verified).tolist() == many.tolist()
    with monkeypatch.context() as m:
        m.setattr(F7File, "gather", lambda *a: pytest.fail("a short read was gathered"))
        np.testing.assert_array_equal(f7.read(few, np.float32), data[few].astype(np.float32))
    changed = data.copy()
    changed[31, 5], changed[34, 0] = 9.0, np.nan
    np.save(path, changed)
    for dtype in (None, np.float32):
        with pytest.raises(IndexFormatError, match=r"f7.npy rows 31:32 do not match their checksum"):
            F7File(path, checksums=sums, block_rows=1).read(np.arange(1, 300, 3), dtype)
        with pytest.raises(IndexFormatError, match=r"f7.npy row 34 holds NaN or inf"):
            F7File(path).read(np.arange(1, 300, 3), dtype)
    monkeypatch.setattr(features_mod, "_GATHER_MIN_RUNS", 1 << 62)
    with pytest.raises(IndexFormatError, match=r"f7.npy rows 31:32 do not match their checksum"):
        F7File(path, checksums=sums, block_rows=1).read(np.arange(1, 300, 3))


# --------------------------------------------------------------- scattered gathers through a memory map


def _change_in_place(path: Path, row: int, col: int, value: float, d: int) -> None:
    """Overwrite one float16 of an open ``.npy`` file in place (a memory map of it sees the change)."""
    offset = npy_layout(path)[0]
    with open(path, "r+b") as f:
        f.seek(offset + (row * d + col) * 2)
        f.write(np.float16(value).tobytes())


def _gather(f7: F7File, rows: list[int]) -> np.ndarray:
    rows = np.array(rows, np.int64)
    return f7.gather(rows, torch.full((len(rows), f7.shape[1]), -1.0)).numpy()


def test_gather_checks_each_block_it_first_touches_from_the_copy_or_the_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``F7File.gather``: the rows widened to float32; each block holding a requested row is checked once,
    from the float16 copy when the rows hold it whole (the short last one too), else from the map at its
    offset past the header; a byte changed in a block not yet checked is caught either way. The checksums
    are zlib's CRC-32 on full 8 KB rows, the values an index on disk holds."""
    rng = np.random.default_rng(11)
    data = rng.standard_normal((103, 4096)).astype(np.float16)
    data[15] = np.finfo(np.float16).max  # 4096 x 65504 sums to a finite float32 (not a float16)
    path = tmp_path / "f7.npy"
    np.save(path, data)
    sums = block_checksums(data, 10)
    assert sums.tolist() == [zlib.crc32(data[b : b + 10].tobytes()) for b in range(0, 103, 10)]
    f7 = F7File(path, checksums=sums, block_rows=10)
    from_map: list[int] = []
    verify_mapped = f7._verify_mapped
    monkeypatch.setattr(f7, "_verify_mapped", lambda blocks: (from_map.extend(blocks), verify_mapped(blocks)))
    rows = [0, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 57, 58, 100, 101, 102]
    np.testing.assert_array_equal(_gather(f7, rows), data[rows].astype(np.float32))
    assert np.flatnonzero(f7._verified).tolist() == [0, 1, 5, 10] and from_map == [0, 5]
    _change_in_place(path, 25, 100, 7.0, 4096)
    _change_in_place(path, 33, 5, 7.0, 4096)
    _change_in_place(path, 4, 1, 7.0, 4096)  # in a block already checked: not checked again
    assert _gather(f7, [4, 59])[0, 1] == 7.0
    with pytest.raises(IndexFormatError, match=r"f7.npy rows 20:30 do not match their checksum"):
        _gather(f7, [21, 40])  # block 2 in part: from the map
    with pytest.raises(IndexFormatError, match=r"f7.npy rows 30:40 do not match their checksum"):
        _gather(f7, list(range(30, 40)))  # block 3 whole: from the copy
    assert not f7._verified[[2, 3, 4]].any()
    f7.close()


def test_gather_refuses_non_finite_rows_and_a_file_truncated_while_open(tmp_path: Path) -> None:
    """A NaN or inf row with a matching checksum is refused when first gathered (from the copy for one-row
    blocks, from the map for a block held in part), and on every gather without checksums; a file cut short
    while open is a one-line error, not a fault in the memory map."""
    data = np.random.default_rng(12).standard_normal((50, 16)).astype(np.float16)
    data[40, 3], data[41, 0], data[41, 1], data[43, 15] = np.nan, np.inf, -np.inf, -np.inf
    path = tmp_path / "f7.npy"
    np.save(path, data)
    checked = F7File(path, checksums=block_checksums(data, 1), block_rows=1)
    blocks = F7File(path, checksums=block_checksums(data, 4), block_rows=4)
    np.testing.assert_array_equal(_gather(checked, [39]), data[[39]].astype(np.float32))
    plain = F7File(path)
    for row in (40, 41, 43):  # NaN; inf and -inf (sum NaN); -inf
        for f7, first_bad in ((checked, row), (plain, row), (blocks, 40)):  # blocks: rows 40:44 from the map
            with pytest.raises(IndexFormatError, match=rf"f7.npy row {first_bad} holds NaN or inf"):
                _gather(f7, [2, row])
    assert not checked._verified[40:44].any() and not blocks._verified[10]
    unchecked = F7File(path)
    for _ in range(2):
        with pytest.raises(IndexFormatError, match="row 40 holds NaN"):
            _gather(unchecked, [40])
    with pytest.raises(ValueError, match=r"out must be a \(1, 16\) float32 or float16 tensor, got \(2, 16\)"):
        checked.gather(np.array([1]), torch.empty(2, 16))
    with pytest.raises(ValueError, match=r"half must be a contiguous \(2, 16\) float16 tensor"):
        checked.gather(np.array([1, 2]), torch.empty(2, 16), torch.empty(16, 2, dtype=torch.float16).T)
    for rows in ([3, 3], [4, 2], [-1, 2], [2, 50]):
        with pytest.raises(ValueError, match=r"gather takes strictly increasing rows in 0\.\.49"):
            _gather(checked, rows)
    with pytest.raises(ValueError, match="gather reads float16 rows"):
        np.save(tmp_path / "f32.npy", data.astype(np.float32))
        _gather(F7File(tmp_path / "f32.npy"), [1])
    size = path.stat().st_size
    os.truncate(path, size - 32)
    with pytest.raises(IndexFormatError, match=r"f7.npy ended early \(truncated while open\?\)"):
        _gather(checked, [1])


def test_gather_unmaps_its_pages_and_release_unmaps_only_its_rows(tmp_path: Path) -> None:
    """A gather leaves none of the file's pages mapped; ``release(start, stop)`` unmaps the pages of those rows
    (and at most a folio past either end), not the whole map; ``release()`` the rest; the data reads back.
    A view of the map survives ``close``."""
    arr = np.random.default_rng(13).standard_normal((4096, 4096)).astype(np.float16)  # 32 MB
    np.save(tmp_path / "big.npy", arr)
    f7 = F7File(tmp_path / "big.npy")
    before = _rss_file_kb()
    if before is None:
        pytest.skip("needs /proc/self/status")
    rows = np.arange(len(arr))
    out = f7.gather(rows, torch.empty(arr.shape))
    assert float(out.sum(dtype=torch.float64)) == float(arr.sum(dtype=np.float64))
    assert _rss_file_kb() - before < 4 << 10
    view = f7._map
    assert float(view.sum(dtype=np.float64)) == float(arr.sum(dtype=np.float64))
    mapped = _rss_file_kb()
    f7.release(0, 1024)  # 8 MB, plus up to 2 MB of slack
    first = _rss_file_kb()
    f7.release()
    rest = _rss_file_kb()
    assert mapped - before > 28 << 10
    assert 7 << 10 < mapped - first < 16 << 10 and first - rest > 14 << 10
    np.testing.assert_array_equal(view[[0, 4095]], arr[[0, 4095]])  # faults back in from the file
    f7.close()
    np.testing.assert_array_equal(view[1234], arr[1234])
    with pytest.raises(ValueError, match="is closed"):
        f7.gather(rows, torch.empty(arr.shape))
