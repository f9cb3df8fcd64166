"""The signal study's statistics (benchmarks/signal_study.py) on arrays with a known answer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location(
    "signal_study", Path(__file__).resolve().parent.parent / "benchmarks" / "signal_study.py")
study = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(study)


def _runs(m: int, P: int, T: int, effect_sd: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((m, P)) < 0.5
    effects = rng.normal(0, effect_sd, size=P)
    margins = (masks @ effects)[:, None] + rng.normal(size=(m, T))
    return masks.astype(np.float32), margins.astype(np.float32), effects


def test_split_half_is_high_with_strong_effects_and_near_zero_without() -> None:
    masks, margins, _ = _runs(400, 20, 30, effect_sd=0.5)
    assert study.split_half(masks, margins, 400, seed=0) > 0.8
    masks, margins, _ = _runs(400, 20, 30, effect_sd=0.0)
    values = [study.split_half(masks, margins, 400, seed=s) for s in range(10)]
    assert abs(np.mean(values)) < 0.2


def test_regression_split_half_needs_more_models_than_classes() -> None:
    masks, margins, _ = _runs(60, 30, 5, effect_sd=0.5, seed=1)
    assert study.split_half(masks, margins, 60, seed=0, estimator="regression") is None  # halves of 30 models, 30 units
    masks, margins, _ = _runs(400, 30, 5, effect_sd=0.5, seed=1)
    assert study.split_half(masks, margins, 400, seed=0, estimator="regression") > 0.9


def test_models_for_follows_spearman_brown() -> None:
    assert study.models_for(0.8, 100) == pytest.approx(100)
    assert study.models_for(0.5, 100) == pytest.approx(400)
    assert study.models_for(0.0, 100) is None and study.models_for(-0.1, 100) is None


def test_digit_ranks_find_the_matching_class() -> None:
    influence = np.zeros((4, 6))
    labels = np.array([0, 0, 1, 1, 2, 2])
    influence[2, labels == 0] = 1.0      # source "a" (row 2) helps target class "a"
    influence[0, labels == 1] = -1.0     # source "b" (row 0) hurts target class "b": ranked last
    ranks = study.digit_ranks(influence, ["b", "x", "a", "y"], ["a", "b", "c"], labels)
    assert ranks == [1, 4, None]


def test_lever_recipes_are_valid_recipes() -> None:
    for name, overrides in study.LEVERS.items():
        recipe = study.lever_recipe(overrides, models=8)
        assert recipe.subsets.models == 8, name


def test_store_prefix_keeps_only_the_first_completed_models(tmp_path: Path) -> None:
    from dmtoolkit.store import RunStore
    from tests.synthetic import synthetic_store

    margins = np.arange(40, dtype=np.float32).reshape(10, 4)
    completed = np.ones(10, bool)
    completed[2] = False
    store = synthetic_store(tmp_path / "runs.h5", margins, kind="example", completed=completed)
    prefix = study.store_prefix(store, 5, tmp_path / "prefix.h5")
    with RunStore(store) as full, RunStore(prefix) as part:
        assert list(part.completed_rows()) == [0, 1, 3, 4, 5]
        np.testing.assert_array_equal(part.read_rows(part.completed_rows())[1], full.read_rows([0, 1, 3, 4, 5])[1])
        assert len(full.completed_rows()) == 9  # the original is untouched
