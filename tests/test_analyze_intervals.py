"""Intervals beside every influence the analyses show (rank, explain, subpop, report), checked against plain NumPy
and SciPy on tiny synthetic stores: random masks (Welch, normal) and complementary pairs (cluster, Student t)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from dmtoolkit.analyze import explain_target, load_estimate, rank_classes, subpopulation
from dmtoolkit.analyze.classes import mean_influence_refit
from dmtoolkit.analyze.results import NO_STDERR
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import compute_influence
from dmtoolkit.report import figures, plots
from dmtoolkit.report.text import interval
from dmtoolkit.store import RunStore
from tests.synthetic import linear_margins, synthetic_store

P, T, M = 6, 8, 80


def _margins(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class 1 helps targets 0-3, class 4 hurts all; a shared per-model term makes the targets strongly correlated."""
    effect = np.zeros((P, T))
    effect[1, :4] = 1.0
    effect[4, :] = -0.8
    shared = rng.normal(0, 1.0, (len(masks), 1))
    return linear_margins(masks, effect, rng, noise=0.3, offset=shared)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{"random": (store, influence), "pairs": (store, influence)}; pairs: every even row's complement follows it."""
    tmp = tmp_path_factory.mktemp("intervals")
    rng = np.random.default_rng(3)
    random_masks = rng.random((M, P)) < 0.5
    half = rng.random((M // 2, P)) < 0.5
    pair_masks = np.empty((M, P), bool)
    pair_masks[0::2], pair_masks[1::2] = half, ~half
    out = {}
    for name, masks in (("random", random_masks), ("pairs", pair_masks)):
        # masks given, not drawn: their design is detected (pairs here)
        store = synthetic_store(tmp / f"{name}.h5", _margins(masks, rng), masks, masks_origin="explicit")
        infl = tmp / f"{name}-influence.h5"
        compute_influence(store, infl, device="cpu", holdout_frac=0.2)  # fit rows: a subset (whole pairs)
        out[name] = (store, infl)
    return out


def _fit_data(store: Path, infl: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks, margins, rows) of the estimate's fit rows, rows sorted as the store holds them."""
    rows = np.sort(load_estimate(infl).fit_rows)
    with RunStore(store) as run:
        return run.masks[()][rows], run.margins[()][rows].astype(np.float64), rows


def _welch_se(masks: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([np.sqrt(y[masks[:, k]].var(ddof=1) / masks[:, k].sum()
                             + y[~masks[:, k]].var(ddof=1) / (~masks[:, k]).sum()) for k in range(masks.shape[1])])


def _cluster_se(masks: np.ndarray, y: np.ndarray, units: np.ndarray) -> np.ndarray:
    """sqrt(G/(G−1) Σ_g B_g²), B_g the sum over unit g's rows of the linearised difference of means."""
    G = len(np.unique(units))
    se = []
    for k in range(masks.shape[1]):
        inside = masks[:, k]
        n_in, n_out = inside.sum(), (~inside).sum()
        psi = np.where(inside, (y - y[inside].mean()) / n_in, -(y - y[~inside].mean()) / n_out)
        b = np.array([psi[units == g].sum() for g in np.unique(units)])
        se.append(np.sqrt(G / (G - 1) * (b ** 2).sum()))
    return np.array(se)


def _implied_se(effects: tuple, level: float, dof: int | None) -> np.ndarray:
    q = stats.t.ppf((1 + level) / 2, dof) if dof else stats.norm.ppf((1 + level) / 2)
    return np.array([(e.high - e.low) / (2 * q) for e in effects])


# rank: the mean over targets ---------------------------------------------------------------------------
@pytest.mark.parametrize("design", ["random", "pairs"])
def test_rank_mean_stderr_is_the_refit_and_the_brute_force_formula(stores: dict, design: str) -> None:
    store, infl = stores[design]
    est = load_estimate(infl)
    masks, margins, rows = _fit_data(store, infl)
    y = margins.mean(1)  # the per-model mean margin over all targets
    with RunStore(store) as run:
        coef, refit_se, dof = mean_influence_refit(est, run, np.arange(T))
    np.testing.assert_allclose(coef, est.matrix.mean(1), rtol=1e-5, atol=1e-6)  # linear: refit = mean of columns
    if design == "random":
        assert dof is None and est.stderr_dof is None
        brute = _welch_se(masks, y)
    else:
        units = rows // 2
        assert dof == len(np.unique(units)) - 1 == est.stderr_dof
        brute = _cluster_se(masks, y, units)
    np.testing.assert_allclose(refit_se, brute, rtol=1e-4)
    ranking = rank_classes(infl, top=P, level=0.8)
    assert ranking.level == 0.8 and "refitted on the per-model mean margin" in ranking.interval_note
    by_index = {e.index: e for e in ranking.overall}
    ordered = tuple(by_index[k] for k in range(P))
    np.testing.assert_allclose(_implied_se(ordered, 0.8, dof), brute, rtol=1e-4)
    np.testing.assert_allclose([e.influence for e in ordered], est.matrix.mean(1), rtol=1e-6)
    # averaging per-target errors as if targets were independent would be far too narrow here
    naive = np.sqrt((est.stderr ** 2).sum(1)) / T
    assert (naive < 0.7 * brute).all()


def test_rank_target_class_interval_uses_its_columns(stores: dict) -> None:
    store, infl = stores["pairs"]
    est = load_estimate(infl)
    cls = est.target_classes[0]
    columns = np.flatnonzero(np.array(est.target_classes) == cls)
    masks, margins, rows = _fit_data(store, infl)
    brute = _cluster_se(masks, margins[:, columns].mean(1), rows // 2)
    ranking = rank_classes(infl, target_class=cls)
    ordered = sorted(ranking.overall, key=lambda e: e.index)
    np.testing.assert_allclose(_implied_se(tuple(ordered), 0.9, est.stderr_dof), brute, rtol=1e-4)
    np.testing.assert_allclose([e.influence for e in ordered], est.matrix[:, columns].mean(1), rtol=1e-6)


def test_rank_figure_has_error_bars_and_is_a_png(stores: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, infl = stores["random"]
    ranking = rank_classes(infl, top=2)
    seen = {}
    original = plots.bar_chart

    def spy(names, values, title, out=None, intervals=None):  # noqa: ANN001, ANN202
        seen.update(names=list(names), intervals=intervals, title=title)
        return original(names, values, title, out, intervals=intervals)

    monkeypatch.setattr(plots, "bar_chart", spy)
    png = tmp_path / "rank.png"
    figures.rank_figure(ranking, png)
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = list(ranking.top) + list(ranking.bottom[::-1])
    assert seen["intervals"] == [(e.low, e.high) for e in shown] and "90% intervals" in seen["title"]
    assert all(lo < e.influence < hi for e, (lo, hi) in zip(shown, seen["intervals"]))


def test_rank_without_the_store_says_so(stores: dict, tmp_path: Path) -> None:
    store, infl = stores["random"]
    moved = tmp_path / "moved.h5"
    shutil.copy(store, moved)
    Path(store).rename(tmp_path / "away.h5")
    try:
        ranking = rank_classes(infl)
        assert ranking.level is None and "is not there to refit" in ranking.interval_note
        assert all(e.low is None and e.high is None for e in ranking.overall)
        with_store = rank_classes(infl, store=moved)
        assert with_store.level == 0.9 and all(e.low is not None for e in with_store.overall)
    finally:
        (tmp_path / "away.h5").rename(store)
    other, _ = stores["pairs"]
    with pytest.raises(UserError, match="was not computed from"):
        rank_classes(infl, store=other)  # an explicit store that is not the estimate's is refused
    out = CliRunner().invoke(cli, ["rank", str(infl), "--store", str(other)])
    assert out.exit_code == 1 and out.output.startswith("error: ") and "was not computed from" in out.output


def test_rank_on_a_store_changed_since_refuses_the_stale_estimate(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    masks = rng.random((40, P)) < 0.5
    margins = _margins(masks, rng)
    done = np.ones(40, bool)
    done[-4:] = False
    store = synthetic_store(tmp_path / "grow.h5", margins, masks, completed=done)
    infl = tmp_path / "grow-influence.h5"
    compute_influence(store, infl, device="cpu", holdout_frac=0.0)
    with RunStore(store, writable=True) as run:  # more models finish after the estimate
        run.write_row(36, margins[36], seed=36, source_accuracy=0.5, target_accuracy=0.5, seconds=0.1)
    for level in (0.9, None):  # with or without intervals: a stale estimate is refused (issue 29)
        with pytest.raises(UserError, match="was not computed from .* more models finished since"):
            rank_classes(infl, level=level)


def test_level_is_checked(stores: dict) -> None:
    _, infl = stores["random"]
    for call in (lambda: rank_classes(infl, level=1.0), lambda: subpopulation(infl, "c1", level=0.0),
                 lambda: explain_target(infl, 0, level=1.5)):
        with pytest.raises(UserError, match="must be between 0 and 1"):
            call()
    with pytest.raises(UserError, match="fdr=2"):
        explain_target(infl, 0, fdr=2)
    out = CliRunner().invoke(cli, ["rank", str(infl), "--level", "1.2"])
    assert out.exit_code == 2 and "--level" in out.output


# subpop and explain: per-entry intervals, p and q ---------------------------------------------------------
@pytest.mark.parametrize("design", ["random", "pairs"])
def test_subpop_intervals_are_coef_plus_minus_quantile_stderr(stores: dict, design: str) -> None:
    _, infl = stores[design]
    est = load_estimate(infl)
    result = subpopulation(infl, "c1", n=5, level=0.8)
    q = stats.t.ppf(0.9, est.stderr_dof) if est.stderr_dof else stats.norm.ppf(0.9)
    columns = [int(np.flatnonzero(est.target_index == t.target)[0]) for t in result.targets]
    coef, se = est.matrix[1, columns], est.stderr[1, columns]
    np.testing.assert_allclose([t.low for t in result.targets], coef - q * se, rtol=1e-9)
    np.testing.assert_allclose([t.high for t in result.targets], coef + q * se, rtol=1e-9)
    assert result.level == 0.8 and result.to_json()["targets"][0]["low"] == result.targets[0].low


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values by hand: min over j ≥ i of p_(j)·n/j, capped at 1."""
    order = np.argsort(p)
    n = len(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1)
    out = np.empty(n)
    out[order] = adjusted
    return out


@pytest.mark.parametrize("design", ["random", "pairs"])
def test_explain_p_and_q_match_scipy(stores: dict, design: str) -> None:
    _, infl = stores[design]
    est = load_estimate(infl)
    target = 2
    result = explain_target(infl, target, top=P, level=0.9, fdr=0.05)
    coef, se, dof = est.matrix[:, target], est.stderr[:, target], est.stderr_dof
    dist = stats.t(dof) if dof else stats.norm
    p_less, p_greater = dist.cdf(coef / se), dist.sf(coef / se)
    q_less = stats.false_discovery_control(p_less, method="bh")
    np.testing.assert_allclose(q_less, _bh(p_less), rtol=1e-12)
    q_greater = _bh(p_greater)
    for effects, p, q in ((result.most_negative, p_less, q_less), (result.most_positive, p_greater, q_greater)):
        idx = [e.index for e in effects]
        np.testing.assert_allclose([e.p_value for e in effects], p[idx], rtol=1e-9)
        np.testing.assert_allclose([e.q_value for e in effects], q[idx], rtol=1e-9)
        assert [e.significant for e in effects] == list(q[idx] <= 0.05)
        half = dist.ppf(0.95) * se[idx]
        np.testing.assert_allclose([e.low for e in effects], coef[idx] - half, rtol=1e-9)
    worst = result.most_negative[0]
    assert worst.name == "c4" and worst.significant and worst.high < 0


def test_explain_cli_says_negative_or_not_distinguishable(stores: dict) -> None:
    _, infl = stores["pairs"]
    result = explain_target(infl, 5, fdr=0.05)
    out = CliRunner().invoke(cli, ["explain", str(infl), "--target", "5"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    worst, best = result.most_negative[0], result.most_positive[0]
    assert lines[1] == (f"most negative class c4: {worst.influence:+.3f} {interval(worst.low, worst.high, 3)}, "
                        f"p={worst.p_value:.2g} (q={worst.q_value:.2g}): negative at FDR 5%")
    verdict = "positive" if best.significant else "not distinguishable from 0"
    assert lines[2].startswith(f"most positive class {best.name}: ") and lines[2].endswith(f"{verdict} at FDR 5%")
    assert "90% intervals from" in out.output and "Benjamini–Hochberg over this target's 6 classes" in out.output
    strict = CliRunner().invoke(cli, ["explain", str(infl), "--target", "5", "--fdr", "1e-12", "--level", "0.5"])
    assert strict.exit_code == 0 and "c4" in strict.output.splitlines()[1]
    assert strict.output.splitlines()[1].endswith("not distinguishable from 0 at FDR 1e-10%")
    data = json.loads(CliRunner().invoke(cli, ["explain", str(infl), "--target", "5", "--json"]).stdout)
    assert data["level"] == 0.9 and data["fdr"] == 0.05
    assert data["most_negative"][0]["q_value"] == pytest.approx(worst.q_value)
    assert data["most_negative"][0]["significant"] is True


def test_rank_and_subpop_cli_lines(stores: dict) -> None:
    _, infl = stores["pairs"]
    runner = CliRunner()
    ranking = rank_classes(infl, top=2, level=0.8)
    out = runner.invoke(cli, ["rank", str(infl), "--top", "2", "--level", "0.8"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[1] == ranking.interval_note and lines[1].startswith("80% intervals")
    first = ranking.top[0]
    assert f"    1. {first.name:<20} {first.influence:+.4f}  {interval(first.low, first.high)}" in lines
    data = json.loads(runner.invoke(cli, ["rank", str(infl), "--top", "2", "--level", "0.8", "--json"]).stdout)
    assert data["level"] == 0.8 and data["top"][0]["low"] == pytest.approx(first.low)
    sub = subpopulation(infl, "c1", n=3)
    out = runner.invoke(cli, ["subpop", str(infl), "--class", "c1", "-n", "3"])
    t = sub.targets[0]
    assert out.exit_code == 0 and f"  {t.name:<12} {t.influence:+.4f}  {interval(t.low, t.high)}" in out.output
    data = json.loads(runner.invoke(cli, ["subpop", str(infl), "--class", "c1", "-n", "3", "--json"]).stdout)
    assert data["level"] == 0.9 and data["targets"][0]["high"] == pytest.approx(t.high)


# estimates without standard errors -----------------------------------------------------------------------
def test_no_stderr_says_no_interval(stores: dict, tmp_path: Path) -> None:
    store, _ = stores["random"]
    bare = tmp_path / "no-errors.h5"
    compute_influence(store, bare, device="cpu", holdout_frac=0.0, errors=False)
    assert load_estimate(bare).stderr is None
    ranking = rank_classes(bare)
    explanation = explain_target(bare, 2)
    sub = subpopulation(bare, "c1", n=2)
    for result in (ranking, explanation, sub):
        assert result.level is None and result.interval_note == NO_STDERR
    assert all(e.low is None and e.high is None for e in ranking.overall)
    assert all(e.p_value is None and e.significant is None for e in explanation.most_negative)
    runner = CliRunner()
    for args in (["rank", str(bare)], ["explain", str(bare), "--target", "2"], ["subpop", str(bare), "--class", "c1"]):
        out = runner.invoke(cli, args)
        assert out.exit_code == 0 and "no interval (estimate has no standard errors)" in out.output, args
    assert runner.invoke(cli, ["explain", str(bare), "--target", "2"]).output.splitlines()[1] == (
        f"most negative class c4: {explanation.most_negative[0].influence:+.3f}: "
        "no interval (estimate has no standard errors)")
    png = tmp_path / "bare.png"
    assert runner.invoke(cli, ["rank", str(bare), "--png", str(png)]).exit_code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_rank_regression_on_a_target_slice_refits_the_mean(stores: dict, tmp_path: Path) -> None:
    """Regression is linear in the margins too; a file covering targets 2:7 averages (and refits) those columns."""
    from dmtoolkit.estimate import make_estimator

    store, _ = stores["random"]
    infl = tmp_path / "regression.h5"
    compute_influence(store, infl, device="cpu", estimator="regression", targets=slice(2, 7), holdout_frac=0.2)
    est = load_estimate(infl)
    masks, margins, _ = _fit_data(store, infl)
    direct = make_estimator("regression", device="cpu").fit(masks, margins[:, 2:7].mean(1, keepdims=True))
    np.testing.assert_allclose(direct.coef_[:, 0], est.matrix.mean(1), rtol=1e-4, atol=1e-6)
    ranking = rank_classes(infl, top=P, level=0.9)
    assert ranking.targets == 5 and ranking.level == 0.9
    ordered = tuple(sorted(ranking.overall, key=lambda e: e.index))
    assert direct.stderr_dof_ == est.stderr_dof
    np.testing.assert_allclose(_implied_se(ordered, 0.9, est.stderr_dof), direct.stderr_[:, 0], rtol=1e-4)
