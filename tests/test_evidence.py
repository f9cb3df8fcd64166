"""Evidence thresholds: p-values, Simes, Benjamini–Hochberg against brute force; FDR calibration by simulation;
`leakage` and `mislabels` end to end on synthetic stores with known truth (and with nothing planted)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dmtoolkit.analyze import detect_leakage, detect_mislabels
from dmtoolkit.analyze.copies import find_copies, near_duplicate_matrix
from dmtoolkit.analyze.leakage import family_q_values
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import compute_influence, fit_datamodels
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.registry import make_estimator
from dmtoolkit.estimate.splits import design_draws
from dmtoolkit.masks import make_masks
from dmtoolkit.recipe import Recipe, parse_recipe_dict
from dmtoolkit.report import text
from dmtoolkit.stats.pvalues import benjamini_hochberg, bh_adjusted, check_fdr, one_sided_pvalues, simes
from dmtoolkit.store import RunStore, create_store
from tests.synthetic import linear_margins, planted_example_data, synthetic_data, synthetic_recipe, write_rows

P_VALUES = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=30)


# the statistics against brute force ---------------------------------------------------------------------
def _bh_brute(p: list[float], fdr: float) -> np.ndarray:
    """Step-up rule written out: the largest k with p_(k) <= k·fdr/n; reject every p <= p_(k)."""
    n = len(p)
    ranked = sorted(p)
    cut = max((k for k in range(1, n + 1) if ranked[k - 1] <= k * fdr / n), default=0)
    return np.array([x <= ranked[cut - 1] for x in p]) if cut else np.zeros(n, bool)


@given(P_VALUES, st.sampled_from([0.01, 0.05, 0.1, 0.25]))
@settings(max_examples=200, deadline=None)
def test_benjamini_hochberg_matches_the_step_up_rule(p: list[float], fdr: float) -> None:
    np.testing.assert_array_equal(benjamini_hochberg(np.array(p), fdr), _bh_brute(p, fdr))
    q = bh_adjusted(np.array(p))
    assert np.all(q >= np.array(p) - 1e-12) and np.all(q <= 1)


@given(st.lists(P_VALUES, min_size=1, max_size=4).filter(lambda rows: len({len(r) for r in rows}) == 1))
@settings(max_examples=100, deadline=None)
def test_simes_matches_a_loop(rows: list[list[float]]) -> None:
    expected = []
    for row in rows:
        ranked = sorted(row)
        expected.append(min(1.0, min(len(row) * ranked[k] / (k + 1) for k in range(len(row)))))
    np.testing.assert_allclose(simes(np.array(rows), axis=1), expected, rtol=1e-12)
    np.testing.assert_allclose(simes(np.array(rows).T, axis=0), expected, rtol=1e-12)


def test_one_sided_pvalues_against_scipy() -> None:
    coef = np.array([2.0, -1.0, 0.5, np.nan, 1.0])
    stderr = np.array([1.0, 0.5, 0.0, 1.0, np.inf])
    greater = one_sided_pvalues(coef, stderr, 9, "greater")
    assert greater[0] == pytest.approx(stats.t.sf(2.0, 9)) and greater[1] == pytest.approx(stats.t.sf(-2.0, 9))
    assert list(greater[2:]) == [1.0, 1.0, 1.0]  # zero, undefined or infinite error: no evidence
    less = one_sided_pvalues(coef, stderr, None, "less")
    assert less[1] == pytest.approx(stats.norm.cdf(-2.0)) and less[0] == pytest.approx(stats.norm.cdf(2.0))


@pytest.mark.parametrize("fdr", [0, 1, -0.1, 1.5])
def test_fdr_out_of_range_is_refused(fdr: float) -> None:
    with pytest.raises(UserError, match="between 0 and 1"):
        check_fdr(fdr)


# calibration: BH on design-valid p-values keeps the false discovery rate ------------------------------------
def _simulated_pvalues(design: str, replication: int, effects: int, *, units: int = 36, models: int = 256,
                       targets: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p-values (influence > 0) from difference of means, and which entries have a positive effect.

    Margins = masks·β + N(0, 1) with `effects` entries of β set to 1.5; with fixed-size subsets difference of
    means estimates β_k − Σ_(l≠k) β_l / (P − 1), so the other entries' effects are ≤ 0 (true nulls of the
    one-sided test)."""
    layout = "orthogonal" if design.startswith("orthogonal") else "random"
    antithetic = design.endswith("antithetic")
    masks = make_masks(500 + replication, models, units, 0.5, antithetic=antithetic, design=layout)
    rng = np.random.default_rng([11, replication])
    beta = np.zeros((units, targets))
    beta.flat[rng.choice(beta.size, effects, replace=False)] = 1.5
    margins = linear_margins(masks, beta, rng, noise=1.0)
    fit = make_estimator("difference-of-means", device="cpu").fit(
        masks, margins, draws=design_draws(models, units, antithetic=antithetic, design=layout))
    truth = beta if layout == "orthogonal" else beta - (beta.sum(0) - beta) / (units - 1)
    return one_sided_pvalues(fit.coef_, fit.stderr_, fit.stderr_dof_, "greater"), truth > 0


