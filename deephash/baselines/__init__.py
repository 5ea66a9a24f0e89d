"""Classical hashing baselines the paper compares against (figures 4 and 6): LSH, PCAH, ITQ, SH."""

from deephash.baselines.base import BaseHash, HashMethod, LinearHash
from deephash.baselines.features import flatten_images
from deephash.baselines.itq import ITQ
from deephash.baselines.lsh import LSH
from deephash.baselines.pcah import PCAH
from deephash.baselines.registry import METHODS, build_method, load_method
from deephash.baselines.sh import SH

__all__ = [
    "BaseHash",
    "HashMethod",
    "LinearHash",
    "LSH",
    "PCAH",
    "ITQ",
    "SH",
    "METHODS",
    "build_method",
    "load_method",
    "flatten_images",
]
