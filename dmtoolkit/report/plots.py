"""PNG figures (matplotlib, Agg backend): bar charts, image grids, pairs, line plots, histograms."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig: plt.Figure, out: str | Path | None) -> bytes:
    """PNG bytes of the figure, also written to `out` if given."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = buffer.getvalue()
    if out is not None:  # the library call asked for this path: replaced, but only if it is a regular file
        from dmtoolkit.atomic import write_bytes_atomic

        write_bytes_atomic(out, data, force=True)
    return data


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def bar_chart(names: Sequence[str], values: Sequence[float], title: str, out: str | Path | None = None,
              intervals: Sequence[tuple[float | None, float | None]] | None = None) -> bytes:
    """Horizontal bars, one per name (e.g. top and bottom classes by influence); with `intervals` ((low, high) per
    bar, None where undefined), error bars from low to high."""
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
    xerr = None
    if intervals is not None:
        low = np.array([np.nan if lo is None else lo for lo, _ in intervals], dtype=float)
        high = np.array([np.nan if hi is None else hi for _, hi in intervals], dtype=float)
        xerr = np.nan_to_num(np.stack([values - low, high - values]), nan=0.0).clip(min=0)
    ax.barh(range(len(names)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values],
            xerr=xerr, error_kw={"ecolor": "black", "capsize": 2, "elinewidth": 0.8})
    ax.set_yticks(range(len(names)), list(names))
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("mean influence on target margin")
    ax.set_title(title)
    return _save(fig, out)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, out: str | Path | None = None,
               columns: int = 8) -> bytes:
    """Images in a grid with one caption each."""
    n = max(len(images), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.axis("on")
        _show(ax, image)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def pair_grid(pairs: Sequence[tuple[np.ndarray, np.ndarray]], captions: Sequence[str], title: str,
              out: str | Path | None = None) -> bytes:
    """Source/target image pairs side by side, one row per pair."""
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(n, 2, figsize=(3, 1.4 * n + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (pair, caption) in enumerate(zip(pairs, captions)):
        for col, image in enumerate(pair):
            axes[row, col].axis("on")
            _show(axes[row, col], image)
        axes[row, 0].set_title(caption, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
              title: str, out: str | Path | None = None) -> bytes:
    """One line with ±std error bars per series: name -> (x, mean, std)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (x, mean, std) in series.items():
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, out)


def histogram(edges: Sequence[float], counts: Sequence[int], xlabel: str, title: str,
              out: str | Path | None = None) -> bytes:
    """A histogram from precomputed edges and counts."""
    edges = np.asarray(edges, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("target examples")
    ax.set_title(title)
    return _save(fig, out)
