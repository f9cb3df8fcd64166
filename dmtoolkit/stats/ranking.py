"""Ranking with NaN handling: the one rule every ranking of units by mean influence follows.

A unit's value is its mean over target columns with NaN (undefined) entries ignored (`nanmean_rows`); a unit with
no defined entry has a NaN value and is undefined. Units are ordered by value (largest first, or smallest first),
ties broken by the lower index (a stable sort), undefined units left out or put last (`rank_order`);
`rank_positions` gives each unit's 1-based place in that order. `top_pairs`: the (unit, column) pairs of the
largest defined entries of a matrix, ties in row-major order.
"""

from __future__ import annotations

import warnings

import numpy as np


def nanmean_rows(matrix: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Per-row mean over `columns` (default: all), NaNs ignored; NaN (without a warning) where none is defined.
    The dtype is the matrix's (cast before calling for float64 sums)."""
    matrix = matrix if columns is None else matrix[:, columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(matrix, axis=1)


def rank_order(values: np.ndarray, *, descending: bool = True, undefined: str = "omit") -> np.ndarray:
    """Indices of `values` in rank order: largest first (`descending`) or smallest first, ties lower index first.
    Undefined (non-finite) values are left out (`undefined="omit"`) or follow in index order ("last")."""
    if undefined not in ("omit", "last"):
        raise ValueError(f"undefined={undefined!r} must be 'omit' or 'last'")
    values = np.asarray(values)
    finite = np.isfinite(values)
    defined = np.flatnonzero(finite)
    order = defined[np.argsort(-values[defined] if descending else values[defined], kind="stable")]
    return order if undefined == "omit" else np.concatenate([order, np.flatnonzero(~finite)])


def rank_positions(values: np.ndarray, *, descending: bool = True) -> tuple[int | None, ...]:
    """1-based position of every entry in `rank_order(values, descending=...)`; None where undefined."""
    positions: list[int | None] = [None] * len(values)
    for position, k in enumerate(rank_order(values, descending=descending), start=1):
        positions[k] = position
    return tuple(positions)


def top_pairs(matrix: np.ndarray, n: int, one_per_source: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(unit, column) indices of the n largest finite entries, largest first (ties: row-major order).

    With `one_per_source`, each unit contributes only its largest entry.
    """
    scores = np.where(np.isfinite(matrix), matrix, -np.inf)
    if one_per_source:
        defined = np.flatnonzero(np.isfinite(matrix).any(1))
        best = np.argmax(scores[defined], axis=1)
        order = np.argsort(-scores[defined, best], kind="stable")[:n]
        return defined[order], best[order]
    n = min(n, int(np.isfinite(matrix).sum()))
    order = np.argsort(-scores.ravel(), kind="stable")[:n]
    return np.unravel_index(order, matrix.shape)
