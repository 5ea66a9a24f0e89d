"""Importing the classic mnist.pkl.gz into torchvision's IDX layout, on pickles written in the same format."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST

from deephash.data import MNISTDataModule
from deephash.data.mnist import RAW_FILES
from deephash.data.mnist_pickle import CLASSIC_SIZES, import_mnist_pickle, read_mnist_pickle
from deephash.data_cli import main
from deephash.utils.errors import DataError

SMALL = (30, 20, 20)


def make_parts(sizes=SMALL, seed: int = 0) -> list[list[np.ndarray]]:
    """[[x, y]] * 3 like the classic file: x (n, 784) float32 = pixel / 256, y (n,) int64 with every digit."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        pixels = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        parts.append([pixels.astype(np.float32) / 256, labels])
    return parts


def write_pickle(path: Path, parts, protocol: int = 2) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as f:
        pickle.dump(tuple(tuple(p) for p in parts), f, protocol=protocol)
    return path


def pixels_of(x: np.ndarray) -> np.ndarray:
    return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)


@pytest.mark.parametrize("protocol", [2, 5])
def test_imported_files_load_through_the_datamodule(tmp_path: Path, protocol: int) -> None:
    parts = make_parts()
    write_pickle(tmp_path / "mnist.pkl.gz", parts, protocol)
    counts = import_mnist_pickle(tmp_path / "mnist.pkl.gz", tmp_path / "mnist", sizes=SMALL)
    assert counts == {"train": 50, "test": 20}

    dm = MNISTDataModule(root=str(tmp_path / "mnist"), transform="native", n_queries=5)
    dm.setup()
    train_x = np.concatenate([pixels_of(parts[0][0]), pixels_of(parts[1][0])])
    train_y = np.concatenate([parts[0][1], parts[1][1]])
    np.testing.assert_array_equal(dm.pool.train.images, train_x)
    np.testing.assert_array_equal(dm.pool.train.labels, train_y)
    np.testing.assert_array_equal(dm.pool.test.images, pixels_of(parts[2][0]))
    np.testing.assert_array_equal(dm.pool.test.labels, parts[2][1])
    # torchvision reads the same tensors, and 255/256 stays 255 (no wrap to 0)
    test = MNIST(str(tmp_path / "mnist"), train=False)
    assert test.data.dtype.is_floating_point is False and tuple(test.data.shape) == (20, 28, 28)
    np.testing.assert_array_equal(test.data.numpy(), pixels_of(parts[2][0]))
    assert train_x.max() == 255


