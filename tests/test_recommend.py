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
from dmtoolkit.analyze.recommend import DOCUMENTED_STUDIES, choose_removal, prediction_trust
from dmtoolkit.analyze.results import Recommendation, RemovalCandidate
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import compute_influence
from dmtoolkit.store import RunStore
from tests.synthetic import linear_margins, synthetic_store

P, T, M = 8, 40, 160
HARMFUL = (2, 5)


def _margins(masks: np.ndarray, rng: np.random.Generator, harm: float, noise: float = 0.05) -> np.ndarray:
    """Every class helps every target a little, classes 2 and 5 hurt by `harm`; with the full source half the targets
    have a negative margin, so removing the harmful classes flips them (and removing helpful ones flips others)."""
    effect = np.full((P, T), 0.05)
    effect[list(HARMFUL)] = -harm
    offset = np.linspace(-0.6, 0.6, T) - effect.sum(0)  # full-source margins from −0.6 to 0.6
    return linear_margins(masks, effect, rng, noise=noise, offset=offset)


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


def _tie_rule_by_hand(eligible: list, targets: int) -> object:
    """The rule's last step by a plain loop: the most validation targets predicted correct; among tied k, the one
    with the largest mean-margin gain whose interval lies above 0, else the smallest k."""
    best = max(round(c.predicted_accuracy * targets) for c in eligible)
    tied = [c for c in eligible if round(c.predicted_accuracy * targets) == best]
    supported = [c for c in tied if c.margin_change_low is not None and c.margin_change_low > 0]
    if supported:
        return sorted(supported, key=lambda c: (-c.predicted_margin_change, c.k))[0]
    return sorted(tied, key=lambda c: c.k)[0]


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
    assert rec.chosen == _tie_rule_by_hand(eligible, len(validation))
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
    keep = RemovalCandidate(0, (), 0.0, 0.0, 0.0, 0.7, 0.0, evidence=True)
    worse = RemovalCandidate(1, ("c3",), -0.2, -0.3, -0.1, 0.65, -0.05, evidence=True)
    chosen, reason = choose_removal([keep, worse], validation_targets=20, full_accuracy=0.7, harmful=1, fdr=0.05)
    assert chosen == keep
    assert reason == ("why nothing: no removal among the 1 most negative classes with evidence of harm at FDR 5% is "
                      "predicted to raise validation accuracy above the full source's 0.700 (best: k = 1, -0.050)")
    rec = Recommendation("f.h5", "difference-of-means", 0.5, 1, (0, 1), (2, 3), 0.7, (keep, worse), keep, level=0.9,
                         fdr=0.05, harmful=1, reason=reason)
    assert rec.message.startswith("remove nothing: no removal")
    assert rec.explanation == [reason]


# --- the zero-tie rule: accuracy on a few hundred targets cannot resolve a removal; the margin evidence decides -----
def test_a_tie_goes_to_the_margin_evidence_only_when_its_interval_is_above_zero() -> None:
    keep = RemovalCandidate(0, (), 0.0, 0.0, 0.0, 0.9, 0.0, evidence=True)
    clear = RemovalCandidate(1, ("c3",), 0.034, 0.031, 0.038, 0.9, 0.0, evidence=True)
    vague = RemovalCandidate(1, ("c3",), 0.010, -0.002, 0.022, 0.9, 0.0, evidence=True)
    more = RemovalCandidate(2, ("c3", "c1"), 0.050, 0.040, 0.060, 0.9, 0.0, evidence=True)
    blocked = RemovalCandidate(3, ("c3", "c1", "c0"), 0.090, 0.080, 0.100, 0.9, 0.0, evidence=False)
    args = dict(validation_targets=500, full_accuracy=0.9, harmful=2, fdr=0.05)
    chosen, reason = choose_removal([keep, clear], **args)
    assert chosen == clear
    assert reason == ("why k = 1: among removals of classes with evidence of harm at FDR 5% (k ≤ 2), k = 0, 1 are "
                      "predicted to give the same validation accuracy (+0 of 500 targets, a difference the accuracy "
                      "of 500 targets cannot show), so the mean-margin evidence decides: k = 1 has the largest "
                      "predicted gain whose interval lies above 0 (+0.034 [+0.031, +0.038])")
    chosen, reason = choose_removal([keep, vague], **args)  # the margin interval includes 0: nothing decides the tie
    assert chosen == keep and reason.startswith("why nothing: k = 0, 1 are predicted to give the same validation")
    assert choose_removal([keep, clear, more, blocked], **args)[0] == more  # the largest supported gain, gate kept
    better = RemovalCandidate(1, ("c3",), 0.034, 0.031, 0.038, 0.902, 0.002, evidence=True)
    chosen, reason = choose_removal([keep, better, more], **args)  # no tie: accuracy decides, as before
    assert chosen == better and reason.startswith("why k = 1: among removals of classes with evidence of harm at FDR "
                                                  "5% (k ≤ 2), it has the best predicted validation accuracy (+0.002, "
                                                  "+1 of 500 targets; mean margin +0.034 [+0.031, +0.038])")
    assert choose_removal([keep, clear], **{**args, "harmful": None, "fdr": None})[1].startswith(
        "why k = 1: among all k (no standard errors, so no evidence gate), k = 0, 1")


