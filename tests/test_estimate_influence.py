"""Difference-of-means influence: against a plain NumPy loop on generated stores, NaN handling, symmetry,
the INFLUENCE.h5 file, and the errors a user can hit."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.influence import (
    UndefinedInfluenceWarning,
    compute_influence,
    influence_from_arrays,
)
from dmtoolkit.store import RunStore

from .synthetic import linear_margins, synthetic_store


def reference(masks: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Influence and Welch standard error by an explicit loop over units and targets, in float64."""
    P, T = masks.shape[1], margins.shape[1]
    infl, se = np.full((P, T), np.nan), np.full((P, T), np.nan)
    for k in range(P):
        inside, outside = margins[masks[:, k]].astype(np.float64), margins[~masks[:, k]].astype(np.float64)
        for j in range(T):
            if len(inside) and len(outside):
                infl[k, j] = inside[:, j].mean() - outside[:, j].mean()
            if len(inside) > 1 and len(outside) > 1:
                se[k, j] = np.sqrt(inside[:, j].var(ddof=1) / len(inside) + outside[:, j].var(ddof=1) / len(outside))
    return infl, se


@st.composite
def stores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = draw(st.integers(2, 30))
    P = draw(st.integers(2, 6))
    T = draw(st.integers(1, 5))
    masks = draw(hnp.arrays(bool, (m, P)))
    margins = draw(hnp.arrays(np.float32, (m, T), elements=st.floats(-10, 10, width=32, allow_subnormal=False)))
    completed = draw(hnp.arrays(bool, m))
    completed[:2] = True
    return masks, margins, completed


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores(), st.sampled_from([1, 3, 1024]))
def test_matches_numpy_loop_on_generated_stores(case: tuple[np.ndarray, np.ndarray, np.ndarray], block_rows: int) -> None:
    masks, margins, completed = case
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "runs.h5", margins, masks, completed=completed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedInfluenceWarning)
            result = compute_influence(store, Path(tmp) / "infl.h5", holdout_frac=0, block_rows=block_rows, device="cpu")
    infl, se = reference(masks[completed], margins[completed])
    np.testing.assert_allclose(result.coef_, infl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.stderr_, se, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.n_in_, masks[completed].sum(0))
    np.testing.assert_array_equal(result.n_out_, (~masks[completed]).sum(0))
    np.testing.assert_allclose(result.mean_margin_, margins[completed].mean(0), rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(stores(), st.sampled_from([1, 4, 1024]))
def test_means_only_mode_matches_the_loop_and_skips_errors(case: tuple[np.ndarray, np.ndarray, np.ndarray],
                                                           block_rows: int) -> None:
    masks, margins, completed = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedInfluenceWarning)
        result = influence_from_arrays(masks[completed], margins[completed], device="cpu", block_rows=block_rows,
                                       errors=False)
    assert result.stderr_ is None
    np.testing.assert_allclose(result.coef_, reference(masks[completed], margins[completed])[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.mean_margin_, margins[completed].mean(0), rtol=1e-5, atol=1e-5)


def test_no_errors_cli_writes_no_stderr_dataset(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dmtoolkit.cli import cli

    rng = np.random.default_rng(8)
    masks = rng.random((40, 5)) < 0.5
    margins = rng.normal(size=(40, 3)).astype(np.float32)
    store = synthetic_store(tmp_path / "runs.h5", margins, masks)
    out = tmp_path / "infl.h5"
    run = CliRunner().invoke(cli, ["influence", str(store), "-o", str(out), "--no-errors", "--holdout-frac", "0",
                                   "--device", "cpu"])
    assert run.exit_code == 0, run.output
    with h5py.File(out, "r") as f:
        assert "stderr" not in f and json.loads(f.attrs["settings"]) == {"errors": False}
        np.testing.assert_allclose(f["coef"][()], reference(masks, margins)[0], atol=1e-5)


def test_units_always_in_or_out_are_nan_with_a_warning() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((40, 5)) < 0.5
    masks[:, 1], masks[:, 3] = True, False
    margins = rng.normal(size=(40, 2)).astype(np.float32)
    with pytest.warns(UndefinedInfluenceWarning, match=r"2 of 5 units \(1, 3\) are in every model or in none"):
        result = influence_from_arrays(masks, margins, device="cpu")
    assert np.isnan(result.coef_[[1, 3]]).all() and np.isnan(result.stderr_[[1, 3]]).all()
    assert np.isfinite(result.coef_[[0, 2, 4]]).all()
    assert len(result.warnings_) == 1 and "NaN" in result.warnings_[0]


def test_single_model_side_gives_nan_stderr_only() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((20, 3)) < 0.5
    masks[:, 0] = False
    masks[4, 0] = True
    margins = rng.normal(size=(20, 2)).astype(np.float32)
    with pytest.warns(UndefinedInfluenceWarning, match="standard error is NaN"):
        result = influence_from_arrays(masks, margins, device="cpu")
    assert np.isfinite(result.coef_[0]).all() and np.isnan(result.stderr_[0]).all()


def test_complementing_masks_flips_the_sign() -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((300, 7)) < 0.5
    margins = rng.normal(size=(300, 4)).astype(np.float32) + masks[:, :4] * 0.5
    a = influence_from_arrays(masks, margins, device="cpu", block_rows=64)
    b = influence_from_arrays(~masks, margins, device="cpu", block_rows=64)
    np.testing.assert_allclose(b.coef_, -a.coef_, atol=1e-6)
    np.testing.assert_allclose(b.stderr_, a.stderr_, rtol=1e-6)
    np.testing.assert_array_equal(b.n_in_, a.n_out_)


def test_large_offsets_do_not_lose_precision() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((5000, 4)) < 0.5
    margins = (1000 + rng.normal(size=(5000, 2)) * 1e-2 + masks[:, :2] * 1e-3).astype(np.float32)
    infl, se = reference(masks, margins)
    result = influence_from_arrays(masks, margins, device="cpu", block_rows=512)
    np.testing.assert_allclose(result.coef_, infl, atol=2e-5)
    np.testing.assert_allclose(result.stderr_, se, rtol=1e-3)


@pytest.mark.parametrize("block_rows", [1, 3, 1024])
def test_poor_first_block_does_not_cost_precision(block_rows: int) -> None:
    """The shift comes from the first block; an outlier there must not spoil the second moments."""
    rng = np.random.default_rng(7)
    masks = rng.random((30, 3)) < 0.5
    margins = (2 + 1e-3 * rng.normal(size=(30, 2))).astype(np.float32)
    margins[0] = 4.45118
    infl, se = reference(masks, margins)
    result = influence_from_arrays(masks, margins, device="cpu", block_rows=block_rows)
    np.testing.assert_allclose(result.coef_, infl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.stderr_, se, rtol=1e-5, atol=1e-5)


def test_file_contents_and_holdout(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    masks = rng.random((50, 6)) < 0.5
    margins = rng.normal(size=(50, 3)).astype(np.float32)
    completed = np.ones(50, bool)
    completed[[3, 7]] = False
    store = synthetic_store(tmp_path / "runs.h5", margins, masks, completed=completed)
    out = tmp_path / "infl.h5"
    result = compute_influence(store, out, holdout_frac=0.2, seed=5, device="cpu")
    with h5py.File(out, "r") as f, RunStore(store) as run:
        assert f.attrs["schema"] == "dmtoolkit.estimate" and f.attrs["schema_version"] == 1
        assert f.attrs["estimator"] == "difference-of-means"
        assert f.attrs["source_hash"] == run.content_hash()
        assert f.attrs["source_store"] == str(store.resolve())
        assert f.attrs["kind"] == "class" and f.attrs["subset_fraction"] == 0.5 and f.attrs["split_seed"] == 5
        fit, held = f["rows/fit"][()], f["rows/test"][()]
        assert len(held) == 10 and not set(fit) & set(held) and len(f["rows/selection"]) == 0
        assert sorted(set(fit) | set(held)) == list(np.flatnonzero(completed))
        np.testing.assert_allclose(f["coef"][()], reference(masks[fit], margins[fit])[0], atol=1e-5)
        np.testing.assert_array_equal(f["coef"][()], result.coef_)
        assert f["unit_names"].asstr()[()].tolist() == run.unit_names
        assert f["target_names"].asstr()[()].tolist() == run.target_names
        for name in ("coef", "intercept", "stderr", "n_in", "n_out", "mean_margin", "unit_names", "target_names"):
            assert {"meaning", "axes", "units"} <= set(f[name].attrs)
        # the intercept centres the prediction on the fitted models: at their mean mask it is their mean margin
        rate = masks[fit].mean(0)
        np.testing.assert_allclose(rate @ f["coef"][()] + f["intercept"][()], margins[fit].mean(0), atol=1e-5)
    again = compute_influence(store, tmp_path / "again.h5", holdout_frac=0.2, seed=5, device="cpu")
    np.testing.assert_array_equal(again.coef_, result.coef_)


def test_example_level_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    masks = rng.random((30, 10)) < 0.5
    margins = rng.normal(size=(30, 2)).astype(np.float32)
    store = synthetic_store(tmp_path / "runs.h5", margins, masks, kind="example")
    result = compute_influence(store, tmp_path / "infl.h5", holdout_frac=0, device="cpu")
    np.testing.assert_allclose(result.coef_, reference(masks, margins)[0], atol=1e-5)
    with h5py.File(tmp_path / "infl.h5", "r") as f:
        assert f.attrs["kind"] == "example" and f["coef"].shape == (10, 2)


def test_refuses_stores_with_too_few_completed_models(tmp_path: Path) -> None:
    margins = np.zeros((5, 2), np.float32)
    store = synthetic_store(tmp_path / "runs.h5", margins, completed=np.eye(5, dtype=bool)[0])
    with pytest.raises(StoreError, match=r"only 1 of 5 models are completed.*run `dmtoolkit train"):
        compute_influence(store, tmp_path / "infl.h5")
    assert not (tmp_path / "infl.h5").exists()


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "runs.h5", np.random.default_rng(6).normal(size=(12, 2)).astype(np.float32))
    out = tmp_path / "infl.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(StoreError, match="already exists; pass --force"):
        compute_influence(store, out, device="cpu")
    assert out.read_bytes() == b"keep me"
    compute_influence(store, out, device="cpu", force=True)
    assert h5py.is_hdf5(out) and not list(tmp_path.glob(".*.tmp"))


def test_holdout_leaving_too_few_models_is_refused(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "runs.h5", np.zeros((3, 2), np.float32))
    with pytest.raises(UserError, match="lower the test fraction"):
        compute_influence(store, tmp_path / "infl.h5", holdout_frac=0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "runs.h5", np.zeros((4, 2), np.float32))
    with pytest.raises(UserError, match=r"^--device cuda requested but no CUDA GPU is available; use --device cpu$"):
        compute_influence(store, tmp_path / "infl.h5", device="cuda")
    with pytest.raises(UserError, match="unknown device .gpu0.; use cpu or cuda"):
        influence_from_arrays(np.ones((2, 2), bool), np.zeros((2, 1)), device="gpu0")


def test_bad_block_rows_and_shapes() -> None:
    with pytest.raises(UserError, match="block_rows=0 must be at least 1"):
        influence_from_arrays(np.ones((2, 2), bool), np.zeros((2, 1)), block_rows=0)
    with pytest.raises(UserError, match=r"must be \(m, P\) and \(m, T\) with the same m"):
        influence_from_arrays(np.ones((3, 2), bool), np.zeros((2, 1)))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 8), st.integers(1, 4), st.integers(1, 40))
