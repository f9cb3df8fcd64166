"""Evidence and resumption of the gradient estimator: the standard error across networks (against NumPy, and
calibrated by simulation), leakage and mislabels flagging from it, and the per-network saver (an interrupted
run continues to the same result; a changed rerun is refused)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dmtoolkit.analyze.evidence import network_calibration
from dmtoolkit.analyze.leakage import detect_leakage
from dmtoolkit.analyze.mislabels import detect_mislabels
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.ensemble import (
    PLAN_KEY,
    Moments,
    NetworkSaver,
    across_networks,
    partial_folder,
    reduction_bytes,
    simulate_network_scores,
)
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.fit import fit_store
from dmtoolkit.estimate.gradient import GradientEstimator, fit_gradient, gradient_memory_bytes
from dmtoolkit.estimate.label_check import read_label_check, reference_patterns
from dmtoolkit.estimate.source_task import read_source_task
from dmtoolkit.resources import ResourceError
from dmtoolkit.stats.pvalues import bh_adjusted, one_sided_pvalues, simes

from .synthetic import trained_example_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained example store without the models' source margins (as from a trainer that records none, or
    before they were recorded), so a gradient estimate's label check comes from its own networks."""
    path = trained_example_store(tmp_path_factory.mktemp("evidence") / "runs.h5")
    with h5py.File(path, "r+") as f:
        del f["source_margins"], f["source_test_margins"]
    return path


# --- the arithmetic -------------------------------------------------------------------------------------------
def test_mean_and_stderr_across_networks_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(3.0, 2.0, (5, 7, 4)) * rng.uniform(0.1, 10, (1, 7, 1))
    result = across_networks(iter(scores))
    np.testing.assert_allclose(result.mean, scores.mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.stderr, scores.std(0, ddof=1) / np.sqrt(5), rtol=1e-10)
    assert result.dof == 4 and result.networks == 5
    one = across_networks([scores[0]])
    assert one.stderr is None and one.dof is None
    np.testing.assert_array_equal(one.mean, scores[0])
    moments = Moments((2,))
    moments.add(np.array([1e8 + 1, 1.0]))
    moments.add(np.array([1e8 + 3, 1.0]))
    np.testing.assert_allclose(moments.stderr(), [1.0, 0.0])  # no cancellation at a large mean


