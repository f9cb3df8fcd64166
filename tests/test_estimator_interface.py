"""One estimator interface: every registered estimator fits, predicts, saves and is scored the same way,
and a new estimator needs one class plus one registry entry (checked with a toy estimator)."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import StoreError
from dmtoolkit.estimate import registry
from dmtoolkit.estimate.base import Estimator, linear_prediction
from dmtoolkit.estimate.files import CORE_DATASETS, load_estimate
from dmtoolkit.estimate.fit import fit_store
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.masks import make_masks

from .synthetic import linear_margins, synthetic_store

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"difference-of-means": {}, "regression": {}, "datamodels": {"n_lambdas": 10, "eps": 1e-2}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    masks = make_masks(2, 120, 8, 0.5)
    effects = rng.normal(0, 1, (8, 4))
    margins = linear_margins(masks, effects, rng, noise=0.3)
    return synthetic_store(tmp_path_factory.mktemp("iface") / "runs.h5", margins, masks), masks, effects


def test_every_registry_entry_is_an_estimator_of_that_name() -> None:
    # estimators that retrain networks from a store (gradient, replay) are checked end to end in
    # test_gradient.py and test_replay.py
    assert set(SETTINGS) == set(registry.estimator_names(from_arrays=True))
    assert set(registry.estimator_names()) - set(SETTINGS) == {"gradient", "replay"}
    for name, entry in registry.ESTIMATORS.items():
        cls = entry.load()
        assert issubclass(cls, Estimator) and cls.name == name
        assert entry.command in ("influence", "datamodels", "gradient", "replay")


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_fit_predict_save_load_evaluate(name: str, store: tuple[Path, np.ndarray, np.ndarray],
                                        tmp_path: Path) -> None:
    path, masks, effects = store
    model = registry.make_estimator(name, device="cpu", **SETTINGS[name])
    out = tmp_path / "est.h5"
    assert fit_store(path, out, model, test_fraction=0.2, seed=1) is model
    assert model.coef_.shape == (8, 4) and model.intercept_.shape == (4,)
    np.testing.assert_allclose(model.predict(masks[:5]), masks[:5].astype(np.float32) @ model.coef_ + model.intercept_,
                               rtol=1e-6)
    # every estimator recovers the planted effects up to the constant that fixed-size subsets cannot identify
    centred = lambda a: a - a.mean(0)  # noqa: E731
    assert np.corrcoef(centred(model.coef_).ravel(), centred(effects).ravel())[0, 1] > 0.9
    est = load_estimate(out)
    assert est.estimator == name and est.kind == "class" and est.subset_fraction == 0.5
    np.testing.assert_array_equal(est.matrix, model.coef_)
    np.testing.assert_array_equal(est.intercept, model.intercept_)
    assert len(est.test_rows) == 24 and not set(est.test_rows) & (set(est.fit_rows) | set(est.selection_rows))
    with h5py.File(out, "r") as f:
        names = [extra.name for extra in model.extra_datasets()]
        assert len(names) == len(set(names)) and not set(names) & set(CORE_DATASETS)
        assert all(name in f for name in names)
    result = evaluate(path, out)
    assert result.estimator == name and result.heldout_models == 24 and result.lds_mean > 0.5


class MedianSplit(Estimator):
    """A toy estimator: median margin with the unit minus without it (exists only in this test)."""

    name = "median-split"
    coef_meaning = "median margin with the unit minus without it"

    def __init__(self, *, device: str | None = None) -> None:
        self.device = device

    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None, draws: Any = None) -> Self:
        rows = np.arange(masks.shape[0]) if rows is None else np.asarray(rows)
        X, Y = np.asarray(masks[:])[rows], np.asarray(margins[:])[rows]
        self.coef_ = np.stack([np.median(Y[X[:, k]], 0) - np.median(Y[~X[:, k]], 0) for k in range(X.shape[1])])
        self.intercept_ = np.median(Y, 0) - X.mean(0) @ self.coef_
        self.fit_rows_ = rows
        return self


def test_a_new_estimator_is_one_class_and_one_registry_line(monkeypatch: pytest.MonkeyPatch,
                                                            store: tuple[Path, np.ndarray, np.ndarray],
                                                            tmp_path: Path) -> None:
    path = store[0]
    monkeypatch.setitem(sys.modules, "toy_estimators", type(sys)("toy_estimators"))
    sys.modules["toy_estimators"].MedianSplit = MedianSplit
    monkeypatch.setitem(registry.ESTIMATORS, "median-split",
                        registry.EstimatorEntry("median-split", "toy_estimators:MedianSplit", "influence", "toy"))
    out = tmp_path / "toy.h5"
    fit_store(path, out, registry.make_estimator("median-split"), test_fraction=0.2)
    assert load_estimate(out).estimator == "median-split" and evaluate(path, out).lds_mean > 0.3
    for command in (["rank", str(out), "--json"], ["evaluate", str(path), "--estimate", str(out)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output


def test_linear_prediction_counts_undefined_coefficients_as_zero() -> None:
    coef = np.array([[1.0, np.nan], [np.nan, 2.0]])
    masks = np.array([[1, 1], [0, 1]], bool)
    np.testing.assert_array_equal(linear_prediction(masks, coef, np.array([0.5, -1.0])), [[1.5, 1.0], [0.5, 1.0]])


def test_cli_choices_come_from_the_registry() -> None:
    help_text = " ".join(CliRunner().invoke(cli, ["influence", "--help"]).output.split())
    for name in registry.estimator_names("influence"):
        assert name in help_text
    assert "datamodels" not in registry.estimator_names("influence")


def test_estimates_from_completed_rows_with_non_finite_margins_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = synthetic_store(tmp_path / "runs.h5", rng.normal(size=(12, 2)).astype(np.float32))
    with h5py.File(path, "r+") as f:  # what a foreign tool or a damaged import could leave behind
        f["margins"][4, 1] = np.nan
        f["margins"][9, 0] = np.inf
    with pytest.raises(StoreError, match=r"completed rows 4, 9 have non-finite margins; see `dmtoolkit store validate`"):
        fit_store(path, tmp_path / "e.h5", registry.make_estimator("difference-of-means"))
    assert not (tmp_path / "e.h5").exists()


def test_damaged_and_foreign_estimate_files_are_one_line_errors(store: tuple[Path, np.ndarray, np.ndarray],
                                                                tmp_path: Path) -> None:
    path = store[0]
    good = tmp_path / "good.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_store(path, good, registry.make_estimator("difference-of-means", device="cpu"))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f.attrs["schema"] = "dmtoolkit.influence"
    partial = tmp_path / "partial.h5"
    partial.write_bytes(good.read_bytes())
    with h5py.File(partial, "r+") as f:
        del f["rows/test"]
    cases = {truncated: "truncated or corrupt", old: "an older dmtoolkit", path: "not a dmtoolkit estimate file",
             partial: "incomplete estimate file (no 'rows/test')"}
    for bad, message in cases.items():
        with pytest.raises(StoreError, match=re.escape(message)):
            load_estimate(bad)
        result = CliRunner().invoke(cli, ["evaluate", str(path), "--estimate", str(bad)])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
        assert result.output.count("\n") == 1
