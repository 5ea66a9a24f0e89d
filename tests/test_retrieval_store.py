"""The persistent index directory: round trip, streaming writes, atomic saves and every rejected file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from deephash.retrieval import HammingIndex, IndexWriter, index_writer, load_index, save_index, sha256_file
from deephash.retrieval.codes import pack_codes
from deephash.retrieval.features import F7File
from deephash.utils.errors import ConfigError, IndexFormatError


def make_items(n: int = 120, bits: int = 12, d: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(
        codes_packed=pack_codes(rng.random((n, bits)) < 0.5),
        f7=rng.standard_normal((n, d)).astype(np.float32),
        labels=rng.integers(0, 10, n),
        ids=[f"img/{i:05d} a.jpg" for i in range(n)],
        bits=bits,
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    items = make_items(bits=48)
    path = save_index(tmp_path / "index", **items, meta={"dataset": "cifar10", "split": "database"})
    return path, items


def test_sha256_file(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob", block=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("bits", [12, 48, 128])
def test_round_trip(tmp_path: Path, bits: int) -> None:
    items = make_items(bits=bits)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"weights")
    meta = {"dataset": "mnist", "checkpoint": str(checkpoint), "note": "x"}
    path = save_index(tmp_path / "index", **items, meta=meta)
    assert sorted(p.name for p in path.iterdir()) == [
        "codes.npy",
        "f7.crc32.npy",
        "f7.npy",
        "ids.txt",
        "labels.npy",
        "manifest.json",
    ]
    store = load_index(
        path, expect_bits=bits, expect_feature_dim=16, expect_checkpoint_sha256=sha256_file(checkpoint)
    )
    np.testing.assert_array_equal(store.codes, items["codes_packed"])
    np.testing.assert_array_equal(store.f7, items["f7"].astype(np.float16))
    np.testing.assert_array_equal(store.labels, items["labels"])
    assert store.ids == items["ids"] and store.bits == bits and store.count == 120 and store.feature_dim == 16
    assert isinstance(store.f7, F7File) and store.f7.dtype == np.float16  # read from disk, not held in RAM
    assert store.labels.dtype == np.int64
    assert isinstance(load_index(path, f7_in_memory=True).f7, np.ndarray)
    m = store.manifest
    assert m["format_version"] == 2 and m["bits"] == bits and m["code_bytes"] == -(-bits // 8)
    assert m["feature_dim"] == 16 and m["count"] == 120 and m["dataset"] == "mnist"
    assert m["dtypes"] == {"codes": "uint8", "f7": "float16", "labels": "int64"}
    assert m["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest() and m["meta"]["note"] == "x"
    assert m["files"]["codes.npy"]["sha256"] == sha256_file(path / "codes.npy")
    assert m["checkpoint_free"] is False
    f7_entry = m["files"]["f7.npy"]
    assert f7_entry["bytes"] == (path / "f7.npy").stat().st_size and f7_entry["shape"] == [120, 16]
    assert f7_entry["block_rows"] == 256  # 8 KiB of 16-d float16 rows under one checksum
    assert m["files"]["f7.crc32.npy"] == {
        "bytes": (path / "f7.crc32.npy").stat().st_size,
        "shape": [1],
        "sha256": sha256_file(path / "f7.crc32.npy"),
    }
    assert "T" in m["created_at"]
    queries = items["codes_packed"][:5]
    for a, b in zip(
        store.hamming_index.search(queries, 7), HammingIndex(items["codes_packed"], bits).search(queries, 7)
    ):
        np.testing.assert_array_equal(a, b)
    assert store.hamming_index is store.hamming_index  # built once


def test_streaming_writer_out_of_order_and_chunk_iterator(tmp_path: Path) -> None:
    items = make_items(n=100)
    with IndexWriter(tmp_path / "streamed", 100, 12, 16, meta={"dataset": "digits"}) as writer:
        for start in (60, 0, 30):
            stop = start + (40 if start == 60 else 30)
            sl = slice(start, stop)
            writer.write(
                start, items["codes_packed"][sl], items["f7"][sl], items["labels"][sl], items["ids"][sl]
            )
        path = writer.commit()
    chunks = (items["f7"][s : s + 33] for s in range(0, 100, 33))
    other = save_index(tmp_path / "from_chunks", **{**items, "f7": chunks})
    a, b = load_index(path), load_index(other)
    np.testing.assert_array_equal(a.f7, b.f7)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.ids == b.ids == items["ids"]


def test_writer_rejects_bad_blocks_and_missing_rows(tmp_path: Path) -> None:
    items = make_items(n=10)
    with IndexWriter(tmp_path / "idx", 10, 12, 16) as writer:
        with pytest.raises(ConfigError, match="outside the index"):
            writer.write(5, items["codes_packed"][:6], items["f7"][:6], items["labels"][:6], items["ids"][:6])
        with pytest.raises(ConfigError, match=r"f7 \(4, 16\)"):
            writer.write(
                0, items["codes_packed"][:4], items["f7"][:4, :8], items["labels"][:4], items["ids"][:4]
            )
        too_big = items["f7"][:2].copy()
        too_big[1, 3] = 1e6
        with pytest.raises(ConfigError, match="beyond float16's range"):
            writer.write(0, items["codes_packed"][:2], too_big, items["labels"][:2], items["ids"][:2])
        with pytest.raises(ConfigError, match="newlines"):
            writer.write(0, items["codes_packed"][:1], items["f7"][:1], items["labels"][:1], ["a\nb"])
        writer.write(0, items["codes_packed"][:9], items["f7"][:9], items["labels"][:9], items["ids"][:9])
        with pytest.raises(ConfigError, match="1 of 10 index rows were never written"):
            writer.commit()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone


def test_overwrite_replaces_previous_index(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    new = make_items(n=30, bits=12, seed=1)
    save_index(path, **new)
    store = load_index(path, expect_bits=12)
    assert store.count == 30
    assert sorted(p.name for p in path.parent.iterdir()) == ["index"]  # no temp or old dirs left


def test_interrupted_save_keeps_previous_index(
    saved: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, items = saved

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the manifest")

    monkeypatch.setattr(index_writer, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        save_index(path, **make_items(n=30, bits=12, seed=1))
    with pytest.raises(KeyboardInterrupt):
        save_index(path.parent / "fresh", **make_items(n=30, bits=12, seed=1))
    monkeypatch.undo()
    store = load_index(path, expect_bits=48)
    np.testing.assert_array_equal(store.codes, items["codes_packed"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["index"]
    with pytest.raises(IndexFormatError, match="does not exist"):
        load_index(path.parent / "fresh")


def test_failing_feature_stream_leaves_nothing(tmp_path: Path) -> None:
    items = make_items(n=50)

    def chunks():
        yield items["f7"][:20]
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        save_index(tmp_path / "index", **{**items, "f7": chunks()})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ rejected


def test_missing_directory_and_manifest(tmp_path: Path, saved: tuple[Path, dict]) -> None:
    with pytest.raises(IndexFormatError, match="index directory .* does not exist"):
        load_index(tmp_path / "nope")
    path, _ = saved
    (path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=r"manifest.json is missing"):
        load_index(path)


def test_corrupted_manifest(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(IndexFormatError, match="manifest.json is not valid JSON"):
        load_index(path)


def test_unknown_format_version(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 7
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format_version 7; this deephash reads format_version 2"):
        load_index(path)
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format_version 1, from an older deephash .*; rebuild it"):
        load_index(path)


@pytest.mark.parametrize("name", ["codes.npy", "f7.npy", "labels.npy", "ids.txt"])
def test_missing_file(saved: tuple[Path, dict], name: str) -> None:
    path, _ = saved
    (path / name).unlink()
    with pytest.raises(IndexFormatError, match=f"{name} is missing from"):
        load_index(path)


def test_truncated_codes(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    data = (path / "codes.npy").read_bytes()
    (path / "codes.npy").write_bytes(data[:-100])
    with pytest.raises(IndexFormatError, match=r"codes.npy is truncated or corrupt: expected 120 x 6 uint8"):
        load_index(path)


@pytest.mark.parametrize("fix_manifest", [False, True])
def test_truncated_f7(saved: tuple[Path, dict], fix_manifest: bool) -> None:
    path, _ = saved
    data = (path / "f7.npy").read_bytes()
    (path / "f7.npy").write_bytes(data[: len(data) // 2])
    if fix_manifest:  # the manifest's size made to agree: the header's shape must still catch it
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"]["f7.npy"]["bytes"] = len(data) // 2
        (path / "manifest.json").write_text(json.dumps(manifest))
    for mmap in (True, False):
        with pytest.raises(
            IndexFormatError, match=r"f7.npy is truncated or corrupt: expected 120 x 16 float16"
        ):
            load_index(path, f7_in_memory=not mmap)


def test_array_disagreeing_with_manifest(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    np.save(path / "labels.npy", np.zeros(119, np.int64))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["labels.npy"]["bytes"] = (path / "labels.npy").stat().st_size
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        IndexFormatError, match=r"labels.npy holds 119 int64 but the manifest expects 120 int64"
    ):
        load_index(path)


def test_ids_count_mismatch(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    lines = (path / "ids.txt").read_text().splitlines(keepends=True)
    (path / "ids.txt").write_text("".join(lines[:-1]))
    with pytest.raises(IndexFormatError, match="ids.txt in .* has 119 ids but the index holds 120 items"):
        load_index(path, verify=False)


def test_expectation_mismatches(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    with pytest.raises(IndexFormatError, match="has 48-bit codes but the model produces 128-bit codes"):
        load_index(path, expect_bits=128)
    with pytest.raises(IndexFormatError, match="has 16-d F7 features but the model produces 4096-d features"):
        load_index(path, expect_feature_dim=4096)
    with pytest.raises(IndexFormatError, match=r"built from no checkpoint \(its codes are a baseline's\)"):
        load_index(path, expect_checkpoint_sha256="abc")


def test_checkpoint_hash_mismatch(tmp_path: Path) -> None:
    f00d, beef = "f00d" * 16, "beef" * 16
    meta = {"checkpoint": "x.ckpt", "checkpoint_sha256": f00d}
    path = save_index(tmp_path / "index", **make_items(), meta=meta)
    assert load_index(path, expect_checkpoint_sha256=f00d).manifest["checkpoint"] == "x.ckpt"
    with pytest.raises(
        IndexFormatError, match=f"from checkpoint sha256 {f00d} but the given checkpoint has sha256 {beef}"
    ):
        load_index(path, expect_checkpoint_sha256=beef)
    with pytest.raises(ConfigError, match="checkpoint nowhere.ckpt not found: its sha256 cannot be recorded"):
        save_index(tmp_path / "other", **make_items(), meta={"checkpoint": "nowhere.ckpt"})


def test_codes_sha256_mismatch(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    data = bytearray((path / "codes.npy").read_bytes())
    data[-1] ^= 0x80  # same size, different content (the first bit of the last code)
    (path / "codes.npy").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="codes.npy in .* does not match its sha256 in manifest.json"):
        load_index(path)
    assert load_index(path, verify=False).codes[-1, -1] == np.uint8(data[-1])
