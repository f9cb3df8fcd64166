"""dmtoolkit.stats against independent references: brute-force definitions (ranking, top pairs, Benjamini–Hochberg,
Simes, the bootstrap's weighted correlation by repeating rows, z-scores by a loop), scipy.stats (spearmanr, t and
norm), sklearn.metrics.roc_auc_score, and the analyses that rank by the one rule (`rank_classes`, `class_positions`, `removal_ranking`) on an estimate file."""

from __future__ import annotations

import ast
import dataclasses
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from dmtoolkit.analyze.classes import class_positions, rank_classes
from dmtoolkit.analyze.recommend import removal_ranking
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.influence import compute_influence
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.stats.correlation import (
    MIN_DEFINED,
    defined_spearman,
    models_for_reliability,
    models_needed,
    projected_reliability,
    spearman,
    spearman_brown,
    spearman_columns,
)
from dmtoolkit.stats.detection import auc, per_target_z, two_way_z
from dmtoolkit.stats.intervals import interval_bounds, interval_quantile, percentile_interval
from dmtoolkit.stats.lds import bootstrap_lds_interval, bootstrap_lds_means, lds_per_target, summarise_lds
from dmtoolkit.stats.pvalues import benjamini_hochberg, bh_adjusted, check_fdr, one_sided_pvalues, simes
from dmtoolkit.stats.ranking import nanmean_rows, rank_order, rank_positions, top_pairs
from dmtoolkit.store import RunStore, create_store

from .synthetic import synthetic_data

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATS = Path(__file__).resolve().parent.parent / "dmtoolkit" / "stats"

# small integers with NaN: many ties and undefined entries, the cases the ranking rule is about
cells = st.one_of(st.integers(-3, 3).map(float), st.just(float("nan")))


def matrices(max_rows: int = 8, max_cols: int = 6) -> st.SearchStrategy[np.ndarray]:
    return st.integers(1, max_rows).flatmap(lambda r: st.integers(1, max_cols).flatmap(
        lambda c: st.lists(st.lists(cells, min_size=c, max_size=c), min_size=r, max_size=r).map(np.array)))


