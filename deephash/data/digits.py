"""scikit-learn's bundled 8x8 digits (1,797 images, 16 gray levels): a tiny dataset that needs no download."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from deephash.data.base import RetrievalDataModule
from deephash.data.sources import ArraySource

TEST_SIZE = 360
SPLIT_SEED = 0  # the train/test split is a property of the dataset, fixed like MNIST's


class DigitsDataModule(RetrievalDataModule):
    """``load_digits`` split once into 1,437 train / 360 test images (stratified, fixed seed)."""

    name = "digits"
    protocols = ("paper", "cnnh")
    native_channels = 1
    native_size = (8, 8)
    native_mean = (0.3053,)
    native_std = (0.3759,)
    native_translate = 0.125  # random one-pixel shifts in training, for the small CNN's test accuracy

    def _load_sources(self) -> tuple[ArraySource, ArraySource, list[str]]:
        digits = load_digits()
        # 0..16 gray levels -> 0..255 for PIL
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
        labels = digits.target.astype(np.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
        )
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        train = ArraySource(images[train_idx], labels[train_idx], "digits/train")
        test = ArraySource(images[test_idx], labels[test_idx], "digits/test")
        return train, test, [str(d) for d in range(10)]