def test_regression_estimator_matches_sklearn(seed: int, P: int, T: int, block_rows: int) -> None:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(seed)
    m = P + 2 + int(rng.integers(0, 40))
    masks = rng.random((m, P)) < 0.5
    masks[0], masks[1] = True, False  # every unit both in and out
    masks[2:2 + P] |= np.eye(P, dtype=bool)
    x = np.c_[masks.astype(float), np.ones(m)]
    if np.linalg.matrix_rank(x) < P + 1 or m <= P + 1:
        return
    margins = (masks @ rng.normal(size=(P, T)) + rng.normal(size=(m, T)) + 50).astype(np.float32)
    result = influence_from_arrays(masks, margins, device="cpu", block_rows=block_rows, estimator="regression")
    oracle = LinearRegression().fit(masks.astype(float), margins.astype(float))
    np.testing.assert_allclose(result.coef_, oracle.coef_.T, atol=2e-4)
    np.testing.assert_allclose(result.intercept_, oracle.intercept_, atol=2e-3)
    np.testing.assert_allclose(result.mean_margin_, oracle.intercept_ + masks.mean(0) @ oracle.coef_.T, atol=2e-3)
    residual = margins - oracle.predict(masks.astype(float))
    sigma2 = (residual ** 2).sum(0) / (m - P - 1)
    expected_se = np.sqrt(np.linalg.inv(x.T @ x).diagonal()[:P, None] * sigma2[None, :])
    np.testing.assert_allclose(result.stderr_, expected_se, rtol=2e-3, atol=1e-4)


