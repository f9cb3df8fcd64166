"""Datamodel estimate files: contents reopened and checked, target slices, and the errors a user can hit."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.datamodels import fit_datamodels
from dmtoolkit.estimate.fit import check_targets
from dmtoolkit.masks import make_masks
from dmtoolkit.store import RunStore

from .synthetic import linear_margins, synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    masks = make_masks(0, 160, 12, 0.5)
    effects = rng.normal(0, 0.5, (12, 6)) * (rng.random((12, 6)) < 0.4)
    margins = linear_margins(masks, effects, rng, noise=0.5)
    completed = np.ones(160, bool)
    completed[[5, 50, 51]] = False
    return synthetic_store(tmp_path_factory.mktemp("dm") / "runs.h5", margins, masks, completed=completed)


def test_file_contents(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "dm.h5"
    model = fit_datamodels(store, out, n_lambdas=20, eps=1e-2, val_frac=0.2, holdout_frac=0.1, seed=3, device="cpu")
    with h5py.File(out, "r") as f, RunStore(store) as run:
        assert f.attrs["schema"] == "dmtoolkit.estimate" and f.attrs["schema_version"] == 1
        assert f.attrs["estimator"] == "datamodels"
        assert f.attrs["source_hash"] == run.content_hash() and f.attrs["source_store"] == str(store.resolve())
        assert (f.attrs["target_start"], f.attrs["target_stop"], f.attrs["split_seed"]) == (0, 6, 3)
        settings = json.loads(f.attrs["settings"])
        assert settings["val_frac"] == 0.2 and settings["n_lambdas"] == 20 and f.attrs["kind"] == "class"
        np.testing.assert_array_equal(f["coef"][()], model.coef_)
        np.testing.assert_array_equal(f["intercept"][()], model.intercept_)
        np.testing.assert_array_equal(f["lambda"][()], model.lambda_)
        np.testing.assert_array_equal(f["val_mse"][()], model.val_mse_)
        assert f["coef"].shape == (12, 6) and f["path/lambdas"].shape == (20, 6)
        train, val, test = f["rows/fit"][()], f["rows/selection"][()], f["rows/test"][()]
        assert not set(train) & set(val) and not set(test) & (set(train) | set(val))
        assert len(test) == round(0.1 * 157) and len(val) == round(0.2 * (157 - len(test)))
        assert sorted(set(train) | set(val) | set(test)) == run.completed_rows().tolist()
        assert f["unit_names"].asstr()[()].tolist() == run.unit_names
        assert f["target_names"].asstr()[()].tolist() == run.target_names
        for name in ("coef", "intercept", "lambda", "val_mse", "path/val_mse", "rows/selection", "rows/test"):
            assert {"meaning", "axes", "units"} <= set(f[name].attrs)
        masks, margins = run.read_rows(val)
    mse = ((masks @ model.coef_ + model.intercept_ - margins) ** 2).mean(0)
    np.testing.assert_allclose(mse, model.val_mse_, rtol=1e-4)


def test_target_slice_equals_columns_of_the_full_fit(store: Path, tmp_path: Path) -> None:
    full = fit_datamodels(store, tmp_path / "all.h5", n_lambdas=15, eps=1e-2, tol=1e-6, device="cpu")
    part = fit_datamodels(store, tmp_path / "part.h5", targets=slice(2, 5), n_lambdas=15, eps=1e-2, tol=1e-6, device="cpu")
    np.testing.assert_allclose(part.coef_, full.coef_[:, 2:5], atol=2e-3)
    np.testing.assert_allclose(part.lambda_, full.lambda_[2:5], rtol=1e-6)
    with h5py.File(tmp_path / "part.h5", "r") as f, RunStore(store) as run:
        assert (f.attrs["target_start"], f.attrs["target_stop"]) == (2, 5)
        assert f["target_names"].asstr()[()].tolist() == run.target_names[2:5]


def test_check_targets() -> None:
    assert check_targets(None, 10) == slice(0, 10)
    assert check_targets(slice(3, None), 10) == slice(3, 10) and check_targets(slice(None, 4), 10) == slice(0, 4)
    assert check_targets(slice(1, 2), 10) == slice(1, 2)
    with pytest.raises(UserError, match=r"^targets 5:11 is outside the store's targets 0:10; give A:B"):
        check_targets(slice(5, 11), 10)
    with pytest.raises(UserError, match="outside"):
        check_targets(slice(4, 4), 10)
    with pytest.raises(TypeError, match=r"targets must be a slice .* not '3:5'"):
        check_targets("3:5", 10)  # the CLI parses "A:B" (dmtoolkit.cli.TargetRange); the library takes slices


def test_errors(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "dm.h5"
    with pytest.raises(UserError, match=r"targets 0:99 is outside the store's targets 0:6"):
        fit_datamodels(store, out, targets=slice(0, 99), device="cpu")
    with pytest.raises(UserError, match=r"val_frac=0.0 must be in \(0, 1\)"):
        fit_datamodels(store, out, val_frac=0.0, device="cpu")
    with pytest.raises(UserError, match="eps=2.0 must be in"):
        fit_datamodels(store, out, eps=2.0, device="cpu")
    with pytest.raises(UserError, match="n_lambdas=0 must be at least 1"):
        fit_datamodels(store, out, n_lambdas=0, device="cpu")
    with pytest.raises(StoreError, match="no such store"):
        fit_datamodels(tmp_path / "missing.h5", out, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="^--device cuda requested but no CUDA GPU is available; use --device cpu$"):
            fit_datamodels(store, out, device="cuda")
    assert not out.exists()
    out.write_text("old")
    with pytest.raises(StoreError, match="already exists; pass --force"):
        fit_datamodels(store, out, device="cpu")
    assert out.read_text() == "old"


def test_too_few_models(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "runs.h5", np.zeros((4, 2), np.float32))
    with pytest.raises(UserError, match="leave 4 to fit and 0 to choose λ.*train more models"):
        fit_datamodels(store, tmp_path / "dm.h5", val_frac=0.1, holdout_frac=0, device="cpu")