def _brute_mean(row: np.ndarray) -> float:
    kept = [float(v) for v in row if not np.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _brute_order(values: np.ndarray, descending: bool = True, undefined: str = "omit") -> list[int]:
    defined = [k for k in range(len(values)) if np.isfinite(values[k])]
    order = sorted(defined, key=lambda k: (-values[k] if descending else values[k], k))
    return order + ([k for k in range(len(values)) if not np.isfinite(values[k])] if undefined == "last" else [])


def test_stats_is_foundation_it_imports_no_other_dmtoolkit_layer() -> None:
    for path in sorted(STATS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.startswith("dmtoolkit"):
                    assert name == "dmtoolkit.errors" or name.startswith("dmtoolkit.stats"), (path.name, name)


# ranking -------------------------------------------------------------------------------------------------
@SETTINGS
@given(matrix=matrices(), pick=st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
def test_nanmean_rows_is_the_mean_of_the_defined_entries(matrix: np.ndarray, pick: list[int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-NaN row must not warn
        means = nanmean_rows(matrix)
        columns = np.array([c for c in pick if c < matrix.shape[1]] or [0])
        picked = nanmean_rows(matrix, columns)
    np.testing.assert_allclose(means, [_brute_mean(row) for row in matrix], equal_nan=True)
    np.testing.assert_allclose(picked, [_brute_mean(row[columns]) for row in matrix], equal_nan=True)
    assert nanmean_rows(matrix.astype(np.float32)).dtype == np.float32  # no silent cast: callers choose


@SETTINGS
@given(values=st.lists(cells, min_size=0, max_size=12).map(np.array), descending=st.booleans(),
       undefined=st.sampled_from(["omit", "last"]))
def test_rank_order_sorts_defined_values_ties_lower_index_first(values: np.ndarray, descending: bool,
                                                                undefined: str) -> None:
    order = rank_order(values, descending=descending, undefined=undefined)
    assert order.tolist() == _brute_order(values, descending, undefined)
    positions = rank_positions(values, descending=descending)
    expected = {k: i + 1 for i, k in enumerate(_brute_order(values, descending))}
    assert positions == tuple(expected.get(k) for k in range(len(values)))


def test_rank_order_refuses_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match="undefined"):
        rank_order(np.zeros(3), undefined="first")


@SETTINGS
@given(matrix=matrices(max_rows=10))
def test_removal_ranking_is_the_rule_most_negative_first_undefined_last(matrix: np.ndarray) -> None:
    columns = np.arange(matrix.shape[1])
    expected = _brute_order(np.array([_brute_mean(row) for row in matrix]), descending=False, undefined="last")
    assert removal_ranking(matrix, columns).tolist() == expected


def test_rank_classes_and_class_positions_follow_the_rule_on_an_influence_file(tmp_path: Path) -> None:
    """The file-based ranking against the brute-force rule, with a tie (broken by index) and an undefined class."""
    rng = np.random.default_rng(7)
    P, T, m = 6, 12, 24
    names, targets = ("b", "x", "a", "y", "c", "z"), ("a", "b", "c")
    data = dataclasses.replace(synthetic_data(P, T, seed=1), source_class_names=names, target_class_names=targets)
    recipe = parse_recipe_dict({"name": "ranks", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
                                "subsets": {"models": m}})
    path = create_store(tmp_path / "runs.h5", recipe, data)
    masks = rng.random((m, P)) < 0.5
    masks[:, 4] = masks[:, 1]            # "c" ties with "x", which has the lower index
    masks[:, 5] = True                   # "z" in every model: undefined
    margins = rng.integers(-3, 4, size=(m, T)).astype(np.float32)
    with h5py.File(path, "r+") as f:     # test set-up: chosen masks in a fresh store, before any row is written
        f["masks"][...] = masks
    with RunStore(path, writable=True) as store:
        for i in range(m):
            store.write_row(i, margins[i], seed=i, source_accuracy=0.5, target_accuracy=0.5, seconds=0.1)
        labels = store.target_labels
    out = tmp_path / "influence.h5"
    with pytest.warns(UserWarning):
        influence = compute_influence(path, out, device="cpu", holdout_frac=0).coef_
    checked = 0
    for label, name in enumerate(targets):
        columns = np.flatnonzero(labels == label)
        if not len(columns):
            continue
        means = np.array([_brute_mean(row) for row in influence[:, columns].astype(np.float64)])
        order = _brute_order(means)
        assert [e.index for e in rank_classes(out, target_class=name, level=None).overall] == order
        position = class_positions(out, [name], target_class=name)[name]
        assert position == (order.index(names.index(name)) + 1 if names.index(name) in order else None)
        checked += 1
    assert checked >= 2
    overall = rank_classes(out, level=None)
    assert overall.undefined == ("z",)
    indices = [e.index for e in overall.overall]
    assert indices.index(4) == indices.index(1) + 1  # the tie of "c" and "x", broken by index


@given(matrices(), st.integers(1, 12), st.booleans())
@SETTINGS
def test_top_pairs_are_the_largest_defined_entries_ties_row_major(matrix: np.ndarray, n: int,
                                                                   one_per_source: bool) -> None:
    rows, cols = matrix.shape
    entries = [(i, j) for i in range(rows) for j in range(cols) if np.isfinite(matrix[i, j])]
    if one_per_source:  # each row's largest entry (ties: lower column), rows by it (ties: lower row)
        best = {}
        for i, j in entries:
            if i not in best or matrix[i, j] > matrix[i, best[i]]:
                best[i] = j
        entries = list(best.items())
    expected = sorted(entries, key=lambda e: (-matrix[e], e))[:n]
    got_rows, got_cols = top_pairs(matrix, n, one_per_source=one_per_source)
    assert list(zip(got_rows.tolist(), got_cols.tolist())) == expected


# correlation -----------------------------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(3, 15), columns=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_spearman_columns_is_scipy_spearmanr_with_ties(n: int, columns: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 4, (n, columns)).astype(float), rng.integers(0, 4, (n, columns)).astype(float)
    got = spearman_columns(a, b)
    for j in range(columns):
        if np.ptp(a[:, j]) == 0 or np.ptp(b[:, j]) == 0:
            assert np.isnan(got[j])
        else:
            assert got[j] == pytest.approx(scipy_stats.spearmanr(a[:, j], b[:, j]).statistic, abs=1e-12)


def test_spearman_of_vectors_is_none_when_undefined() -> None:
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(np.ones(4), np.arange(4.0)) is None
    assert spearman(np.array([1.0, np.nan, 3]), np.arange(3.0)) is None


@SETTINGS
@given(a=st.lists(cells, min_size=0, max_size=12), seed=st.integers(0, 1000))
def test_defined_spearman_uses_the_entries_defined_in_both(a: list[float], seed: int) -> None:
    x = np.array(a, dtype=float)
    y = np.random.default_rng(seed).normal(size=len(x))
    y[np.random.default_rng(seed + 1).random(len(x)) < 0.2] = np.nan
    keep = np.isfinite(x) & np.isfinite(y)
    got = defined_spearman(x, y)
    if keep.sum() < MIN_DEFINED or np.ptp(x[keep]) == 0:
        assert got is None
    else:
        assert got == pytest.approx(scipy_stats.spearmanr(x[keep], y[keep]).statistic, abs=1e-12)


def test_spearman_brown_known_values() -> None:
    assert spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    assert spearman_brown(0.6, 1) == pytest.approx(0.6)
    assert spearman_brown(0.8, 0.25) == pytest.approx(0.5)
    assert models_for_reliability(0.8, 100) == pytest.approx(100)
    assert models_for_reliability(0.5, 100) == pytest.approx(400)
    assert models_for_reliability(0.0, 100) is None and models_for_reliability(-0.1, 100) is None
    assert models_for_reliability(1.0, 100) is None
    with pytest.raises(ValueError):
        spearman_brown(0.5, 0)
    with pytest.raises(ValueError, match="goal"):
        models_for_reliability(0.5, 100, 1.0)


@SETTINGS
@given(reliability=st.floats(0.01, 0.99), models=st.integers(2, 10_000), goal=st.floats(0.05, 0.95))
def test_models_for_reliability_inverts_spearman_brown(reliability: float, models: int, goal: float) -> None:
    needed = models_for_reliability(reliability, models, goal)
    assert spearman_brown(reliability, needed / models) == pytest.approx(goal, rel=1e-9)
    k = needed / models  # the formula itself: k = goal (1 - rho) / (rho (1 - goal))
    assert k == pytest.approx(goal * (1 - reliability) / (reliability * (1 - goal)), rel=1e-9)


def test_projected_reliability_and_models_needed() -> None:
    assert projected_reliability(0.5, 3) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    assert projected_reliability(None, 2) is None and projected_reliability(-0.2, 2) is None
    assert projected_reliability(0.0, 2) is None and projected_reliability(0.5, 0) is None
    assert models_needed(0.5, 100, (0.8, 0.9)) == {"0.8": pytest.approx(400), "0.9": pytest.approx(900)}
    assert models_needed(None, 100, (0.8,)) == {"0.8": None}


# LDS ---------------------------------------------------------------------------------------------------------
def _test_set(seed: int, n: int = 12, targets: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    actual = rng.normal(size=(n, targets))
    predicted = actual + rng.normal(size=(n, targets))
    predicted[:, 1] = 3.0                    # a constant prediction of a varying target: 0
    actual[:, 2] = 1.0                       # a constant target: undefined
    return predicted, actual


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_lds_per_target_and_its_summary_against_spearmanr(seed: int) -> None:
    predicted, actual = _test_set(seed)
    expected = np.array([0.0, 0.0, np.nan, 0.0, 0.0])
    for j in (0, 3, 4):
        expected[j] = scipy_stats.spearmanr(predicted[:, j], actual[:, j]).statistic
    np.testing.assert_allclose(lds_per_target(predicted, actual), expected, atol=1e-12)
    lds, mean, median = summarise_lds(predicted, actual)
    defined = expected[np.isfinite(expected)]
    assert mean == pytest.approx(defined.mean()) and median == pytest.approx(np.median(defined))
    assert summarise_lds(np.ones((4, 2)), np.ones((4, 2)))[1:] == (None, None)


@SETTINGS
@given(seed=st.integers(0, 10_000), units=st.integers(3, 7), size=st.integers(1, 2), abstain=st.booleans())
def test_bootstrap_lds_means_are_each_draws_correlation_of_the_repeated_rows(seed: int, units: int, size: int,
                                                                             abstain: bool) -> None:
    """Reference: draw the units as the function does, repeat each model's rows as often as its unit was drawn,
    and take the Pearson correlation of the test set's ranks over the repeated rows (np.corrcoef); the mean over
    the targets defined in the draw (a constant prediction counts 0 in every draw)."""
    predicted, actual = _test_set(seed, n=size * units)
    if not abstain:
        predicted[:, 1] = np.arange(len(predicted))
    members = np.repeat(np.arange(units), size) * 5 + 1  # single models or pairs; ids need not be 0..G-1
    draws = 15
    got = bootstrap_lds_means(predicted, actual, members, resamples=draws, seed=seed)
    ids, index = np.unique(members, return_inverse=True)
    rng = np.random.default_rng(seed)
    ra, rb = scipy_stats.rankdata(predicted, axis=0), scipy_stats.rankdata(actual, axis=0)
    for d in range(draws):
        counts = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
        rows = np.repeat(np.arange(len(members)), counts[index])
        scores = [0.0] if abstain else []  # a constant prediction (target 1) scores 0; target 2 is left out
        for j in (0, 3, 4) if abstain else (0, 1, 3, 4):
            a, b = ra[rows, j], rb[rows, j]
            scores.append(np.corrcoef(a, b)[0, 1] if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan)
        scores = np.array(scores)
        expected = scores[np.isfinite(scores)].mean() if np.isfinite(scores).any() else np.nan
        if np.isnan(expected):
            assert np.isnan(got[d])
        else:
            assert got[d] == pytest.approx(expected, abs=1e-9)
    interval = bootstrap_lds_interval(predicted, actual, members, resamples=draws, seed=seed)
    assert interval == percentile_interval(got, 0.95, draws / 2)
    assert bootstrap_lds_means(predicted, actual, np.arange(len(members)) % 2) is None  # 2 units: no bootstrap


# p-values and Benjamini–Hochberg --------------------------------------------------------------------------------
pvalues = st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.01, 0.04, 0.05, 1.0])), min_size=0, max_size=30)


def _bh_brute(p: list[float], fdr: float) -> np.ndarray:
    """The definition: reject the k smallest p-values for the largest k with p_(k) ≤ k·fdr/m."""
    m = len(p)
    ordered = sorted(range(m), key=lambda i: p[i])
    k = max([r for r in range(1, m + 1) if p[ordered[r - 1]] <= r * fdr / m], default=0)
    passed = np.zeros(m, bool)
    passed[ordered[:k]] = True
    return passed


@SETTINGS
@given(p=pvalues, fdr=st.sampled_from([0.01, 0.05, 0.1, 0.2]))
def test_benjamini_hochberg_and_q_values_match_the_definition(p: list[float], fdr: float) -> None:
    passed = benjamini_hochberg(np.array(p), fdr)
    np.testing.assert_array_equal(passed, _bh_brute(p, fdr))
    m = len(p)
    q = bh_adjusted(np.array(p).reshape(-1, 1) if m else np.array(p))
    brute_q = [min(1.0, min(m * p[j] / sum(p[k] <= p[j] for k in range(m)) for j in range(m) if p[j] >= p[i]))
               for i in range(m)]
    np.testing.assert_allclose(q.ravel(), brute_q, rtol=1e-9, atol=1e-12)
    assert q.shape == ((m, 1) if m else (0,))


def test_check_fdr_is_a_one_line_user_error() -> None:
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(UserError, match="must be between 0 and 1"):
            check_fdr(bad)
    check_fdr(0.05)


@SETTINGS
@given(rows=st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=1, max_size=6))
def test_simes_is_min_of_sorted_p_times_n_over_rank(rows: list[list[float]]) -> None:
    expected = [min(1.0, min(v * 3 / (k + 1) for k, v in enumerate(sorted(row)))) for row in rows]
    np.testing.assert_allclose(simes(np.array(rows), axis=1), expected, rtol=1e-12)
    np.testing.assert_allclose(simes(np.array(rows).T, axis=0), expected, rtol=1e-12)


