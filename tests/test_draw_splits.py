"""`dmtoolkit.stats.splits`, the one splitter over draws (groups of rows drawn together: an antithetic pair, an
orthogonal block, a single model).

The rows chosen for fixed inputs and seeds are pinned to what the five copies it replaced chose
(`estimate.splits.split_rows`, `reliability.split_halves` and `holdout_split`, `benchmarks/reliability_study.
whole_units`, `benchmarks/gradient_study.first_fitting_rows`; values computed from that code before the move),
so the move changes no estimate file, split-half or benchmark figure. Properties (hypothesis) cover the rest."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmtoolkit.estimate.fit import fit_store, store_draws
from dmtoolkit.estimate.registry import make_estimator
from dmtoolkit.stats.splits import draw_order, first_rows, holdout_split, split_halves, split_rows, whole_prefix
from dmtoolkit.store import RunStore

from .synthetic import synthetic_store

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PAIRS = np.arange(40) // 2                                                # antithetic pairs
BLOCKS = np.repeat([0, 1, 2, 3], [8, 8, 8, 5])                            # orthogonal blocks, a partial last one
ODD = np.repeat(np.array([3, 10, 17, 24, 31, 38, 45]), [1, 3, 2, 5, 1, 4, 2])  # draws of any size, any ids
COMPLETED = np.array([0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 20, 21, 24, 25, 30, 31, 32, 33, 38, 39])

# (rows, frac, seed, draws) -> (kept, held), from `estimate.splits.split_rows` before the refactor
SPLIT_ROWS = [
    (np.arange(20), 0.25, 0, None, [0, 1, 3, 5, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18], [2, 4, 6, 13, 19]),
    (np.arange(20), 0.3, 7, None, [0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 15, 17, 18, 19], [3, 8, 12, 13, 14, 16]),
    (np.arange(40), 0.2, 0, PAIRS, [0, 1, 2, 3, 6, 7, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                                    28, 29, 30, 31, 32, 33, 34, 35, 36, 37], [4, 5, 8, 9, 12, 13, 38, 39]),
    (COMPLETED, 0.25, 3, PAIRS, [0, 1, 2, 3, 8, 9, 12, 13, 14, 15, 16, 17, 24, 25, 30, 31, 32, 33],
     [6, 7, 20, 21, 38, 39]),
    (np.arange(29), 0.5, 1, BLOCKS, list(range(16, 29)), list(range(16))),
    (np.arange(18), 0.4, 5, ODD, [0, 12, 13, 14, 15, 16, 17], list(range(1, 12))),
    (np.arange(10), 0.0, 0, None, list(range(10)), []),
]

# (draws, count, seed) -> (first, second), from `reliability.split_halves` before the refactor
SPLIT_HALVES = [
    (np.arange(11), None, 0, [0, 2, 4, 6, 7], [3, 5, 8, 9, 10]),
    (PAIRS, None, 2, [0, 1, 4, 5, 12, 13, 14, 15, 20, 21, 22, 23, 32, 33, 34, 35, 36, 37, 38, 39],
     [2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27, 28, 29, 30, 31]),
    (PAIRS, 17, 4, [0, 1, 16, 17, 20, 21, 26, 27], [10, 11, 14, 15, 18, 19, 36, 37]),
    (BLOCKS, None, 1, list(range(16)), list(range(16, 29))),
    (ODD, 12, 9, [6, 7, 8, 9, 10], [16, 17]),
    (ODD, None, 0, [4, 5, 6, 7, 8, 9, 10, 11], [0, 12, 13, 14, 15, 16, 17]),
]

# (draws, frac, seed) -> (fit, held), from `reliability.holdout_split` before the refactor
HOLDOUT = [
    (PAIRS, 0.1, 0, [r for r in range(40) if r not in (8, 9, 38, 39)], [8, 9, 38, 39]),
    (ODD, 0.3, 2, list(range(12)), list(range(12, 18))),
    (np.arange(15), 0.2, 11, [0, 1, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14], [2, 6, 12]),
]

# draws -> rows in the longest prefix of n rows (n = PREFIX_N) that cuts no draw, from
# `benchmarks/reliability_study.whole_units` before the refactor
PREFIX_N = (0, 1, 2, 3, 5, 8, 9, 13, 17, 18, 100)
WHOLE_PREFIX = [
    (PAIRS, [0, 0, 2, 2, 4, 8, 8, 12, 16, 18, 40]),
    (BLOCKS, [0, 0, 0, 0, 0, 8, 8, 8, 16, 16, 29]),
    (ODD, [0, 1, 1, 1, 4, 6, 6, 12, 16, 18, 18]),
]

# (offered fit rows, draw of every store row, count) -> rows fitted, from `benchmarks/gradient_study.
# first_fitting_rows` (the first `count` offered rows, a draw cut at the end dropped) before the refactor
FIRST_ROWS = [
    (COMPLETED, PAIRS, 7, [0, 1, 2, 3, 6, 7]),
    (COMPLETED, PAIRS, 8, [0, 1, 2, 3, 6, 7, 8, 9]),
    (np.arange(29), BLOCKS, 20, list(range(16))),
    (np.arange(9), None, 4, [0, 1, 2, 3]),
    (COMPLETED, PAIRS, 100, COMPLETED.tolist()),
]


@pytest.mark.parametrize(("rows", "frac", "seed", "draws", "kept", "held"), SPLIT_ROWS)
def test_split_rows_pinned(rows, frac, seed, draws, kept, held) -> None:
    got = split_rows(rows, frac, seed, draws)
    assert [g.tolist() for g in got] == [kept, held]


@pytest.mark.parametrize(("draws", "count", "seed", "first", "second"), SPLIT_HALVES)
def test_split_halves_pinned(draws, count, seed, first, second) -> None:
    assert [g.tolist() for g in split_halves(draws, count=count, seed=seed)] == [first, second]


@pytest.mark.parametrize(("draws", "frac", "seed", "fit", "held"), HOLDOUT)
def test_holdout_split_pinned(draws, frac, seed, fit, held) -> None:
    assert [g.tolist() for g in holdout_split(draws, frac, seed)] == [fit, held]


@pytest.mark.parametrize(("draws", "expected"), WHOLE_PREFIX)
def test_whole_prefix_pinned(draws, expected) -> None:
    assert [whole_prefix(draws, n) for n in PREFIX_N] == expected


@pytest.mark.parametrize(("rows", "draws", "count", "expected"), FIRST_ROWS)
def test_first_rows_pinned(rows, draws, count, expected) -> None:
    assert first_rows(rows, count, draws).tolist() == expected


# properties ------------------------------------------------------------------------------------------------
def _draws(sizes: list[int], seed: int) -> np.ndarray:
    """Draw ids in runs of consecutive rows, one run per size; ids distinct but in no particular order."""
    ids = np.random.default_rng(seed).permutation(len(sizes)) * 5 + 2
    return np.repeat(ids, sizes).astype(np.int64)


SIZES = st.lists(st.integers(1, 6), min_size=0, max_size=30)


def _whole(rows: np.ndarray, draws: np.ndarray, offered: np.ndarray) -> bool:
    """Every draw met among `rows` has all its rows among `offered` in `rows`."""
    return all(set(offered[draws[offered] == d]) <= set(rows) for d in set(draws[rows]))


@SETTINGS
@given(sizes=SIZES, drop=st.integers(0, 2**30), frac=st.floats(0, 0.95), seed=st.integers(0, 10_000),
       id_seed=st.integers(0, 99))
def test_split_rows_keeps_draws_whole_and_holds_out_enough(sizes: list[int], drop: int, frac: float, seed: int,
                                                            id_seed: int) -> None:
    draws = _draws(sizes, id_seed)
    rows = np.flatnonzero(np.random.default_rng(drop).random(len(draws)) < 0.8)  # completed rows, whole draws or not
    kept, held = split_rows(rows, frac, seed, draws)
    assert np.array_equal(np.sort(np.r_[kept, held]), rows) and not set(kept) & set(held)
    assert np.array_equal(kept, np.sort(kept)) and np.array_equal(held, np.sort(held))
    assert not set(draws[kept]) & set(draws[held])                      # no draw on both sides
    want = round(frac * len(rows))
    largest = max(np.unique(draws[rows], return_counts=True)[1], default=0)
    assert want <= len(held) < want + largest or want == len(held) == 0  # stops at the first draw that reaches it
    again = split_rows(np.random.default_rng(seed).permutation(rows), frac, seed, draws)  # row order does not matter
    assert np.array_equal(again[0], kept) and np.array_equal(again[1], held)


@SETTINGS
@given(m=st.integers(0, 60), frac=st.floats(0, 0.95), seed=st.integers(0, 10_000))
def test_split_rows_without_draws_treats_every_row_as_one(m: int, frac: float, seed: int) -> None:
    rows = np.arange(m)
    alone = split_rows(rows, frac, seed)
    assert all(np.array_equal(a, b) for a, b in zip(alone, split_rows(rows, frac, seed, np.arange(m))))
    assert len(alone[1]) == round(frac * m)
    assert all(np.array_equal(a, b) for a, b in zip(alone, holdout_split(np.arange(m), frac, seed)))


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5])
def test_holdout_split_refuses_a_fraction_outside_0_1(frac: float) -> None:
    with pytest.raises(ValueError, match=r"holdout fraction .* must be in \[0, 1\)"):
        holdout_split(np.arange(10), frac)


@SETTINGS
@given(sizes=SIZES, count=st.none() | st.integers(-3, 120), seed=st.integers(0, 10_000), id_seed=st.integers(0, 99))
def test_split_halves_are_equal_numbers_of_whole_draws(sizes: list[int], count: int | None, seed: int,
                                                        id_seed: int) -> None:
    draws = _draws(sizes, id_seed)
    all_rows = np.arange(len(draws))
    first, second = split_halves(draws, count=count, seed=seed)
    a, b = set(draws[first]), set(draws[second])
    assert not a & b and len(a) == len(b)
    assert _whole(first, draws, all_rows) and _whole(second, draws, all_rows)
    assert len(first) + len(second) <= (len(draws) if count is None else max(count, 0))
    if count is None:  # every draw but one when their number is odd
        assert len(a) + len(b) == len(sizes) - len(sizes) % 2
    again = split_halves(draws, count=count, seed=seed)
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)


@SETTINGS
@given(sizes=SIZES, n=st.integers(-2, 130), id_seed=st.integers(0, 99))
def test_whole_prefix_is_the_longest_prefix_that_cuts_no_draw(sizes: list[int], n: int, id_seed: int) -> None:
    draws = _draws(sizes, id_seed)
    k = whole_prefix(draws, n)
    ends = np.cumsum(sizes)                                             # where each draw ends
    assert k == max([0, *[e for e in ends if e <= n]])                  # the last draw end within n rows
    assert 0 <= k <= max(min(n, len(draws)), 0)


@SETTINGS
@given(sizes=SIZES, drop=st.integers(0, 2**30), count=st.integers(0, 130), id_seed=st.integers(0, 99))
def test_first_rows_are_a_prefix_of_whole_draws(sizes: list[int], drop: int, count: int, id_seed: int) -> None:
    draws = _draws(sizes, id_seed)
    keep = np.random.default_rng(drop).random(len(sizes)) < 0.7        # offered rows: whole draws (as split_rows)
    offered = np.flatnonzero(np.repeat(keep, sizes))
    chosen = first_rows(np.random.default_rng(drop).permutation(offered), count, draws)
    assert np.array_equal(chosen, offered[:len(chosen)]) and len(chosen) <= count
    assert _whole(chosen, draws, offered)
    rest = offered[len(chosen):]                                        # the next draw would pass `count`
    assert len(rest) == 0 or len(chosen) + int((draws[offered] == draws[rest[0]]).sum()) > count


def test_draw_order_is_first_appearance() -> None:
    ids, sizes = draw_order([7, 7, 3, 9, 9, 9, 1])
    assert ids.tolist() == [7, 3, 9, 1] and sizes.tolist() == [2, 1, 3, 1]


# fit_store(fit_models=N): the learning-curve fits the gradient study makes --------------------------------
@pytest.mark.parametrize("estimator", ["difference-of-means", "datamodels"])
def test_fit_store_on_the_first_fitting_rows(tmp_path: Path, estimator: str) -> None:
    rng = np.random.default_rng(0)
    store = synthetic_store(tmp_path / "runs.h5", rng.normal(size=(80, 3)).astype(np.float32), antithetic=True)
    full = tmp_path / "full.h5"
    fit_store(store, full, make_estimator(estimator, device="cpu"), test_fraction=0.2, seed=3)
    part = tmp_path / "part.h5"
    fit_store(store, part, make_estimator(estimator, device="cpu"), test_fraction=0.2, seed=3, fit_models=31)
    with h5py.File(full) as f, h5py.File(part) as g, RunStore(store) as run:
        draws = store_draws(run).ids
        offered = np.union1d(f["rows/fit"][()], f["rows/selection"][()])
        used = np.union1d(g["rows/fit"][()], g["rows/selection"][()])
        assert np.array_equal(g["rows/test"][()], f["rows/test"][()])  # the same test rows whatever the size
        assert used.tolist() == offered[:30].tolist()                    # 31 rows cut back to 15 whole pairs
        assert np.array_equal(used, first_rows(offered, 31, draws))
        if estimator == "difference-of-means":                           # a normal fit on those rows
            masks, margins = run.masks[()], run.margins[()]
            direct = make_estimator(estimator, device="cpu").fit(masks, margins, used, draws=store_draws(run))
            np.testing.assert_allclose(g["coef"][()], direct.coef_, rtol=1e-6)
            np.testing.assert_allclose(g["stderr"][()], direct.stderr_, rtol=1e-6)
