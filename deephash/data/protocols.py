"""Evaluation protocols: which pool items are train, val, test, query and database.

Pool indices: ``0..n_train-1`` are the train source, ``n_train..n_train+n_test-1`` the test source.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

PROTOCOLS = ("paper", "held_out", "whole_set", "cifar_1k5k", "cifar_10k50k", "cnnh")
SPLITS = ("train", "val", "test", "query", "database")
# protocols whose training images are a labelled subset drawn per class (data.train_per_class)
PER_CLASS_PROTOCOLS = ("cifar_1k5k", "cnnh")


def make_splits(
    protocol: str,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    *,
    n_queries: int,
    val_size: float | int,
    seed: int,
    train_per_class: int = 500,
) -> dict[str, np.ndarray]:
    """Sorted ``int64`` pool indices for each of ``SPLITS``; the same inputs give the same splits.

    * ``paper`` (Lin et al., sections 4.3-4.4): query = ``n_queries`` random test images, database = the
      whole training set, val = ``val_size`` of the training set, train = the rest, test = test set.
    * ``held_out``: the same split, named for image folders, whose test source is held out of the images.
    * ``whole_set`` (section 4.5, Yahoo-1M): the whole pool is trained on (less ``val_size``) and is the
      database; query = test = ``n_queries`` random images of it, so every query is in the database (it
      finds itself at distance 0) and was trained on.
    * ``cifar_1k5k``: from the whole pool, query = ``n_queries / num_classes`` random images per class,
      train = ``train_per_class`` per class from the rest (val carved from it), database = all but
      the queries, test = query.
    * ``cifar_10k50k``: query = test = the whole test set, database = the train set (``n_queries`` unused).
    * ``cnnh`` (Xia et al., AAAI 2014, the protocol of the compared methods in the paper's figures 4 and 6, for
      MNIST and CIFAR-10): the same draw as ``cifar_1k5k``: query = test = ``n_queries / num_classes`` random
      images per class of the whole pool, database = every other image, train (+ val) = the labelled subset of
      ``train_per_class`` images per class drawn from the database. What a shallow method is fitted on differs
      (:func:`fit_splits`): supervised methods on the labelled subset, unsupervised ones on the database.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    n_train, n_test = len(train_labels), len(test_labels)
    n_pool = n_train + n_test
    # independent streams: changing n_queries does not move the val split and vice versa
    query_rng = np.random.default_rng([seed, 0])
    test_part = np.arange(n_train, n_pool, dtype=np.int64)

    if protocol in ("paper", "held_out"):
        if n_queries > n_test:
            raise ConfigError(f"data.n_queries={n_queries} but the test set has only {n_test} images")
        query = query_rng.choice(test_part, size=n_queries, replace=False)
        training = np.arange(n_train, dtype=np.int64)
        database, test = training, test_part
    elif protocol == "whole_set":
        if n_queries > n_pool:
            raise ConfigError(f"data.n_queries={n_queries} but the whole set has only {n_pool} images")
        training = np.arange(n_pool, dtype=np.int64)
        query = query_rng.choice(training, size=n_queries, replace=False)
        database, test = training, query
    elif protocol == "cifar_10k50k":
        training = np.arange(n_train, dtype=np.int64)
        query, database, test = test_part, training, test_part
    elif protocol in PER_CLASS_PROTOCOLS:
        query, training = _per_class_draw(
            protocol, np.concatenate([train_labels, test_labels]), n_queries, train_per_class, query_rng
        )
        database = np.setdiff1d(np.arange(n_pool, dtype=np.int64), query)
        test = query
    else:
        raise ConfigError(f"data.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")

    all_labels = np.concatenate([train_labels, test_labels])
    val, train = _carve_val(training, all_labels[training], val_size, seed)
    splits = {"train": train, "val": val, "test": test, "query": query, "database": database}
    return {k: np.sort(np.asarray(splits[k], dtype=np.int64)) for k in SPLITS}


def fit_splits(protocol: str, supervised: bool) -> tuple[str, ...]:
    """The splits a shallow method is fitted on under ``protocol`` (the baseline runner takes their union).

    ``cnnh`` follows Xia et al. (AAAI 2014): a supervised method learns from the labelled subset (train and val,
    every labelled image: a shallow method has no use for a validation split) with its labels, an unsupervised
    one from the database. Every other protocol fits both kinds on the train split.
    """
    if protocol == "cnnh":
        return ("train", "val") if supervised else ("database",)
    return ("train",)


def _per_class_draw(
    protocol: str, labels: np.ndarray, n_queries: int, train_per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n_queries / num_classes`` query and ``train_per_class`` train indices per class, disjoint."""
    classes = np.unique(labels)
    if n_queries % len(classes):
        raise ConfigError(
            f"protocol {protocol} needs data.n_queries divisible by the {len(classes)} classes, got {n_queries}"
        )
    check_int(train_per_class, "data.train_per_class")
    per_class = n_queries // len(classes)
    query, training = [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < per_class + train_per_class:
            raise ConfigError(
                f"protocol {protocol} needs {per_class} query + {train_per_class} train images of class {c}, "
                f"the pool has {len(members)}"
            )
        query.append(members[:per_class])
        training.append(members[per_class : per_class + train_per_class])
    return np.concatenate(query), np.sort(np.concatenate(training))


def _carve_val(
    training: np.ndarray, labels: np.ndarray, val_size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``training`` into (val, train), stratified by class when every class allows it."""
    n = len(training)
    n_val = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if n_val == 0:
        return np.empty(0, dtype=np.int64), training
    if n_val >= n:
        raise ConfigError(f"data.val_size={val_size} leaves no training images (the training data has {n})")
    random_state = int(np.random.default_rng([seed, 1]).integers(2**32))
    try:
        train, val = train_test_split(training, test_size=n_val, stratify=labels, random_state=random_state)
    except ValueError:
        # a class with a single image, or fewer val slots than classes: fall back to a plain random draw
        perm = np.random.default_rng(random_state).permutation(training)
        val, train = perm[:n_val], perm[n_val:]
    return np.asarray(val, dtype=np.int64), np.asarray(train, dtype=np.int64)
