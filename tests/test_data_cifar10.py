"""CIFAR10DataModule on pickle batches written in the release format; nothing downloads."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

from deephash.data import CIFAR10DataModule
from deephash.utils.errors import ConfigError, DataError
from tests.fixtures_data import write_cifar10


@pytest.fixture
def cifar(tmp_path):
    written = write_cifar10(tmp_path / "cifar10", train_per_class=10, test_per_class=5)
    return tmp_path / "cifar10", written


def _dm(root, **kwargs) -> CIFAR10DataModule:
    kwargs = {"transform": "native", "n_queries": 20, "batch_size": 8, "verify_checksums": False, **kwargs}
    return CIFAR10DataModule(root=str(root), **kwargs)


def test_cifar_1k5k_protocol_scaled_down(cifar):
    root, _ = cifar
    dm = _dm(root, protocol="cifar_1k5k", n_queries=20, train_per_class=6, val_size=10)
    dm.setup()
    s, labels = dm.splits, dm.pool.labels
    np.testing.assert_array_equal(np.bincount(labels[s["query"]], minlength=10), np.full(10, 2))
    training = np.union1d(s["train"], s["val"])
    np.testing.assert_array_equal(np.bincount(labels[training], minlength=10), np.full(10, 6))
    assert (len(s["train"]), len(s["val"]), len(s["database"])) == (50, 10, 130)
    np.testing.assert_array_equal(s["test"], s["query"])
    assert np.intersect1d(s["query"], training).size == 0
    assert np.intersect1d(s["database"], s["query"]).size == 0
    np.testing.assert_array_equal(dm.labels("query"), labels[s["query"]])


def test_cifar_10k50k_protocol(cifar):
    root, _ = cifar
    dm = _dm(root, protocol="cifar_10k50k")
    dm.setup()
    np.testing.assert_array_equal(dm.splits["query"], np.arange(100, 150))
    np.testing.assert_array_equal(dm.splits["database"], np.arange(100))
    assert len(dm.splits["val"]) == 10


def test_splits_reproducible(cifar):
    root, _ = cifar
    a, b, c = (_dm(root, protocol="cifar_1k5k", train_per_class=5, seed=s) for s in (1, 1, 2))
    for dm in (a, b, c):
        dm.setup()
    for k in a.splits:
        np.testing.assert_array_equal(a.splits[k], b.splits[k])
    assert not np.array_equal(a.splits["query"], c.splits["query"])


def test_md5_mismatch_with_verification_on(cifar):
    root, _ = cifar
    with pytest.raises(DataError) as err:
        _dm(root, verify_checksums=True).setup()
    message = str(err.value)
    assert message.startswith(
        f"{root / 'cifar-10-batches-py' / 'data_batch_1'} is corrupt or not the official"
    )
    assert "(MD5 mismatch)" in message and "data.verify_checksums=false" in message


def test_verification_uses_the_official_checksums(cifar, monkeypatch):
    """The same files pass once their MD5s are the expected ones: the check, not the format, failed above."""
    from torchvision.datasets.utils import calculate_md5

    root, _ = cifar
    folder = root / "cifar-10-batches-py"
    md5 = {name: calculate_md5(str(folder / name)) for name in os.listdir(folder)}
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    dm = _dm(root, verify_checksums=True)
    dm.setup()
    assert len(dm.pool) == 150
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="test_batch is corrupt or not the official CIFAR-10 release"):
        _dm(root, verify_checksums=True).setup()


def test_missing_files(cifar):
    root, _ = cifar
    os.remove(root / "cifar-10-batches-py" / "batches.meta")
    folder = root / "cifar-10-batches-py"
    expected = (
        f"CIFAR-10 not found in {folder}: expected data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
        "data_batch_5, test_batch, batches.meta (set data.download=true to fetch it)"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        _dm(root).setup()


def test_malformed_pickle_is_a_data_error(cifar):
    root, _ = cifar
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="CIFAR-10 files in .* are malformed"):
        _dm(root).setup()


def test_failed_download_is_one_data_error(tmp_path, monkeypatch):
    def offline(self):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(
        DataError, match=r"downloading CIFAR-10 into .*cifar-10-batches-py failed: .*unreachable"
    ):
        _dm(tmp_path, download=True).prepare_data()


def test_argument_errors(cifar):
    root, _ = cifar
    with pytest.raises(ConfigError, match="data.train_per_class must be an integer >= 1, got 0"):
        _dm(root, train_per_class=0)
    with pytest.raises(ConfigError, match="data.verify_checksums must be true or false"):
        _dm(root, verify_checksums="no")
    with pytest.raises(ConfigError, match="data.root must be set"):
        CIFAR10DataModule(n_queries=5).setup()
