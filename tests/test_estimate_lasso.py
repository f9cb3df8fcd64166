"""The lasso-path solver against scikit-learn's `Lasso`, on planted problems, and its invariants."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Lasso, lasso_path

from dmtoolkit.estimate.lasso import (
    GramProblem,
    LassoConvergenceWarning,
    LassoPath,
    lipschitz_bound,
    solve_gram,
)
from dmtoolkit.masks import make_masks

from .synthetic import synthetic_store


def planted(m: int, P: int, T: int, seed: int, nonzero: int = 3, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((m, P)) < 0.5
    B = np.zeros((P, T))
    for j in range(T):
        B[rng.choice(P, nonzero, replace=False), j] = rng.choice([-1, 1], nonzero) * rng.uniform(1, 2, nonzero)
    Y = X @ B + noise * rng.normal(size=(m, T)) + rng.normal(0, 3, T)
    return X, Y.astype(np.float32), B


def standardised(X: np.ndarray, model: LassoPath) -> np.ndarray:
    Xt = X[model.fit_rows_].astype(np.float64)
    return (Xt - Xt.mean(0)) / Xt.std(0)


def sklearn_objectives(X: np.ndarray, Y: np.ndarray, model: LassoPath) -> np.ndarray:
    """scikit-learn's objective at every (λ, target) of our grid, solved to tight tolerance."""
    Xs = standardised(X, model)
    out = np.empty_like(model.path_objective_)
    for j in range(Y.shape[1]):
        y = Y[model.fit_rows_, j].astype(np.float64)
        yc = y - y.mean()
        alphas, coefs, _ = lasso_path(Xs, yc, alphas=model.lambdas_[:, j], tol=1e-12, max_iter=100_000)
        out[:, j] = 0.5 * np.mean((yc[:, None] - Xs @ coefs) ** 2, axis=0) + alphas * np.abs(coefs).sum(0)
    return out


def objective_in_mask_units(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, lam: float,
                            scale: np.ndarray) -> float:
    resid = y - X.astype(np.float64) @ coef.astype(np.float64) - intercept
    return 0.5 * np.mean(resid**2) + lam * np.abs(coef * scale).sum()


@pytest.mark.parametrize("seed,m,P", [(0, 200, 30), (1, 120, 60), (2, 400, 10)])
def test_objective_matches_sklearn_at_every_lambda(seed: int, m: int, P: int) -> None:
    X, Y, _ = planted(m, P, 4, seed, noise=2.0)
    model = LassoPath(n_lambdas=12, eps=1e-2, patience=None, seed=seed, device="cpu").fit(X, Y)
    reference = sklearn_objectives(X, Y, model)
    rel = np.abs(model.path_objective_ - reference) / reference
    assert rel.max() <= 1e-3
    assert (model.path_objective_ >= reference * (1 - 1e-5)).all()  # never "better" than the optimum


def test_chosen_weights_are_sklearns_lasso_in_mask_units() -> None:
    X, Y, _ = planted(300, 20, 3, 7, noise=1.5)
    model = LassoPath(n_lambdas=15, eps=1e-2, device="cpu").fit(X, Y)
    Xt = X[model.fit_rows_].astype(np.float64)
    mean, std = Xt.mean(0), Xt.std(0)
    np.testing.assert_allclose(model.mean_, mean, atol=1e-12)
    np.testing.assert_allclose(model.scale_, std, atol=1e-12)
    for j in range(3):
        y = Y[model.fit_rows_, j].astype(np.float64)
        sk = Lasso(alpha=model.lambda_[j], tol=1e-12, max_iter=100_000).fit((Xt - mean) / std, y)
        ours = objective_in_mask_units(Xt, y, model.coef_[:, j], model.intercept_[j], model.lambda_[j], std)
        theirs = objective_in_mask_units(Xt, y, sk.coef_ / std, sk.intercept_ - (mean / std) @ sk.coef_,
                                         model.lambda_[j], std)
        assert abs(ours - theirs) <= 1e-3 * theirs
        np.testing.assert_allclose(model.predict(X)[:, j], sk.predict((X - mean) / std), atol=0.05)