@SETTINGS
@given(coef=st.floats(-5, 5), se=st.floats(0.01, 3), dof=st.one_of(st.none(), st.integers(1, 50)))
def test_one_sided_pvalues_are_t_tails(coef: float, se: float, dof: int | None) -> None:
    law = scipy_stats.norm if dof is None else scipy_stats.t(dof)
    greater = one_sided_pvalues(np.array([coef, np.nan, coef]), np.array([se, se, 0.0]), dof, "greater")
    assert greater[0] == pytest.approx(law.sf(coef / se), rel=1e-12, abs=1e-300)
    assert greater[1] == 1.0 and greater[2] == 1.0  # undefined entry, zero error
    less = one_sided_pvalues(np.array([coef]), np.array([se]), dof, "less")
    assert less[0] == pytest.approx(law.cdf(coef / se), rel=1e-12, abs=1e-300)


# intervals -------------------------------------------------------------------------------------------------------
@SETTINGS
@given(level=st.floats(0.5, 0.999), dof=st.one_of(st.none(), st.integers(1, 200)))
def test_interval_quantile_is_scipys_t_or_normal(level: float, dof: int | None) -> None:
    expected = scipy_stats.norm.ppf((1 + level) / 2) if dof is None else scipy_stats.t.ppf((1 + level) / 2, dof)
    assert interval_quantile(level, dof) == pytest.approx(expected, rel=1e-12)
    assert interval_quantile(0.95, None) == pytest.approx(1.959964, abs=1e-6)
    values, errors = np.array([1.0, np.nan, -2.0]), np.array([0.5, 1.0, np.nan])
    low, high = interval_bounds(values, errors, level, dof)
    assert low[0] == pytest.approx(1 - expected * 0.5) and high[0] == pytest.approx(1 + expected * 0.5)
    assert np.isnan(low[1:]).all() and np.isnan(high[1:]).all()