def test_the_reduction_reads_blocks_of_columns_and_matches_the_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 1, (3, 50, 37)).astype(np.float32)
    saver = NetworkSaver(tmp_path / "p", {PLAN_KEY: [[0, 1], [2, 3], [4, 5]]})
    assert saver.start() == {}
    for n in range(3):
        saver.save(n, scores[n], {"n": n})
    mean, stderr = saver.reduce(3, (50, 37), budget=8 * 50 * 5)  # 5 columns per block: 8 blocks
    np.testing.assert_allclose(mean, scores.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(stderr, scores.astype(np.float64).std(0, ddof=1) / np.sqrt(3), rtol=1e-5)
    whole_mean, whole_stderr = saver.reduce(3, (50, 37))
    np.testing.assert_array_equal(mean, whole_mean)
    np.testing.assert_array_equal(stderr, whole_stderr)
    assert NetworkSaver(tmp_path / "p", {PLAN_KEY: [[0, 1], [2, 3], [4, 5]]}).start() == {n: {"n": n} for n in range(3)}
    saver.require_disk(2, (50, 37), free=2 * 4 * 50 * 37)
    with pytest.raises(ResourceError, match=r"the scores of 3 networks \(50 × 37 each\) need about .* of disk, more "
                                            r"than the .* free; free some space or fit fewer targets"):
        saver.require_disk(3, (50, 37), free=2 * 4 * 50 * 37)


def test_memory_does_not_grow_with_networks_and_counts_the_reduction() -> None:
    P, T = 50_000, 10_000
    one_network = 4 * P * T
    reduction = reduction_bytes(P, T)
    assert 2 * one_network <= reduction <= 2 * one_network + 64 * 2**20 * 60 // 8  # outputs + one block
    assert gradient_memory_bytes(512, 40_020, P, T) >= 3 * one_network  # float64 scores + the float32 copy


# --- calibration by simulation --------------------------------------------------------------------------------
@pytest.mark.parametrize("networks", [2, 4, 16])
def test_intervals_cover_and_flags_keep_the_false_discovery_rate(networks: int) -> None:
    result = network_calibration(networks, replications=60, level=0.95, fdr=0.05)
    assert 0.935 <= result.coverage <= 0.965, result
    if networks >= 4:  # (two networks flag almost nothing: a t with 1 dof has no power)
        assert result.false_discovery_rate <= 0.06 and result.power > 0.5 and result.mean_flags > 50, result


def test_normal_intervals_from_few_networks_would_undercover() -> None:
    """The t law matters: with 3 networks normal quantiles cover far less than 95% (the check is not vacuous)."""
    from scipy import stats

    hits = []
    for r in range(40):
        truth, scores = simulate_network_scores(r, networks=3)
        result = across_networks(scores)
        hits.append(np.mean(np.abs(result.mean - truth) <= stats.norm.ppf(0.975) * result.stderr))
    assert np.mean(hits) < 0.9


def test_heavy_tailed_network_noise_stays_close_to_nominal() -> None:
    result = network_calibration(8, replications=40, tails=5.0)
    assert 0.93 <= result.coverage <= 0.97 and result.false_discovery_rate <= 0.07, result


# --- end to end: the file, leakage and mislabels ----------------------------------------------------------------
def _saved(folder: Path, network: int, name: str) -> np.ndarray:
    with h5py.File(folder / f"network-{network:04d}.h5", "r") as f:
        return f[f"extra/{name}"][()]


def test_the_estimate_carries_the_standard_error_of_its_saved_networks(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.h5"
    model = GradientEstimator(store, models=3, proj_dim=32, lam=0.1, partial=partial_folder(out))
    fit_store(store, out, model, test_fraction=0.3, seed=0)  # fit_store keeps the folder (fit_gradient removes it)
    folder = partial_folder(out)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["proj_dim"] == 32 and meta["target columns"] == "0:16" and len(meta["networks (store row, seed)"]) == 3
    per_network = []
    for n in range(3):
        with h5py.File(folder / f"network-{n:04d}.h5", "r") as f:
            per_network.append(f["scores"][()].astype(np.float64))
    per_network = np.array(per_network)
    assert per_network.shape[2] == 17  # the 16 targets, then the source-task column
    # saved without q; the estimate weights the networks' mean by their mean q (TRAK's Q), its error likewise
    mean_q = np.mean([_saved(folder, n, "loss_weight") for n in range(3)], axis=0).astype(np.float64)
    assert mean_q.shape == (per_network.shape[1],) and ((mean_q > 0) & (mean_q < 1)).all()
    per_network = per_network * mean_q[None, :, None]
    per_network, per_network_task = per_network[:, :, :16], per_network[:, :, 16]
    est = load_estimate(out)
    np.testing.assert_allclose(est.matrix, per_network.mean(0), rtol=1e-5, atol=1e-7 * np.abs(per_network).max())
    np.testing.assert_allclose(est.stderr, per_network.std(0, ddof=1) / np.sqrt(3), rtol=1e-4,
                               atol=1e-7 * np.abs(per_network).max())
    task = read_source_task(out)
    np.testing.assert_allclose(task.coef, per_network_task.mean(0), rtol=1e-5, atol=1e-7 * np.abs(per_network_task).max())
    np.testing.assert_allclose(task.stderr, per_network_task.std(0, ddof=1) / np.sqrt(3), rtol=1e-4,
                               atol=1e-7 * np.abs(per_network_task).max())
    assert est.stderr_dof == 2 and "spread across 3 independently trained networks" in est.attrs["stderr_method"]
    # leakage: p-values from that standard error, Student t with 2 dof, BH over every pair
    report = detect_leakage(out, features=False, fdr=0.5)
    assert report.thresholded and "Student t, 2 dof" in report.evidence
    assert "only 3 networks, so every p-value rests on the same few networks" in report.evidence
    p = one_sided_pvalues(est.matrix, est.stderr, 2, "greater")
    q = bh_adjusted(p)
    for pair in report.pairs:
        c = int(np.searchsorted(est.target_index, pair.target))
        assert pair.p_value == pytest.approx(p[pair.source, c]) and pair.q_value == pytest.approx(q[pair.source, c])
        assert (pair.category in ("likely copy", "influence only")) == (q[pair.source, c] <= 0.5)
    # mislabels, first from the out-of-sample label check the networks saved: each pool example's stated-label
    # margin averaged over the networks not trained on it, against the same for the source test examples
    trained = np.array([_saved(folder, n, "trained") for n in range(3)])
    pool_margin = np.array([_saved(folder, n, "pool_margin") for n in range(3)], np.float64)
    test_margin = np.array([_saved(folder, n, "test_margin") for n in range(3)], np.float64)
    rows = json.loads(h5py.File(out, "r").attrs["gradient_rows"])
    with h5py.File(store, "r") as f:
        for n, row in enumerate(rows):  # trained on exactly the pool examples its store row kept
            np.testing.assert_array_equal(trained[n], f["masks"][row].astype(bool))
    check = read_label_check(out)
    held = ~trained
    np.testing.assert_allclose(check.heldout_margin, (held * pool_margin).sum(0) / held.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(check.heldout_networks, held.sum(0))
    patterns = reference_patterns(trained, test_margin.shape[1])
    assert held[:, patterns].any(0).all()  # each reference example averages over a held-out pattern of the pool's
    np.testing.assert_allclose(check.reference, (held[:, patterns] * test_margin).sum(0) / held[:, patterns].sum(0),
                               rtol=1e-5)
    label_p = np.array([(1 + np.sum(check.reference <= m)) / (1 + len(check.reference)) for m in check.heldout_margin])
    report = detect_mislabels(out, fdr=0.5)
    tested = np.isfinite(check.heldout_margin)
    assert "p = max(" not in report.evidence  # the harm shown beside the label check is not combined
    assert report.evidence.startswith("label checked out of sample") and "the p-values of harm to the source task and to a target are shown beside it" in report.evidence
    q = np.ones(len(label_p))
    q[tested] = bh_adjusted(label_p[tested])
    assert np.all(label_p[~tested] == 1)
    for candidate in report.candidates:
        assert candidate.p_value == pytest.approx(label_p[candidate.source])
        assert candidate.heldout_margin == pytest.approx(check.heldout_margin[candidate.source], rel=1e-6)
        assert candidate.flagged == (q[candidate.source] <= 0.5)
    assert [c.heldout_margin for c in report.candidates] == sorted(c.heldout_margin for c in report.candidates)
    assert {c.source for c in report.flagged} == set(np.flatnonzero(q <= 0.5).tolist())
    # pool examples every network trained on cannot be tested: p = 1, outside Benjamini–Hochberg's count
    untested = tmp_path / "untested.h5"
    shutil.copyfile(out, untested)
    with h5py.File(untested, "a") as f:
        margins = f["label_check/heldout_margin"][()]
        margins[:3] = np.nan
        f["label_check/heldout_margin"][...] = margins
    some = detect_mislabels(untested, store=store, fdr=0.5, top=100)
    p_some = np.r_[np.ones(3), label_p[3:]]
    q_some = np.r_[np.ones(3), bh_adjusted(label_p[3:])]
    for candidate in some.candidates:
        assert candidate.p_value == pytest.approx(p_some[candidate.source])
        assert candidate.q_value == pytest.approx(q_some[candidate.source])
    assert len(some.candidates) == 15 and not {0, 1, 2} & {c.source for c in some.candidates}  # not listed
    assert "3 images that every model trained on are untested (not listed)" in some.evidence
    # the reference's size bounds the test: the message says how, when it is what stops every flag
    n, tested = len(check.reference), int(np.isfinite(check.heldout_margin).sum())
    fewest = int(np.ceil(tested / (n + 1) / 0.5))
    assert f"with {n:,} reference images no p-value is below 1/{n + 1:,}" in report.evidence
    assert f"over {tested:,} images it can flag only when at least {fewest:,}" in report.evidence
    strict = detect_mislabels(out, fdr=0.01)
    beyond = int((check.heldout_margin < check.reference.min()).sum())
    assert not strict.flagged and beyond < int(np.ceil(tested / (n + 1) / 0.01))
    assert strict.message.startswith(f"no evidence of mislabelled source examples at FDR 1%: {beyond} image")
    assert f"the test needs {int(np.ceil(tested / (n + 1) / 0.01)):,} such images before it can flag" in strict.message
    # when no image disagrees more than every reference image, the reference's size is not the reason: plain words
    agreeing = tmp_path / "agreeing.h5"
    shutil.copyfile(out, agreeing)
    with h5py.File(agreeing, "a") as f:
        f["label_check/heldout_margin"][...] = np.maximum(f["label_check/heldout_margin"][()],
                                                          f["label_check/reference"][()].min() + 1e-3)
    assert detect_mislabels(agreeing, store=store, fdr=0.01).message == (
        "no evidence of mislabelled source examples at FDR 1%")
    # ... then, without it (an estimate from an earlier version), from harm: the networks' own source-task scores
    # (harm to the source task) and Simes over targets (harm to a target), the larger p-value, Benjamini–Hochberg
    unchecked = tmp_path / "unchecked.h5"
    shutil.copyfile(out, unchecked)
    with h5py.File(unchecked, "a") as f:
        del f["label_check"]
    out = unchecked
    report = detect_mislabels(out, store=store, fdr=0.5)
    assert "the source task scored by the same networks" in report.evidence and "Student t, 2 dof" in report.evidence
    assert "; p = max(source, Simes over targets)" in report.evidence
    target_p = simes(one_sided_pvalues(est.matrix, est.stderr, 2, "less"), axis=1)
    source_p = one_sided_pvalues(task.coef, task.stderr, 2, "less")
    q = bh_adjusted(np.maximum(source_p, target_p))
    for candidate in report.candidates:
        assert candidate.source_p == pytest.approx(source_p[candidate.source], rel=1e-5)
        assert candidate.p_value == pytest.approx(max(source_p[candidate.source], target_p[candidate.source]), rel=1e-5)
        assert candidate.flagged == (q[candidate.source] <= 0.5)
    assert {c.source for c in report.flagged} == set(np.flatnonzero(q <= 0.5).tolist())
    n = int((q <= 0.5).sum())
    assert report.message == (f"{n} source example{'s' if n != 1 else ''} likely mislabelled at FDR 50% (they hurt "
                              "the source task and the target)" if n else
                              "no evidence of mislabelled source examples at FDR 50%")
    assert [c.score for c in report.candidates] == sorted(c.score for c in report.candidates)  # few networks: by score
    # an estimate without source-task scores (written before they were computed): harm to the targets alone
    older = tmp_path / "older.h5"
    shutil.copyfile(out, older)
    with h5py.File(older, "a") as f:
        del f["source_task"]
    report = detect_mislabels(older, store=store, fdr=0.5)
    assert "has no source-task scores" in report.evidence and "Student t, 2 dof" in report.evidence
    q = bh_adjusted(target_p)
    for candidate in report.candidates:
        assert candidate.source_p is None and candidate.p_value == pytest.approx(target_p[candidate.source])
        assert candidate.flagged == (q[candidate.source] <= 0.5)
    assert {c.source for c in report.flagged} == set(np.flatnonzero(q <= 0.5).tolist())
    assert report.flagged and report.message.startswith(f"{len(report.flagged)} source example")
    share = 100 * len(report.flagged) / est.matrix.shape[0]
    assert f"({share:.2g}% of the pool) hurt a target at FDR 50%: mislabel candidates, not confirmed" in report.message
    assert "with many networks ordinary images pass this too: read the list by score" in report.message
    # listed by worst influence, flags marked (target p alone, and flags-first, rank flips worse)
    assert [c.score for c in report.candidates] == sorted(c.score for c in report.candidates)
    assert "listed by worst score, flags marked" in report.evidence
    # ranked by influence from a mean-q estimate (the default): the output says what ranks flips better
    assert "--q mean" in report.evidence and "refit with those to hunt flips" in report.evidence


def test_one_network_says_why_nothing_is_flagged(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.h5"
    fit_gradient(store, out, models=1, proj_dim=16, holdout_frac=0.3)
    assert load_estimate(out).stderr is None and not partial_folder(out).exists()
    for command in (["leakage", str(out), "--json", "--no-features"], ["mislabels", str(out), "--json"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        if command[0] == "mislabels":  # the label check needs no standard error; harm, shown beside it, has none
            assert data["evidence"].startswith("label checked out of sample")
            assert "(the gradient estimate is from 1 network, so its standard error" in data["evidence"]
            assert all(c["source_p"] is None and c["target_p"] is None for c in data["candidates"])
        else:
            assert data["evidence"].startswith("the gradient estimate is from 1 network, so its standard error")
        assert data["flagged"] == [] and len(data.get("pairs", data.get("candidates"))) > 0  # ranked for browsing


# --- resuming ---------------------------------------------------------------------------------------------------
class _Stop:
    """A progress callback that interrupts the run (as Ctrl-C would) after `after` finished networks."""

    def __init__(self, after: int | None = None) -> None:
        self.after, self.messages = after, []

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if self.after is not None and sum("networks (" in m for m in self.messages) >= self.after:
            raise KeyboardInterrupt


def test_an_interrupted_run_continues_from_its_saved_networks(store: Path, tmp_path: Path) -> None:
    settings = {"models": 2, "full_models": 1, "proj_dim": 32, "lam": 0.1, "holdout_frac": 0.3}
    whole = _Stop()
    reference = fit_gradient(store, tmp_path / "whole.h5", progress=whole, **settings)
    assert sum("networks (" in m for m in whole.messages) == 3
    out = tmp_path / "resumed.h5"
    stop = _Stop(after=1)
    with pytest.raises(KeyboardInterrupt):
        fit_gradient(store, out, progress=stop, **settings)
    folder = partial_folder(out)
    assert stop.messages[-1] == (f"gradient: interrupted; 1 of 3 networks are saved in {folder}: rerun the same "
                                 "command to continue from them")
    assert not out.exists() and sorted(p.name for p in folder.iterdir()) == ["meta.json", "network-0000.h5"]
    again = _Stop()
    resumed = fit_gradient(store, out, progress=again, **settings)
    assert again.messages[0] == f"gradient: continuing from {folder}: 1 of 3 networks were saved there"
    assert [m.split(" ")[1] for m in again.messages[1:]] == ["2/3", "3/3"]  # only the missing networks trained
    np.testing.assert_array_equal(resumed.coef_, reference.coef_)
    np.testing.assert_array_equal(resumed.stderr_, reference.stderr_)
    np.testing.assert_array_equal(load_estimate(out).matrix, load_estimate(tmp_path / "whole.h5").matrix)
    assert resumed.records_[0].row == reference.records_[0].row and resumed.records_[0].seconds > 0
    assert not folder.exists()  # removed once the estimate is written


def test_a_rerun_with_other_settings_is_refused_naming_what_differs(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.h5"
    with pytest.raises(KeyboardInterrupt):
        fit_gradient(store, out, models=2, proj_dim=32, holdout_frac=0.3, progress=_Stop(after=1))
    folder = partial_folder(out)
    saved = sorted(p.read_bytes() for p in folder.iterdir())
    with pytest.raises(UserError, match=r"the networks saved there were computed with proj_dim = 32, this run has "
                                        r"16; rerun with the same settings to continue, or remove .* to start over$"):
        fit_gradient(store, out, models=2, proj_dim=16, holdout_frac=0.3)
    result = CliRunner().invoke(cli, ["gradient", str(store), "-o", str(out), "--models", "2", "--proj-dim", "32",
                                      "--holdout-frac", "0.3", "--targets", "0:8", "--device", "cpu"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {folder}: the networks saved there were "
                                                              "computed with target columns = \"0:16\", this run has "
                                                              "\"0:8\"")
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.read_bytes() for p in folder.iterdir()) == saved and not out.exists()  # nothing lost


def test_many_influence_only_flags_are_called_an_effect_not_copies() -> None:
    """At a large pool with many networks most images have a reliably non-zero influence somewhere; the line
    must not present thousands of such flags as look-alikes or altered copies."""
    from dmtoolkit.analyze.leakage import _models_add

    few = _models_add((), 3, 0.05, True, 100, 100, pool=1000)
    small_pool = _models_add((), 2, 0.05, True, 100, 100, pool=12)  # a large share of a tiny pool is not "many"
    many = _models_add((), 650, 0.05, True, 100, 100, pool=1000)
    assert "flags 3 more source examples" in few and "of the pool" not in few and "of the pool" not in small_pool
    assert "flags 650 more source examples" in many
    assert "they are 65% of the pool, more than leaks plausibly are" in many and "not that it is a copy" in many
    # and the one-line answer says the same, with and without pixel copies
    from dmtoolkit.analyze.leakage import _leak_message

    alone = _leak_message((), 650, 0.05, True, 1000, 100)
    assert "650 source examples with significant influence" in alone and "look-alikes" not in alone
    assert alone.endswith("(65% of the pool, too many to be copies: a real but ordinary effect)")
    assert _leak_message((), 3, 0.05, True, 1000, 100).endswith("(look-alikes or altered copies: check them by eye)")


def test_the_spread_checks_of_real_networks_read_nominal_on_exchangeable_ones(capsys: pytest.CaptureFixture) -> None:
    """benchmarks/gradient_evidence.py `spread_checks` (what `saved` and `networks` print for real networks):
    on exchangeable normal networks, a held-out network falls inside the others' 95% prediction interval and
    two disjoint sets agree within their Welch interval at the nominal rates; with one network shifted, not."""
    from .benchmark_scripts import load_benchmark

    spread_checks = load_benchmark("gradient_evidence").spread_checks
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 2, (1, 400, 30))
    spread_checks(truth + rng.normal(0, 1, (8, 400, 30)))
    out = capsys.readouterr().out
    inside = float(re.search(r"prediction interval of the others: ([0-9.]+)", out).group(1))
    beyond = re.findall(r"standard errors for ([0-9.]+) of the entries \(([0-9.]+) for exchangeable normal", out)
    assert 0.93 <= inside <= 0.97 and len(beyond) == 2, out
    for seen, calibrated in beyond:  # Welch's interval is conservative with 2 networks a set: the reference says so
        assert abs(float(seen) - float(calibrated)) < 0.01 and float(calibrated) < 0.05, out
    shifted = truth + rng.normal(0, 1, (8, 400, 30))
    shifted[0] += 3.0  # one network that is not a draw like the others
    spread_checks(shifted)
    worst = float(re.search(r"\(per network ([0-9.]+)-", capsys.readouterr().out).group(1))
    assert worst < 0.5  # the shifted network is outside the others' interval for most entries


def test_the_report_shows_the_label_check(store: Path, tmp_path: Path) -> None:
    """A report over a gradient estimate lists mislabel candidates by held-out margin, in that column, with the
    label check's p-values; report.json carries the margins."""
    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copyfile(store, folder / "runs.h5")
    fit_gradient(folder / "runs.h5", folder / "g3.h5", models=3, proj_dim=16, holdout_frac=0.3)
    result = CliRunner().invoke(cli, ["report", str(folder), "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert '<th class="n">held-out margin</th>' in page and "Candidates by held-out margin" in page
    # the answer card on the first screen shows the margin too, and says the LDS verdict is not about this list
    card = page[page.index("Which source images look mislabelled?"):]
    card = card[:card.index("How far can you trust this?")]
    assert "held-out margin" in card and "the estimate&#39;s LDS verdict does not apply to this list" in card
    check = read_label_check(folder / "g3.h5")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    found = json.dumps(data)
    candidates = [c for c in _walk(data) if isinstance(c, dict) and "heldout_margin" in c]
    assert candidates and '"p_value"' in found
    label_p = check.pvalues()
    for c in candidates:
        assert c["heldout_margin"] == pytest.approx(float(check.heldout_margin[c["source"]]), rel=1e-6)
        assert c["p_value"] == pytest.approx(float(label_p[c["source"]]))  # the label check's, not harm's
    margins = [c["heldout_margin"] for c in candidates]
    assert margins == sorted(margins)


def _walk(value):
    """Every value nested in JSON data."""
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from _walk(child)


def test_without_a_partial_folder_the_label_check_is_read_before_the_temporary_folder_goes(store: Path,
                                                                                         tmp_path: Path) -> None:
    """A `GradientEstimator` given no folder keeps its per-network files in a temporary one; the label check is
    reduced from them before that folder is removed (it used to be read after, and the fit died on a missing
    file), and it equals the one a fit with a kept folder computes from the same networks."""
    kept, temporary = tmp_path / "kept.h5", tmp_path / "temporary.h5"
    fit_store(store, kept, GradientEstimator(store, models=2, proj_dim=16, lam=0.1, partial=partial_folder(kept)),
              test_fraction=0.3, seed=0)
    fit_store(store, temporary, GradientEstimator(store, models=2, proj_dim=16, lam=0.1), test_fraction=0.3, seed=0)
    expected, got = read_label_check(kept), read_label_check(temporary)
    assert got is not None
    np.testing.assert_allclose(got.heldout_margin, expected.heldout_margin, rtol=1e-6)
    np.testing.assert_allclose(got.reference, expected.reference, rtol=1e-6)
