"""benchmarks/signal_study.py's own statistics (split-half at a given size, class LDS on arrays, digit ranks)
against independent references: plain NumPy, scipy.stats.spearmanr, hand-built ranks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from dmtoolkit.masks import make_masks
from dmtoolkit.stats.correlation import models_for_reliability
from dmtoolkit.stats.ranking import nanmean_rows, rank_positions
from dmtoolkit.stats.splits import holdout_split, split_halves

from .benchmark_scripts import load_benchmark
from .synthetic import difference_of_means_reference, linear_runs

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


STUDY = load_benchmark("signal_study")


# split-half at a given size ---------------------------------------------------------------------------
def test_split_half_is_high_with_strong_effects_and_near_zero_without() -> None:
    masks, margins = linear_runs(400, 20, 30, effect_sd=0.5)
    assert STUDY.split_half(masks, margins, np.arange(400), seed=0).correlation > 0.8
    masks, margins = linear_runs(400, 20, 30, effect_sd=0.0)
    values = [STUDY.split_half(masks, margins, np.arange(400), seed=s).correlation for s in range(10)]
    assert abs(np.mean(values)) < 0.2


@SETTINGS
@given(seed=st.integers(0, 1000), pairs=st.integers(6, 40), count=st.integers(8, 80), split_seed=st.integers(0, 20))
def test_split_half_equals_a_numpy_and_scipy_reference(seed: int, pairs: int, count: int, split_seed: int) -> None:
    P, T = 7, 5
    masks = make_masks(seed, 2 * pairs, P, 0.5, antithetic=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    margins = (masks @ rng.normal(0, 0.5, P))[:, None] + rng.normal(size=(len(masks), T))
    units = np.arange(len(masks)) // 2
    result = STUDY.split_half(masks, margins, units, count=count, seed=split_seed)
    first, second = split_halves(units, count=count, seed=split_seed)
    np.testing.assert_array_equal(result.first, first)
    np.testing.assert_array_equal(result.second, second)
    if len(first) < 2:
        assert result.correlation is None
        return
    a = difference_of_means_reference(masks[first], margins[first]).mean(1)
    b = difference_of_means_reference(masks[second], margins[second]).mean(1)
    assume(np.diff(np.sort(a)).min() > 1e-4 and np.diff(np.sort(b)).min() > 1e-4)  # float32 breaks exact ties
    expected = spearmanr(a, b).statistic
    if not np.isfinite(expected):
        assert result.correlation is None
    else:
        assert result.correlation == pytest.approx(expected, abs=1e-5)


def test_regression_split_half_needs_more_models_than_classes() -> None:
    masks, margins = linear_runs(60, 30, 5, effect_sd=0.5, seed=1)
    # 30 models per half for 30 units: regression is undefined
    assert STUDY.split_half(masks, margins, np.arange(60), estimator="regression").correlation is None
    masks, margins = linear_runs(400, 30, 5, effect_sd=0.5, seed=1)
    assert STUDY.split_half(masks, margins, np.arange(400), estimator="regression").correlation > 0.9


def test_split_half_reliability_summarises_the_seeds() -> None:
    masks, margins = linear_runs(120, 10, 8, effect_sd=0.3, seed=2)
    units = np.arange(120) // 2
    summary = STUDY.split_half_reliability(masks, margins, units, count=100, seeds=range(6))
    values = [STUDY.split_half(masks, margins, units, count=100, seed=s).correlation for s in range(6)]
    assert list(summary.values) == values and summary.count == 100 and summary.half_models == 50
    assert summary.mean == pytest.approx(np.mean(values)) and summary.sd == pytest.approx(np.std(values))
    assert summary.models_for(0.8) == pytest.approx(2 * models_for_reliability(np.mean(values), 50))
    empty = STUDY.split_half_reliability(masks, margins, units, count=2, seeds=range(3))
    assert empty.values == (None, None, None) and empty.mean is None and empty.models_for() is None


# LDS -----------------------------------------------------------------------------------------------------
def test_lds_equals_a_numpy_and_scipy_reference() -> None:
    masks, margins = linear_runs(200, 8, 6, effect_sd=0.5, seed=5)
    units = np.arange(200) // 2
    result = STUDY.lds_from_arrays(masks, margins, draws=units, holdout_frac=0.2, seed=1)
    fit, held = holdout_split(units, 0.2, 1)
    np.testing.assert_array_equal(result.fit, fit)
    np.testing.assert_array_equal(result.held, held)
    infl = difference_of_means_reference(masks[fit], margins[fit])
    predicted = margins[fit].mean(0) + (masks[held] - 0.5) @ infl
    expected = [spearmanr(predicted[:, j], margins[held, j]).statistic for j in range(margins.shape[1])]
    np.testing.assert_allclose(result.per_target, expected, atol=1e-5)
    assert result.mean == pytest.approx(np.mean(expected), abs=1e-5)


def test_lds_of_noise_free_linear_margins_is_one_and_too_few_held_out_is_none() -> None:
    rng = np.random.default_rng(6)
    masks = make_masks(0, 400, 10, 0.5, antithetic=True).astype(np.float32)
    margins = masks @ rng.normal(size=(10, 3))
    result = STUDY.lds_from_arrays(masks, margins, draws=np.arange(400) // 2, estimator="regression")
    assert result.mean == pytest.approx(1.0, abs=1e-6)  # least squares recovers exact linear margins
    # difference of means does not
    assert STUDY.lds_from_arrays(masks, margins, draws=np.arange(400) // 2).mean < 0.999
    assert STUDY.lds_from_arrays(masks[:20], margins[:20], holdout_frac=0.1).mean is None  # 2 < MIN_HELDOUT held out
    assert STUDY.MIN_HELDOUT == 3


# digit ranks ---------------------------------------------------------------------------------------------
def test_digit_ranks_find_the_matching_class_with_rank_classes_ties() -> None:
    influence = np.zeros((4, 6))
    labels = np.array([0, 0, 1, 1, 2, 2])
    influence[2, labels == 0] = 1.0      # source "a" (row 2) helps target class "a": first
    influence[0, labels == 1] = -1.0     # source "b" (row 0) hurts target class "b": last
    influence[:, labels == 2] = 0.5      # all tie for "c": "c" (row 3) comes after rows 0-2 (lower index first)
    influence[1, labels == 2] = np.nan   # ...except row 1, undefined and left out
    ranks = STUDY.digit_ranks(influence, ["b", "x", "a", "c"], ["a", "b", "c", "d"], labels)
    assert ranks.ranks == (1, 4, 3, None) and ranks.in_top(3) == 2
    assert rank_positions(nanmean_rows(influence, np.flatnonzero(labels == 2))) == (1, None, 2, 3)
    influence[3, labels == 2] = np.nan   # its own class undefined: None (not first)
    assert STUDY.digit_ranks(influence, ["b", "x", "a", "c"], ["a", "b", "c"], labels).ranks[2] is None
