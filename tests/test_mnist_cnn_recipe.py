"""The CPU MNIST recipe: the mnistcnn backbone, the affine augmentation knobs and experiment=mnist_cnn_fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from deephash.data import MNISTDataModule
from deephash.models.backbones import build_backbone
from deephash.models.mnist_cnn import MnistCNN
from deephash.train import train
from deephash.utils.errors import ConfigError
from tests.conftest import compose_config
from tests.fixtures_data import write_mnist
from tests.fixtures_models import latent_net


def test_mnistcnn_maps_digits_to_f7() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("mnistcnn", None, in_channels=1, f7_dim=96)
    assert isinstance(backbone.features, MnistCNN) and backbone.f7_dim == 96
    f7 = backbone.features.eval()(torch.randn(5, 1, 28, 28))
    assert f7.shape == (5, 96) and bool((f7 >= 0).all()) and bool((f7 > 0).any())
    # the last pool is adaptive: other input sizes give the same F7 width
    assert backbone.features(torch.randn(2, 1, 32, 32)).shape == (2, 96)

    net = latent_net("mnistcnn", bits=48, num_classes=10, in_channels=1, f7_dim=96).eval()
    codes, f7 = net.encode(torch.randn(3, 1, 28, 28))
    assert codes.shape == (3, 48) and codes.dtype == torch.bool and f7.shape == (3, 96)


def test_mnistcnn_loads_a_saved_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = MnistCNN(in_channels=1, f7_dim=64)
    torch.save(trained.state_dict(), tmp_path / "cnn.pt")
    loaded = build_backbone("mnistcnn", str(tmp_path / "cnn.pt"), in_channels=1, f7_dim=64).features
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), trained.eval()(x))


def _affine(dm: MNISTDataModule) -> T.RandomAffine | None:
    found = [s for s in dm.train_transform.transforms if isinstance(s, T.RandomAffine)]
    return found[0] if found else None


def test_affine_augmentation_knobs(tmp_path: Path) -> None:
    write_mnist(tmp_path, train_per_class=3, test_per_class=2)
    plain = MNISTDataModule(root=str(tmp_path), transform="native", n_queries=5)
    assert _affine(plain) is None  # MNIST's default: no augmentation

    dm = MNISTDataModule(
        root=str(tmp_path), transform="native", n_queries=5, translate=0.1, rotate=10.0, scale=0.1
    )
    affine = _affine(dm)
    assert affine is not None
    assert affine.degrees == [-10.0, 10.0] and affine.translate == (0.1, 0.1) and affine.scale == (0.9, 1.1)
    assert not any(isinstance(s, T.RandomAffine) for s in dm.eval_transform.transforms)
    # the augmentation moves training pixels, never evaluation ones
    dm.setup()
    image = dm.pool.image(0)
    torch.manual_seed(0)
    augmented = torch.stack([dm.train_transform(image) for _ in range(4)])
    assert not torch.equal(augmented[0], augmented[1])
    torch.testing.assert_close(dm.eval_transform(image), plain.eval_transform(image))

    only_rotation = _affine(MNISTDataModule(root=str(tmp_path), transform="native", rotate=5))
    assert only_rotation.translate is None and only_rotation.scale is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotate": -1.0}, "data.rotate must be a number in [0, 180), got -1.0"),
        ({"translate": 1.5}, "data.translate must be a number in [0, 1), got 1.5"),
        ({"scale": "big"}, "data.scale must be a number in [0, 1), got 'big'"),
        ({"scale": True}, "data.scale must be a number in [0, 1), got True"),
    ],
)
def test_bad_augmentation_values(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MNISTDataModule(root=str(tmp_path), transform="native", **kwargs)
    assert str(info.value) == message


def test_fast_experiment_trains_and_evaluates(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", train_per_class=20, test_per_class=6)
    cfg = compose_config(
        "train",
        [
            "experiment=mnist_cnn_fast",
            f"data.root={tmp_path / 'mnist'}",
            "data.n_queries=30",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.batch_size=32",
            "model.scheduler.steps_per_epoch=6",
            "trainer.max_epochs=2",
            "logger=none",
            "callbacks=none",
            "trainer.enable_model_summary=false",
            "retrieval.modes=[hamming]",
        ],
        tmp_path / "run",
    )
    assert (
        cfg.model.net.backbone == "mnistcnn" and cfg.model.net.bits == 48 and cfg.data.transform == "native"
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 12  # 180 training images in batches of 32, two epochs
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["backbone"] == "mnistcnn" and np.isfinite(saved["train_seconds"])
    hamming = saved["modes"]["hamming"]
    assert 0.0 < hamming["mAP"] <= 1.0 and 0.0 < hamming["precision@k"]["10"] <= 1.0
