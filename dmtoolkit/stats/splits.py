"""Splitting rows by draw: every held-out split, split half and prefix of rows in the toolkit, in one place.

Models are not always independent draws. With antithetic masks a model and its complement are one draw; with
an orthogonal design a whole Hadamard block is one (its masks are balanced only together). A *draw* is such a
group of rows; `draws` is one id per row, equal for the rows of one draw and constant over consecutive rows
(`dmtoolkit.estimate.splits.design_draws` gives them for a design). Every split here keeps a draw on one side,
like scikit-learn's GroupShuffleSplit with the draws as groups, and depends only on its arguments and `seed`
(a NumPy generator), so the same seed selects the same rows. Mask columns (source classes or examples) are
*units*, a different thing: nothing here looks at them.

- `split_rows`: (kept, held out) — the test split of every estimate file, datamodels' λ-selection split,
  the half-fit of an LDS curve;
- `holdout_split`: the same rule on row positions 0..m-1;
- `split_halves`: two disjoint halves of equally many draws, for split-half reliability;
- `whole_prefix` and `first_rows`: the longest leading stretch of rows that cuts no draw (learning curves).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def draw_order(draws: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct draw ids in order of first appearance and the number of rows of each."""
    ids, first, counts = np.unique(np.asarray(draws).reshape(-1), return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return ids[order], counts[order]


def split_rows(rows: np.ndarray, frac: float, seed: int,
               draws: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` at random (NumPy generator seeded with `seed`) into (kept, held out), both sorted.

    Whole draws are held out (`draws`: the draw id of every store row, indexed by `rows`; default: each row
    its own), in a seeded random order until round(frac * len(rows)) rows are reached, so a complementary
    pair or an orthogonal block is never split between fitting and testing. Which rows depends only on
    `seed`, `rows` and `draws`; the split is recorded next to every estimate anyway.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    want = round(frac * len(rows))
    if want == 0:
        return rows, rows[:0]
    ids = rows if draws is None else np.asarray(draws)[rows]
    order = np.random.default_rng(seed).permutation(np.unique(ids))
    sizes = dict(zip(*np.unique(ids, return_counts=True)))
    taken, count = [], 0
    for draw in order:
        if count >= want:
            break
        taken.append(draw)
        count += sizes[draw]
    held = rows[np.isin(ids, taken)]
    return np.setdiff1d(rows, held), held


def holdout_split(draws: Sequence[int] | np.ndarray, frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions (sorted) of (fit, held out) among rows 0..len(draws)-1: whole draws held out until
    round(frac · rows) rows, by `split_rows`' rule (the one every estimate file's test split uses)."""
    if not 0 <= frac < 1:
        raise ValueError(f"holdout fraction {frac} must be in [0, 1)")
    draws = np.asarray(draws).reshape(-1)
    return split_rows(np.arange(len(draws)), frac, seed, draws)


def split_halves(draws: Sequence[int] | np.ndarray, *, count: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions (sorted) of two disjoint halves of whole draws, together at most `count` rows.

    Draws are shuffled with a NumPy generator seeded by `seed`; the longest prefix of at most `count` rows
    (default: all) is cut to an even number of draws, the first half of them forms one half and the rest
    the other. When every row is its own draw this is a seeded permutation of the rows cut in two.
    """
    draws = np.asarray(draws).reshape(-1)
    ids, sizes = draw_order(draws)
    order = np.random.default_rng(seed).permutation(len(ids))
    limit = len(draws) if count is None else count
    taken = int(np.searchsorted(np.cumsum(sizes[order]), limit, side="right"))
    taken -= taken % 2
    first, second = order[: taken // 2], order[taken // 2: taken]
    return np.flatnonzero(np.isin(draws, ids[first])), np.flatnonzero(np.isin(draws, ids[second]))


def whole_prefix(draws: Sequence[int] | np.ndarray, n: int) -> int:
    """Rows in the longest prefix of at most `n` rows that cuts no draw (`draws` in runs of consecutive rows)."""
    draws = np.asarray(draws).reshape(-1)
    if n >= len(draws):
        return len(draws)
    if n <= 0:
        return 0
    return n if draws[n] != draws[n - 1] else int(np.flatnonzero(draws == draws[n - 1])[0])


def first_rows(rows: np.ndarray, count: int, draws: np.ndarray | None = None) -> np.ndarray:
    """The first `count` of `rows` (sorted) less a draw the cut would split: `whole_prefix` over the rows'
    draws (`draws`: the draw id of every store row, as for `split_rows`; default: each row its own)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    ids = rows if draws is None else np.asarray(draws)[rows]
    return rows[:whole_prefix(ids, count)]
