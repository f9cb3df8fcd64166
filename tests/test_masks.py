"""Masks: exact size, a pure function of (seed, i), antithetic pairs complement each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dmtoolkit.masks import design_warnings, hadamard_order, make_masks, mask_for, orthogonal_block_models, subset_size


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


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 70), st.integers(1, 3), st.booleans())
def test_orthogonal_blocks_are_balanced_and_uncorrelated(seed: int, units: int, blocks: int, antithetic: bool) -> None:
    from scipy.linalg import hadamard

    from dmtoolkit.masks import hadamard_order

    order = hadamard_order(units)
    assert order > units and order & (order - 1) == 0 and order // 2 <= units
    assert np.array_equal(hadamard(4) < 0, [[(bin(r & c).count("1") % 2) == 1 for c in range(4)] for r in range(4)])
    per_block = order * (2 if antithetic else 1)
    masks = make_masks(seed, per_block * blocks, units, 0.5, antithetic, "orthogonal")
    for b in range(blocks):
        block = masks[b * per_block:(b + 1) * per_block].astype(float)
        np.testing.assert_array_equal(block.sum(0), per_block / 2)     # every unit in exactly half
        centred = block - 0.5
        np.testing.assert_allclose(centred.T @ centred, np.eye(units) * per_block / 4)  # orthogonal columns
    if antithetic:
        np.testing.assert_array_equal(masks[1::2], ~masks[::2])
    again = np.stack([mask_for(seed, i, units, 0.5, antithetic, "orthogonal") for i in range(len(masks))])
    np.testing.assert_array_equal(again, masks)


def test_orthogonal_difference_of_means_equals_least_squares() -> None:
    rng = np.random.default_rng(3)
    masks = make_masks(7, 64, 40, 0.5, design="orthogonal").astype(float)
    effects = rng.normal(size=40)
    y = masks @ effects + 0.3 * rng.normal(size=64)
    n_in = masks.sum(0)
    dom = masks.T @ y / n_in - (1 - masks).T @ y / (64 - n_in)
    x = np.c_[np.ones(64), masks]
    np.testing.assert_allclose(dom, np.linalg.lstsq(x, y, rcond=None)[0][1:], atol=1e-9)


@given(models=st.integers(2, 700), units=st.integers(2, 70), antithetic=st.booleans())
@settings(max_examples=60, deadline=None)
def test_design_warnings_say_when_orthogonal_blocks_are_not_whole(models: int, units: int, antithetic: bool) -> None:
    """A warning exactly when fewer than two whole blocks, or a partial last block; none for random masks."""
    block = hadamard_order(units) * (2 if antithetic else 1)
    assert orthogonal_block_models(units, antithetic) == block
    masks = make_masks(0, block, units, 0.5, antithetic, "orthogonal")
    assert (masks.sum(axis=0) == block // 2).all()  # every unit in half of one whole block
    warnings = design_warnings(models, units, "orthogonal", antithetic)
    assert design_warnings(models, units, "random", antithetic) == ()
    if models < 2 * block:
        assert len(warnings) == 1 and f"need at least two; use --models {2 * block}" in warnings[0]
    elif models % block:
        assert len(warnings) == 1 and f"partial orthogonal block ({models % block} of {block})" in warnings[0]
    else:
        assert warnings == ()


def test_init_warns_when_an_orthogonal_store_has_fewer_than_two_blocks(tmp_path: Path) -> None:
    """`dmtoolkit init` on the shipped (orthogonal) recipe: one warning line on stderr, the store is made."""
    from click.testing import CliRunner

    from dmtoolkit.cli import cli
    from dmtoolkit.recipe import RECIPES_DIR

    recipe = RECIPES_DIR / "glyphs-to-mnist.yaml"
    small = CliRunner().invoke(cli, ["init", str(recipe), str(tmp_path / "a.h5"), "--models", "16"])
    assert small.exit_code == 0 and (tmp_path / "a.h5").exists()
    assert ("warning: 16 models make 0 whole orthogonal block(s) of 128: standard errors and split-half "
            "reliability need at least two; use --models 256 or more, a multiple of 128") in small.stderr
    whole = CliRunner().invoke(cli, ["init", str(recipe), str(tmp_path / "b.h5"), "--models", "256"])
    assert whole.exit_code == 0 and "warning" not in whole.stderr and "created" in whole.stdout
