"""Plumbing shared by the estimators: device choice, row splits, block streaming, result files."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dmtoolkit import __version__
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.devices import resolve_device  # noqa: F401  (re-exported for the estimators)
from dmtoolkit.store import RunStore


def split_rows(rows: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` at random (NumPy generator seeded with `seed`) into (kept, held out), both sorted.

    round(frac * len(rows)) rows are held out; which ones depends only on `seed` and `rows`, so the
    split can be recomputed and is recorded next to every estimate anyway.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    held = np.random.default_rng(seed).permutation(rows)[: round(frac * len(rows))]
    return np.setdiff1d(rows, held), np.sort(held)


def row_blocks(arrays: Sequence[Any], rows: np.ndarray,
               block_rows: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield (rows, [array[rows] for each array]) for the given sorted rows, about `block_rows` at a time.

    Arrays are anything sliceable by row ranges (NumPy arrays, h5py datasets). Reads are contiguous
    slabs of at most `block_rows` rows (h5py point selections are an order of magnitude slower), so
    memory stays O(block_rows) rows whatever the selection.
    """
    if block_rows < 1:
        raise UserError(f"--block-rows {block_rows} must be at least 1")
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


def completed_rows(store: RunStore, minimum: int = 2) -> np.ndarray:
    """The store's completed rows; refuses a store with fewer than `minimum` of them."""
    rows = store.completed_rows()
    if len(rows) < minimum:
        raise StoreError(
            f"{store.path}: only {len(rows)} of {store.num_models} models are completed, estimates need at least "
            f"{minimum}; run `dmtoolkit train {store.path}` first"
        )
    return rows


def put(group: h5py.Group, name: str, data: Any, meaning: str, axes: str, units: str) -> h5py.Dataset:
    """A dataset that explains itself (meaning, axes, units); 2-D arrays are tiled for partial reads."""
    data = np.asarray(data)
    if data.dtype.kind in "UO":
        ds = group.create_dataset(name, data=data.astype(object), dtype=h5py.string_dtype())
    elif data.ndim == 2 and data.size:
        ds = group.create_dataset(name, data=data, chunks=(min(data.shape[0], 256), min(data.shape[1], 256)))
    else:
        ds = group.create_dataset(name, data=data)
    ds.attrs.update({"meaning": meaning, "axes": axes, "units": units})
    return ds


def source_attrs(store: RunStore, content_hash: str) -> dict[str, Any]:
    """Attributes naming the run store an estimate came from (checked again by `evaluate`)."""
    return {
        "source_store": str(store.path.resolve()),
        "source_hash": content_hash,
        "source_recipe_hash": store.recipe_hash,
        "kind": store.kind,
        "alpha": store.subset_fraction,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def refuse_overwrite(out_path: str | Path, force: bool) -> None:
    """Raise unless `out_path` is free or `force` is set (checked before long fits, and again when writing)."""
    if Path(out_path).exists() and not force:
        raise StoreError(f"{out_path}: already exists; pass --force to overwrite it, or choose another -o path")


def write_atomic(out_path: str | Path, fill: Callable[[h5py.File], None], *, force: bool) -> Path:
    """Create `out_path` via `fill` in a temporary file renamed into place; refuse to overwrite unless `force`."""
    out_path = Path(out_path)
    refuse_overwrite(out_path, force)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            fill(f)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
