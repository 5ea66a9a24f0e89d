"""make_splits: sizes, disjointness, reproducibility and errors of each protocol."""

from __future__ import annotations

import numpy as np
import pytest

from deephash.data.protocols import SPLITS, fit_splits, make_splits
from deephash.utils.errors import ConfigError


def _labels(per_class: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


TRAIN = _labels(30, seed=1)  # 300 training images
TEST = _labels(8, seed=2)  # 80 test images


def _check_common(splits: dict[str, np.ndarray], n_train: int) -> None:
    assert set(splits) == set(SPLITS)
    for name, idx in splits.items():
        assert idx.dtype == np.int64, name
        assert np.all(np.diff(idx) > 0), f"{name} not sorted/unique"
    assert np.intersect1d(splits["query"], splits["train"]).size == 0
    assert np.intersect1d(splits["val"], splits["train"]).size == 0
    assert np.intersect1d(splits["val"], splits["query"]).size == 0


def test_paper_protocol_sizes_and_membership():
    s = make_splits("paper", TRAIN, TEST, n_queries=50, val_size=0.2, seed=0)
    _check_common(s, len(TRAIN))
    n_train = len(TRAIN)
    assert len(s["query"]) == 50 and s["query"].min() >= n_train  # queries come from the test source
    np.testing.assert_array_equal(s["database"], np.arange(n_train))
    np.testing.assert_array_equal(s["test"], np.arange(n_train, n_train + len(TEST)))
    assert len(s["val"]) == 60 and len(s["train"]) == 240
    np.testing.assert_array_equal(np.union1d(s["train"], s["val"]), s["database"])


def test_paper_val_is_stratified():
    s = make_splits("paper", TRAIN, TEST, n_queries=10, val_size=0.2, seed=5)
    np.testing.assert_array_equal(np.bincount(TRAIN[s["val"]], minlength=10), np.full(10, 6))


def test_val_size_as_count_and_zero():
    s = make_splits("paper", TRAIN, TEST, n_queries=10, val_size=37, seed=0)
    assert len(s["val"]) == 37 and len(s["train"]) == 263
    s = make_splits("paper", TRAIN, TEST, n_queries=10, val_size=0, seed=0)
    assert len(s["val"]) == 0 and len(s["train"]) == 300


def test_val_falls_back_to_random_when_a_class_is_tiny():
    train = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has one image: sklearn cannot stratify
    s = make_splits("paper", train, np.array([0, 1, 2]), n_queries=2, val_size=5, seed=0)
    assert len(s["val"]) == 5 and len(s["train"]) == 36


def test_reproducible_with_seed_and_different_with_another():
    a = make_splits("paper", TRAIN, TEST, n_queries=30, val_size=0.1, seed=7)
    b = make_splits("paper", TRAIN, TEST, n_queries=30, val_size=0.1, seed=7)
    c = make_splits("paper", TRAIN, TEST, n_queries=30, val_size=0.1, seed=8)
    for k in SPLITS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["query"], c["query"])
    assert not np.array_equal(a["val"], c["val"])


def test_val_does_not_move_with_n_queries():
    a = make_splits("paper", TRAIN, TEST, n_queries=10, val_size=0.1, seed=3)
    b = make_splits("paper", TRAIN, TEST, n_queries=40, val_size=0.1, seed=3)
    np.testing.assert_array_equal(a["val"], b["val"])


def test_cifar_1k5k_scaled_down():
    labels = np.concatenate([TRAIN, TEST])
    s = make_splits("cifar_1k5k", TRAIN, TEST, n_queries=30, val_size=0.1, seed=0, train_per_class=12)
    _check_common(s, len(TRAIN))
    n_pool = len(labels)
    np.testing.assert_array_equal(np.bincount(labels[s["query"]], minlength=10), np.full(10, 3))
    training = np.union1d(s["train"], s["val"])
    np.testing.assert_array_equal(np.bincount(labels[training], minlength=10), np.full(10, 12))
    assert len(s["val"]) == 12
    np.testing.assert_array_equal(s["test"], s["query"])
    np.testing.assert_array_equal(s["database"], np.setdiff1d(np.arange(n_pool), s["query"]))
    assert np.isin(training, s["database"]).all()  # the database includes the training images
    # queries may come from either source
    assert s["query"].min() < len(TRAIN) <= s["query"].max()


def test_cifar_1k5k_default_sizes_on_cifar_shaped_labels():
    train, test = _labels(5000, seed=3), _labels(1000, seed=4)
    s = make_splits("cifar_1k5k", train, test, n_queries=1000, val_size=0, seed=0)
    assert (len(s["query"]), len(s["train"]), len(s["database"])) == (1000, 5000, 59000)


def test_cifar_10k50k():
    s = make_splits("cifar_10k50k", TRAIN, TEST, n_queries=1, val_size=0.1, seed=0)
    _check_common(s, len(TRAIN))
    n_train = len(TRAIN)
    np.testing.assert_array_equal(s["query"], np.arange(n_train, n_train + len(TEST)))
    np.testing.assert_array_equal(s["test"], s["query"])
    np.testing.assert_array_equal(s["database"], np.arange(n_train))
    assert len(s["val"]) == 30 and len(s["train"]) == 270


