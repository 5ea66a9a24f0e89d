"""Image -> tensor transforms.

``imagenet`` is the paper's recipe (Caffe's ImageNet pipeline): warp to ``resize x resize``, random
``image_size`` crop + horizontal flip for training, centre crop for evaluation, ImageNet mean/std,
gray replicated to 3 channels. ``native`` keeps the dataset's size and channels: ToTensor + the
dataset's own mean/std.

``imagenet_tensor_transform`` / ``native_tensor_transform`` are their twins on ``uint8 (3, H, W)``
tensors (``torchvision.transforms.v2``), for images decoded on the accelerator (``data.decode_on_gpu``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORMS = ("imagenet", "native")

ImageTransform = Callable[[Image.Image], torch.Tensor]
TensorTransform = Callable[[torch.Tensor], torch.Tensor]


# transparent pixels are shown on white, as an image viewer or a web page shows them; every path that turns an
# image with an alpha channel into model input (training folders, queries, pixel baselines) goes through to_mode
BACKGROUND = (255, 255, 255)
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def upright(img: Image.Image) -> Image.Image:
    """``img`` as a viewer shows it: turned and flipped as its EXIF Orientation says (a phone's JPEG is often
    stored sideways with Orientation 6), the tag then removed. Changes ``img`` in place."""
    ImageOps.exif_transpose(img, in_place=True)
    return img


def on_background(img: Image.Image) -> Image.Image:
    """``img`` composited onto :data:`BACKGROUND` if it has an alpha channel (or a transparent palette
    entry), as RGB; otherwise ``img`` itself."""
    if img.mode not in ALPHA_MODES and not (img.mode == "P" and "transparency" in img.info):
        return img
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (gray is replicated to 3 channels)."""
    return to_mode(img, "RGB")


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in PIL mode ``mode`` (``"RGB"`` or ``"L"``).

    PIL's ``convert`` clips 16-bit, 32-bit and float pixels to 0..255: a 16-bit scan comes out nearly all
    white, a float image in [0, 1] nearly all black. Those modes are scaled to 8 bits first
    (:func:`eight_bit`). Transparency is composited onto :data:`BACKGROUND` first (:func:`on_background`)."""
    img = on_background(img)
    if img.mode == mode:
        return img
    if img.mode == "F" or img.mode.startswith("I"):  # "I", "I;16", "I;16B", ...
        img = Image.fromarray(eight_bit(np.asarray(img)), "L")
    return img.convert(mode)


def eight_bit(pixels: np.ndarray) -> np.ndarray:
    """Integer or float pixels -> uint8. Integers are read as 16-bit (0..65535 -> 0..255, the range of the
    16-bit PNG and TIFF files PIL opens in these modes); floats as [0, 1] when every value lies there, else
    as 0..255. NaN counts as 0; whatever is out of range is clipped."""
    if pixels.dtype.kind == "f":
        values = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        unit = values.size > 0 and values.min() >= 0.0 and values.max() <= 1.0
        scaled = values * 255.0 if unit else values
    else:
        scaled = pixels.astype(np.float64) / 257.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def imagenet_transform(train: bool, *, image_size: int = 227, resize: int = 256) -> ImageTransform:
    """The paper's preprocessing; output ``(3, image_size, image_size)`` float."""
    crop = [T.RandomCrop(image_size), T.RandomHorizontalFlip()] if train else [T.CenterCrop(image_size)]
    return T.Compose(
        [
            T.Lambda(to_rgb),
            # a square warp like Caffe's 256x256 ImageNet images, not a shorter-side resize
            T.Resize((resize, resize)),
            *crop,
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def native_transform(
    train: bool,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool = False,
    size: tuple[int, int] | None = None,
    translate: float = 0.0,
    rotate: float = 0.0,
    scale: float = 0.0,
) -> ImageTransform:
    """ToTensor + per-dataset normalisation, channels as the source gives them.

    ``size`` resizes (only for datasets without a native size, e.g. image folders); ``flip`` adds a
    random horizontal flip in training (right for natural images, wrong for digits). In training, a random
    affine map shifts by up to ``translate`` of the image (a pixel on 8x8 digits), rotates by up to
    ``rotate`` degrees and scales by a factor in ``[1 - scale, 1 + scale]``.
    """
    steps: list[Callable] = []
    if size is not None:
        steps.append(T.Resize(size))
    if train and flip:
        steps.append(T.RandomHorizontalFlip())
    if train and (translate > 0 or rotate > 0 or scale > 0):
        shift = (translate, translate) if translate > 0 else None
        zoom = (1 - scale, 1 + scale) if scale > 0 else None
        steps.append(T.RandomAffine(degrees=rotate, translate=shift, scale=zoom))
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def imagenet_tensor_transform(train: bool, *, image_size: int = 227, resize: int = 256) -> TensorTransform:
    """``imagenet_transform`` on a ``uint8 (3, H, W)`` tensor on any device; output ``(3, image_size,
    image_size)`` float. The antialiased bilinear resize matches PIL's to within a grey level."""
    crop = [v2.RandomCrop(image_size), v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.Resize((resize, resize), antialias=True),
            *crop,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def native_tensor_transform(
    train: bool,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool = False,
    size: tuple[int, int] | None = None,
) -> TensorTransform:
    """``native_transform`` on a ``uint8 (C, H, W)`` tensor on any device."""
    steps: list[Callable] = []
    if size is not None:
        steps.append(v2.Resize(size, antialias=True))
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
