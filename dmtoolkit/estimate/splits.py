"""Sampling units, and which models an estimate is fitted on, which choose its settings, and which test it.

Models are not always independent draws. With antithetic masks a model and its complement form one
draw; with orthogonal designs a whole Hadamard block is one draw (its masks are balanced only
together). Standard errors, held-out splits and split halves therefore work on *sampling units*:
one id per row, equal for the rows of one draw, constant over consecutive rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmtoolkit.errors import UserError
from dmtoolkit.masks import hadamard_order


@dataclass(frozen=True)
class SamplingUnits:
    """`ids` (m,): the sampling unit of each row; `design`: what a unit is, in words (recorded in files)."""

    ids: np.ndarray
    design: str

    @property
    def singletons(self) -> bool:
        """Every row is its own unit (independent draws)."""
        return len(np.unique(self.ids)) == len(self.ids)


def design_units(num_models: int, num_units: int, *, antithetic: bool = False,
                 design: str = "random") -> SamplingUnits:
    """Sampling units of the masks `dmtoolkit.masks.make_masks` draws for this design (see that module)."""
    ids = np.arange(num_models) // 2 if antithetic else np.arange(num_models)
    words = "complementary (antithetic) mask pairs" if antithetic else "independent masks"
    if design == "orthogonal":
        block = hadamard_order(num_units)
        ids = ids // block
        words = (f"orthogonal blocks of {block} {'mask pairs' if antithetic else 'masks'}"
                 + (f" ({2 * block} models)" if antithetic else ""))
    return SamplingUnits(ids.astype(np.int64), words)


def detect_units(masks: np.ndarray) -> SamplingUnits:
    """Sampling units of masks made elsewhere: complementary pairs if every even row's complement follows it,
    else independent rows (the conservative reading is not available without knowing the design)."""
    masks = np.asarray(masks, dtype=bool)
    m = len(masks)
    if m >= 4 and m % 2 == 0 and (masks[0::2] == ~masks[1::2]).all():
        return SamplingUnits(np.arange(m, dtype=np.int64) // 2, "complementary (antithetic) mask pairs (detected)")
    return SamplingUnits(np.arange(m, dtype=np.int64), "independent masks")


def check_contiguous(ids: np.ndarray) -> None:
    """Sampling units must be runs of consecutive rows (as every design here makes them)."""
    ids = np.asarray(ids)
    starts = ids[np.r_[True, ids[1:] != ids[:-1]]]
    if len(starts) != len(np.unique(starts)):
        raise UserError("sampling units must be runs of consecutive rows (a pair or block must not be split "
                        "across the row order)")


def split_rows(rows: np.ndarray, frac: float, seed: int,
               units: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` at random (NumPy generator seeded with `seed`) into (kept, held out), both sorted.

    Whole sampling units are held out (`units`: the unit id of every store row; default: each row its
    own), in a seeded random order until round(frac * len(rows)) rows are reached, so a complementary
    pair or an orthogonal block is never split between fitting and testing. Which rows depends only on
    `seed`, `rows` and `units`; the split is recorded next to every estimate anyway.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    want = round(frac * len(rows))
    if want == 0:
        return rows, rows[:0]
    ids = rows if units is None else np.asarray(units)[rows]
    order = np.random.default_rng(seed).permutation(np.unique(ids))
    sizes = dict(zip(*np.unique(ids, return_counts=True)))
    taken, count = [], 0
    for unit in order:
        if count >= want:
            break
        taken.append(unit)
        count += sizes[unit]
    held = rows[np.isin(ids, taken)]
    return np.setdiff1d(rows, held), held


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
    units_design: str = "independent masks"
