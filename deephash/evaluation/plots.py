"""Report writers: precision curves (and their reader), Hamming precision-recall, retrieval grids, bit balance.

Figures are drawn on a bare ``matplotlib.figure.Figure`` rendered by Agg (no pyplot, no global
state, safe without a display) and written atomically (temp name + rename).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from deephash.evaluation.metrics import bit_balance
from deephash.utils.io import atomic_write_bytes, atomic_write_text

RIGHT, WRONG, QUERY = "#2ca02c", "#d62728", "#1f77b4"
PathLike = str | os.PathLike


def write_precision_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    csv_path: PathLike,
    png_path: PathLike,
    title: str = "Precision vs number of retrieved images",
    log_x: bool = False,
    spread: Mapping[str, np.ndarray] | None = None,
    formats: Sequence[str] = ("png",),
) -> tuple[Path, Path]:
    """Precision@k curves of several modes or baselines (the paper's figures 4 and 6).

    curves: ``{mode: (ks (m,) int, precision (m,) float)}``. The CSV has a column ``k`` (union of
    all grids, ascending) then one column per mode, empty where a mode lacks that k. spread: ``{mode:
    std (m,)}``, drawn as a band around the curve (a mean over seeds). formats: the figure's formats, the
    first written to ``png_path``, the others beside it (``svg``, ``pdf``).
    """
    curves = {name: _curve(name, ks, p) for name, (ks, p) in _non_empty(curves).items()}
    grid = np.unique(np.concatenate([ks for ks, _ in curves.values()]))
    table = {name: dict(zip(ks.tolist(), p.tolist())) for name, (ks, p) in curves.items()}
    rows = [[int(k)] + [_fmt(table[name].get(int(k))) for name in curves] for k in grid]
    csv_out = _write_csv(csv_path, ["k", *curves], rows)

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for name, (ks, p) in curves.items():
        (line,) = ax.plot(ks, p, marker="o" if len(ks) <= 20 else None, markersize=4, label=name)
        if spread is not None and name in spread:
            std = np.asarray(spread[name], dtype=np.float64)
            ax.fill_between(ks, p - std, p + std, color=line.get_color(), alpha=0.2, linewidth=0)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel="Number of retrieved images", ylabel="Precision", title=title, ylim=(0.0, 1.02))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return csv_out, write_figure(fig, png_path, formats)[0]


def read_precision_curves(csv_path: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The CSV of :func:`write_precision_curves` -> ``{mode: (ks (m,) int64, precision (m,) float64)}``.

    Empty cells (a mode without that k) are dropped; a missing file gives ``{}``.
    """
    path = Path(csv_path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "k":
        return {}
    header, body = rows[0], rows[1:]
    curves = {}
    for j, name in enumerate(header[1:], start=1):
        points = [(int(float(row[0])), float(row[j])) for row in body if j < len(row) and row[j] != ""]
        if points:
            ks, precision = zip(*points)
            curves[name] = (np.asarray(ks, np.int64), np.asarray(precision, np.float64))
    return curves


def write_pr_curve(
    curves: Mapping[str, Mapping[str, np.ndarray]],
    csv_path: PathLike,
    png_path: PathLike,
    title: str = "Hamming ranking precision-recall",
) -> tuple[Path, Path]:
    """Hamming-radius precision-recall curves (output of ``pr_curve_hamming``), one per mode or baseline.

    curves: ``{mode: {"radius": (r,), "precision": (r,), "recall": (r,)}}``. CSV in long format
    (mode, radius, precision, recall); PNG with precision vs recall and precision vs radius.
    """
    curves = _non_empty(curves)
    rows, parsed = [], {}
    for name, curve in curves.items():
        try:
            radius, precision, recall = (
                np.asarray(curve[key]).ravel() for key in ("radius", "precision", "recall")
            )
        except KeyError as err:
            raise ValueError(
                f"PR curve {name!r} needs keys radius, precision, recall; missing {err}"
            ) from None
        if not len(radius) == len(precision) == len(recall):
            raise ValueError(f"PR curve {name!r}: radius, precision and recall must have the same length")
        parsed[name] = (radius, precision, recall)
        rows += [[name, int(r), _fmt(p), _fmt(c)] for r, p, c in zip(radius, precision, recall)]
    csv_out = _write_csv(csv_path, ["mode", "radius", "precision", "recall"], rows)

    fig = Figure(figsize=(10.0, 4.2))
    ax_pr, ax_r = fig.subplots(1, 2)
    for name, (radius, precision, recall) in parsed.items():
        ax_pr.plot(recall, precision, marker=".", label=name)
        ax_r.plot(radius, precision, marker=".", label=name)
    ax_pr.set(xlabel="Recall", ylabel="Precision", xlim=(0.0, 1.02), ylim=(0.0, 1.02))
    ax_r.set(xlabel="Hamming radius", ylabel="Precision", ylim=(0.0, 1.02))
    for ax in (ax_pr, ax_r):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(title)
    return csv_out, _write_image(fig, png_path)


def write_retrieval_grid(
    query_images: Sequence[np.ndarray],
    query_labels: Sequence[int],
    results_images: Sequence[Sequence[np.ndarray]],
    result_labels: Sequence[Sequence[int]],
    path: PathLike,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """A PNG grid like the paper's figures 3, 5 and 9: one row per query, the query then its results.

    Images are (H, W) or (H, W, 3) uint8 (floats are read as [0, 1]). Each result is framed green
    with a check mark when its label equals the query's, red with a cross otherwise.
    """
    n_rows = len(query_images)
    if n_rows == 0:
        raise ValueError("a retrieval grid needs at least one query")
    if not n_rows == len(query_labels) == len(results_images) == len(result_labels):
        raise ValueError(
            f"got {n_rows} query images, {len(query_labels)} query labels, "
            f"{len(results_images)} result rows and {len(result_labels)} result label rows"
        )
    for i, (images, labels) in enumerate(zip(results_images, result_labels)):
        if len(images) != len(labels):
            raise ValueError(f"query {i}: {len(images)} result images but {len(labels)} result labels")
    n_cols = 1 + max(len(images) for images in results_images)

    def name(label: int) -> str:
        return str(class_names[int(label)]) if class_names is not None else str(int(label))

    fig = Figure(figsize=(1.1 * n_cols, 1.3 * n_rows + (0.4 if title else 0.0)))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n_rows):
        axes[i, 0].imshow(_framed(query_images[i], QUERY))
        axes[i, 0].set_title(f"query: {name(query_labels[i])}", fontsize=7, color=QUERY)
        for j, (image, label) in enumerate(zip(results_images[i], result_labels[i]), start=1):
            right = int(label) == int(query_labels[i])
            color = RIGHT if right else WRONG
            axes[i, j].imshow(_framed(image, color))
            axes[i, j].set_title(name(label), fontsize=7)
            axes[i, j].text(
                0.97,
                0.97,
                "\u2713" if right else "\u2717",
                transform=axes[i, j].transAxes,
                ha="right",
                va="top",
                fontsize=9,
                fontweight="bold",
                color="white",
                bbox={"boxstyle": "circle,pad=0.15", "facecolor": color, "edgecolor": "none"},
            )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _write_image(fig, path)


def write_bit_balance(
    codes: np.ndarray,
    png_path: PathLike,
    csv_path: PathLike | None = None,
    bits: int | None = None,
    title: str = "Bit balance",
) -> Path:
    """Bar chart of the fraction of ones per bit (0.5 = balanced), optionally also as CSV (bit, fraction_ones).

    codes: (n, bits) bool, or packed (n, ceil(bits/8)) uint8 when ``bits`` is given.
    """
    codes = np.asarray(codes)
    if bits is not None:
        if codes.dtype != np.uint8:
            raise ValueError(f"packed codes must be uint8, got {codes.dtype}")
        codes = np.unpackbits(codes, axis=1, count=int(bits)).astype(bool)
    elif codes.dtype != bool and codes.size and codes.max() > 1:
        raise ValueError("codes hold values above 1: pass bits=... for packed uint8 codes")
    fraction = bit_balance(codes)
    if csv_path is not None:
        _write_csv(csv_path, ["bit", "fraction_ones"], [[b, _fmt(f)] for b, f in enumerate(fraction)])

    fig = Figure(figsize=(max(6.4, 0.12 * len(fraction)), 3.6))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(fraction)), fraction, color=QUERY)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    imbalance = float(np.abs(fraction - 0.5).mean())
    ax.set(
        xlabel="Bit",
        ylabel="Fraction of ones",
        ylim=(0.0, 1.0),
        title=f"{title} (mean |p - 0.5| = {imbalance:.3f})",
    )
    return _write_image(fig, png_path)