def test_objective_matches_sklearn_on_a_store(tmp_path: Path) -> None:
    masks = make_masks(11, 240, 16, 0.5)
    rng = np.random.default_rng(11)
    effects = rng.normal(0, 0.3, (16, 5)) * (rng.random((16, 5)) < 0.4)
    margins = (masks @ effects + rng.normal(0, 1, (240, 5)) + 0.7).astype(np.float32)
    completed = np.ones(240, bool)
    completed[::17] = False
    path = synthetic_store(tmp_path / "runs.h5", margins, masks, completed=completed)
    with h5py.File(path, "r") as f:
        rows = np.flatnonzero(f["completed"][()])
        model = LassoPath(n_lambdas=10, eps=1e-2, patience=None, block_rows=32, device="cpu").fit(
            f["masks"], f["margins"], rows=rows)
    assert set(model.fit_rows_) | set(model.selection_rows_) == set(rows)
    reference = sklearn_objectives(masks, margins, model)
    assert (np.abs(model.path_objective_ - reference) / reference).max() <= 1e-3


def test_recovers_a_planted_sparse_support() -> None:
    X, Y, B = planted(600, 40, 5, 3, nonzero=3, noise=0.5)
    model = LassoPath(n_lambdas=40, eps=1e-3, device="cpu").fit(X, Y)
    for j in range(5):
        true = set(np.flatnonzero(B[:, j]))
        top = set(np.argsort(-np.abs(model.coef_[:, j]))[:3])
        assert top == true
        np.testing.assert_allclose(model.coef_[list(true), j], B[list(true), j], atol=0.2)
        assert np.sign(model.coef_[list(true), j]).tolist() == np.sign(B[list(true), j]).tolist()


def test_lambda_at_or_above_lambda_max_gives_zeros() -> None:
    X, Y, _ = planted(150, 12, 3, 4)
    model = LassoPath(n_lambdas=1, device="cpu").fit(X, Y)
    assert (model.coef_ == 0).all()
    np.testing.assert_allclose(model.intercept_, Y[model.fit_rows_].mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.lambda_, model.lambda_max_)
    # and just below λ_max the solution is no longer zero
    problem = _problem(X[model.fit_rows_], Y[model.fit_rows_])
    zeros = torch.zeros_like(problem.C)
    lam_max = problem.C.abs().amax(1).double()
    for factor, nonzero in ((1.0, False), (3.0, False), (0.9, True)):
        sol = solve_gram(problem, lam_max * factor, zeros, zeros, tol=1e-6, max_iter=500)
        assert bool((sol.W != 0).any()) == nonzero


def _problem(X: np.ndarray, Y: np.ndarray) -> GramProblem:
    Xs = (X - X.mean(0)) / X.std(0)
    Yc = Y - Y.mean(0)
    G = torch.tensor(Xs.T @ Xs / len(X), dtype=torch.float32)
    return GramProblem(G, torch.tensor(Yc.T @ Xs / len(X), dtype=torch.float32),
                       torch.tensor((Yc.astype(np.float64) ** 2).mean(0)), lipschitz_bound(G))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.02, 0.8), st.booleans())
def test_objective_never_rises_along_iterations(seed: int, ratio: float, warm: bool) -> None:
    X, Y, _ = planted(80, 25, 3, seed, noise=0.3)
    problem = _problem(X, Y)
    lam = problem.C.abs().amax(1).double() * ratio
    W0 = torch.randn_like(problem.C) * 0.3 if warm else torch.zeros_like(problem.C)
    Xs = ((X - X.mean(0)) / X.std(0)).astype(np.float64)
    Yc = (Y - Y.mean(0)).astype(np.float64)
    previous = None
    for iterations in range(0, 40, 3):
        sol = solve_gram(problem, lam, W0, W0 @ problem.G, tol=1e-9, max_iter=iterations)
        W = sol.W.double().numpy()
        objective = 0.5 * ((Yc - Xs @ W.T) ** 2).mean(0) + lam.numpy() * np.abs(W).sum(1)
        np.testing.assert_allclose(sol.objective.numpy(), objective, rtol=1e-5)
        if previous is not None:
            assert (objective <= previous * (1 + 1e-6)).all()
        previous = objective


