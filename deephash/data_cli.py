"""Entry point: ``deephash-data mnist --from-pickle mnist.pkl.gz [--root DIR]``.

Imports a dataset from a file already on disk into the layout its datamodule reads; the work is
:func:`deephash.data.mnist_pickle.import_mnist_pickle`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from deephash.cli import ArgumentParser, accepts_version, exit_on_user_error
from deephash.data.mnist_pickle import import_mnist_pickle, matches_official


def default_mnist_root() -> str:
    """``$DEEPHASH_DATA/mnist`` (``data/mnist`` without it): where ``data=mnist`` looks by default."""
    return os.path.join(os.environ.get("DEEPHASH_DATA", "data"), "mnist")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="deephash-data", description=__doc__.split("\n\n")[1].strip())
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    mnist = datasets.add_parser(
        "mnist",
        help="MNIST from the classic mnist.pkl.gz (train 50k / valid 10k / test 10k, floats = pixel / 256)",
    )
    mnist.add_argument("--from-pickle", required=True, metavar="PATH", help="the gzipped pickle to import")
    mnist.add_argument(
        "--root",
        default=None,
        help="dataset root; writes ROOT/MNIST/raw/*-ubyte (default: $DEEPHASH_DATA/mnist, else data/mnist)",
    )
    return parser


@accepts_version("deephash-data")
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = args.root if args.root is not None else default_mnist_root()
    counts = import_mnist_pickle(args.from_pickle, root)
    raw = os.path.join(root, "MNIST", "raw")
    official = "identical to" if matches_official(raw) else "not byte-identical to"
    print(
        f"wrote {counts['train']} training and {counts['test']} test images to {raw} ({official} the official MNIST files)"
    )
    print(f"train with: python -m deephash.train data=mnist data.root={root} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