def _non_empty(curves: Mapping) -> Mapping:
    if not curves:
        raise ValueError("no curves to write")
    return curves


def _curve(name: str, ks: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ks, precision = np.asarray(ks).ravel(), np.asarray(precision, dtype=np.float64).ravel()
    if len(ks) == 0 or len(ks) != len(precision):
        raise ValueError(f"curve {name!r}: ks and precision must be non-empty and of equal length")
    return ks.astype(np.int64), precision


def _framed(image: np.ndarray, color: str, width: float = 0.08) -> np.ndarray:
    """(H, W) or (H, W, 1|3) image -> (H + 2b, W + 2b, 3) uint8 with a coloured border b."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        image = (np.clip(image, 0.0, 1.0) * 255).round()
    image = image.astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    image = np.repeat(image, 3 // image.shape[2], axis=2)
    b = max(1, round(width * max(image.shape[:2])))
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    out = np.empty((image.shape[0] + 2 * b, image.shape[1] + 2 * b, 3), dtype=np.uint8)
    out[:] = rgb
    out[b:-b, b:-b] = image
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{float(value):.6f}"


def _write_csv(path: PathLike, header: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def write_figure(
    fig: Figure, png_path: PathLike, formats: Sequence[str] = ("png", "svg", "pdf")
) -> list[Path]:
    """``fig`` as ``png_path`` and, beside it, the same name in the other ``formats`` (vector copies for papers)."""
    png_path = Path(png_path)
    return [_write_image(fig, png_path.with_suffix(f".{fmt}"), fmt=fmt) for fmt in formats]


def _write_image(fig: Figure, path: PathLike, dpi: int = 100, fmt: str = "png") -> Path:
    buf = io.BytesIO()
    # no creation date in the vector files, so that rewriting an unchanged figure gives the same bytes
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata)
    return atomic_write_bytes(path, buf.getvalue())
