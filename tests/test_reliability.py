"""dmtoolkit.analyze.reliability on arrays with known answers, against independent references (brute force, plain
NumPy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmtoolkit.analyze.reliability import class_influence, draw_ids
from dmtoolkit.masks import hadamard_order, make_masks
from dmtoolkit.recipe import SubsetSpec, parse_recipe_dict
from dmtoolkit.stats.splits import holdout_split, split_halves, split_rows
from dmtoolkit.store import RunStore, create_store

from .synthetic import difference_of_means_reference, linear_runs, synthetic_data

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# draws ---------------------------------------------------------------------------------------------------
def test_draw_ids_follow_the_design() -> None:
    P = 6  # Hadamard order 8
    assert draw_ids(SubsetSpec(), 5).tolist() == [0, 1, 2, 3, 4]
    assert draw_ids(SubsetSpec(antithetic=True), 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert draw_ids(SubsetSpec(design="orthogonal"), 20, num_units=P).tolist() == [0] * 8 + [1] * 8 + [2] * 4
    both = SubsetSpec(design="orthogonal", antithetic=True)
    assert draw_ids(both, 40, num_units=P).tolist() == [0] * 16 + [1] * 16 + [2] * 8
    with pytest.raises(ValueError, match="num_units"):
        draw_ids(SubsetSpec(design="orthogonal"), 8)


def test_draw_ids_of_a_store_read_its_recipe(tmp_path: Path) -> None:
    recipe = parse_recipe_dict({"name": "units", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
                                "subsets": {"models": 32, "antithetic": True, "design": "orthogonal"}})
    path = create_store(tmp_path / "runs.h5", recipe, synthetic_data(5, 4))
    with RunStore(path) as store:
        draws = draw_ids(store, store.num_models)
        masks = store.masks[()]
    assert draws.tolist() == [0] * 16 + [1] * 16  # P = 5: blocks of 8 masks, each with its complement
    assert draws.tolist() == draw_ids(recipe, 32, num_units=5).tolist()
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
    first, second = split_halves(draw_ids(SubsetSpec(antithetic=True), len(masks)), count=count, seed=split_seed)
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
    first, second = split_halves(draw_ids(design, len(masks), num_units=units), seed=split_seed)
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
def test_split_halves_take_whole_draws_of_any_size(sizes: list[int], count: int, seed: int) -> None:
    draws = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # ids need not be 0..n-1
    first, second = split_halves(draws, count=count, seed=seed)
    assert len(first) + len(second) <= count
    a, b = set(draws[first]), set(draws[second])
    assert not a & b and len(a) == len(b)
    for half, ids in ((first, a), (second, b)):
        np.testing.assert_array_equal(half, np.flatnonzero(np.isin(draws, list(ids))))  # every row of each draw


@SETTINGS
@given(m=st.integers(1, 80), frac=st.floats(0, 0.9), seed=st.integers(0, 1000))
def test_holdout_split_of_independent_rows_is_split_rows(m: int, frac: float, seed: int) -> None:
    fit, held = holdout_split(np.arange(m), frac, seed)
    ref_fit, ref_held = split_rows(np.arange(m), frac, seed)
    np.testing.assert_array_equal(fit, ref_fit)
    np.testing.assert_array_equal(held, ref_held)


def test_holdout_split_holds_out_whole_pairs() -> None:
    units = draw_ids(SubsetSpec(antithetic=True), 40)
    fit, held = holdout_split(units, 0.2, seed=3)
    assert len(held) == 8 and not set(units[fit]) & set(units[held])
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(40))


def test_class_influence_is_the_library_estimator() -> None:
    masks, margins = linear_runs(50, 6, 4, effect_sd=0.5, seed=4)
    np.testing.assert_allclose(class_influence(masks, margins), difference_of_means_reference(masks, margins), atol=1e-5)
    assert class_influence(masks[:5], margins[:5], estimator="regression") is None
    masks[:, 2] = 1  # a unit in every model: NaN, no warning raised to the caller
    with np.errstate(all="raise"):
        assert np.isnan(class_influence(masks, margins)[2]).all()