def test_lipschitz_bound_is_an_upper_bound() -> None:
    for seed in range(3):
        X, Y, _ = planted(100, 50, 1, seed)
        G = _problem(X, Y).G
        top = torch.linalg.eigvalsh(G.double()).max().item()
        assert top <= lipschitz_bound(G) <= 1.1 * top


def test_predictions_do_not_depend_on_model_order() -> None:
    X, Y, _ = planted(200, 15, 3, 5)
    first = LassoPath(n_lambdas=20, eps=1e-2, tol=1e-6, device="cpu").fit(X, Y)
    rng = np.random.default_rng(0)
    order = np.arange(200)  # shuffle within the training and within the validation rows: same split, new order
    order[first.fit_rows_] = rng.permutation(first.fit_rows_)
    order[first.selection_rows_] = rng.permutation(first.selection_rows_)
    second = LassoPath(n_lambdas=20, eps=1e-2, tol=1e-6, block_rows=17, device="cpu").fit(X[order], Y[order])
    np.testing.assert_array_equal(second.fit_rows_, first.fit_rows_)
    # equal up to the solver tolerance: float32 sums in another order take another FISTA trajectory, and a
    # relative objective gap of 1e-6 bounds the weights only to about its square root
    np.testing.assert_allclose(second.coef_, first.coef_, atol=2e-3)
    np.testing.assert_allclose(second.predict(X), first.predict(X), atol=2e-3)
    np.testing.assert_allclose(second.lambda_, first.lambda_, rtol=1e-6)


def test_validation_curve_and_early_stopping() -> None:
    X, Y, _ = planted(300, 30, 4, 6, noise=2.0)
    model = LassoPath(n_lambdas=60, eps=1e-3, patience=4, device="cpu").fit(X, Y)
    Xv, Yv = X[model.selection_rows_].astype(np.float32), Y[model.selection_rows_]
    np.testing.assert_allclose(model.val_mse_, ((model.predict(Xv) - Yv) ** 2).mean(0), rtol=1e-4)
    for j in range(4):
        curve = model.path_val_mse_[:, j]
        done = np.flatnonzero(np.isfinite(curve))
        best = int(np.nanargmin(curve))
        assert model.lambda_[j] == model.lambdas_[best, j] and model.val_mse_[j] == curve[best]
        assert done[-1] == len(curve) - 1 or done[-1] - best == 4  # stopped exactly `patience` steps after the best
        assert (model.n_iter_[done[-1] + 1:, j] == 0).all()
    np.testing.assert_allclose(model.lambdas_[-1], model.lambda_max_ * 1e-3)


def test_max_iter_warns_and_non_binary_masks_are_refused() -> None:
    X, Y, _ = planted(100, 10, 2, 8)
    with pytest.warns(LassoConvergenceWarning, match="raise max_iter"):
        LassoPath(n_lambdas=5, max_iter=1, tol=1e-12, device="cpu").fit(X, Y)
    with pytest.raises(ValueError, match="0/1 subset masks"):
        LassoPath(device="cpu").fit(X * 0.5, Y)
    with pytest.raises(ValueError, match="val_frac"):
        LassoPath(val_frac=0, device="cpu").fit(X, Y)


def test_constant_mask_columns_get_zero_weight() -> None:
    X, Y, _ = planted(120, 8, 2, 9)
    X[:, 2], X[:, 5] = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LassoPath(n_lambdas=20, eps=1e-3, patience=None, device="cpu").fit(X, Y)
    assert (model.coef_[[2, 5]] == 0).all() and np.isfinite(model.coef_).all()
