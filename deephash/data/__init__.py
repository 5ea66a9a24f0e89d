"""Data stage: datamodules over a pool (train source + test source) split by an evaluation protocol."""

from deephash.data.base import RetrievalDataModule, SplitDataset
from deephash.data.cifar10 import CIFAR10DataModule
from deephash.data.digits import DigitsDataModule
from deephash.data.folder import FolderDataModule
from deephash.data.mnist import MNISTDataModule
from deephash.data.protocols import PROTOCOLS, SPLITS, make_splits
from deephash.data.transforms import imagenet_transform, native_transform

__all__ = [
    "RetrievalDataModule",
    "SplitDataset",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FolderDataModule",
    "MNISTDataModule",
    "PROTOCOLS",
    "SPLITS",
    "make_splits",
    "imagenet_transform",
    "native_transform",
]