def test_held_out_is_the_paper_split():
    for seed in (0, 3):
        held_out = make_splits("held_out", TRAIN, TEST, n_queries=20, val_size=0.1, seed=seed)
        paper = make_splits("paper", TRAIN, TEST, n_queries=20, val_size=0.1, seed=seed)
        for name in SPLITS:
            np.testing.assert_array_equal(held_out[name], paper[name])


def test_whole_set_trains_on_and_searches_every_image():
    """Section 4.5: fine-tuned on the whole set, 1,000 random queries against the same whole set."""
    n_pool = len(TRAIN) + len(TEST)
    s = make_splits("whole_set", TRAIN, TEST, n_queries=50, val_size=0, seed=0)
    np.testing.assert_array_equal(s["database"], np.arange(n_pool))
    np.testing.assert_array_equal(s["train"], np.arange(n_pool))  # the test source is trained on too
    assert s["val"].size == 0
    assert len(s["query"]) == 50 and np.isin(s["query"], s["database"]).all()
    assert np.isin(s["query"], s["train"]).all()
    np.testing.assert_array_equal(s["test"], s["query"])
    # drawn from the whole pool, not only the test source
    assert s["query"].min() < len(TRAIN) <= s["query"].max()
    other = make_splits("whole_set", TRAIN, TEST, n_queries=50, val_size=0, seed=1)
    assert not np.array_equal(s["query"], other["query"])


def test_whole_set_val_is_carved_from_the_training_images_only():
    s = make_splits("whole_set", TRAIN, TEST, n_queries=20, val_size=38, seed=0)
    assert len(s["val"]) == 38 and len(s["train"]) == len(TRAIN) + len(TEST) - 38
    assert np.intersect1d(s["val"], s["train"]).size == 0
    np.testing.assert_array_equal(np.union1d(s["val"], s["train"]), s["database"])


def test_errors():
    with pytest.raises(ConfigError, match=r"data.n_queries=81 but the test set has only 80 images"):
        make_splits("paper", TRAIN, TEST, n_queries=81, val_size=0.1, seed=0)
    with pytest.raises(ConfigError, match=r"data.n_queries=381 but the whole set has only 380 images"):
        make_splits("whole_set", TRAIN, TEST, n_queries=381, val_size=0.1, seed=0)
    with pytest.raises(
        ConfigError, match=r"val_size=300 leaves no training images \(the training data has 300\)"
    ):
        make_splits("paper", TRAIN, TEST, n_queries=1, val_size=300, seed=0)
    with pytest.raises(ConfigError, match="divisible by the 10 classes, got 25"):
        make_splits("cifar_1k5k", TRAIN, TEST, n_queries=25, val_size=0.1, seed=0)
    with pytest.raises(ConfigError, match=r"needs 1 query \+ 40 train images of class 0, the pool has 38"):
        make_splits("cifar_1k5k", TRAIN, TEST, n_queries=10, val_size=0.1, seed=0, train_per_class=40)
    with pytest.raises(
        ConfigError,
        match="data.protocol must be one of paper, held_out, whole_set, cifar_1k5k, cifar_10k50k, cnnh, got 'x'",
    ):
        make_splits("x", TRAIN, TEST, n_queries=1, val_size=0.1, seed=0)


def test_cnnh_is_the_per_class_draw_with_its_own_fit_sets():
    """Xia et al. 2014: 100 queries per class, the other images the database, 500 labelled images per class of
    it the training set; supervised methods fit on the labelled subset, unsupervised ones on the database."""
    labels = np.concatenate([TRAIN, TEST])
    s = make_splits("cnnh", TRAIN, TEST, n_queries=30, val_size=0.1, seed=0, train_per_class=12)
    same = make_splits("cifar_1k5k", TRAIN, TEST, n_queries=30, val_size=0.1, seed=0, train_per_class=12)
    for name in SPLITS:
        np.testing.assert_array_equal(s[name], same[name])
    np.testing.assert_array_equal(np.bincount(labels[s["query"]], minlength=10), np.full(10, 3))
    labelled = np.union1d(s["train"], s["val"])
    np.testing.assert_array_equal(np.bincount(labels[labelled], minlength=10), np.full(10, 12))
    np.testing.assert_array_equal(s["database"], np.setdiff1d(np.arange(len(labels)), s["query"]))
    assert fit_splits("cnnh", supervised=True) == ("train", "val")
    assert fit_splits("cnnh", supervised=False) == ("database",)
    for protocol in ("paper", "cifar_1k5k", "whole_set"):
        assert fit_splits(protocol, supervised=True) == fit_splits(protocol, supervised=False) == ("train",)
    with pytest.raises(
        ConfigError, match="protocol cnnh needs data.n_queries divisible by the 10 classes, got 25"
    ):
        make_splits("cnnh", TRAIN, TEST, n_queries=25, val_size=0.1, seed=0)


def test_cnnh_on_mnist_shaped_labels():
    train, test = _labels(6000, seed=3), _labels(1000, seed=4)
    s = make_splits("cnnh", train, test, n_queries=1000, val_size=0, seed=0, train_per_class=500)
    assert (len(s["query"]), len(s["train"]), len(s["val"]), len(s["database"])) == (1000, 5000, 0, 69000)
