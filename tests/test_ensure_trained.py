"""`ensure_trained`: create the store or keep the one of the same recipe, then train what is missing.

The demo and the benchmarks that keep their stores go through it, so a rerun resumes and a store made from
another recipe or scale is refused in one line, untouched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from dmtoolkit.errors import StoreError
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained, train
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.store import RunStore, create_store


def _margins(path: Path) -> np.ndarray:
    with RunStore(path) as store:
        assert len(store.pending_rows()) == 0
        return store.read_rows(np.arange(store.num_models))[1]


def test_creates_then_resumes_a_partial_store_to_what_one_run_trains(small_recipe: Path, tmp_path: Path) -> None:
    recipe = recipe_with(small_recipe, models=4)  # two groups of two models
    data, path, heard = build_run_data(recipe), tmp_path / "new" / "runs.h5", []
    first = ensure_trained(path, recipe, workers=1, device="cpu", limit=2, progress=False, data=data,
                           say=heard.append)
    assert first.path == path and first.created
    assert (first.summary.written, first.summary.already_done, first.summary.remaining) == (2, 0, 2)
    assert heard == ["creating runs.h5 (4 models, class-level)", "training runs.h5"]
    assert first.seconds > 0

    heard.clear()
    second = ensure_trained(path, recipe, workers=1, device="cpu", progress=False, say=heard.append)
    assert not second.created and heard == ["training runs.h5"]
    assert (second.summary.written, second.summary.already_done, second.summary.remaining) == (2, 2, 0)
    with RunStore(path) as store:
        assert store.recipe_hash == recipe.hash()

    readings = iter([10.0, 25.5])  # the caller's clock (a study's CPU time) is read before and after training
    third = ensure_trained(path, recipe, workers=1, device="cpu", progress=False, clock=lambda: next(readings))
    assert (third.summary.written, third.summary.already_done, third.summary.remaining) == (0, 4, 0)
    assert third.seconds == 15.5 and next(readings, None) is None

    # the reference: the same recipe created and trained in one go
    one_go = create_store(tmp_path / "one-go.h5", recipe, data)
    assert train(one_go, workers=1, device="cpu", progress=False).written == 4
    np.testing.assert_array_equal(_margins(path), _margins(one_go))


@pytest.mark.parametrize("change", [{"models": 6}, {"overrides": {"training.epochs": 2}}], ids=["scale", "recipe"])
def test_refuses_a_store_made_from_another_recipe_and_leaves_it_untouched(small_recipe: Path, tmp_path: Path,
                                                                         change: dict) -> None:
    recipe = recipe_with(small_recipe, models=4)
    path = create_store(tmp_path / "runs.h5", recipe, build_run_data(recipe))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    other = recipe_with(small_recipe, change.get("overrides"), models=change.get("models", 4))
    heard: list[str] = []
    with pytest.raises(StoreError) as info:
        ensure_trained(path, other, workers=1, device="cpu", progress=False, say=heard.append)
    assert str(info.value) == (f"{path}: exists but was made from another recipe or scale; "
                               "remove it or pass another --out")
    assert heard == [] and hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.h5", "small.yaml"]  # no lock or temp file left
