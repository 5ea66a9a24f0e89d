"""RetrievalDataModule through the digits dataset: argument checks, loaders, splits, save_splits, configs."""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from deephash.data import CIFAR10DataModule, DigitsDataModule, FolderDataModule, MNISTDataModule
from deephash.data.transforms import imagenet_transform
from deephash.utils.errors import ConfigError, DataError
from tests.fixtures_data import CIFAR_CLASSES, write_cifar10, write_image_tree, write_mnist

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(transform="native", n_queries=100, batch_size=16, seed=1)
    dm.setup()
    return dm


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "data.batch_size must be an integer >= 1, got 2.5"),
        ({"eval_batch_size": 0}, "data.eval_batch_size must be an integer >= 1, got 0"),
        ({"num_workers": -1}, "data.num_workers must be an integer >= 0, got -1"),
        ({"n_queries": 0}, "data.n_queries must be an integer >= 1, got 0"),
        ({"seed": -3}, "data.seed must be an integer >= 0, got -3"),
        (
            {"protocol": "nope"},
            "data.protocol must be one of paper, held_out, whole_set, cifar_1k5k, cifar_10k50k, cnnh, got 'nope'",
        ),
        (
            {"protocol": "cifar_1k5k"},
            "data.protocol 'cifar_1k5k' is not available for digits; choose one of paper, cnnh",
        ),
        ({"transform": "caffe"}, "data.transform must be one of imagenet, native, got 'caffe'"),
        ({"val_size": 1.0}, "data.val_size must be a fraction in [0, 1) or a count >= 0"),
        ({"val_size": -2}, "data.val_size must be a fraction in [0, 1) or a count >= 0"),
        ({"image_size": 300, "resize": 256}, "data.image_size=300 must not exceed data.resize=256"),
        ({"pin_memory": "yes"}, "data.pin_memory must be true or false, got 'yes'"),
    ],
)
def test_bad_arguments_raise_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        DigitsDataModule(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_digits_metadata(digits):
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert digits.in_channels == 1 and digits.input_size == (8, 8)
    assert digits.eval_batch_size == 64
    assert len(digits.pool) == 1797 and digits.pool.n_train == 1437
    d = digits.describe()
    assert d["dataset"] == "digits" and d["sizes"]["query"] == 100 and d["sizes"]["database"] == 1437


def test_digits_sources_hold_the_sklearn_images(digits):
    ref = load_digits()
    # every pool image is one sklearn image (0..16 -> 0..255), with its label
    keys = {
        (img.tobytes(), int(t))
        for img, t in zip(np.round(ref.images * 255 / 16).astype(np.uint8), ref.target)
    }
    for p in range(0, 1797, 97):
        img = digits.pool.image(p)
        assert img.mode == "L" and img.size == (8, 8)
        assert (np.asarray(img).tobytes(), int(digits.pool.labels[p])) in keys
    assert len(digits.pool.test) == 360
    # the fixed test split is stratified: about 20% of each class
    ratio = np.bincount(digits.pool.test.labels, minlength=10) / np.bincount(ref.target, minlength=10)
    assert np.all(np.abs(ratio - 0.2) < 0.01)


def test_train_batches_shapes_and_dtypes(digits):
    images, labels, index = next(iter(digits.train_dataloader()))
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and index.dtype == torch.int64
    assert np.isin(index.numpy(), digits.splits["train"]).all()
    np.testing.assert_array_equal(labels.numpy(), digits.pool.labels[index.numpy()])


def test_loaders_cover_their_splits_in_order(digits):
    query_loader, database_loader = digits.predict_dataloader()
    for split, loader in (
        ("query", query_loader),
        ("database", database_loader),
        ("val", digits.val_dataloader()),
    ):
        index = torch.cat([b[2] for b in loader]).numpy()
        labels = torch.cat([b[1] for b in loader]).numpy()
        np.testing.assert_array_equal(index, digits.splits[split])
        np.testing.assert_array_equal(labels, digits.labels(split))
    assert len(digits.test_dataloader().dataset) == 360


def test_splits_disjoint_and_val_never_overlaps_query(digits):
    s = digits.splits
    assert np.intersect1d(s["val"], s["query"]).size == 0
    assert np.intersect1d(s["train"], s["query"]).size == 0
    assert np.intersect1d(s["val"], s["train"]).size == 0
    assert s["val"].max() < digits.pool.n_train  # val is carved from the training data


def test_splits_reproducible_with_seed():
    a, b, c = (DigitsDataModule(transform="native", n_queries=50, seed=s) for s in (4, 4, 5))
    for dm in (a, b, c):
        dm.setup()
    for k in a.splits:
        np.testing.assert_array_equal(a.splits[k], b.splits[k])
    assert not np.array_equal(a.splits["query"], c.splits["query"])


def test_setup_is_idempotent(digits):
    before = {k: v.copy() for k, v in digits.splits.items()}
    pool = digits.pool
    digits.setup("fit")
    digits.setup("test")
    assert digits.pool is pool
    for k in before:
        np.testing.assert_array_equal(before[k], digits.splits[k])


def test_sample_ids_and_labels(digits):
    ids = digits.sample_ids("query")
    assert len(ids) == 100 and all(i.startswith("digits/test/") for i in ids)
    p = int(digits.splits["database"][3])
    assert digits.sample_ids("database")[3] == f"digits/train/{p}"
    with pytest.raises(ConfigError, match="split must be one of"):
        digits.labels("everything")


def test_save_splits(digits, tmp_path):
    digits.save_splits(tmp_path / "run")
    with np.load(tmp_path / "run" / "splits.npz") as z:
        assert set(z.files) == {"train", "val", "test", "query", "database"}
        for k in z.files:
            assert z[k].dtype == np.int64
            np.testing.assert_array_equal(z[k], digits.splits[k])
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["class_names"] == digits.class_names
    assert classes["class_to_idx"]["7"] == 7
    assert (classes["dataset"], classes["protocol"], classes["seed"]) == ("digits", "paper", 1)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files left


def test_imagenet_transform_on_gray_digits():
    dm = DigitsDataModule(transform="imagenet", image_size=32, resize=36, n_queries=10, batch_size=4)
    assert dm.in_channels == 3 and dm.input_size == (32, 32)
    images, _, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32)
    # gray replicated to 3 channels: the channels differ only by the per-channel normalisation
    x = dm.eval_transform(dm.pool.image(0))
    raw = (
        x * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    )
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[1], raw[2], atol=1e-5, rtol=0)


