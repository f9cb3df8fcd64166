"""Reading models in row blocks: every estimator streams (masks, margins) this way, whatever m."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dmtoolkit.errors import UserError


def selected_rows(masks: Any, margins: Any, rows: np.ndarray | None) -> np.ndarray:
    """Sorted rows to fit on (default: all), after checking masks (m, P) and margins (m, T) agree on m."""
    if len(masks.shape) != 2 or len(margins.shape) != 2 or masks.shape[0] != margins.shape[0]:
        raise UserError(f"masks {tuple(masks.shape)} and margins {tuple(margins.shape)} must be (m, P) and (m, T) "
                        "with the same m")
    if rows is None:
        return np.arange(masks.shape[0])
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if len(rows) and (rows[0] < 0 or rows[-1] >= masks.shape[0]):
        raise UserError(f"rows must lie in 0..{masks.shape[0] - 1}, got {rows[0]}..{rows[-1]}")
    return rows


def row_blocks(arrays: Sequence[Any], rows: np.ndarray,
               block_rows: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield (rows, [array[rows] for each array]) for the given sorted rows, about `block_rows` at a time.

    Arrays are anything sliceable by row ranges (NumPy arrays, h5py datasets). Reads are contiguous
    slabs of at most `block_rows` rows (h5py point selections are an order of magnitude slower), so
    memory stays O(block_rows) rows whatever the selection.
    """
    if block_rows < 1:
        raise UserError(f"block_rows={block_rows} must be at least 1")
    rows = np.asarray(rows, dtype=np.int64)
    windows = rows // block_rows
    bounds = np.flatnonzero(np.diff(windows)) + 1
    pending: list[tuple[np.ndarray, list[np.ndarray]]] = []
    count = 0
    for sel in np.split(rows, bounds) if len(rows) else []:
        lo, hi = int(sel[0]), int(sel[-1]) + 1
        contiguous = hi - lo == len(sel)
        pending.append((sel, [np.asarray(a[lo:hi]) if contiguous else np.asarray(a[lo:hi])[sel - lo] for a in arrays]))
        count += len(sel)
        if count >= block_rows:
            yield _concat(pending)
            pending, count = [], 0
    if pending:
        yield _concat(pending)


def _concat(parts: list[tuple[np.ndarray, list[np.ndarray]]]) -> tuple[np.ndarray, list[np.ndarray]]:
    if len(parts) == 1:
        return parts[0]
    rows = np.concatenate([p[0] for p in parts])
    return rows, [np.concatenate([p[1][i] for p in parts]) for i in range(len(parts[0][1]))]


class TargetColumns:
    """Row-sliceable view of columns start:stop of a (m, T) dataset, read one row range at a time."""

    def __init__(self, data: Any, columns: slice) -> None:
        self.data, self.columns = data, columns
        self.shape = (data.shape[0], columns.stop - columns.start)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.data[rows, self.columns]