def test_percentile_interval_of_finite_samples() -> None:
    samples = np.array([np.nan, *range(101), np.nan], dtype=float)
    assert percentile_interval(samples, 0.9, 50) == (pytest.approx(5.0), pytest.approx(95.0))
    assert percentile_interval(samples, 0.9, 102) is None  # 101 finite samples
    assert percentile_interval(np.array([np.nan, np.nan]), 0.9, 1) is None


# detection scores ------------------------------------------------------------------------------------------------
@given(st.integers(2, 60), st.integers(0, 2**32 - 1))
@SETTINGS
def test_auc_is_sklearns_roc_auc_and_the_pairwise_count_with_ties(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, n).astype(float)  # ties on purpose
    positive = rng.random(n) < 0.3
    if positive.all() or not positive.any():
        assert auc(scores, positive) is None  # one class empty: undefined
        return
    pairs = [(p > q) + 0.5 * (p == q) for p in scores[positive] for q in scores[~positive]]
    assert auc(scores, positive) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)


def test_auc_of_a_perfect_and_a_reversed_ranking() -> None:
    positive = np.array([True, True, False, False, False])
    assert auc(np.array([5.0, 4, 3, 2, 1]), positive) == 1.0
    assert auc(np.array([1.0, 2, 3, 4, 5]), positive) == 0.0
    assert auc(np.zeros(5), np.zeros(5, bool)) is None


