"""Masks: exact size, a pure function of (seed, i), antithetic pairs complement each other."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dmtoolkit.masks import make_masks, mask_for, subset_size


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), models=st.integers(2, 20), units=st.integers(2, 300),
       alpha=st.floats(0.01, 0.99))
def test_masks_have_exact_size_and_are_pure(seed: int, models: int, units: int, alpha: float) -> None:
    masks = make_masks(seed, models, units, alpha)
    k = subset_size(alpha, units)
    assert k == min(max(round(alpha * units), 1), units - 1)
    assert masks.dtype == bool and masks.shape == (models, units)
    assert (masks.sum(axis=1) == k).all()
    for i in reversed(range(models)):  # any order, any process: same mask
        np.testing.assert_array_equal(mask_for(seed, i, units, alpha), masks[i])


@given(seed=st.integers(0, 1000), pairs=st.integers(1, 10), units=st.integers(1, 100).map(lambda n: 2 * n))
def test_antithetic_pairs_complement(seed: int, pairs: int, units: int) -> None:
    masks = make_masks(seed, 2 * pairs, units, 0.5, antithetic=True)
    np.testing.assert_array_equal(masks[1::2], ~masks[0::2])
    assert (masks.sum(axis=1) == units // 2).all()


def test_different_seeds_give_different_masks() -> None:
    assert not np.array_equal(make_masks(0, 4, 50, 0.5), make_masks(1, 4, 50, 0.5))
    assert not np.array_equal(mask_for(0, 0, 50, 0.5), mask_for(0, 1, 50, 0.5))
