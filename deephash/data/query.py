"""Preprocessing of user query images, reproducible from an index manifest alone.

An index stores the evaluation preprocessing of the datamodule it was built from (``preprocess_spec``),
so ``deephash-search`` can turn any image file into the tensor the model saw, without the dataset.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from deephash.data.transforms import ImageTransform, imagenet_transform, native_transform, to_mode, upright
from deephash.utils.errors import DataError


def preprocess_spec(datamodule: Any) -> dict[str, Any]:
    """What the evaluation transform of ``datamodule`` does, as plain JSON-able values."""
    native = datamodule.transform == "native"
    size = datamodule.native_size if datamodule.native_size is not None else (datamodule.image_size,) * 2
    return {
        "transform": datamodule.transform,
        "channels": int(datamodule.in_channels),
        "image_size": int(datamodule.image_size),
        "resize": int(datamodule.resize),
        "size": list(size) if native else None,
        "mean": list(datamodule.native_mean) if native else None,
        "std": list(datamodule.native_std) if native else None,
    }


def query_transform(spec: dict[str, Any]) -> ImageTransform:
    """PIL image of any mode and size -> the model's input tensor, as described by ``spec``."""
    if spec["transform"] == "imagenet":
        return imagenet_transform(False, image_size=spec["image_size"], resize=spec["resize"])
    mode = "L" if spec["channels"] == 1 else "RGB"
    return T.Compose(
        [
            T.Lambda(lambda img: to_mode(img, mode)),
            T.Resize(tuple(spec["size"])),
            native_transform(False, mean=spec["mean"], std=spec["std"]),
        ]
    )


def load_query_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, upright as its EXIF orientation says (as the datamodules read their
    images); a clear DataError names the file otherwise.

    An image larger than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels) is
    refused before it is decoded: a small file can declare a size whose decoding would exhaust memory."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise DataError(
                f"query {path} is a folder: pass image files (a shell glob such as {path}/*.jpg does), or index "
                "the folder with deephash-index build images=<folder>"
            )
        raise DataError(f"query image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return upright(img.copy())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(
            f"query image {path} is too large to decode safely ({_pixels(err)}; at most "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels); resize it first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(
            f"cannot read query image {path}: {err} (expected a JPEG/PNG/BMP/... image)"
        ) from None


def _pixels(err: BaseException) -> str:
    """ "N pixels" from PIL's decompression-bomb message ("Image size (N pixels) exceeds ...")."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


def preprocess_queries(paths: list[str], spec: dict[str, Any]) -> torch.Tensor:
    """(q, C, H, W) float batch of the given image files; every file is checked before any is used."""
    images = [load_query_image(p) for p in paths]
    transform = query_transform(spec)
    return torch.stack([transform(img) for img in images])
