"""MNISTDataModule on IDX files written in the real format; nothing downloads."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np
import pytest
from torchvision.datasets import MNIST

from deephash.data import MNISTDataModule
from deephash.utils.errors import DataError
from tests.fixtures_data import write_mnist

FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture
def mnist(tmp_path):
    written = write_mnist(tmp_path / "mnist", train_per_class=12, test_per_class=5)
    return tmp_path / "mnist", written


def _dm(root, **kwargs) -> MNISTDataModule:
    kwargs = {"transform": "native", "n_queries": 20, "batch_size": 8, **kwargs}
    return MNISTDataModule(root=str(root), **kwargs)


def test_paper_protocol_on_mnist(mnist):
    root, written = mnist
    dm = _dm(root, val_size=0.25, seed=3)
    dm.setup()
    s = dm.splits
    assert len(s["query"]) == 20 and s["query"].min() >= 120
    np.testing.assert_array_equal(s["database"], np.arange(120))
    assert len(s["val"]) == 30 and np.intersect1d(s["val"], s["query"]).size == 0
    np.testing.assert_array_equal(dm.labels("query"), written.test_labels[s["query"] - 120])


def test_reads_gzipped_files_when_only_those_exist(mnist):
    root, written = mnist
    raw = root / "MNIST" / "raw"
    for f in FILES:
        data = (raw / f).read_bytes()
        (raw / f"{f}.gz").write_bytes(gzip.compress(data))
        (raw / f).unlink()
    dm = _dm(root)
    dm.setup()
    np.testing.assert_array_equal(dm.pool.test.labels, written.test_labels)
    np.testing.assert_array_equal(np.asarray(dm.pool.image(3)), written.train_images[3])


@pytest.mark.parametrize("remove", ["t10k-labels-idx1-ubyte", None])
def test_missing_files_name_the_directory_and_files(tmp_path, remove):
    root = tmp_path / "mnist"
    if remove:
        write_mnist(root)
        os.remove(root / "MNIST" / "raw" / remove)
    raw = root / "MNIST" / "raw"
    expected = (
        f"MNIST not found in {raw}: expected train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (set data.download=true to fetch it)"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        _dm(root).setup()


def test_prepare_data_does_nothing_without_download(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(MNIST, "download", fail)
    _dm(tmp_path / "mnist").prepare_data()
    assert not (tmp_path / "mnist").exists()


def test_failed_download_is_one_data_error(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
            "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
        )

    monkeypatch.setattr(MNIST, "download", offline)
    dm = _dm(tmp_path / "mnist", download=True)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert message.startswith(f"downloading MNIST into {tmp_path / 'mnist' / 'MNIST' / 'raw'} failed:")
    assert "Temporary failure in name resolution" in message and "\n" not in message


def test_truncated_file_is_a_data_error(mnist):
    root, _ = mnist
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="MNIST files in .* are malformed"):
        _dm(root).setup()
