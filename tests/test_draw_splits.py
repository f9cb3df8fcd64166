"""Every split of rows by draw, pinned: the rows chosen for fixed inputs and seeds, as the code chose them before
the splits got one home (issue 30), so moving them changes no estimate file, split-half or benchmark figure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dmtoolkit.estimate.splits import split_rows
from dmtoolkit.reliability import holdout_split, split_halves

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

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


def _benchmark(name: str) -> Any:
    """A benchmark script as a module (it imports its neighbours from its own folder)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


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
    whole_units = _benchmark("reliability_study").whole_units
    assert [whole_units(draws, n) for n in PREFIX_N] == expected


@pytest.mark.parametrize(("rows", "draws", "count", "expected"), FIRST_ROWS)
def test_first_fitting_rows_pinned(rows, draws, count, expected) -> None:
    seen = {}
    estimator = SimpleNamespace(fit=lambda masks, margins, rows, **_: seen.update(rows=rows))
    _benchmark("gradient_study").first_fitting_rows(estimator, count)
    estimator.fit(None, None, rows, units=None if draws is None else SimpleNamespace(ids=draws))
    assert seen["rows"].tolist() == expected
