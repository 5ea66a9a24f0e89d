"""Report writers: files exist, PNGs decode to the expected size, CSVs hold the header and rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from deephash.evaluation import metrics as M
from deephash.evaluation import plots as P


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


def test_precision_curves_csv_and_png(tmp_path):
    ks = np.arange(1, 11)
    curves = {
        "hamming": (ks, np.linspace(0.9, 0.8, 10)),
        "hierarchical": (ks, np.linspace(0.95, 0.9, 10)),
        "lsh": (np.array([1, 5, 20]), np.array([0.3, 0.25, 0.2])),
    }
    csv_path, png_path = P.write_precision_curves(
        curves, tmp_path / "p.csv", tmp_path / "sub" / "p.png", "CIFAR-10, 48 bits", log_x=True
    )
    rows = read_csv(csv_path)
    assert rows[0] == ["k", "hamming", "hierarchical", "lsh"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 11)) + [20]
    assert float(rows[1][1]) == pytest.approx(0.9)
    assert rows[5][3] == "0.250000" and rows[2][3] == ""  # k=5 present for lsh, k=2 absent
    assert rows[-1][1:] == ["", "", "0.200000"]
    assert png_size(png_path) == (640, 480)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_precision_curves_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    curves = {
        "hamming": (np.array([1, 10, 100]), rng.random(3)),
        "lsh (f7)": (np.array([10, 1000]), rng.random(2)),  # a grid of its own: empty cells elsewhere
    }
    P.write_precision_curves(curves, tmp_path / "p.csv", tmp_path / "p.png")
    read = P.read_precision_curves(tmp_path / "p.csv")
    assert list(read) == ["hamming", "lsh (f7)"]
    for name, (ks, precision) in curves.items():
        assert read[name][0].dtype == np.int64 and read[name][0].tolist() == ks.tolist()
        np.testing.assert_allclose(read[name][1], precision, atol=1e-6)
    assert P.read_precision_curves(tmp_path / "missing.csv") == {}


def test_pr_curve_from_metrics(tmp_path):
    rng = np.random.default_rng(0)
    bits = 8
    dist = rng.integers(0, bits + 1, (5, 40))
    rel = rng.random((5, 40)) < 0.3
    curve = M.pr_curve_hamming(dist, rel, bits)
    csv_path, png_path = P.write_pr_curve(
        {"ours": curve, "itq": curve}, tmp_path / "pr.csv", tmp_path / "pr.png"
    )
    rows = read_csv(csv_path)
    assert rows[0] == ["mode", "radius", "precision", "recall"]
    assert len(rows) == 1 + 2 * (bits + 1)
    assert rows[1][:2] == ["ours", "0"] and rows[-1][:2] == ["itq", str(bits)]
    assert float(rows[3][3]) == pytest.approx(curve["recall"][2], abs=1e-6)
    assert png_size(png_path) == (1000, 420)
    with pytest.raises(ValueError, match="needs keys radius, precision, recall"):
        P.write_pr_curve({"ours": {"radius": curve["radius"]}}, tmp_path / "x.csv", tmp_path / "x.png")


def test_retrieval_grid_frames_right_and_wrong(tmp_path):
    rng = np.random.default_rng(0)
    gray = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(2)]
    color = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(10)]
    results = [color, color[:4]]  # a short row leaves blank cells
    result_labels = [[3, 3, 1, 3, 0, 3, 3, 2, 3, 3], [1, 2, 1, 1]]
    path = P.write_retrieval_grid(
        gray, [3, 1], results, result_labels, tmp_path / "grid.png", class_names=[str(i) for i in range(4)]
    )
    width, height = png_size(path)
    assert (width, height) == (int(1.1 * 11 * 100), int(1.3 * 2 * 100))
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)

    def has(hex_color: str) -> bool:
        rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
        return bool((np.abs(pixels - rgb).sum(1) <= 6).sum() > 50)

    assert has(P.RIGHT) and has(P.WRONG) and has(P.QUERY)


def test_retrieval_grid_only_right_has_no_red(tmp_path):
    image = np.full((16, 16, 3), 128, dtype=np.uint8)
    path = P.write_retrieval_grid(
        [image], [0], [[image] * 3], [[0, 0, 0]], tmp_path / "g.png", title="all right"
    )
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    red = np.array([int(P.WRONG[i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - red).sum(1) <= 6).sum() == 0


def test_retrieval_grid_rejects_mismatched_rows(tmp_path):
    image = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 result images but 1 result labels"):
        P.write_retrieval_grid([image], [0], [[image, image]], [[0]], tmp_path / "g.png")
    with pytest.raises(ValueError, match="1 query images, 2 query labels"):
        P.write_retrieval_grid([image], [0, 1], [[image]], [[0]], tmp_path / "g.png")


def test_bit_balance_packed_and_bool(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.random((50, 12)) < np.linspace(0.1, 0.9, 12)
    png = P.write_bit_balance(codes, tmp_path / "bits.png", tmp_path / "bits.csv")
    rows = read_csv(tmp_path / "bits.csv")
    assert rows[0] == ["bit", "fraction_ones"] and len(rows) == 13
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], codes.mean(0), atol=1e-6)
    assert png_size(png) == (640, 360)

    P.write_bit_balance(np.packbits(codes, axis=1), tmp_path / "packed.png", tmp_path / "packed.csv", bits=12)
    assert read_csv(tmp_path / "packed.csv") == rows
    with pytest.raises(ValueError, match="pass bits"):
        P.write_bit_balance(np.packbits(codes, axis=1), tmp_path / "bad.png")