def _loop_z(matrix: np.ndarray) -> np.ndarray:
    """Column by column: (x - mean) / population std over the defined entries; 0 where std is 0 or undefined."""
    z = np.zeros_like(matrix, dtype=float)
    for j in range(matrix.shape[1]):
        kept = [float(v) for v in matrix[:, j] if not np.isnan(v)]
        if len(kept) == 0:
            continue
        mean = sum(kept) / len(kept)
        std = (sum((v - mean) ** 2 for v in kept) / len(kept)) ** 0.5
        for i in range(matrix.shape[0]):
            z[i, j] = (matrix[i, j] - mean) / std if std > 0 else 0.0
    return z


@given(matrices())
@SETTINGS
def test_per_target_z_and_two_way_z_against_a_loop(matrix: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN or constant columns must not warn
        column, both = per_target_z(matrix), two_way_z(matrix)
    expected = _loop_z(matrix)
    np.testing.assert_allclose(column, expected, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(both, expected + _loop_z(matrix.T).T, atol=1e-12, equal_nan=True)


@given(st.lists(st.floats(-50, 50) | st.just(float("nan")), min_size=1, max_size=30),
       st.lists(st.floats(-50, 50), min_size=0, max_size=30))
def test_conformal_pvalues_count_the_reference_at_or_below(scores: list[float], reference: list[float]) -> None:
    from dmtoolkit.stats.pvalues import conformal_pvalues

    p = conformal_pvalues(np.array(scores), np.array(reference))
    for s, value in zip(scores, p):
        expected = 1.0 if np.isnan(s) else (1 + sum(r <= s for r in reference)) / (1 + len(reference))
        assert value == pytest.approx(expected)


def test_conformal_pvalues_are_uniform_for_exchangeable_scores() -> None:
    """Validity by simulation: with scores drawn like the reference, P(p ≤ a) ≤ a (and close to it)."""
    from dmtoolkit.stats.pvalues import conformal_pvalues

    rng = np.random.default_rng(3)
    p = np.array([conformal_pvalues(rng.standard_t(3, 1), rng.standard_t(3, 99))[0] for _ in range(4000)])
    for a in (0.01, 0.05, 0.2):
        assert np.mean(p <= a) <= a + 3 * np.sqrt(a * (1 - a) / 4000)
        assert np.mean(p <= a) >= a - 3 * np.sqrt(a * (1 - a) / 4000)


@given(st.integers(1, 5000), st.integers(1, 3000), st.sampled_from([0.01, 0.05, 0.2]))
def test_bh_flags_no_fewer_than_fewest_flaggable(tests: int, reference: int, fdr: float) -> None:
    """At the smallest conformal p-value, Benjamini–Hochberg flags k images only when k ≥ fewest_flaggable."""
    from dmtoolkit.stats.pvalues import bh_adjusted, fewest_flaggable

    fewest = fewest_flaggable(tests, 1 / (reference + 1), fdr)
    for k in {max(1, fewest - 1), min(tests, fewest)}:
        if k > tests:
            continue
        p = np.r_[np.full(k, 1 / (reference + 1)), np.ones(tests - k)]
        flags = int((bh_adjusted(p) <= fdr).sum())
        assert flags == (k if k >= fewest else 0)