@pytest.mark.parametrize(("design", "models"), [("random", 256), ("antithetic", 256), ("orthogonal+antithetic", 512)])
def test_bh_keeps_the_false_discovery_rate_under_each_design(design: str, models: int) -> None:
    """Orthogonal blocks need >= 4 blocks (3 dof): with 2 blocks every p-value rests on the same two block means
    and BH overshoots (the detectors say so in their evidence line, see test_few_draws_are_named)."""
    reps, fdr = 60, 0.1
    null_p, fdp, power = [], [], []
    for r in range(reps):
        p, _ = _simulated_pvalues(design, r, effects=0, models=models)
        null_p.append(p.ravel())
        p, positive = _simulated_pvalues(design, 1000 + r, effects=20, models=models)
        flagged = benjamini_hochberg(p, fdr)
        fdp.append((flagged & ~positive).sum() / max(flagged.sum(), 1))
        power.append((flagged & positive).sum() / positive.sum())
    null_p = np.concatenate(null_p)
    assert 0.035 <= np.mean(null_p <= 0.05) <= 0.065, "p-values of true nulls are not uniform"
    assert np.mean(fdp) <= fdr + 0.03, f"false discovery rate {np.mean(fdp):.3f} above nominal {fdr}"
    assert np.mean(power) >= 0.5


# end to end on synthetic example stores -------------------------------------------------------------------
N, T, M = 12, 10, 160
LEAKS = {2: 4, 7: 1}         # source -> target test image it copies
LOOK_ALIKE = (6, 7)          # strong influence on target 7, pixels unrelated
FLIPS = (3, 9)               # hurt every target and the source task


def _example_store(path: Path, *, planted_effects: bool) -> Path:
    data = (planted_example_data(N, T, leaks=LEAKS, decoys={5: 0}, flips=FLIPS, seed=1) if planted_effects
            else planted_example_data(N, T, leaks={}, seed=1))
    create_store(path, _example_recipe(), data)
    rng = np.random.default_rng(5)
    with RunStore(path) as run:
        masks = run.file["masks"][()].astype(np.float64)
    margins = rng.normal(0, 0.3, (M, T))
    accuracy = 0.8 + rng.normal(0, 0.01, M)
    if planted_effects:
        for source, target in LEAKS.items():
            margins[:, target] += 3.0 * masks[:, source]
        margins[:, LOOK_ALIKE[1]] += 2.0 * masks[:, LOOK_ALIKE[0]]
        for source in FLIPS:
            margins -= 0.6 * masks[:, [source]]
            accuracy -= 0.05 * masks[:, source]
    return write_rows(path, margins, source_accuracy=accuracy)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("planted")
    store = _example_store(tmp / "runs.h5", planted_effects=True)
    compute_influence(store, tmp / "influence.h5", device="cpu", holdout_frac=0.0)
    fit_datamodels(store, tmp / "datamodels.h5", device="cpu", targets=slice(0, 4), n_lambdas=8)
    return {"store": store, "influence": tmp / "influence.h5", "datamodels": tmp / "datamodels.h5"}


