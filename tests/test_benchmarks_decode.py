"""The decoding benchmark (deephash/benchmarks/decode.py): decoding in the loader's workers against on the
device (``data.decode_on_gpu``), run here with the CPU as the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from deephash import bench
from deephash.benchmarks.decode import write_jpegs
from deephash.data.transforms import IMAGENET_STD


def test_write_jpegs_makes_readable_photos_in_class_folders(tmp_path: Path) -> None:
    total = write_jpegs(tmp_path, 10, 3, 64)
    files = sorted(tmp_path.glob("class_*/*.jpg"))
    assert len(files) == 10 and len({f.parent for f in files}) == 3
    assert total == sum(f.stat().st_size for f in files)
    with Image.open(files[0]) as image:
        assert image.format == "JPEG" and image.size == (64, 48) and image.mode == "RGB"


def test_decode_benchmark_runs_both_paths_on_the_same_images(tmp_path: Path) -> None:
    """Both paths decode every database image; on the CPU both run libjpeg, so the batches agree to the
    resizers' rounding (one grey level); the images are removed afterwards."""
    out = tmp_path / "decode.json"
    work = tmp_path / "work"
    argv = ["decode", "--quick", "--device", "cpu", "--num-workers", "0", "--workdir", str(work)]
    assert bench.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    r = result["decode"]
    assert r["device"] == "cpu" and r["images"] == 92  # 96 images less the held-out test split
    assert r["workers_images_per_s"] > 0 and r["device_images_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["device_images_per_s"] / r["workers_images_per_s"])
    assert 0 < r["max_abs_difference"] <= 1.01 / 255 / min(IMAGENET_STD)
    assert result["config"]["mean_jpeg_kb"] > 0 and list(work.iterdir()) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n-images", "7", "--n-classes", "2"], "--n-images must be at least 4 per class (8), got 7"),
        (["--num-workers", "-1"], "--num-workers must be 0 or more, got -1"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    ],
)
def test_decode_benchmark_refuses_bad_options_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["decode", *args, "--workdir", str(tmp_path), "--out", str(tmp_path / "d.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_decode_benchmark_without_a_gpu_stops_before_writing_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(
            ["decode", "--device", "cuda", "--workdir", str(tmp_path), "--out", str(tmp_path / "d.json")]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: device cuda requested but torch sees no CUDA device")
    assert list(tmp_path.iterdir()) == []
