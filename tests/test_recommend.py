"""`recommend_removal` and `dmtoolkit recommend`: the split, the order, the predicted changes and the chosen k,
checked against plain NumPy on synthetic stores whose harmful classes are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dmtoolkit.analyze import load_estimate, recommend_removal, removal_ranking, split_targets
from dmtoolkit.analyze.classes import mean_influence_refit
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import compute_influence
from dmtoolkit.store import RunStore
from tests.synthetic import synthetic_store

P, T, M = 8, 40, 160
HARMFUL = (2, 5)


def _margins(masks: np.ndarray, rng: np.random.Generator, harm: float, noise: float = 0.05) -> np.ndarray:
    """Every class helps every target a little, classes 2 and 5 hurt by `harm`; with the full source half the targets
    have a negative margin, so removing the harmful classes flips them (and removing helpful ones flips others)."""
    effect = np.full((P, T), 0.05)
    effect[list(HARMFUL)] = -harm
    offset = np.linspace(-0.6, 0.6, T) - effect.sum(0)  # full-source margins from −0.6 to 0.6
    return (masks @ effect + offset + rng.normal(0, noise, (len(masks), T))).astype(np.float32)


@pytest.fixture(scope="module")
def estimates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("recommend")
    rng = np.random.default_rng(7)
    out = {}
    # "helpful": classes 2 and 5 help most; "faint": they hurt a little, under noise that hides it
    for name, harm, noise in (("harmful", 0.5, 0.05), ("helpful", -0.3, 0.05), ("faint", 0.03, 3.0)):
        masks = rng.random((M, P)) < 0.5
        store = synthetic_store(tmp / f"{name}.h5", _margins(masks, rng, harm, noise), masks)
        infl = tmp / f"{name}-influence.h5"
        compute_influence(store, infl, device="cpu")
        out[name] = infl
    return out


@given(st.integers(2, 400), st.floats(0.05, 0.95), st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_split_is_a_seeded_partition(num_targets: int, fraction: float, seed: int) -> None:
    try:
        validation, test = split_targets(num_targets, fraction, seed)
    except UserError as error:  # only when a part would be empty
        assert "leaves one part empty" in str(error)
        assert int(np.floor(fraction * num_targets)) in (0, num_targets)
        return
    assert len(validation) == int(np.floor(fraction * num_targets))
    assert np.array_equal(np.sort(np.concatenate([validation, test])), np.arange(num_targets))
    again = split_targets(num_targets, fraction, seed)
    assert np.array_equal(again[0], validation) and np.array_equal(again[1], test)


def test_ranking_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(7, 12))
    coef[3] = np.nan  # undefined everywhere: last
    coef[1, :4] = np.nan  # partly undefined: the mean of the rest
    columns = np.array([0, 2, 5, 6, 9])
    means = []
    for k in range(7):
        vals = [coef[k, j] for j in columns if np.isfinite(coef[k, j])]
        means.append(sum(vals) / len(vals) if vals else np.inf)
    expected = sorted(range(7), key=lambda k: (means[k], k))
    assert removal_ranking(coef, columns).tolist() == expected


def _brute_force(infl: Path, ks: list[int]) -> tuple[int, dict[int, tuple[float, float]]]:
    """k with the best predicted validation accuracy and, per k, (accuracy, mean margin change), by explicit masks."""
    est = load_estimate(infl)
    validation, _ = split_targets(T)
    coef = np.nan_to_num(est.matrix)
    order = np.argsort(est.matrix[:, validation].mean(1), kind="stable")
    full_mask = np.ones(P)
    full = full_mask @ coef + est.intercept
    out = {}
    for k in ks:
        mask = full_mask.copy()
        mask[order[:k]] = 0
        pred = mask @ coef + est.intercept
        out[k] = (float((pred[validation] > 0).mean()), float((pred - full)[validation].mean()))
    best = max(ks, key=lambda k: (out[k][0], -k))
    return best, out


def test_recommendation_matches_brute_force_and_finds_the_harmful_classes(estimates: dict[str, Path]) -> None:
    ks = list(range(0, 5))
    rec = recommend_removal(estimates["harmful"], ks=ks)
    best, expected = _brute_force(estimates["harmful"], ks)
    assert rec.chosen.k == best == 2
    assert set(rec.chosen.removed) == {f"c{k}" for k in HARMFUL}
    for c in rec.candidates:
        assert c.predicted_accuracy == pytest.approx(expected[c.k][0])
        assert c.predicted_margin_change == pytest.approx(expected[c.k][1], rel=1e-5, abs=1e-6)
    assert rec.chosen.predicted_accuracy_change > 0.1
    assert set(rec.validation_columns).isdisjoint(rec.test_columns)
    assert rec.message.startswith("remove 2 classes (c")


def test_margin_interval_is_the_refit_error_summed_as_uncorrelated(estimates: dict[str, Path]) -> None:
    infl = estimates["harmful"]
    rec = recommend_removal(infl, ks=[0, 1, 2, 3], level=0.8)
    est = load_estimate(infl)
    with RunStore(est.store_path) as run:
        _, stderr, dof = mean_influence_refit(est, run, np.array(rec.validation_columns))
    order = removal_ranking(est.matrix, np.array(rec.validation_columns))
    q = stats.t.ppf(0.9, dof) if dof else stats.norm.ppf(0.9)
    for c in rec.candidates:
        se = np.sqrt(np.sum(stderr[order[:c.k]] ** 2))
        assert c.margin_change_low == pytest.approx(c.predicted_margin_change - q * se, rel=1e-6, abs=1e-9)
        assert c.margin_change_high == pytest.approx(c.predicted_margin_change + q * se, rel=1e-6, abs=1e-9)
    assert rec.chosen.margin_change_low > 0  # removing truly harmful classes: the interval excludes no gain


def test_nothing_to_remove_says_so(estimates: dict[str, Path]) -> None:
    rec = recommend_removal(estimates["helpful"])
    assert rec.chosen.k == 0
    assert rec.message.startswith("remove nothing")
    assert [c.k for c in rec.candidates] == list(range(0, P // 2 + 1))  # default: up to (1 − α)·P


def _bh_by_hand(p: np.ndarray, fdr: float) -> np.ndarray:
    """Benjamini–Hochberg step-up by a plain loop: reject the m smallest, m the largest rank with p ≤ m·fdr/n."""
    n, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    last = max((rank for rank in range(1, n + 1) if p[order[rank - 1]] <= rank * fdr / n), default=0)
    passing = np.zeros(n, bool)
    passing[order[:last]] = True
    return passing


@pytest.mark.parametrize("name", ["harmful", "faint", "helpful"])
def test_only_classes_with_evidence_of_harm_may_be_removed(estimates: dict[str, Path], name: str) -> None:
    rec = recommend_removal(estimates[name], fdr=0.05)
    est = load_estimate(estimates[name])
    validation = np.array(rec.validation_columns)
    with RunStore(est.store_path) as run:
        coef, stderr, dof = mean_influence_refit(est, run, validation)
    dist = stats.norm if dof is None else stats.t(dof)  # independent rows: normal, as in the estimator's SE
    passing = _bh_by_hand(dist.cdf(coef / stderr), 0.05)
    order = removal_ranking(est.matrix, validation)
    prefix = 0
    while prefix < P and passing[order[prefix]]:
        prefix += 1
    assert rec.harmful == prefix and rec.fdr == 0.05
    assert [c.evidence for c in rec.candidates] == [c.k <= prefix for c in rec.candidates]
    eligible = [c for c in rec.candidates if c.k <= prefix]
    assert rec.chosen == max(eligible, key=lambda c: (c.predicted_accuracy, -c.k))
    assert json.loads(json.dumps(rec.to_json()))["harmful"] == prefix
    if name == "harmful":
        assert prefix == 2 and rec.chosen.k == 2
    if name == "faint":  # the point prediction alone would remove classes; without evidence nothing is removed
        assert prefix == 0 and rec.chosen.k == 0
        assert max(rec.candidates, key=lambda c: (c.predicted_accuracy, -c.k)).k > 0
        assert rec.message == "remove nothing: no source class has evidence of harm on the validation targets at FDR 5%"


def test_cli_text_json_and_errors(estimates: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    infl = str(estimates["harmful"])
    text = runner.invoke(cli, ["recommend", infl, "--k", "0,1,2,3"])
    assert text.exit_code == 0, text.output
    first = text.output.splitlines()[0]
    assert first.startswith("remove 2 classes") and "predicted validation accuracy" in first
    assert any(line.startswith("*   2") for line in text.output.splitlines())
    out = runner.invoke(cli, ["recommend", infl, "--k", "0,2", "--json", "--split-seed", "3"])
    data = json.loads(out.output)
    assert data["split_seed"] == 3 and [c["k"] for c in data["candidates"]] == [0, 2]
    assert data["validation_targets"] + data["test_targets"] == T
    for args, message in ((["--k", "0,8"], "k=8 is out of range"), (["--k", "two"], "not a comma-separated"),
                          (["--validation-fraction", "1.5"], "1.5"), (["--fdr", "0"], "--fdr")):
        bad = runner.invoke(cli, ["recommend", infl, *args])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(cli, ["recommend", str(tmp_path / "nope.h5")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_remove_nothing_says_why(estimates: dict[str, Path]) -> None:
    """"faint": classes 2 and 5 hurt a little under heavy noise. No class has evidence of harm, so nothing is
    removed; the output names the most negative class and its q-value, and says explicitly that the rows whose
    margin-change interval lies above 0 were kept out by the evidence gate."""
    rec = recommend_removal(estimates["faint"], fdr=0.05)
    assert rec.chosen.k == 0 and rec.harmful == 0
    first = rec.removal_evidence[0]
    est = load_estimate(estimates["faint"])
    assert first.index == removal_ranking(est.matrix, np.array(rec.validation_columns))[0]
    assert not first.significant and first.q_value > 0.05
    blocked = [c for c in rec.candidates if c.evidence is False and c.margin_change_low > 0]
    assert blocked  # the point of this fixture: a set predicted to help without each class's evidence
    out = CliRunner().invoke(cli, ["recommend", str(estimates["faint"])])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "remove nothing: no source class has evidence of harm on the validation targets at FDR 5%"
    assert lines[1] == ("why nothing: only classes with evidence of harm (mean validation influence below 0 at FDR 5%) "
                        f"may be removed, and no class has it; the most negative class on the validation targets, "
                        f"{first.name}, has mean influence {first.influence:+.4f} with q = {first.q_value:.2g}")
    rows = ", ".join(f"k = {c.k}: {c.predicted_margin_change:+.2f} [{c.margin_change_low:+.2f}, "
                     f"{c.margin_change_high:+.2f}]" for c in blocked)
    assert lines[2].startswith(f"not chosen although the mean margin change's interval excludes 0 ({rows}): as a set")
    assert "not every one of them has evidence of harm at FDR 5% (only the first 0" in lines[2]
    table = [line for line in lines if line[:1] in " *" and line[1:5].strip().isdigit()]
    assert [line.split()[-1] for line in table] == ["yes" if c.evidence else "no" for c in rec.candidates]
    data = json.loads(CliRunner().invoke(cli, ["recommend", str(estimates["faint"]), "--json"]).output)
    assert data["explanation"] == lines[1:3] and data["removal_evidence"][0]["name"] == first.name


def test_remove_nothing_because_no_gain_is_predicted() -> None:
    from dmtoolkit.analyze.results import Recommendation, RemovalCandidate

    keep = RemovalCandidate(0, (), 0.0, 0.0, 0.0, 0.7, 0.0, evidence=True)
    worse = RemovalCandidate(1, ("c3",), -0.2, -0.3, -0.1, 0.65, -0.05, evidence=True)
    rec = Recommendation("f.h5", "difference-of-means", 0.5, 1, (0, 1), (2, 3), 0.7, (keep, worse), keep, level=0.9,
                         fdr=0.05, harmful=1)
    assert rec.message.startswith("remove nothing: no removal")
    assert rec.explanation == ["why nothing: no removal among the 1 most negative classes with evidence of harm at "
                               "FDR 5% is predicted to raise validation accuracy above the full source's 0.700 "
                               "(best: k = 1, -0.050)"]
