"""Draws, and which models an estimate is fitted on, which choose its settings, and which test it.

Models are not always independent draws. With antithetic masks a model and its complement form one
draw; with orthogonal designs a whole Hadamard block is one draw (its masks are balanced only
together). Standard errors, held-out splits and split halves therefore work on *draws*: one id per
row, equal for the rows of one draw, constant over consecutive rows. (A *unit* is a mask column, a
source class or example; a draw is a group of rows.) The splits themselves are `dmtoolkit.stats.splits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmtoolkit.errors import UserError
from dmtoolkit.masks import hadamard_order


@dataclass(frozen=True)
class Draws:
    """`ids` (m,): the draw of each row; `design`: what a draw is, in words (recorded in files)."""

    ids: np.ndarray
    design: str

    @property
    def singletons(self) -> bool:
        """Every row is its own draw (independent rows)."""
        return len(np.unique(self.ids)) == len(self.ids)


def design_draws(num_models: int, num_units: int, *, antithetic: bool = False,
                 design: str = "random") -> Draws:
    """The draws of the masks `dmtoolkit.masks.make_masks` draws for this design (see that module)."""
    ids = np.arange(num_models) // 2 if antithetic else np.arange(num_models)
    words = "complementary (antithetic) mask pairs" if antithetic else "independent masks"
    if design == "orthogonal":
        block = hadamard_order(num_units)
        ids = ids // block
        words = (f"orthogonal blocks of {block} {'mask pairs' if antithetic else 'masks'}"
                 + (f" ({2 * block} models)" if antithetic else ""))
    return Draws(ids.astype(np.int64), words)


def detect_draws(masks: np.ndarray) -> Draws:
    """The draws of masks made elsewhere: complementary pairs if every even row's complement follows it,
    else independent rows (the conservative reading is not available without knowing the design)."""
    masks = np.asarray(masks, dtype=bool)
    m = len(masks)
    if m >= 4 and m % 2 == 0 and (masks[0::2] == ~masks[1::2]).all():
        return Draws(np.arange(m, dtype=np.int64) // 2, "complementary (antithetic) mask pairs (detected)")
    return Draws(np.arange(m, dtype=np.int64), "independent masks")


def check_contiguous(ids: np.ndarray) -> None:
    """Draws must be runs of consecutive rows (as every design here makes them)."""
    ids = np.asarray(ids)
    starts = ids[np.r_[True, ids[1:] != ids[:-1]]]
    if len(starts) != len(np.unique(starts)):
        raise UserError("draws must be runs of consecutive rows (a pair or block must not be split "
                        "across the row order)")


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
    draw_design: str = "independent masks"  # what a draw is; the file's `sampling_units` attribute