def _far_from_zero_margins(masks: np.ndarray, rng: np.random.Generator, harm: float) -> np.ndarray:
    """Class 3 lowers every target's margin by `harm`, every other class raises it by 0.05; the full source's margins
    lie at ±(0.5…1.0), far from 0, so removing class 3 moves no target across 0: its predicted accuracy change is
    exactly 0 while its mean-margin gain is `harm`."""
    effect = np.full((P, T), 0.05)
    effect[3] = -harm
    full = np.where(np.arange(T) % 2 == 0, 1.0, -1.0) * np.linspace(0.5, 1.0, T)
    return (masks @ effect + full - effect.sum(0) + rng.normal(0, 0.02, (len(masks), T))).astype(np.float32)


@pytest.fixture(scope="module")
def tie_estimates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tie")
    rng = np.random.default_rng(11)
    out = {}
    for name, harm in (("tie", 0.1), ("null", 0.0)):  # "null": no class has any effect beyond the common +0.05
        masks = rng.random((M, P)) < 0.5
        store = synthetic_store(tmp / f"{name}.h5", _far_from_zero_margins(masks, rng, harm), masks)
        compute_influence(store, tmp / f"{name}-influence.h5", device="cpu")
        out[name] = tmp / f"{name}-influence.h5"
    return out


def test_a_flagged_class_with_no_predicted_accuracy_change_but_a_clear_margin_gain_is_removed(
        tie_estimates: dict[str, Path]) -> None:
    rec = recommend_removal(tie_estimates["tie"], fdr=0.05)
    assert rec.harmful == 1 and rec.removal_evidence[0].name == "c3" and rec.removal_evidence[0].significant
    assert rec.chosen.k == 1 and rec.chosen.removed == ("c3",)
    assert rec.chosen.predicted_accuracy_change == 0.0  # no target crosses 0 ...
    assert rec.chosen.margin_change_low > 0.05 and rec.chosen.predicted_margin_change == pytest.approx(0.1, abs=0.02)
    before = max((c for c in rec.candidates if c.evidence), key=lambda c: (c.predicted_accuracy, -c.k))
    assert before.k == 0  # ... so the rule before the tie rule kept the full source
    assert rec.reason.startswith("why k = 1: among removals of classes with evidence of harm at FDR 5% (k ≤ 1), "
                                 "k = 0, 1 are predicted to give the same validation accuracy (+0 of 20 targets")
    assert rec.message.startswith("remove 1 class (c3): predicted validation accuracy +0.000 (+0 of 20 targets)")
    out = CliRunner().invoke(cli, ["recommend", str(tie_estimates["tie"])])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:2] == [rec.message, rec.reason]


def test_a_store_where_nothing_has_evidence_removes_nothing(tie_estimates: dict[str, Path]) -> None:
    rec = recommend_removal(tie_estimates["null"], fdr=0.05)
    assert rec.harmful == 0 and not any(e.significant for e in rec.removal_evidence)
    assert rec.chosen.k == 0 and rec.message.startswith("remove nothing: no source class has evidence of harm")
    assert rec.reason.startswith("why nothing: only classes with evidence of harm")
    assert rec.trust is not None and rec.trust.statement == ("how far to trust it: nothing is removed, so there is "
                                                             "no predicted gain to trust")
    assert rec.trust.command is None and rec.trust.confirm == ""


