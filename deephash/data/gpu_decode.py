"""Decoding on the accelerator (``data.decode_on_gpu``): workers read files, the device decodes them.

A JPEG item is its encoded bytes as a numpy ``uint8`` array: numpy, so Lightning's batch transfer leaves
it in host memory, where ``decode_jpeg(device="cuda")`` (nvJPEG) reads it, upright as its EXIF orientation
says. Any other format is decoded in the worker by PIL, as on the CPU path (upright, transparency on the
background of ``transforms.to_mode``), into a ``uint8 (3, H, W)`` tensor, which the transfer moves to the
device. The datamodule's ``on_after_batch_transfer``
hook calls :func:`decode_batch`: one batched ``decode_jpeg`` on the labels' device, then the tensor
transform per image. With ``device="cpu"`` the same code runs without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.functional import pil_to_tensor

from deephash.data.sources import load_rgb
from deephash.data.transforms import TensorTransform
from deephash.utils.errors import DataError

JPEG_MAGIC = b"\xff\xd8\xff"
EncodedImage = np.ndarray | torch.Tensor  # JPEG bytes (n,) uint8, or a decoded image (3, H, W) uint8


def read_encoded(path: str) -> EncodedImage:
    """The item for ``path``: JPEG bytes to decode on the device, any other image decoded here."""
    try:
        data = read_file(path)
    except RuntimeError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    if data.numel() == 0:
        raise DataError(f"cannot read image {path}: empty file (0 bytes)")
    if bytes(data[:3].tolist()) == JPEG_MAGIC:
        return data.numpy()
    # PNG, BMP, TIFF, 16-bit...: read as on the CPU path (upright, transparency on the background); DataError
    # if unreadable
    return pil_to_tensor(load_rgb(path))


def collate_encoded(
    items: list[tuple[EncodedImage, int, int]],
) -> tuple[list[EncodedImage], torch.Tensor, torch.Tensor]:
    """``(images (list of B), labels (B,) int64, index (B,) int64)``: images differ in size, so no stack."""
    return (
        [item[0] for item in items],
        torch.tensor([item[1] for item in items], dtype=torch.int64),
        torch.tensor([item[2] for item in items], dtype=torch.int64),
    )


def is_encoded_batch(batch: object) -> bool:
    return isinstance(batch, (list, tuple)) and len(batch) == 3 and isinstance(batch[0], list)


def decode_images(
    images: list[EncodedImage], device: torch.device | str
) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """``uint8 (3, H, W)`` images on ``device`` (None where decoding failed) and ``{position: reason}``."""
    out: list[torch.Tensor | None] = [
        None if isinstance(img, np.ndarray) else img.to(device, non_blocking=True) for img in images
    ]
    reasons: dict[int, str] = {}
    jpegs = [k for k, img in enumerate(images) if isinstance(img, np.ndarray)]
    if not jpegs:
        return out, reasons
    data = [torch.from_numpy(images[k]) for k in jpegs]
    try:
        decoded: list[torch.Tensor | None] = list(
            decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        )
    except RuntimeError:  # one bad file fails the whole batched call: decode one by one to find it
        decoded = []
        for k, d in zip(jpegs, data):
            image, reason = _decode_one(d, device)
            decoded.append(image)
            if reason:
                reasons[k] = reason
    for k, image in zip(jpegs, decoded):
        out[k] = image
    return out, reasons


def _decode_one(data: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor | None, str]:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True), ""
    except RuntimeError as e:
        error = e
    if torch.device(device).type != "cpu":  # nvJPEG rejects some files libjpeg-turbo reads
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True).to(device), ""
        except RuntimeError as e:
            error = e
    # torchvision's messages read "decode_jpeg, <source file>:<line>, <reason>"
    return None, str(error).strip().splitlines()[0].split(", ")[-1]


def decode_batch(
    batch: tuple[list[EncodedImage], torch.Tensor, torch.Tensor],
    transform: TensorTransform,
    *,
    on_bad_image: str,
    root: str,
    sample_id: Callable[[int], str],
    record: Callable[[str, str], None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode and transform a batch of encoded items on the device of its labels.

    Returns ``(images (B, 3, h, w) float, labels (B,), index (B,))``. Under ``on_bad_image="skip"`` an item
    that fails to decode is recorded and replaced by the next decodable item of the batch (its image,
    label and index), so the batch keeps its size; under ``"error"`` it raises DataError naming the file.
    """
    items, labels, index = batch
    images, reasons = decode_images(items, labels.device)
    if reasons:
        bad = sorted(reasons)
        if on_bad_image == "error":
            path = os.path.join(root, sample_id(int(index[bad[0]])))
            raise DataError(f"cannot read image {path}: {reasons[bad[0]]}")
        for k in bad:
            record(sample_id(int(index[k])), reasons[k])
        good = [k for k, img in enumerate(images) if img is not None]
        if not good:
            path = os.path.join(root, sample_id(int(index[bad[0]])))
            raise DataError(f"no image of a batch could be decoded; first: {path}: {reasons[bad[0]]}")
        take = [
            k if images[k] is not None else next((g for g in good if g > k), good[0])
            for k in range(len(images))
        ]
        images = [images[k] for k in take]
        rows = torch.tensor(take, device=labels.device)
        labels, index = labels[rows], index[rows]
    return torch.stack([transform(img) for img in images]), labels, index