def test_full_size_pickle_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # zeros compress to almost nothing, so the real 50k/10k/10k shapes are cheap
    labels = [np.arange(n, dtype=np.int64) % 10 for n in CLASSIC_SIZES]
    parts = [[np.zeros((n, 784), np.float32), y] for n, y in zip(CLASSIC_SIZES, labels)]
    parts[2][0][7, 300] = 0.5  # one pixel to find again: 128
    write_pickle(tmp_path / "mnist.pkl.gz", parts)

    assert main(["mnist", "--from-pickle", str(tmp_path / "mnist.pkl.gz"), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wrote 60000 training and 10000 test images" in out and "not byte-identical" in out
    raw = tmp_path / "MNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(RAW_FILES)  # no temporary files left
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 60000 * 784
    test = MNIST(str(tmp_path), train=False)
    assert test.data[7].flatten()[300] == 128 and int(test.data.sum()) == 128
    np.testing.assert_array_equal(
        MNIST(str(tmp_path), train=True).targets.numpy()[49995:50005], [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    )


def test_default_root_follows_deephash_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deephash.data_cli import default_mnist_root

    monkeypatch.setenv("DEEPHASH_DATA", str(tmp_path / "store"))
    assert default_mnist_root() == str(tmp_path / "store" / "mnist")
    monkeypatch.delenv("DEEPHASH_DATA")
    assert default_mnist_root() == os.path.join("data", "mnist")


def _error(tmp_path: Path, parts=None, data: bytes | None = None) -> str:
    path = tmp_path / "bad.pkl.gz"
    if data is not None:
        path.write_bytes(data)
    else:
        write_pickle(path, parts)
    with pytest.raises(DataError) as info:
        read_mnist_pickle(path, sizes=SMALL)
    return str(info.value)


def test_truncated_and_non_gzip_files(tmp_path: Path) -> None:
    good = write_pickle(tmp_path / "good.pkl.gz", make_parts()).read_bytes()
    message = _error(tmp_path, data=good[: len(good) // 2])
    assert message.startswith(f"cannot read {tmp_path / 'bad.pkl.gz'} as a gzipped MNIST pickle: ")
    assert "ended before the end-of-stream marker" in message
    assert "gzipped MNIST pickle: Not a gzipped file" in _error(tmp_path, data=b"PK\x03\x04 a zip file")
    # a gzip stream whose pickle stops early
    cut = gzip.compress(pickle.dumps(tuple(tuple(p) for p in make_parts()), protocol=2)[:5000])
    assert "gzipped MNIST pickle" in _error(tmp_path, data=cut)
    with pytest.raises(DataError, match="MNIST pickle not found: .*missing.pkl.gz"):
        read_mnist_pickle(tmp_path / "missing.pkl.gz")


def test_refuses_globals_other_than_numpy_arrays(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    message = _error(tmp_path, data=gzip.compress(pickle.dumps(Payload(), protocol=2)))
    assert "refusing to load io.open" in message or "refusing to load builtins.open" in message
    assert not marker.exists()


def test_wrong_structure_and_shapes(tmp_path: Path) -> None:
    parts = make_parts()
    assert _error(tmp_path, parts[:2]).endswith(
        "expected a tuple of 3 (images, labels) pairs (train, valid, test)"
    )
    assert _error(tmp_path, [parts[0], parts[1][:1], parts[2]]).endswith(
        "valid is not an (images, labels) pair"
    )

    square = make_parts()
    square[0][0] = square[0][0].reshape(30, 28, 28)
    assert _error(tmp_path, square).endswith(
        "train images must be a float array of shape (30, 784), got float32 (30, 28, 28)"
    )
    short = make_parts()
    short[2] = [short[2][0][:19], short[2][1][:19]]
    assert _error(tmp_path, short).endswith(
        "test images must be a float array of shape (20, 784), got float32 (19, 784)"
    )
    as_bytes = make_parts()
    as_bytes[1][0] = pixels_of(as_bytes[1][0]).reshape(20, 784)
    assert "valid images must be a float array" in _error(tmp_path, as_bytes)
    float_labels = make_parts()
    float_labels[0][1] = float_labels[0][1].astype(np.float64)
    assert _error(tmp_path, float_labels).endswith(
        "train labels must be an integer array of shape (30,), got float64 (30,)"
    )


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_out_of_range(tmp_path: Path, bad: int) -> None:
    parts = make_parts()
    parts[1][1][4] = bad
    assert _error(tmp_path, parts).endswith(f"valid label 4 is {bad}; expected digits 0-9")


def test_every_digit_must_appear(tmp_path: Path) -> None:
    parts = make_parts()
    parts[2][1][parts[2][1] == 3] = 4
    assert _error(tmp_path, parts).endswith("the test images have no label [3]; expected all digits 0-9")


@pytest.mark.parametrize("bad", [1.0, -0.25, float("nan")])
def test_values_out_of_range(tmp_path: Path, bad: float) -> None:
    # 1.0 is what a pixel / 255 file holds for white: not this format
    parts = make_parts()
    parts[0][0][6, 100] = bad
    assert _error(tmp_path, parts).endswith(
        f"train image 6 has pixel value {np.float32(bad)}; expected values in [0, 1)"
    )


def _existing(raw: Path) -> dict[str, bytes]:
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        (raw / name).write_bytes(b"previous " + name.encode())
    return {name: (raw / name).read_bytes() for name in RAW_FILES}


def test_failed_import_leaves_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    before = _existing(raw)
    bad = make_parts()
    bad[2][1][0] = 11
    write_pickle(tmp_path / "bad.pkl.gz", bad)
    with pytest.raises(DataError, match="test label 0 is 11"):
        import_mnist_pickle(tmp_path / "bad.pkl.gz", tmp_path / "mnist", sizes=SMALL)
    assert {name: (raw / name).read_bytes() for name in RAW_FILES} == before

    # a write that fails on the third file (disk full) replaces none of the four
    write_pickle(tmp_path / "good.pkl.gz", make_parts())
    calls = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DataError, match=f"cannot write MNIST files into {raw}: No space left on device"):
        import_mnist_pickle(tmp_path / "good.pkl.gz", tmp_path / "mnist", sizes=SMALL)
    assert {name: (raw / name).read_bytes() for name in os.listdir(raw)} == before


def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_pickle(tmp_path / "small.pkl.gz", make_parts())  # the command expects the classic 50k/10k/10k
    with pytest.raises(SystemExit) as exit_info:
        main(["mnist", "--from-pickle", str(tmp_path / "small.pkl.gz"), "--root", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'small.pkl.gz'}: train images must be a float array of shape (50000, 784), "
        "got float32 (30, 784)\n"
    )
    assert not (tmp_path / "out").exists()