@pytest.fixture(scope="module")
def null(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("null")
    store = _example_store(tmp / "runs.h5", planted_effects=False)
    compute_influence(store, tmp / "influence.h5", device="cpu", holdout_frac=0.0)
    return {"store": store, "influence": tmp / "influence.h5"}


def _example_recipe() -> Recipe:
    return synthetic_recipe(M, kind="example", seed=4)


def _copied_only_store(path: Path) -> Path:
    """Nothing planted in the margins (pure noise), but ex2 is an exact copy of target test image 4 and ex9 a near
    copy of target 6 (half the contrast, brighter): contamination the estimate has no evidence of."""
    data = synthetic_data(N, T, per_class=1, seed=1)
    images = data.source_pool.images.copy()
    images[2] = data.target_test.images[4]
    images[9] = (data.target_test.images[6] // 2 + 60).astype(np.uint8)
    data = dataclasses.replace(data, source_pool=dataclasses.replace(data.source_pool, images=images))
    create_store(path, _example_recipe(), data)
    return write_rows(path, np.random.default_rng(5).normal(0, 0.3, (M, T)), source_accuracy=0.8)


def test_copies_lead_every_output_when_the_estimate_has_no_evidence(tmp_path: Path) -> None:
    """The copies are contamination whatever the models say: text, JSON, HTML and CSV lead with them by source id
    and target index, the ids to remove include them, and none says "no evidence"."""
    store = _copied_only_store(tmp_path / "runs.h5")
    compute_influence(store, tmp_path / "influence.h5", device="cpu", holdout_frac=0.0)
    result = detect_leakage(tmp_path / "influence.h5", features=False)
    assert result.flagged == () and result.thresholded  # the influence evidence flags neither copy
    assert [(c.source_id, c.target, c.kind, c.confirmed) for c in result.copies] == [
        ("ex2", 4, "exact copy", False), ("ex9", 6, "near copy", False)]
    assert result.copies[1].pixel_score > 0.985 and result.removal_ids == ["ex2", "ex9"]
    html, table = tmp_path / "leaks.html", tmp_path / "leaks.csv"
    out = CliRunner().invoke(cli, ["leakage", str(tmp_path / "influence.h5"), "--no-features", "--html", str(html),
                                   "--csv", str(table)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == ("contamination: 2 source examples copy target test images (1 exact, 1 near): ex2 = target 4 "
                        "(exact copy), ex9 = target 6 (near copy); pixel evidence, no models needed; influence "
                        "confirms 0 of the 2 it covers at FDR 5%")
    assert lines[1] == "copies of target test images (2), from pixels:"
    assert lines[3].split()[:5] == ["ex2", "c2", "4", lines[3].split()[3], "1.000"] and "exact copy" in lines[3]
    assert lines[4].split()[:3] == ["ex9", "c9", "6"] and "near copy" in lines[4] and "do not confirm" in lines[4]
    assert lines[5] == "source example ids to remove: ex2, ex9"
    assert lines[6].startswith("pixel evidence needs no models: all 12 source examples were compared with all 10 "
                               "target test images")
    assert lines[7].startswith("what the models add: influence evidence at FDR 5% confirms 0 of the 2 copies it can judge")
    assert "no evidence" not in out.output
    data = json.loads(CliRunner().invoke(cli, ["leakage", str(tmp_path / "influence.h5"), "--no-features",
                                               "--json"]).output)
    assert data["verdict"] == "contamination" and data["remove"] == ["ex2", "ex9"]
    assert [(c["source_id"], c["target"], c["kind"], c["exact"]) for c in data["copies"]] == [
        ("ex2", 4, "exact copy", True), ("ex9", 6, "near copy", False)]
    assert data["message"] == lines[0] and "no evidence" not in json.dumps(data)
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["category"], r["source_id"], r["target"], r["remove"]) for r in rows[:2]] == [
        ("exact copy", "ex2", "4", "True"), ("near copy", "ex9", "6", "True")]
    page = html.read_text(encoding="utf-8")
    assert "no evidence" not in page and "Source example ids to remove: ex2, ex9" in page
    assert page.index("contamination: 2 source examples") < page.index("Copies of target test images, from pixels (2)")
    assert page.index("Copies of target test images") < page.index("Influence evidence")
    assert page.count("data:image/png;base64") == 4  # both copies side by side, nothing else has evidence


def test_datamodels_lead_with_copies_outside_their_targets(planted: dict[str, Path]) -> None:
    """Datamodels (no standard errors) fitted on targets 0:4: ex2 copies target 4, outside the estimate, and is
    still found, since the pixel scan covers every target test image."""
    result = detect_leakage(planted["datamodels"], features=False)
    assert [(c.source, c.target, c.confirmed) for c in result.copies] == [(2, 4, None), (7, 1, None)]
    assert result.copies[0].influence is None and result.copies[1].influence is not None
    assert result.verdict == "contamination" and "no evidence" not in text.format_leakage(result)
    assert "the estimate covers 4 of the 10 target test images" in result.models_add


def test_copy_scan_is_exhaustive_and_matches_the_pixel_score() -> None:
    """find_copies against near_duplicate_matrix on every pair, with blocks far smaller than the data (so block
    boundaries are crossed), thresholds that keep many pairs, shifted copies and a constant exact copy."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (90, 10, 10, 1), dtype=np.uint8)
    target = rng.integers(0, 256, (37, 10, 10, 1), dtype=np.uint8)
    source[3] = target[5]                                                  # exact
    source[10, 1:] = target[7, :-1]                                        # moved one pixel down
    source[10, 0] = 0
    source[11] = target[8] // 2 + 10                                       # contrast and brightness
    source[20], target[9] = 0, 0                                           # constant: scores 0, still identical
    matrix = near_duplicate_matrix(source, target)
    for threshold in (0.985, 0.4):
        for block in (64, 1 << 22):
            scan = find_copies(source, target, threshold=threshold, block=block)
            expected = set(zip(*map(np.ndarray.tolist, np.nonzero(matrix >= threshold)))) | {(20, 9)}
            assert set(zip(scan.source.tolist(), scan.target.tolist())) == expected
            np.testing.assert_allclose(scan.score, matrix[scan.source, scan.target], atol=1e-6)  # float32 scan
    scan = find_copies(source, target, threshold=0.985)
    assert list(zip(scan.source.tolist(), scan.target.tolist(), scan.exact.tolist())) == [
        (3, 5, True), (20, 9, True), (11, 8, False)]  # exact first; the moved copy lost a row of 10
    low = find_copies(source, target, threshold=0.8)
    assert 0.8 < matrix[10, 7] < 0.985 and (10, 7) in set(zip(low.source.tolist(), low.target.tolist()))


def test_a_grey_copy_stored_as_rgb_is_an_exact_copy() -> None:
    """A source folder read as 3 channels (one colour image among grey ones) keeps a copied grey test image as
    R = G = B: still the same picture, so an exact copy; a tinted one is only a near copy."""
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (6, 9, 9, 1), dtype=np.uint8)
    source = rng.integers(0, 256, (8, 9, 9, 3), dtype=np.uint8)
    source[2] = np.repeat(target[4], 3, axis=-1)
    source[5] = np.repeat(target[1], 3, axis=-1)
    source[5, ..., 0] = np.minimum(source[5, ..., 0].astype(int) + 1, 255).astype(np.uint8)  # a faint red tint
    scan = find_copies(source, target, threshold=0.985)
    found = {(s, t): e for s, t, e in zip(scan.source.tolist(), scan.target.tolist(), scan.exact.tolist())}
    assert found == {(2, 4): True, (5, 1): False}


def test_nothing_planted_says_nothing_here(null: dict[str, Path]) -> None:
    leaks = detect_leakage(null["influence"])
    assert leaks.copies == () and leaks.verdict == "no evidence" and leaks.removal_ids == []
    assert leaks.flagged == () and leaks.message.startswith("no evidence of leakage at FDR 5%")
    assert len(leaks.pairs) == N  # browsing still lists the top pairs, one per source
    assert "families" not in leaks.evidence  # no copies: every pair is one family, and the line does not say two
    assert all(not p.flagged and p.p_value is not None for p in leaks.pairs)
    flips = detect_mislabels(null["influence"])
    assert flips.flagged == () and flips.message == "no evidence of mislabelled source examples at FDR 5%"
    out = CliRunner().invoke(cli, ["leakage", str(null["influence"])])
    assert out.exit_code == 0 and out.output.splitlines()[0] == (
        "no evidence of leakage at FDR 5%: none of the 12 source examples copies one of the 10 target test images "
        "(pixels), and none has significant influence on one")
    assert out.output.splitlines()[1] == "source example ids to remove: none"
    assert "copies of target test images" not in out.output
    out = CliRunner().invoke(cli, ["mislabels", str(null["influence"]), "--fdr", "0.1"])
    assert out.exit_code == 0 and out.output.splitlines()[0] == "no evidence of mislabelled source examples at FDR 10%"


@given(st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["copy", "other", "undefined"])), min_size=1,
                max_size=30), st.sampled_from([0.05, 0.2]))
@settings(max_examples=150, deadline=None)
def test_copies_are_tested_as_their_own_family(pairs: list[tuple[float, str]], fdr: float) -> None:
    """family_q_values: the step-up rule within the copies and, separately, within every other defined pair."""
    p = np.array([x for x, _ in pairs])[None, :]
    kind = np.array([k for _, k in pairs])[None, :]
    q = family_q_values(p, kind == "copy", kind != "undefined")
    assert np.all(q[kind == "undefined"] == 1.0)
    for family in ("copy", "other"):
        members = kind[0] == family
        if members.any():
            np.testing.assert_array_equal(q[0, members] <= fdr, _bh_brute(p[0, members].tolist(), fdr))


def test_a_copy_is_confirmed_within_its_family_where_all_pairs_would_bury_it(planted: dict[str, Path]) -> None:
    """The copies' q-values are Benjamini–Hochberg over the copy pairs alone, not over all P × T pairs."""
    result = detect_leakage(planted["influence"], features=False)
    est = load_estimate(planted["influence"])
    p = one_sided_pvalues(est.matrix, est.stderr, est.stderr_dof, "greater")
    copies = [(c.source, c.target) for c in result.copies]
    q_copies = bh_adjusted(np.array([p[i, j] for i, j in copies]))
    for c, expected in zip(result.copies, q_copies):
        assert c.q_value == pytest.approx(expected)
    assert "within two families: the 2 pixel-copy pairs" in result.evidence
    # the same p-values among all pairs give larger q for the copies (the family the old rule tested them in)
    everything = bh_adjusted(p.ravel()).reshape(p.shape)
    assert all(everything[i, j] >= c.q_value - 1e-12 for (i, j), c in zip(copies, result.copies))


def test_copies_are_flagged_and_look_alikes_are_not(planted: dict[str, Path]) -> None:
    result = detect_leakage(planted["influence"])
    assert {(p.source, p.target) for p in result.flagged} == set(LEAKS.items())
    assert all(p.category == "likely copy" and p.q_value <= 0.05 and p.pixel_score >= 0.985 for p in result.flagged)
    look_alikes = {(p.source, p.target) for p in result.influence_only}
    assert LOOK_ALIKE in look_alikes and 5 not in {p.source for p in result.flagged}
    assert result.planted.precision_at_k == 1.0 and result.planted.recall_at_k == 1.0 and result.planted.decoys_flagged == 0
    assert result.message.startswith("contamination: 2 source examples copy target test images (2 exact, 0 near)")
    assert "influence confirms 2 of the 2 it covers at FDR 5%" in result.message and "3 more source examples" in result.message
    assert sorted(result.removal_ids) == ["ex2", "ex7"]
    assert {(c.source, c.target) for c in result.copies} == set(LEAKS.items())
    assert all(c.exact and c.confirmed and c.pixel_score == pytest.approx(1.0) for c in result.copies)
    # a stricter pixel threshold than any score: exact copies are still copies (identical pixels, whatever the
    # threshold); with an image changed by one grey level they would be influence only
    strict = detect_leakage(planted["influence"], near_duplicate=1.0)
    assert {(c.source, c.target, c.exact) for c in strict.copies} == {(s, t, True) for s, t in LEAKS.items()}


def test_mislabels_need_harm_to_the_source_task(planted: dict[str, Path]) -> None:
    result = detect_mislabels(planted["influence"])
    assert {c.source for c in result.flagged} == set(FLIPS)
    assert all(c.flagged and c.planted_flip and c.source_p < 0.01 and c.target_p < 0.01 for c in result.flagged)
    assert [c.source for c in result.candidates[:2]] == sorted(FLIPS, key=lambda s: next(
        c.p_value for c in result.candidates if c.source == s))
    assert result.planted.precision_at_k == 1.0 and result.planted_top.auc == 1.0
    # the leaking sources help their target: no evidence of harm, whatever their source accuracy
    assert not any(c.flagged for c in result.candidates if c.source in LEAKS)


def test_datamodels_have_no_threshold(planted: dict[str, Path]) -> None:
    leaks = detect_leakage(planted["datamodels"])
    assert leaks.flagged == () and not leaks.thresholded and leaks.message.startswith("contamination: ")
    assert all(p.p_value is None for p in leaks.pairs) and leaks.pairs
    flips = detect_mislabels(planted["datamodels"])
    assert flips.flagged == () and flips.message.startswith("no evidence threshold")


def test_leakage_files_reopened_and_overwrite_refused(planted: dict[str, Path], tmp_path: Path) -> None:
    html, table = tmp_path / "leaks.html", tmp_path / "leaks.csv"
    out = CliRunner().invoke(cli, ["leakage", str(planted["influence"]), "--html", str(html), "--csv", str(table)])
    assert out.exit_code == 0, out.output
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    removed = [(int(r["source"]), int(r["target"])) for r in rows if r["remove"] == "True"]
    assert sorted(removed) == sorted(LEAKS.items()) and rows[0]["category"] == "exact copy"
    assert [r["category"] for r in rows[:2]] == ["exact copy"] * 2
    assert all(r["significant_influence"] == "True" for r in rows[:2])  # the models confirm both copies
    assert (6, 7) in [(int(r["source"]), int(r["target"])) for r in rows if r["category"] == "influence only"]
    assert all(float(r["q_value"]) <= 0.05 for r in rows)
    page = html.read_text(encoding="utf-8")
    assert "Source example ids to remove: ex2, ex7" in page
    assert page.index("Copies of target test images, from pixels (2)") < page.index("Influence evidence")
    assert page.count("data:image/png;base64") >= 2 * len(rows)
    # existing outputs are not overwritten without --force, and nothing is computed
    table.write_text("keep me", encoding="utf-8")
    out = CliRunner().invoke(cli, ["leakage", str(planted["influence"]), "--csv", str(table)])
    assert out.exit_code == 1 and "already exists; pass --force" in out.output and "Traceback" not in out.output
    assert table.read_text(encoding="utf-8") == "keep me"
    out = CliRunner().invoke(cli, ["leakage", str(planted["influence"]), "--csv", str(table), "--force"])
    assert out.exit_code == 0 and table.read_text(encoding="utf-8").startswith("category,remove,")


@pytest.mark.parametrize("fdr", ["0", "1", "1.5"])
def test_cli_refuses_fdr_out_of_range(planted: dict[str, Path], fdr: str) -> None:
    for command in ("leakage", "mislabels"):
        out = CliRunner().invoke(cli, [command, str(planted["influence"]), "--fdr", fdr])
        assert out.exit_code == 2 and "--fdr" in out.output


@pytest.mark.parametrize(("sources", "expected"), [(36, "only 2 draws"), (64, "standard errors are undefined")])
def test_few_draws_are_named(tmp_path: Path, sources: int, expected: str) -> None:
    """256 orthogonal+antithetic models are 2 blocks for 36 sources (1 dof: the evidence line warns that the FDR
    is not guaranteed) and 1 block for 64 (no standard errors: nothing can be flagged, and the line says why)."""
    data = synthetic_data(sources, 3, per_class=1, seed=2)
    recipe = parse_recipe_dict({"name": "synthetic", "source": {"dataset": "synthetic"},
                                "target": {"dataset": "synthetic"},
                                "subsets": {"kind": "example", "alpha": 0.5, "models": 256, "seed": 1,
                                            "design": "orthogonal", "antithetic": True}})
    store = write_rows(create_store(tmp_path / "runs.h5", recipe, data), np.random.default_rng(0).normal(0, 1, (256, 3)))
    compute_influence(store, tmp_path / "influence.h5", device="cpu", holdout_frac=0.0)
    result = detect_leakage(tmp_path / "influence.h5")
    assert expected in result.evidence and result.flagged == ()
    assert expected in detect_mislabels(tmp_path / "influence.h5").evidence


def test_feature_similarity_is_shown_beside_the_evidence(planted: dict[str, Path]) -> None:
    result = detect_leakage(planted["influence"])
    # a copy is the same picture, so the full-pool model embeds both identically
    assert all(p.feature_score == pytest.approx(1.0, abs=1e-5) for p in result.flagged)
    look_alike = next(p for p in result.influence_only if (p.source, p.target) == LOOK_ALIKE)
    assert look_alike.feature_score is not None and look_alike.feature_score < 0.99
    assert result.features.startswith("feature similarity: cosine of standardised")
    assert result.planted_feature_top is not None and result.planted_feature_top.hits == len(LEAKS)
    plain = detect_leakage(planted["influence"], features=False)
    assert all(p.feature_score is None for p in plain.pairs) and plain.planted_feature_top is None
    assert [(p.source, p.target) for p in plain.flagged] == [(p.source, p.target) for p in result.flagged]
    out = CliRunner().invoke(cli, ["leakage", str(planted["influence"]), "--no-features", "--device", "cpu"])
    assert out.exit_code == 0 and "feature similarity not computed" in out.output


def test_the_feature_network_trains_at_the_drivers_thread_count(planted: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Multithreaded reductions change the trained network, so the full-pool model behind the feature column
    trains (and embeds) at the driver's thread count whatever the caller's: the same scores on any machine."""
    import torch

    from dmtoolkit.analyze.features import feature_similarity
    from dmtoolkit.devices import TRAINING_THREADS
    from dmtoolkit.store import RunStore
    from dmtoolkit.train.job import BuiltinTrainer

    seen = []
    train = BuiltinTrainer.train_source_models

    def recording(self: BuiltinTrainer, *args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return train(self, *args, **kwargs)

    monkeypatch.setattr(BuiltinTrainer, "train_source_models", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS + 1)
    try:
        with RunStore(planted["store"]) as store:
            feature_similarity(store)
        assert seen == [TRAINING_THREADS]
        assert torch.get_num_threads() == TRAINING_THREADS + 1  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
