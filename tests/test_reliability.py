"""dmtoolkit.reliability on arrays with known answers, against independent references (brute force, plain
NumPy, scipy.stats.spearmanr, the file-based `rank_classes`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from dmtoolkit.analyze.classes import class_positions, rank_classes
from dmtoolkit.estimate.influence import compute_influence
from dmtoolkit.estimate.splits import split_rows
from dmtoolkit.masks import hadamard_order, make_masks
from dmtoolkit.recipe import SubsetSpec, parse_recipe_dict
from dmtoolkit.reliability import (
    MIN_HELDOUT,
    class_influence,
    digit_ranks,
    holdout_split,
    lds_from_arrays,
    models_for_reliability,
    rank_positions,
    sampling_units,
    spearman_brown,
    split_half,
    split_half_reliability,
    split_halves,
)
from dmtoolkit.store import RunStore, create_store

from .synthetic import synthetic_data, write_rows

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _runs(m: int, P: int, T: int, effect_sd: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((m, P)) < 0.5
    effects = rng.normal(0, effect_sd, size=P)
    margins = (masks @ effects)[:, None] + rng.normal(size=(m, T))
    return masks.astype(np.float32), margins.astype(np.float32)


def _difference_of_means(masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Plain NumPy reference: per unit, mean margin with it minus mean margin without it."""
    m = masks.astype(bool)
    return np.stack([margins[m[:, k]].mean(0) - margins[~m[:, k]].mean(0) for k in range(m.shape[1])])


