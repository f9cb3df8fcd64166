"""LDS: recomputed independently with scipy.stats.spearmanr, for datamodels and for class influence; refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.stats import ConstantInputWarning, spearmanr

from dmtoolkit.errors import StoreError
from dmtoolkit.estimate.datamodels import fit_datamodels
from dmtoolkit.estimate.influence import compute_influence
from dmtoolkit.estimate.lds import LdsResult, evaluate
from dmtoolkit.masks import make_masks
from dmtoolkit.stats.correlation import spearman_columns
from dmtoolkit.store import RunStore

from .synthetic import linear_margins, synthetic_store


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    masks = make_masks(1, 150, 10, 0.5)
    effects = rng.normal(0, 0.6, (10, 5))
    margins = linear_margins(masks, effects, rng, noise=0.8)
    margins[:, 4] = 1.5  # a target whose true margins are constant: its LDS is undefined
    return synthetic_store(tmp_path / "runs.h5", margins, masks)


def independent_lds(store: Path, rows: np.ndarray, weights: np.ndarray, offset: np.ndarray, columns: slice) -> np.ndarray:
    """Spearman per target with scipy, on rows read by the store's own reader."""
    with RunStore(store) as run:
        masks, margins = run.read_rows(rows)
    predicted = masks.astype(np.float64) @ weights.astype(np.float64) + offset
    actual = margins[:, columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        lds = np.array([spearmanr(predicted[:, j], actual[:, j]).statistic for j in range(actual.shape[1])])
    # documented convention: a constant prediction ranks nothing and scores 0 (if the truth varies)
    abstains = (predicted.max(0) == predicted.min(0)) & (actual.max(0) > actual.min(0))
    return np.where(abstains, 0.0, lds)


def check_report(result: LdsResult, expected: np.ndarray) -> None:
    report = result.to_json()
    got = np.array([np.nan if v is None else v for v in report["lds_per_target"]])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    finite = expected[np.isfinite(expected)]
    assert report["lds_mean"] == pytest.approx(finite.mean()) and report["lds_median"] == pytest.approx(np.median(finite))
    assert report["undefined_targets"] == int(np.isnan(expected).sum())
    counts, _ = np.histogram(finite, bins=np.linspace(-1, 1, 21))
    assert report["histogram"]["counts"] == counts.tolist()
    json.dumps(report, allow_nan=False)


def test_datamodels_lds_matches_scipy(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "dm.h5"
    fit_datamodels(store, out, targets=slice(1, 5), n_lambdas=20, eps=1e-2, val_frac=0.2, holdout_frac=0.2, device="cpu")
    report = evaluate(store, out)
    with h5py.File(out, "r") as f:
        expected = independent_lds(store, f["rows/test"][()], f["coef"][()], f["intercept"][()], slice(1, 5))
        assert not set(f["rows/test"][()]) & set(f["rows/selection"][()])  # λ was not chosen on the scored rows
    assert report.estimator == "datamodels" and report.targets == (1, 5) and report.heldout_models == 30
    assert report.undefined_targets == 1  # target 4 has constant margins
    check_report(report, expected)
    assert report.lds_mean > 0.5


def test_influence_lds_matches_scipy(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "infl.h5"
    compute_influence(store, out, holdout_frac=0.2, seed=4, device="cpu")
    report = evaluate(store, out)
    with h5py.File(out, "r") as f:
        infl, mean = f["coef"][()].astype(np.float64), f["mean_margin"][()].astype(np.float64)
        rows = f["rows/test"][()]
    # f(S) = mean + sum_k infl_k (1[k in S] - alpha): Spearman is blind to the constant, so alpha = 0.5 will do
    expected = independent_lds(store, rows, infl, mean - 0.5 * infl.sum(0), slice(0, 5))
    assert report.estimator == "difference-of-means" and report.heldout_models == 30 and report.targets == (0, 5)
    check_report(report, expected)
    assert report.lds_mean > 0.5


def test_spearman_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, (25, 6)).astype(float), rng.normal(size=(25, 6))
    expected = [spearmanr(a[:, j], b[:, j]).statistic for j in range(6)]
    np.testing.assert_allclose(spearman_columns(a, b), expected, atol=1e-12)
    assert np.isnan(spearman_columns(np.ones((5, 1)), b[:5, :1])).all()


def test_constant_predictions_score_zero(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "dm.h5"
    fit_datamodels(store, out, n_lambdas=1, val_frac=0.2, device="cpu")  # λ = λ_max: every weight is zero
    report = evaluate(store, out)
    assert report.constant_predictions == 5 and report.undefined_targets == 1
    assert report.lds_per_target == (0.0, 0.0, 0.0, 0.0, None) and report.lds_mean == 0.0


def test_refuses_an_estimate_of_another_store_state(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "infl.h5"
    compute_influence(store, out, device="cpu")
    with h5py.File(store, "r+") as f:
        f["margins"][0, 0] += 1.0
    with pytest.raises(StoreError, match=r"was not computed from .* in its current state .*recompute the estimate"):
        evaluate(store, out)


def test_refusals(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "infl.h5"
    compute_influence(store, out, holdout_frac=0, device="cpu")
    with pytest.raises(StoreError, match=r"only 0 held-out test models.*--holdout-frac"):
        evaluate(store, out)
    with pytest.raises(StoreError, match="not a dmtoolkit estimate file"):
        evaluate(store, store)
    with pytest.raises(StoreError, match="no such estimate file"):
        evaluate(store, tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        evaluate(store, tmp_path / "text.h5")


def test_lds_interval_covers_the_expected_score_of_another_test_set() -> None:
    """Calibration by simulation: a fixed linear estimate, test sets of 40 models drawn afresh; the 95%
    bootstrap interval from one test set covers the mean LDS over many test sets about 95% of the time."""
    from dmtoolkit.stats.lds import bootstrap_lds_interval, summarise_lds

    rng = np.random.default_rng(0)
    units, targets, n = 12, 20, 40
    effects = rng.normal(0, 1, (units, targets))
    estimate = effects + rng.normal(0, 0.8, effects.shape)  # an imperfect estimate, held fixed

    def test_set() -> tuple[np.ndarray, np.ndarray]:
        masks = rng.random((n, units)) < 0.5
        return masks @ estimate, masks @ effects + rng.normal(0, 2.0, (n, targets))

    expected = np.mean([summarise_lds(*test_set())[1] for _ in range(2000)])
    covered = []
    for _ in range(200):
        predicted, actual = test_set()
        low, high = bootstrap_lds_interval(predicted, actual, np.arange(n), resamples=200)
        assert low <= summarise_lds(predicted, actual)[1] <= high
        covered.append(low <= expected <= high)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_lds_interval_resamples_antithetic_pairs_whole(tmp_path: Path) -> None:
    """An antithetic store's held-out pairs are the resampled draws; too few draws give no interval."""
    from dmtoolkit.stats.lds import bootstrap_lds_interval

    rng = np.random.default_rng(3)
    masks = make_masks(2, 120, 10, 0.5, antithetic=True)
    margins = linear_margins(masks, rng.normal(0, 1, (10, 4)), rng, noise=0.5)
    path = synthetic_store(tmp_path / "pairs.h5", margins, masks, antithetic=True)
    compute_influence(path, tmp_path / "infl.h5", holdout_frac=0.2)
    result = evaluate(path, tmp_path / "infl.h5")
    assert result.heldout_units * 2 == result.heldout_models
    low, high = result.lds_interval
    assert low < result.lds_mean < high and high - low < 0.5
    assert json.loads(json.dumps(result.to_json()))["lds_interval"] == [low, high]
    assert bootstrap_lds_interval(np.ones((4, 2)), np.ones((4, 2)), np.array([0, 0, 1, 1])) is None


def test_lds_interval_matches_re_ranking_every_resample() -> None:
    """Reference: a plain loop that resamples pairs and re-ranks with scipy each time gives the same interval."""
    from dmtoolkit.stats.lds import bootstrap_lds_interval

    rng = np.random.default_rng(5)
    n, targets = 60, 8
    predicted = rng.normal(size=(n, targets))
    actual = 0.5 * predicted + rng.normal(size=(n, targets))
    predicted[:, 7] = 1.0  # an abstaining target scores 0 in every draw
    units = np.arange(n) // 2
    means = []
    for _ in range(2000):
        pairs = rng.integers(0, n // 2, n // 2)
        rows = np.concatenate([[2 * p, 2 * p + 1] for p in pairs])
        scores = [0.0 if j == 7 else spearmanr(predicted[rows, j], actual[rows, j]).statistic for j in range(targets)]
        means.append(np.mean(scores))
    reference = np.quantile(means, [0.025, 0.975])
    low, high = bootstrap_lds_interval(predicted, actual, units, resamples=2000)
    np.testing.assert_allclose([low, high], reference, atol=0.015)


# the verdict ---------------------------------------------------------------------------------------------
def _influence_store(tmp_path: Path, name: str, units: int, targets: int, scale: float, models: int) -> tuple[Path, Path]:
    """Margins = masks @ effects (normal, sd `scale`) + noise (sd 0.8); influence with 20% of the models held out."""
    rng = np.random.default_rng(1)
    masks = make_masks(1, models, units, 0.5)
    margins = linear_margins(masks, rng.normal(0, scale, (units, targets)), rng, noise=0.8)
    store = synthetic_store(tmp_path / f"{name}.h5", margins, masks)
    compute_influence(store, tmp_path / f"{name}-influence.h5", holdout_frac=0.2, seed=4, device="cpu")
    return store, tmp_path / f"{name}-influence.h5"


def test_lds_no_better_than_chance_says_so_first(tmp_path: Path) -> None:
    """Margins that are pure noise: the LDS is about 0, the first line says "no better than chance", and the curve
    (refit on half the models) cannot tell how many models would help."""
    from click.testing import CliRunner

    from dmtoolkit.cli import cli

    store, estimate = _influence_store(tmp_path, "noise", 10, 5, 0.0, 150)
    result = evaluate(store, estimate)
    assert result.lds_mean < 0 and result.lds_interval[0] < 0 < result.lds_interval[1]
    curve = result.curve
    assert (curve.half_models, curve.full_models) == (60, 120) and curve.full_lds == pytest.approx(result.lds_mean)
    assert not curve.rising and curve.needed == {"0.1": None, "0.3": None}
    out = CliRunner().invoke(cli, ["evaluate", str(store), "--estimate", str(estimate)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    low, high = result.lds_interval
    assert lines[0] == (f"verdict: no better than chance (LDS {result.lds_mean:.3f} [{low:.3f}, {high:.3f}]): its "
                        "rankings are not evidence; this store cannot tell how many models would be needed (LDS did "
                        "not clearly rise from 60 to 120 fitting models): train several times more")
    assert lines[1].startswith("difference-of-means LDS on 30 held-out models")
    assert lines[2].startswith("curve: refitted on half the fitting models (60 of 120, whole draws)")
    data = json.loads(CliRunner().invoke(cli, ["evaluate", str(store), "--estimate", str(estimate), "--json"]).output)
    assert data["verdict"] == lines[0] and data["curve"]["half_models"] == 60
    assert data["curve"]["gain_per_doubling"] == pytest.approx((curve.full_lds - curve.half_lds) / 1.0)


def test_lds_curve_extrapolates_when_it_rises(tmp_path: Path) -> None:
    """A moderate estimate whose LDS clearly rises from half to all fitting models: the models needed for 0.3
    follow the log-linear rule from the two points, and the half point is the estimator fitted on half the rows."""
    from dmtoolkit.estimate.fit import store_draws
    from dmtoolkit.estimate.influence import influence_from_arrays
    from dmtoolkit.stats.splits import split_rows

    store, estimate = _influence_store(tmp_path, "rising", 40, 20, 0.1, 200)
    result = evaluate(store, estimate)
    curve = result.curve
    assert 0.1 <= result.lds_mean < 0.3 and curve.rising
    full = curve.full_models
    assert curve.needed["0.3"] == pytest.approx(full * 2 ** ((0.3 - curve.full_lds) / curve.gain))
    assert curve.needed["0.1"] == full  # already reached
    assert result.verdict.startswith(f"verdict: moderate (LDS {result.lds_mean:.3f}")
    assert result.verdict.endswith(f"about {int(np.ceil(curve.needed['0.3'])):,} for 0.3")
    with h5py.File(estimate) as f, RunStore(store) as run:  # the half point, recomputed independently
        rows = np.union1d(f["rows/fit"][()], f["rows/selection"][()])
        half, _ = split_rows(rows, 0.5, 1, store_draws(run).ids)
        masks, margins = run.read_rows(half)
        test_masks, test_margins = run.read_rows(f["rows/test"][()])
    fit = influence_from_arrays(masks, margins, device="cpu", errors=False)
    expected = np.mean([spearmanr(p, a).statistic for p, a in zip(fit.predict(test_masks).T, test_margins.T)])
    assert curve.half_models == len(half) and curve.half_lds == pytest.approx(expected, abs=1e-6)


def test_useful_lds_needs_no_curve(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "infl.h5"
    compute_influence(store, out, holdout_frac=0.2, seed=4, device="cpu")
    result = evaluate(store, out)
    assert result.curve is None and result.verdict.startswith("verdict: useful (LDS ")
    forced = evaluate(store, out, curve=True)
    assert forced.curve is not None and forced.lds_mean == result.lds_mean