def test_imagenet_transform_crops_and_flips_only_in_training():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    eval_t, train_t = (
        imagenet_transform(False, image_size=32, resize=40),
        imagenet_transform(True, image_size=32, resize=40),
    )
    torch.testing.assert_close(eval_t(img), eval_t(img))
    torch.manual_seed(0)
    outs = [train_t(img) for _ in range(6)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def _constructor_params(cls) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass.__module__.startswith("deephash"):
            names |= {
                p.name
                for p in inspect.signature(klass.__init__).parameters.values()
                if p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD
            }
    return names - {"self"}


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("digits", DigitsDataModule),
        ("mnist", MNISTDataModule),
        ("cifar10", CIFAR10DataModule),
        ("folder", FolderDataModule),
    ],
)
def test_hydra_configs_list_every_argument_and_instantiate(name, cls, tmp_path):
    data_cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert set(data_cfg.keys()) - {"_target_"} == _constructor_params(cls)
    if name == "folder":
        assert OmegaConf.is_missing(data_cfg, "root")
        write_image_tree(tmp_path / "images", per_class=2)
        data_cfg.root = str(tmp_path / "images")
    cfg = OmegaConf.create({"seed": 11, "paths": {"data_dir": str(tmp_path)}, "data": data_cfg})
    dm = instantiate(cfg.data)
    assert type(dm) is cls and dm.name == name and dm.seed == 11
    assert dm.transform == ("native" if name == "digits" else "imagenet")
    if name in ("mnist", "cifar10"):
        assert dm.root == str(tmp_path / name)


def test_datasets_pickle_for_worker_processes(digits):
    """Spawned DataLoader workers receive the dataset pickled: it must round-trip with its transform."""
    for train in (False, True):
        ds = digits.dataset("query", train=train)
        clone = pickle.loads(pickle.dumps(ds))
        torch.manual_seed(0)  # the same draw of the training augmentation for both
        image, label, index = clone[2]
        torch.manual_seed(0)
        expected = ds[2]
        torch.testing.assert_close(image, expected[0])
        assert (label, index) == expected[1:]


def test_in_memory_datasets_have_no_bad_images_and_refuse_to_exclude(tmp_path) -> None:
    """The unreadable-image hooks every datamodule offers are no-ops where there are no image files."""
    from deephash.retrieval.build import drop_unreadable

    dm = DigitsDataModule(seed=0, n_queries=100)
    dm.setup()
    before = {k: v.copy() for k, v in dm.splits.items()}
    dm.set_report_dir(tmp_path)
    assert dm.on_bad_image == "error" and dm.find_bad_images() == [] and dm.bad_images() == []
    assert drop_unreadable(dm) == [] and dm.exclude([]) == 0
    with pytest.raises(DataError, match="digits has no image files to leave out"):
        dm.exclude(["0"])
    assert all(np.array_equal(before[k], dm.splits[k]) for k in before)
    assert not any(tmp_path.iterdir())


# MNIST IDX files and CIFAR-10 pickle batches, each written in its release format
RELEASES = {
    "mnist": (write_mnist, MNISTDataModule, {}, "L", (28, 28), [str(d) for d in range(10)]),
    "cifar10": (
        write_cifar10,
        CIFAR10DataModule,
        {"verify_checksums": False},
        "RGB",
        (32, 32),
        CIFAR_CLASSES,
    ),
}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_files_load_pixel_exact_and_batch(name: str, tmp_path) -> None:
    write, cls, extra, mode, size, classes = RELEASES[name]
    written = write(tmp_path / name, train_per_class=11, test_per_class=5)
    dm = cls(root=str(tmp_path / name), transform="native", n_queries=20, batch_size=8, **extra)
    dm.setup()
    assert (len(dm.pool.train), len(dm.pool.test)) == (110, 50)
    np.testing.assert_array_equal(dm.pool.train.labels, written.train_labels)
    np.testing.assert_array_equal(dm.pool.test.labels, written.test_labels)
    for p in (0, 57, 109):  # across CIFAR-10's batch boundaries
        img = dm.pool.image(p)
        assert img.mode == mode and img.size == size
        np.testing.assert_array_equal(np.asarray(img), written.train_images[p])
    np.testing.assert_array_equal(np.asarray(dm.pool.image(110 + 7)), written.test_images[7])
    assert (dm.pool.sample_id(0), dm.pool.sample_id(110)) == (f"{name}/train/0", f"{name}/test/0")
    assert dm.class_names == classes and dm.num_classes == 10

    channels = 1 if mode == "L" else 3
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.shape == (8, channels, *size) and dm.in_channels == channels and dm.input_size == size
    np.testing.assert_array_equal(labels.numpy(), dm.pool.labels[index.numpy()])
    dm = cls(root=str(tmp_path / name), transform="imagenet", image_size=24, resize=28, n_queries=20, **extra)
    images, _, _ = next(iter(dm.encode_dataloader("query")))
    assert images.shape == (20, 3, 24, 24) and dm.in_channels == 3 and dm.input_size == (24, 24)