# sampling units ------------------------------------------------------------------------------------------
def test_sampling_units_follow_the_design() -> None:
    P = 6  # Hadamard order 8
    assert sampling_units(SubsetSpec(), 5).tolist() == [0, 1, 2, 3, 4]
    assert sampling_units(SubsetSpec(antithetic=True), 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert sampling_units(SubsetSpec(design="orthogonal"), 20, num_units=P).tolist() == [0] * 8 + [1] * 8 + [2] * 4
    both = SubsetSpec(design="orthogonal", antithetic=True)
    assert sampling_units(both, 40, num_units=P).tolist() == [0] * 16 + [1] * 16 + [2] * 8
    with pytest.raises(ValueError, match="num_units"):
        sampling_units(SubsetSpec(design="orthogonal"), 8)


def test_sampling_units_of_a_store_read_its_recipe(tmp_path: Path) -> None:
    recipe = parse_recipe_dict({"name": "units", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
                                "subsets": {"models": 32, "antithetic": True, "design": "orthogonal"}})
    path = create_store(tmp_path / "runs.h5", recipe, synthetic_data(5, 4))
    with RunStore(path) as store:
        units = sampling_units(store, store.num_models)
        masks = store.masks[()]
    assert units.tolist() == [0] * 16 + [1] * 16  # P = 5: blocks of 8 masks, each with its complement
    assert units.tolist() == sampling_units(recipe, 32, num_units=5).tolist()
    for block in (masks[:16], masks[16:]):
        signs = 2 * block.astype(int) - 1
        np.testing.assert_array_equal(signs.T @ signs, 16 * np.eye(5, dtype=int))


def _has_complement_within(masks: np.ndarray, rows: np.ndarray) -> bool:
    """Brute force: every row among `rows` has its complement among `rows` too."""
    chosen = masks[rows]
    return all((chosen == ~chosen[i]).all(1).any() for i in range(len(chosen)))


@SETTINGS
@given(seed=st.integers(0, 1000), pairs=st.integers(2, 30), units=st.integers(3, 12),
       count=st.integers(0, 70), split_seed=st.integers(0, 50))
def test_split_halves_never_separate_a_complementary_pair(seed: int, pairs: int, units: int, count: int,
                                                          split_seed: int) -> None:
    masks = make_masks(seed, 2 * pairs, units, 0.5, antithetic=True)
    assert _has_complement_within(masks, np.arange(len(masks)))
    first, second = split_halves(sampling_units(SubsetSpec(antithetic=True), len(masks)), count=count, seed=split_seed)
    assert len(np.intersect1d(first, second)) == 0
    assert len(first) == len(second) and len(first) + len(second) <= max(count, 0)
    assert len(first) + len(second) >= min(count, len(masks)) - 3  # at most one pair (and one for evenness) lost
    for half in (first, second):
        assert _has_complement_within(masks, half)  # each row's complement is in the same half


@SETTINGS
@given(seed=st.integers(0, 1000), units=st.integers(2, 9), blocks=st.integers(2, 6), antithetic=st.booleans(),
       split_seed=st.integers(0, 50))
def test_split_halves_keep_hadamard_blocks_whole(seed: int, units: int, blocks: int, antithetic: bool,
                                                 split_seed: int) -> None:
    size = hadamard_order(units) * (2 if antithetic else 1)
    masks = make_masks(seed, blocks * size, units, 0.5, antithetic=antithetic, design="orthogonal")
    design = SubsetSpec(design="orthogonal", antithetic=antithetic)
    first, second = split_halves(sampling_units(design, len(masks), num_units=units), seed=split_seed)
    assert len(first) == len(second) == blocks // 2 * size
    for half in (first, second):
        signs = 2 * masks[half].astype(int) - 1  # whole blocks: balanced, orthogonal columns (checked on the masks)
        np.testing.assert_array_equal(signs.T @ signs, len(half) * np.eye(units, dtype=int))


@SETTINGS
@given(m=st.integers(0, 60), count=st.integers(0, 80), seed=st.integers(0, 1000))
def test_split_halves_of_independent_rows_is_a_seeded_permutation_cut_in_two(m: int, count: int, seed: int) -> None:
    order = np.random.default_rng(seed).permutation(m)[: min(count, m) // 2 * 2]
    first, second = split_halves(np.arange(m), count=count, seed=seed)
    np.testing.assert_array_equal(first, np.sort(order[: len(order) // 2]))
    np.testing.assert_array_equal(second, np.sort(order[len(order) // 2:]))


@SETTINGS
@given(sizes=st.lists(st.integers(1, 5), min_size=0, max_size=25), count=st.integers(0, 100), seed=st.integers(0, 99))
def test_split_halves_take_whole_units_of_any_size(sizes: list[int], count: int, seed: int) -> None:
    units = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # ids need not be 0..n-1
    first, second = split_halves(units, count=count, seed=seed)
    assert len(first) + len(second) <= count
    a, b = set(units[first]), set(units[second])
    assert not a & b and len(a) == len(b)
    for half, ids in ((first, a), (second, b)):
        np.testing.assert_array_equal(half, np.flatnonzero(np.isin(units, list(ids))))  # every row of each unit


@SETTINGS
@given(m=st.integers(1, 80), frac=st.floats(0, 0.9), seed=st.integers(0, 1000))
def test_holdout_split_of_independent_rows_is_split_rows(m: int, frac: float, seed: int) -> None:
    fit, held = holdout_split(np.arange(m), frac, seed)
    ref_fit, ref_held = split_rows(np.arange(m), frac, seed)
    np.testing.assert_array_equal(fit, ref_fit)
    np.testing.assert_array_equal(held, ref_held)


def test_holdout_split_holds_out_whole_pairs() -> None:
    units = sampling_units(SubsetSpec(antithetic=True), 40)
    fit, held = holdout_split(units, 0.2, seed=3)
    assert len(held) == 8 and not set(units[fit]) & set(units[held])
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(40))


# Spearman–Brown ------------------------------------------------------------------------------------------
def test_spearman_brown_known_values() -> None:
    assert spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    assert spearman_brown(0.6, 1) == pytest.approx(0.6)
    assert spearman_brown(0.8, 0.25) == pytest.approx(0.5)
    assert models_for_reliability(0.8, 100) == pytest.approx(100)
    assert models_for_reliability(0.5, 100) == pytest.approx(400)
    assert models_for_reliability(0.0, 100) is None and models_for_reliability(-0.1, 100) is None
    assert models_for_reliability(1.0, 100) is None
    with pytest.raises(ValueError):
        spearman_brown(0.5, 0)


@SETTINGS
@given(reliability=st.floats(0.01, 0.99), models=st.integers(2, 10_000), goal=st.floats(0.05, 0.95))
def test_models_for_reliability_inverts_spearman_brown(reliability: float, models: int, goal: float) -> None:
    needed = models_for_reliability(reliability, models, goal)
    assert spearman_brown(reliability, needed / models) == pytest.approx(goal, rel=1e-9)
    k = needed / models  # the formula itself: k = goal (1 - rho) / (rho (1 - goal))
    assert k == pytest.approx(goal * (1 - reliability) / (reliability * (1 - goal)), rel=1e-9)


# split-half ----------------------------------------------------------------------------------------------
def test_split_half_is_high_with_strong_effects_and_near_zero_without() -> None:
    masks, margins = _runs(400, 20, 30, effect_sd=0.5)
    assert split_half(masks, margins, np.arange(400), seed=0).correlation > 0.8
    masks, margins = _runs(400, 20, 30, effect_sd=0.0)
    values = [split_half(masks, margins, np.arange(400), seed=s).correlation for s in range(10)]
    assert abs(np.mean(values)) < 0.2


@SETTINGS
@given(seed=st.integers(0, 1000), pairs=st.integers(6, 40), count=st.integers(8, 80), split_seed=st.integers(0, 20))
def test_split_half_equals_a_numpy_and_scipy_reference(seed: int, pairs: int, count: int, split_seed: int) -> None:
    P, T = 7, 5
    masks = make_masks(seed, 2 * pairs, P, 0.5, antithetic=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    margins = (masks @ rng.normal(0, 0.5, P))[:, None] + rng.normal(size=(len(masks), T))
    units = np.arange(len(masks)) // 2
    result = split_half(masks, margins, units, count=count, seed=split_seed)
    first, second = split_halves(units, count=count, seed=split_seed)
    np.testing.assert_array_equal(result.first, first)
    np.testing.assert_array_equal(result.second, second)
    if len(first) < 2:
        assert result.correlation is None
        return
    a = _difference_of_means(masks[first], margins[first]).mean(1)
    b = _difference_of_means(masks[second], margins[second]).mean(1)
    assume(np.diff(np.sort(a)).min() > 1e-4 and np.diff(np.sort(b)).min() > 1e-4)  # float32 breaks exact ties
    expected = spearmanr(a, b).statistic
    if not np.isfinite(expected):
        assert result.correlation is None
    else:
        assert result.correlation == pytest.approx(expected, abs=1e-5)


def test_regression_split_half_needs_more_models_than_classes() -> None:
    masks, margins = _runs(60, 30, 5, effect_sd=0.5, seed=1)
    assert split_half(masks, margins, np.arange(60), estimator="regression").correlation is None  # 30 models, 30 units
    masks, margins = _runs(400, 30, 5, effect_sd=0.5, seed=1)
    assert split_half(masks, margins, np.arange(400), estimator="regression").correlation > 0.9


def test_split_half_reliability_summarises_the_seeds() -> None:
    masks, margins = _runs(120, 10, 8, effect_sd=0.3, seed=2)
    units = np.arange(120) // 2
    summary = split_half_reliability(masks, margins, units, count=100, seeds=range(6))
    values = [split_half(masks, margins, units, count=100, seed=s).correlation for s in range(6)]
    assert list(summary.values) == values and summary.count == 100 and summary.half_models == 50
    assert summary.mean == pytest.approx(np.mean(values)) and summary.sd == pytest.approx(np.std(values))
    assert summary.models_for(0.8) == pytest.approx(2 * models_for_reliability(np.mean(values), 50))
    empty = split_half_reliability(masks, margins, units, count=2, seeds=range(3))
    assert empty.values == (None, None, None) and empty.mean is None and empty.models_for() is None


def test_class_influence_is_the_library_estimator() -> None:
    masks, margins = _runs(50, 6, 4, effect_sd=0.5, seed=4)
    np.testing.assert_allclose(class_influence(masks, margins), _difference_of_means(masks, margins), atol=1e-5)
    assert class_influence(masks[:5], margins[:5], estimator="regression") is None
    masks[:, 2] = 1  # a unit in every model: NaN, no warning raised to the caller
    with np.errstate(all="raise"):
        assert np.isnan(class_influence(masks, margins)[2]).all()


# LDS -----------------------------------------------------------------------------------------------------
def test_lds_equals_a_numpy_and_scipy_reference() -> None:
    masks, margins = _runs(200, 8, 6, effect_sd=0.5, seed=5)
    units = np.arange(200) // 2
    result = lds_from_arrays(masks, margins, units=units, holdout_frac=0.2, seed=1)
    fit, held = holdout_split(units, 0.2, 1)
    np.testing.assert_array_equal(result.fit, fit)
    np.testing.assert_array_equal(result.held, held)
    infl = _difference_of_means(masks[fit], margins[fit])
    predicted = margins[fit].mean(0) + (masks[held] - 0.5) @ infl
    expected = [spearmanr(predicted[:, j], margins[held, j]).statistic for j in range(margins.shape[1])]
    np.testing.assert_allclose(result.per_target, expected, atol=1e-5)
    assert result.mean == pytest.approx(np.mean(expected), abs=1e-5)


def test_lds_of_noise_free_linear_margins_is_one_and_too_few_held_out_is_none() -> None:
    rng = np.random.default_rng(6)
    masks = make_masks(0, 400, 10, 0.5, antithetic=True).astype(np.float32)
    margins = masks @ rng.normal(size=(10, 3))
    result = lds_from_arrays(masks, margins, units=np.arange(400) // 2, estimator="regression")
    assert result.mean == pytest.approx(1.0, abs=1e-6)  # least squares recovers exact linear margins
    assert lds_from_arrays(masks, margins, units=np.arange(400) // 2).mean < 0.999  # difference of means does not
    assert lds_from_arrays(masks[:20], margins[:20], holdout_frac=0.1).mean is None  # 2 < MIN_HELDOUT held out
    assert MIN_HELDOUT == 3


# digit ranks ---------------------------------------------------------------------------------------------
def test_digit_ranks_find_the_matching_class_with_rank_classes_ties() -> None:
    influence = np.zeros((4, 6))
    labels = np.array([0, 0, 1, 1, 2, 2])
    influence[2, labels == 0] = 1.0      # source "a" (row 2) helps target class "a": first
    influence[0, labels == 1] = -1.0     # source "b" (row 0) hurts target class "b": last
    influence[:, labels == 2] = 0.5      # all tie for "c": "c" (row 3) comes after rows 0-2 (lower index first)
    influence[1, labels == 2] = np.nan   # ...except row 1, undefined and left out
    ranks = digit_ranks(influence, ["b", "x", "a", "c"], ["a", "b", "c", "d"], labels)
    assert ranks.ranks == (1, 4, 3, None) and ranks.in_top(3) == 2
    assert rank_positions(influence, np.flatnonzero(labels == 2)) == (1, None, 2, 3)
    influence[3, labels == 2] = np.nan   # its own class undefined: None (not first)
    assert digit_ranks(influence, ["b", "x", "a", "c"], ["a", "b", "c"], labels).ranks[2] is None


def test_digit_ranks_match_class_positions_on_an_influence_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    P, T, m = 6, 12, 24
    names, targets = ("b", "x", "a", "y", "c", "z"), ("a", "b", "c")
    data = dataclasses.replace(synthetic_data(P, T, seed=1), source_class_names=names, target_class_names=targets)
    recipe = parse_recipe_dict({"name": "ranks", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
                                "subsets": {"models": m}})
    path = create_store(tmp_path / "runs.h5", recipe, data)
    masks = rng.random((m, P)) < 0.5
    masks[:, 4] = masks[:, 1]            # "c" ties with "x", which has the lower index
    masks[:, 5] = True                   # "z" in every model: undefined
    margins = rng.integers(-3, 4, size=(m, T)).astype(np.float32)
    with h5py.File(path, "r+") as f:     # test set-up: chosen masks in a fresh store, before any row is written
        f["masks"][...] = masks
    with RunStore(write_rows(path, margins)) as store:
        labels = store.target_labels
    out = tmp_path / "influence.h5"
    with pytest.warns(UserWarning):
        influence = compute_influence(path, out, device="cpu", holdout_frac=0).coef_
    ranks = digit_ranks(influence, names, targets, labels)
    for name, rank in zip(targets, ranks.ranks):
        if (labels == targets.index(name)).any():
            assert rank == class_positions(out, [name], target_class=name)[name]
            ranking = rank_classes(out, target_class=name)
            positions = rank_positions(influence, np.flatnonzero(labels == targets.index(name)))
            assert [e.index for e in ranking.overall] == sorted(
                (k for k in range(P) if positions[k] is not None), key=lambda k: positions[k])
            assert positions[5] is None
    assert rank_positions(influence)[4] == rank_positions(influence)[1] + 1  # the tie, broken by index
