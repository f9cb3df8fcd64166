"""OpenedEstimate: every analysis takes one opened estimate whose run store is opened and hash-checked once."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dmtoolkit.analyze import (
    class_positions,
    explain_target,
    rank_classes,
    recommend_removal,
    subpopulation,
)
from dmtoolkit.analyze.estimates import OpenedEstimate, as_opened, open_estimate
from dmtoolkit.analyze.overview import analyse_estimate
from dmtoolkit.errors import StoreError
from dmtoolkit.estimate import compute_influence
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.store import RunStore
from tests.synthetic import synthetic_store


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A class-level store (class 1 helps, class 4 hurts) and its influence with 12 held-out models."""
    rng = np.random.default_rng(0)
    masks = rng.random((60, 6)) < 0.5
    effect = np.zeros((6, 12))
    effect[1, :4], effect[4, :] = 2.0, -1.0
    margins = (masks @ effect + rng.normal(0, 0.3, (60, 12))).astype(np.float32)
    store = synthetic_store(tmp_path / "runs.h5", margins, masks)
    compute_influence(store, tmp_path / "influence.h5", device="cpu", holdout_frac=0.2)
    return store, tmp_path / "influence.h5"


@pytest.fixture()
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths of the stores whose content hash is asked for, one entry per call."""
    calls: list[Path] = []
    original = RunStore.content_hash

    def counted(self: RunStore) -> str:
        calls.append(self.path)
        return original(self)

    monkeypatch.setattr(RunStore, "content_hash", counted)
    return calls


def _all(source: str | Path | OpenedEstimate) -> list[object]:
    return [rank_classes(source), recommend_removal(source), subpopulation(source, "c1", with_images=True),
            explain_target(source, 0), class_positions(source, ["c1", "c4"]), evaluate(None, source)
            if isinstance(source, OpenedEstimate) else evaluate(source.parent / "runs.h5", source)]


def test_one_opened_estimate_hashes_its_store_once(files: tuple[Path, Path], hashes: list[Path]) -> None:
    store, influence = files
    by_path = _all(influence)
    assert len(hashes) == 6  # each path form opens and checks the store itself
    hashes.clear()
    with open_estimate(influence) as opened:
        by_opened = _all(opened)
        held = opened.run()
        assert held.file  # still open between analyses
    assert hashes == [store.resolve()]
    assert not held.file  # closed with the opened estimate
    for a, b in zip(by_path[:4], by_opened[:4]):
        assert a.to_json() == b.to_json()
    assert by_path[4] == by_opened[4] == {"c1": 1, "c4": 6}
    assert by_path[5].to_json() == by_opened[5].to_json()
    assert by_opened[0].top[0].name == "c1" and by_opened[0].top[0].low is not None  # intervals read the store
    assert np.array_equal(by_path[2].images, by_opened[2].images)


def test_a_stale_store_is_refused_once_and_by_every_analysis_alike(files: tuple[Path, Path],
                                                                   hashes: list[Path]) -> None:
    store, influence = files
    with h5py.File(store, "r+") as f:  # a completed row changed since the estimate: stale
        f["margins"][0, 0] += 1.0
    with pytest.raises(StoreError) as by_path:
        rank_classes(influence)
    assert "was not computed from" in str(by_path.value) and "content hash" in str(by_path.value)
    hashes.clear()
    with open_estimate(influence) as opened:
        for analysis in (rank_classes, recommend_removal, lambda o: explain_target(o, 0),
                         lambda o: evaluate(None, o)):
            with pytest.raises(StoreError) as error:
                analysis(opened)
            assert str(error.value) == str(by_path.value)
    assert len(hashes) == 1  # the refusal is kept, not recomputed


def test_the_store_is_chosen_when_opening(files: tuple[Path, Path], tmp_path: Path) -> None:
    store, influence = files
    moved = tmp_path / "moved" / "runs.h5"
    moved.parent.mkdir()
    store.rename(moved)
    with open_estimate(influence) as opened:  # the recorded store is gone
        assert not opened.has_store and rank_classes(opened).level is None  # ranked, without intervals
        with pytest.raises(StoreError, match=r"does not exist \(moved\?\); pass --store"):
            explain_target(opened, 0)
        overview = analyse_estimate(opened)
        assert overview.rank is not None and overview.lds is None and overview.notes == (
            f"run store {store.resolve()} not found: no images, leakage or LDS",)
    with open_estimate(influence, moved) as opened:
        assert opened.has_store and opened.store_path == moved
        with pytest.raises(ValueError, match="give the run store when opening"):
            as_opened(opened, moved)
        with pytest.raises(ValueError, match="is not the run store"):
            evaluate(store, opened)
        assert evaluate(moved, opened).lds_mean == evaluate(moved, influence).lds_mean
        assert rank_classes(opened).to_json() == rank_classes(influence, store=moved).to_json()
    found = analyse_estimate(influence, stores=[moved])  # a path: its store matched by name, as the report does
    assert found.store_name == "runs.h5" and found.lds is not None and not found.notes
    assert len(found.subpopulations) == 3 and found.subpopulations[0].class_name == "c1"