def test_regression_needs_more_models_than_units(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dmtoolkit.cli import cli

    rng = np.random.default_rng(2)
    store = synthetic_store(tmp_path / "runs.h5", rng.normal(size=(6, 2)).astype(np.float32), rng.random((6, 8)) < 0.5)
    run = CliRunner().invoke(cli, ["influence", str(store), "-o", str(tmp_path / "i.h5"), "--estimator", "regression",
                                   "--holdout-frac", "0", "--device", "cpu"])
    assert run.exit_code == 1
    assert "error: the regression estimator needs more models than units + 1" in run.output
    assert "Traceback" not in run.output and not (tmp_path / "i.h5").exists()


def test_regression_counts_complementary_pairs_once() -> None:
    """Centred, a mask and its complement are the same row negated: 2n antithetic models span at most n units."""
    rng = np.random.default_rng(3)
    half = rng.random((10, 15)) < 0.5
    masks = np.empty((20, 15), bool)
    masks[0::2], masks[1::2] = half, ~half
    margins = rng.normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(UserError, match="have 20 models spanning 10 of 15 units; complementary mask pairs count once"):
        influence_from_arrays(masks, margins, device="cpu", estimator="regression")


def test_regression_on_orthogonal_design_equals_difference_of_means(tmp_path: Path) -> None:
    from dmtoolkit.masks import make_masks

    rng = np.random.default_rng(3)
    masks = make_masks(1, 32, 12, 0.5, design="orthogonal")
    margins = linear_margins(masks, rng.normal(size=(12, 3)), rng, noise=1.0)
    store = synthetic_store(tmp_path / "runs.h5", margins, masks)
    regression = compute_influence(store, tmp_path / "r.h5", holdout_frac=0, device="cpu", estimator="regression")
    means = compute_influence(store, tmp_path / "d.h5", holdout_frac=0, device="cpu")
    np.testing.assert_allclose(regression.coef_, means.coef_, atol=1e-5)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f.attrs["estimator"] == "regression" and "OLS" in f["stderr"].attrs["meaning"]


def test_regression_with_fixed_size_subsets_gives_zero_sum_relative_effects() -> None:
    from sklearn.linear_model import LinearRegression

    from dmtoolkit.masks import make_masks

    rng = np.random.default_rng(4)
    masks = make_masks(2, 120, 10, 0.5, antithetic=True)  # every subset keeps exactly 5 units
    margins = linear_margins(masks, rng.normal(size=(10, 2)), rng, noise=0.1)
    result = influence_from_arrays(masks, margins, device="cpu", estimator="regression")
    np.testing.assert_allclose(result.coef_.sum(0), 0, atol=1e-4)
    oracle = LinearRegression().fit(masks.astype(float), margins.astype(float))
    fitted = result.predict(masks)
    np.testing.assert_allclose(fitted, oracle.predict(masks.astype(float)), atol=1e-3)
    relative = oracle.coef_.T - oracle.coef_.T.mean(0)
    np.testing.assert_allclose(result.coef_, relative, atol=1e-3)
    assert np.isfinite(result.stderr_).all()


def test_cli_help_states_the_block_size_the_estimator_uses() -> None:
    from click.testing import CliRunner

    from dmtoolkit.cli import cli
    from dmtoolkit.estimate.options import BLOCK_ROWS

    out = CliRunner().invoke(cli, ["influence", "--help"])
    assert out.exit_code == 0 and f"[default: {BLOCK_ROWS};" in " ".join(out.output.split())
