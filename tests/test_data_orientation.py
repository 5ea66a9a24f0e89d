"""Images are read as a viewer shows them: upright as their EXIF orientation says, transparency composited onto
the documented background, the same way for training folders, queries and pixel baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deephash.baselines.run import pixel_features
from deephash.data import FolderDataModule
from deephash.data.query import load_query_image, preprocess_spec, query_transform
from deephash.data.sources import load_rgb
from deephash.data.transforms import BACKGROUND

ORIENTATION = 0x0112


def _upright() -> Image.Image:
    """24 wide, 16 high: a light top band over a dark rest, so a sideways or flipped reading shows."""
    pixels = np.full((16, 24, 3), 40, np.uint8)
    pixels[:8] = 220
    return Image.fromarray(pixels)


def _save_sideways(path: Path) -> None:
    """The upright picture as a phone stores it: pixels turned 90 degrees counter-clockwise, EXIF Orientation 6
    (turn clockwise to view)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    _upright().transpose(Image.Transpose.ROTATE_90).save(path, quality=100, subsampling=0, exif=exif)


def _save_alpha_drawing(path: Path) -> None:
    """A black square drawn only in the alpha channel (every colour value 0), as logos and sketches are."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _save_sideways(root / name / f"phone{i}.jpg")
            _save_alpha_drawing(root / name / f"logo{i}.png")
    return root


def _close(image: Image.Image, expected: Image.Image) -> bool:
    a, b = np.asarray(image, np.int16), np.asarray(expected.convert(image.mode), np.int16)
    return a.shape == b.shape and float(np.abs(a - b).mean()) <= 4  # JPEG's ringing at the band's edge


def test_a_sideways_jpeg_is_read_upright_by_the_folder_and_as_a_query(folder: Path) -> None:
    path = folder / "a" / "phone0.jpg"
    with Image.open(path) as stored:
        assert stored.size == (16, 24)  # the file itself is sideways
    assert _close(load_rgb(str(path)), _upright())
    query = load_query_image(path)
    assert query.size == (24, 16) and _close(query.convert("RGB"), _upright())


def test_transparency_is_composited_onto_the_background_not_dropped(folder: Path) -> None:
    """An alpha-only drawing was a blank (all black) square; on white it is a black square on white."""
    assert BACKGROUND == (255, 255, 255)
    pixels = np.asarray(load_rgb(str(folder / "a" / "logo0.png")))
    assert (pixels[6, 6] == 0).all() and (pixels[0, 0] == 255).all()


@pytest.mark.parametrize("transform", ["native", "imagenet"])
def test_queries_are_preprocessed_as_the_folder_datamodule_evaluates(folder: Path, transform: str) -> None:
    dm = FolderDataModule(
        root=str(folder), transform=transform, image_size=12, resize=14, n_queries=2, test_fraction=0.25
    )
    dm.setup()
    to_query = query_transform(preprocess_spec(dm))
    for p in range(len(dm.pool)):
        path = folder / dm.pool.sample_id(p)
        assert torch.equal(to_query(load_query_image(path)), dm.eval_transform(dm.pool.image(p))), path


def test_pixel_baselines_see_the_upright_image(folder: Path, tmp_path: Path) -> None:
    upright_root = tmp_path / "upright"
    for name in ("a", "b"):
        (upright_root / name).mkdir(parents=True)
        for i in range(4):
            _upright().save(upright_root / name / f"phone{i}.png")
    features = []
    for root in (folder, upright_root):
        dm = FolderDataModule(
            root=str(root), transform="native", image_size=12, n_queries=2, test_fraction=0.25
        )
        dm.setup()
        phones = np.array([p for p in range(len(dm.pool)) if "phone" in dm.pool.sample_id(p)])
        features.append(pixel_features(dm, phones, (16, 24)).astype(np.int16))
    assert features[0].shape == features[1].shape and np.abs(features[0] - features[1]).mean() <= 4
