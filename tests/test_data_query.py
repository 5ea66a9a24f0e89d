"""A query file is preprocessed exactly as the datamodule its index was built from evaluates the same image:
for every datamodule and both transforms, whose mean and std are not the identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deephash.data import CIFAR10DataModule, DigitsDataModule, FolderDataModule, MNISTDataModule
from deephash.data.query import load_query_image, preprocess_spec, query_transform
from deephash.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.fixtures_data import write_cifar10, write_image_tree, write_mnist


def _datamodule(kind: str, transform: str, tmp_path: Path):
    small = {"transform": transform, "image_size": 24, "resize": 28, "n_queries": 5}
    if kind == "digits":
        return DigitsDataModule(**small)
    if kind == "mnist":
        write_mnist(tmp_path / "mnist")
        return MNISTDataModule(root=str(tmp_path / "mnist"), **small)
    if kind == "cifar10":
        write_cifar10(tmp_path / "cifar")
        return CIFAR10DataModule(root=str(tmp_path / "cifar"), verify_checksums=False, **small)
    write_image_tree(tmp_path / "tree", per_class=6)
    return FolderDataModule(root=str(tmp_path / "tree"), test_fraction=0.25, **small)


@pytest.mark.parametrize("transform", ["native", "imagenet"])
@pytest.mark.parametrize("kind", ["digits", "mnist", "cifar10", "folder"])
def test_query_preprocessing_is_the_datamodules_evaluation_transform(
    kind: str, transform: str, tmp_path: Path
) -> None:
    dm = _datamodule(kind, transform, tmp_path)
    dm.setup()
    spec = preprocess_spec(dm)
    mean, std = (spec["mean"], spec["std"]) if transform == "native" else (IMAGENET_MEAN, IMAGENET_STD)
    assert all(m != 0.0 for m in mean) and all(s != 1.0 for s in std)  # a dropped Normalize would show
    to_query = query_transform(spec)
    for p in (0, len(dm.pool) // 2, len(dm.pool) - 1):
        image = dm.pool.image(p)
        path = tmp_path / f"query{p}.png"
        image.save(path)  # lossless: the query file holds the pool image's very pixels
        expected = dm.eval_transform(image)
        got = to_query(load_query_image(path))
        assert got.shape == expected.shape == (dm.in_channels, *dm.input_size)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
