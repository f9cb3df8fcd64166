"""Which models an estimate is fitted on, which choose its settings, and which test it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def split_rows(rows: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` at random (NumPy generator seeded with `seed`) into (kept, held out), both sorted.

    round(frac * len(rows)) rows are held out; which ones depends only on `seed` and `rows`, so the
    split can be recomputed and is recorded next to every estimate anyway.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    held = np.random.default_rng(seed).permutation(rows)[: round(frac * len(rows))]
    return np.setdiff1d(rows, held), np.sort(held)


@dataclass(frozen=True)
class RowSplit:
    """Run-store rows by use: `fit` (coefficients), `selection` (settings such as λ; may be empty), `test`.

    The test rows are held out from everything else: `dmtoolkit evaluate` scores only them.
    """

    fit: np.ndarray
    selection: np.ndarray
    test: np.ndarray
    seed: int
    test_fraction: float