# --- how far to trust the prediction ---------------------------------------------------------------------------
def test_trust_states_the_stores_facts_and_the_exact_command(tie_estimates: dict[str, Path]) -> None:
    infl = tie_estimates["tie"]
    rec = recommend_removal(infl, fdr=0.05)
    est = load_estimate(infl)
    with RunStore(est.store_path) as run:
        kept = np.asarray(run.masks[()], bool)[np.sort(est.fit_rows)].sum(1)  # classes each fitted model kept
    trust = rec.trust
    assert trust.models == len(est.fit_rows) and trust.classes == P and trust.removed == 1
    assert (trust.kept_min, trust.kept_max) == (int(kept.min()), int(kept.max()))
    assert trust.kept_mean == pytest.approx(kept.mean())
    assert trust.reach == pytest.approx(1 / (P - kept.mean())) and trust.regime == "near"
    assert trust.beyond == P - 1 - kept.max()
    assert trust.flipped == 0 and trust.validation_targets == len(rec.validation_columns)
    statement = trust.statement
    more = "" if P - 1 - kept.max() <= 0 else f", {P - 1 - kept.max()} more than any model kept"
    assert statement.startswith(f"how far to trust it: the {len(est.fit_rows)} models behind it each kept {kept.min()}–{kept.max()} "
                                f"of {P} classes (mean {kept.mean():.1f}), so both the full source ({P}) and the "
                                f"source without 1 class ({P - 1}{more}) are extrapolations of the linear model")
    assert f"removing 1 goes {100 / (P - kept.mean()):.0f}% of the way from the full source to the mean subset (near)" \
        in statement
    assert (f"the predicted accuracy change is +0 of 20 validation targets; read the mean-margin change, "
            f"{rec.chosen.predicted_margin_change:+.3f} [{rec.chosen.margin_change_low:+.3f}, "
            f"{rec.chosen.margin_change_high:+.3f}], which uses all of them; ") in statement
    assert statement.endswith(DOCUMENTED_STUDIES["near"]) and DOCUMENTED_STUDIES["near"].startswith(
        "documented studies, not this store (docs/signal.md;")
    assert trust.command == (f"dmtoolkit counterfactual RECIPE.yaml --influence {est.path} --order bottom --k 0,1 "
                             "--repeats 10 -o counterfactual-k1.h5")
    assert "its --order bottom removes the same 1" in trust.command_note and "'synthetic'" in trust.command_note
    assert trust.confirm == f"confirm by retraining before acting: {trust.command} ({trust.command_note})"
    lines = CliRunner().invoke(cli, ["recommend", str(infl)]).output.splitlines()
    after = 1 + len(rec.explanation)  # the message, why (and what the gate kept out), then how far to trust it
    assert lines[after:after + 2] == [statement, trust.confirm]
    data = json.loads(CliRunner().invoke(cli, ["recommend", str(infl), "--json"]).output)
    assert data["trust"]["statement"] == statement and data["trust"]["regime"] == "near"
    assert data["reason"] == rec.reason


def test_trust_of_a_far_removal_and_without_the_store(tie_estimates: dict[str, Path]) -> None:
    est = load_estimate(tie_estimates["tie"])
    far = RemovalCandidate(3, ("c3", "c1", "c0"), 0.1, 0.05, 0.15, 0.95, 0.05, evidence=True)
    kept = np.array([3, 4, 5, 4])  # mean 4 of 8: removing 3 goes 3/4 of the way to the mean subset
    trust = prediction_trust(est, far, 20, kept, "synthetic", True)
    assert trust.regime == "far" and trust.reach == pytest.approx(0.75) and trust.beyond == 0
    assert "removing 3 goes 75% of the way from the full source to the mean subset (far)" in trust.statement
    assert trust.statement.endswith(DOCUMENTED_STUDIES["far"]) and "+1 of 20" in trust.statement
    bottom = [est.unit_names[j] for j in removal_ranking(est.matrix, np.arange(T))[:3]]
    assert bottom[0] == "c3" and set(bottom) != {"c3", "c1", "c0"}  # the command's order runs over all targets ...
    assert f"removes the 3 most negative over all targets ({', '.join(bottom)}), not exactly the 3 chosen" in \
        trust.command_note  # ... and the note says so when it differs from the chosen set
    blind = prediction_trust(est, far, 20, None, None, False)
    assert blind.regime == "unknown" and blind.command is None and blind.studies == ""
    assert "the run store is not at hand, so how far this lies from the subsets the models were trained on is " \
           "unknown" in blind.statement
    assert blind.confirm.startswith("confirm by retraining: the run store behind")


def test_the_reports_removal_card_says_near_or_far_and_the_command(tie_estimates: dict[str, Path]) -> None:
    """Not retrained yet: the removal card's caveat says how near the prediction is to the store's subsets and
    gives the exact counterfactual command; the full statement sits under the estimate's removal candidates."""
    from dmtoolkit.report.summary import removal_answer

    rec = recommend_removal(tie_estimates["tie"])
    answer = removal_answer(rec, [], "tie-influence.h5", lambda text: 1)
    assert answer.tone == "good" and answer.verdict.startswith("Remove 1 class (c3)")
    trust = rec.trust
    assert trust.brief == (f"near: removing 1 of {P} classes goes {100 * trust.reach:.0f}% of the way from the full "
                           f"source to the {trust.kept_min}–{trust.kept_max}-class subsets of the {trust.models} models")
    assert answer.caveats == (f"Not retrained; the prediction is {trust.brief} (how far to trust it: under Removal "
                              f"candidates below). Verify with `{trust.command}`.",)
