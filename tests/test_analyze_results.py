"""The analyses' typed results: their JSON keeps its keys, text renders them, and the layers point one way."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmtoolkit import analyze
from dmtoolkit.analyze import results
from dmtoolkit.analyze.results import (
    ClassEffect,
    ClassEvidence,
    ClassRanking,
    CounterfactualResult,
    Explanation,
    LeakageReport,
    LeakageScore,
    LeakPair,
    MislabelCandidate,
    MislabelReport,
    MislabelScore,
    Subpopulation,
    TargetEffect,
    Verification,
)
from dmtoolkit.report import text
from tests.result_instances import plain_json

ROOT = Path(__file__).resolve().parent.parent
ANALYZE = ROOT / "dmtoolkit" / "analyze"

EFFECT = {"index", "name", "influence", "low", "high"}
EVIDENCE = EFFECT | {"p_value", "q_value", "significant"}
RANKING = {"file", "estimator", "target_class", "targets", "overall", "undefined", "top", "bottom", "bottom_all",
           "level", "interval_note"}
EXPLANATION = {"file", "target", "true_label", "predicted_label", "models", "fraction_correct", "most_negative",
               "most_positive", "level", "fdr", "interval_note"}
VERIFY = {"class", "repeats", "correct_removed", "correct_kept", "rate_removed", "rate_kept"}
PAIR = {"rank", "source", "source_id", "source_label", "target", "target_label", "influence", "ranking_score",
        "pixel_score", "feature_score", "p_value", "q_value", "category", "flagged"}
COPY = {"source", "source_id", "source_label", "target", "target_label", "kind", "exact", "pixel_score", "influence",
        "p_value", "q_value", "confirmed"}
LEAK_SCORE = {"k", "planted_leaks", "hits", "precision_at_k", "recall_at_k", "decoys_flagged"}
CANDIDATE = {"rank", "source", "source_id", "label", "score", "p_value", "q_value", "source_p", "target_p", "flagged"}
FLIP_SCORE = {"k", "flipped", "auc", "precision_at_k", "hits", "recall_at_k"}
COUNTERFACTUAL = {"file", "order", "repeats", "k", "accuracy_mean", "accuracy_std", "accuracy", "removed_first",
                  "removed_per_repeat", "removed"}




# JSON keys -------------------------------------------------------------------------------------------
def test_class_results_keep_their_json_keys(class_files: tuple[Path, Path]) -> None:
    _, infl = class_files
    ranking = analyze.rank_classes(infl, top=2).to_json()
    assert set(ranking) == RANKING and plain_json(ranking)
    assert all(set(e) == EFFECT for key in ("overall", "top", "bottom", "bottom_all") for e in ranking[key])
    sub = analyze.subpopulation(infl, "c1", n=3, with_images=True).to_json()
    assert set(sub) == {"file", "class", "targets", "level", "interval_note"} and plain_json(sub)
    assert all(set(t) == {"target", "name", "influence", "low", "high"} for t in sub["targets"])
    explanation = analyze.explain_target(infl, 5).to_json()
    assert set(explanation) == EXPLANATION and plain_json(explanation)
    assert all(set(e) == EVIDENCE for key in ("most_negative", "most_positive") for e in explanation[key])
    verified = Explanation(**{**analyze.explain_target(infl, 5).__dict__,
                              "verify": Verification("c4", 2, 1, 2, 0.5, 1.0)}).to_json()
    assert set(verified) == EXPLANATION | {"verify"} and set(verified["verify"]) == VERIFY


def test_example_results_keep_their_json_keys(example_files: dict) -> None:
    leak = analyze.detect_leakage(example_files["influence"], top=3).to_json()
    assert set(leak) == {"file", "estimator", "ranking", "one_per_source", "pairs", "planted", "fdr", "near_duplicate",
                         "evidence", "message", "remove", "flagged", "influence_only", "near_duplicate_only",
                         "planted_influence_only", "planted_pixel_only", "planted_top", "planted_feature_top",
                         "features", "verdict", "copies", "pixel_evidence", "models_add", "scanned"} and plain_json(leak)
    assert all(set(p) == PAIR for p in leak["pairs"] + leak["flagged"]) and set(leak["planted"]) == LEAK_SCORE
    assert leak["verdict"] == "contamination" and leak["scanned"] == {"source_examples": 12, "target_test_images": 10}
    assert [(c["source_id"], c["target"], c["kind"]) for c in leak["copies"]] == [("ex2", 4, "exact copy"),
                                                                                   ("ex7", 1, "exact copy")]
    assert all(set(c) == COPY for c in leak["copies"])
    mis = analyze.detect_mislabels(example_files["influence"], top=3).to_json()
    assert set(mis) == {"file", "estimator", "by", "candidates", "planted", "planted_top", "fdr", "evidence",
                        "message", "flagged"} and plain_json(mis)
    assert all(set(c) == CANDIDATE | {"planted_flip", "original_label"} for c in mis["candidates"])
    assert set(mis["planted"]) == FLIP_SCORE


def test_planted_keys_are_absent_without_planted_truth() -> None:
    leak = LeakageReport("f.h5", "influence", "two-way-z", True, (LeakPair(1, 0, "ex0", "a", 3, "b", 0.5, 2.0, 0.1),))
    assert "planted" not in leak.to_json() and json.dumps(leak.to_json())
    mis = MislabelReport("f.h5", "influence", "worst", (MislabelCandidate(1, 0, "ex0", "a", -0.5),))
    assert "planted" not in mis.to_json() and set(mis.to_json()["candidates"][0]) == CANDIDATE


def test_counterfactual_result_json_and_curve() -> None:
    result = CounterfactualResult("cf.h5", "bottom", 2, (0, 5), (0.8, 0.85), (0.01, 0.02), ((0.79, 0.84), (0.81, 0.86)),
                                  ("c4", "c0"))
    data = result.to_json()
    assert set(data) == COUNTERFACTUAL and plain_json(data)
    assert data["accuracy"] == [[0.79, 0.84], [0.81, 0.86]] and data["k"] == [0, 5]
    assert result.curve.rows() == [{"k": 0, "mean": 0.8, "std": 0.01}, {"k": 5, "mean": 0.85, "std": 0.02}]


def test_results_are_frozen_and_images_stay_out_of_equality() -> None:
    import numpy as np

    effect = ClassEffect(0, "a", 0.5)
    with pytest.raises(AttributeError):
        effect.influence = 1.0  # type: ignore[misc]
    a = Subpopulation("f", "a", (TargetEffect(0, "0:x", 1.0),), images=np.zeros((1, 2, 2, 1)))
    b = Subpopulation("f", "a", (TargetEffect(0, "0:x", 1.0),), images=np.ones((1, 2, 2, 1)))
    assert a == b and "images" not in a.to_json()


def test_every_result_type_documents_its_fields() -> None:
    types = [obj for _, obj in inspect.getmembers(results, inspect.isclass) if obj.__module__ == results.__name__]
    assert len(types) >= 12
    for cls in types:
        assert cls.__doc__ and len(cls.__doc__) > 20, cls


# text -------------------------------------------------------------------------------------------------
def test_text_formats_are_the_cli_lines() -> None:
    top = (ClassEffect(1, "c1", 0.5), ClassEffect(3, "c3", 0.25))
    bottom = (ClassEffect(4, "c4", -1.0),)
    ranking = ClassRanking("f.h5", "influence", None, 12, top + bottom, (), top, bottom, bottom)
    assert text.format_ranking(ranking) == (
        "mean influence over 12 target examples (all targets)\nno interval (estimate has no standard errors)\n"
        "most positive:\n"
        "    1. c1                   +0.5000\n    2. c3                   +0.2500\n"
        "most negative:\n    1. c4                   -1.0000")
    with_bounds = (ClassEffect(1, "c1", 0.5, 0.25, 0.75),)
    bounded = ClassRanking("f.h5", "influence", "3", 4, with_bounds, (), with_bounds, with_bounds, with_bounds,
                           level=0.9, interval_note="90% intervals; ...")
    assert text.format_ranking(bounded).splitlines() == [
        "mean influence over 4 target examples (target class 3)", "90% intervals; ...",
        "       class                   mean  90% interval", "most positive:",
        "    1. c1                   +0.5000  [+0.2500, +0.7500]", "least positive (none negative):",
        "    1. c1                   +0.5000  [+0.2500, +0.7500]"]
    explanation = Explanation("f.h5", 5, "t0", None, 60, None, bottom, top, Verification("c4", 3, 2, 1, 2 / 3, 1 / 3))
    assert text.format_explanation(explanation, top=1).splitlines() == [
        "target 5: true t0, predicted unknown (majority of 60 models; correct in -)",
        "most negative class c4: -1.000: no interval (estimate has no standard errors)",
        "most positive class c1: +0.500: no interval (estimate has no standard errors)",
        "most negative classes: c4 (-1.000)", "most positive classes: c1 (+0.500)",
        "verify: without c4 correct 2/3, with it 1/3"]
    negative = (ClassEvidence(4, "c4", -1.0, -1.3, -0.7, 0.001, 0.01, True),)
    positive = (ClassEvidence(1, "c1", 0.5, -0.1, 1.1, 0.08, 0.3, False),)
    tested = Explanation("f.h5", 5, "t0", "t1", 60, 0.25, negative, positive, level=0.9, fdr=0.05,
                         interval_note="90% intervals from ...")
    assert text.format_explanation(tested).splitlines() == [
        "target 5: true t0, predicted t1 (majority of 60 models; correct in 25%)",
        "most negative class c4: -1.000 [-1.300, -0.700], p=0.001 (q=0.01): negative at FDR 5%",
        "most positive class c1: +0.500 [-0.100, +1.100], p=0.08 (q=0.3): not distinguishable from 0 at FDR 5%",
        "most negative classes: c4 (-1.000 [-1.300, -0.700], q=0.01)",
        "most positive classes: c1 (+0.500 [-0.100, +1.100], q=0.3)",
        "90% intervals from ..."]
    sub = Subpopulation("f.h5", "c1", (TargetEffect(3, "3:t0", 2.0, 1.5, 2.5),), level=0.9, interval_note="90% ...")
    assert text.format_subpopulation(sub).splitlines() == [
        "target examples most helped by source class c1:", "90% ...", "  3:t0         +2.0000  [+1.5000, +2.5000]"]
    assert text.format_subpopulation(Subpopulation("f.h5", "c1", (TargetEffect(3, "3:t0", 2.0),))).splitlines() == [
        "target examples most helped by source class c1:", "no interval (estimate has no standard errors)",
        "  3:t0         +2.0000"]
    candidate = MislabelCandidate(1, 3, "ex3", "c3", -0.25, p_value=0.001, q_value=0.012, source_p=0.001,
                                  target_p=0.0004, flagged=True)
    scored = MislabelReport("f.h5", "influence", "worst", (candidate,), MislabelScore(1, 2, None, 1.0, 1, 0.5),
                            fdr=0.05, evidence="one-sided p-values", message="1 source example likely mislabelled",
                            flagged=(candidate,))
    assert text.format_mislabels(scored).splitlines() == [
        "1 source example likely mislabelled", "evidence: one-sided p-values",
        "rank  source label      score  p src  p tgt      p      q",
        "   1  ex3    c3      -0.25000 0.0010  4e-04 0.0010 0.0120  flagged",
        "planted flips, flagged: 1 examples, precision 1.000, recall 0.500 (1 of 2); AUC of the ranking -"]
    leak = LeakageReport("f.h5", "influence", "influence", False, (), planted=LeakageScore(0, 2, 0, None, 0.0, 0),
                         message="no evidence of leakage at FDR 5%", evidence="one-sided p-values")
    assert text.format_leakage(leak).splitlines() == [
        "no evidence of leakage at FDR 5%", "source example ids to remove: none",
        "evidence: one-sided p-values; near duplicate: pixel score >= 0.985",
        "top 0 pairs by influence (browsing):",
        "rank  source label  target label   influence  score  pixel   feat      p      q  category",
        "planted leaks:",
        "  flagged                   0 pairs, precision -, recall 0.000 (0 of 2 planted leaks), decoys 0"]


# layers -----------------------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(ANALYZE.glob("*.py")), ids=lambda p: p.name)
def test_analyze_imports_neither_click_nor_report(path: Path) -> None:
    bad = {name for name in _imports(path)
           if name.split(".")[0] == "click" or name == "dmtoolkit.report" or name.startswith("dmtoolkit.report.")}
    assert not bad, f"{path.name} imports {sorted(bad)}: analyses return results, report/ and the CLI render them"
    source = path.read_text()
    assert "print(" not in source and "click." not in source, f"{path.name} prints"


def test_analyses_take_no_png_argument() -> None:
    for name in ("rank_classes", "subpopulation", "explain_target", "verify_explanation", "counterfactual",
                 "detect_leakage", "detect_mislabels"):
        params = inspect.signature(getattr(analyze, name)).parameters
        assert not any("png" in p for p in params), f"{name} still draws ({list(params)})"


def test_cli_options_and_formatting_import_without_torch() -> None:
    code = ("import sys; import dmtoolkit.cli, dmtoolkit.analyze.options, dmtoolkit.analyze.results, dmtoolkit.report.text, "
            "dmtoolkit.estimate.registry, dmtoolkit.estimate.options, dmtoolkit.run.options; "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_lazy_exports_are_all_importable() -> None:
    assert sorted(analyze.__all__) == sorted(analyze._EXPORTS)
    for name in analyze.__all__:
        assert getattr(analyze, name) is not None
    with pytest.raises(AttributeError):
        analyze.no_such_analysis  # noqa: B018


@pytest.mark.parametrize("command, option, function, parameter", [
    ("rank", "top", "rank_classes", "top"), ("subpop", "n", "subpopulation", "n"),
    ("explain", "top", "explain_target", "top"), ("leakage", "top", "detect_leakage", "top"),
    ("leakage", "ranking", "detect_leakage", "ranking"), ("mislabels", "top", "detect_mislabels", "top"),
    ("mislabels", "by", "detect_mislabels", "by"), ("counterfactual", "order", "counterfactual", "order"),
    ("counterfactual", "ks", "counterfactual", "ks"), ("counterfactual", "repeats", "counterfactual", "repeats"),
])
def test_cli_defaults_are_the_library_defaults(command: str, option: str, function: str, parameter: str) -> None:
    from dmtoolkit.cli import cli

    default = next(p.default for p in cli.commands[command].params if p.name == option)
    assert default == inspect.signature(getattr(analyze, function)).parameters[parameter].default
