"""One representative instance of every result type that has `to_json` (every optional branch: with and without
the nested result, planted truth, interval, ...), built directly so their JSON can be pinned
(tests/test_result_json.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dmtoolkit.analyze.overview import EstimateAnalyses
from dmtoolkit.analyze.reliability import (
    CrossRun,
    ReliabilityReport,
    SplitHalfReliability,
    StoreReliability,
    WithinStore,
)
from dmtoolkit.analyze.results import (
    ClassEffect,
    ClassEvidence,
    ClassRanking,
    CounterfactualResult,
    DemoSummary,
    Explanation,
    LeakageReport,
    LeakageScore,
    LeakPair,
    MislabelCandidate,
    MislabelReport,
    MislabelScore,
    PredictionTrust,
    Recommendation,
    RemovalCandidate,
    SourceCopy,
    Subpopulation,
    TargetEffect,
    Verification,
)
from dmtoolkit.estimate.lds import LdsCurve, LdsResult
from dmtoolkit.report.html import CounterfactualSection, DetectionRow, EstimateSection
from dmtoolkit.report.summary import Answer, StoreTrust


def instances() -> dict[str, Any]:
    """name -> result instance."""
    effects = (ClassEffect(3, "c3", 0.25, 0.1, 0.4), ClassEffect(1, "c1", -0.5))
    evidence = (ClassEvidence(2, "c2", -0.75, -1.0, -0.5, 0.001, 0.004, True),
                ClassEvidence(0, "c0", -0.125, None, None, None, None, None))
    ranking = ClassRanking("infl.h5", "influence", "t1", 12, effects, ("c9",), effects[:1], effects[1:],
                           tuple(reversed(effects)), 0.95, "refit on the per-model mean margin")
    subpop = Subpopulation("infl.h5", "c3", (TargetEffect(7, "7:t1", 0.5, 0.25, 0.75), TargetEffect(2, "2:t0", 0.125)),
                           images=np.zeros((2, 4, 4, 1), np.uint8), level=0.9, interval_note="note")
    verify = Verification("c2", 3, 1, 3, 1 / 3, 1.0)
    explanation = Explanation("infl.h5", 5, "t1", "t0", 20, 0.35, evidence, effects, None, 0.95, 0.1, "intervals")
    verified = Explanation("infl.h5", 5, "t1", None, 0, None, (), (), verify)
    counterfactual = CounterfactualResult("cf.h5", "random", 2, (0, 2), (0.5, 0.625), (0.0, 0.125),
                                          ((0.5, 0.5), (0.75, 0.5)), ("c1", "c2"), (("c1", "c2"), ("c3", "c1")))
    same_order = CounterfactualResult("cf.h5", "bottom", 1, (0, 1), (0.5, 0.75), (0.0, 0.0), ((0.5, 0.75),), ("c4",))
    candidates = (RemovalCandidate(0, (), 0.0, None, None, 0.5, 0.0, None),
                  RemovalCandidate(1, ("c2",), 0.25, 0.125, 0.375, 0.625, 0.125, True),
                  RemovalCandidate(2, ("c2", "c0"), 0.375, 0.25, 0.5, 0.75, 0.25, False))
    trust = PredictionTrust(40, 10, 2, 8, 2, 0.375, 0.25, 0.5, 5.0, 4, 6, "near", "dmtoolkit counterfactual x",
                            "removes 2", "studies say")
    unknown_trust = PredictionTrust(40, 10, 0, 8, 0, 0.0)
    recommendation = Recommendation("infl.h5", "influence", 0.5, 0, (1, 3, 4), (0, 2), 0.5, candidates, candidates[1],
                                    0.95, "intervals", 0.05, 1, evidence[:1], "best predicted accuracy", trust)
    plain_recommendation = Recommendation("dm.h5", "datamodels", 0.5, 1, (0,), (1,), 0.5, candidates[:1], candidates[0])
    pair = LeakPair(1, 4, "ex4", "c2", 7, "t1", 0.5, 3.0, 0.99, 0.001, 0.01, "likely copy", True, 0.9)
    look_alike = LeakPair(2, 5, "ex5", "c2", 8, "t0", 0.25, 2.0, 0.5, 0.01, 0.02, "influence only")
    copy = SourceCopy(4, "ex4", "c2", 7, "t1", 1.0, True, 0.5, 0.001, 0.01, True)
    near = SourceCopy(6, "ex6", "c3", 9, "t2", 0.99, False)
    leak_score = LeakageScore(2, 3, 1, 0.5, 1 / 3, 0)
    leakage = LeakageReport("ex.h5", "influence", "two-way-z", True, (pair, look_alike), 0.05, 0.985, "evidence",
                            "message", (pair,), (look_alike,), (), leak_score, LeakageScore(1, 3, 0, 0.0, 0.0, 1),
                            LeakageScore(2, 3, 2, 1.0, 2 / 3, 0), LeakageScore(3, 3, 2, 2 / 3, 2 / 3, 0),
                            LeakageScore(4, 3, 1, 0.25, 1 / 3, 2), "features", (copy, near),
                            "pixels", "models add", (12, 10), True, source_images=np.zeros((2, 2)))
    bare_leakage = LeakageReport("ex.h5", "datamodels", "influence", False, (), thresholded=False)
    flip = MislabelCandidate(1, 3, "ex3", "c1", -2.0, True, "c0", 0.001, 0.002, 0.01, 0.001, True)
    unplanted = MislabelCandidate(2, 5, "ex5", "c2", -1.0)
    flip_score = MislabelScore(2, 1, 0.75, 0.5, 1, 1.0)
    mislabels = MislabelReport("ex.h5", "influence", "worst", (flip, unplanted), flip_score, 0.05, "ev", "msg",
                               (flip,), MislabelScore(2, 1, None, None, 0))
    bare_mislabels = MislabelReport("ex.h5", "influence", "worst", (unplanted,))
    demo = DemoSummary("demo", "quick", 40, 60, {"influence": 0.25, "datamodels": None}, {"0": 1, "1": None},
                       {"bottom": same_order}, leak_score, flip_score, "demo/report/index.html")
    bare_demo = DemoSummary("demo", "quick", 40, 60, {}, {}, {}, None, None, "r.html")
    curve = LdsCurve(20, 40, 0.125, 0.25, 0.125, (0.0625, 0.1875), {"0.3": 80.0, "0.5": None})
    lds = LdsResult("influence", Path("infl.h5"), Path("run.h5"), 12, (0, 3), 0.25, 0.25, 1, 0,
                    (0.25, None, 0.5), (-1.0, 0.0, 1.0), (0, 2), (0.125, 0.375), 6, curve, "")
    bare_lds = LdsResult("datamodels", Path("dm.h5"), Path("run.h5"), 2, (4, 5), None, None, 1, 1, (None,),
                         (-1.0, 1.0), (0,), curve_note="too few models")
    split = SplitHalfReliability(40, (0, 1, 2), (0.5, None, 0.75), 20.0)
    empty_split = SplitHalfReliability(4, (0,), (None,), 2.0)
    within = WithinStore(split, 40)
    store = StoreReliability("run.h5", 40, 3, 7, "per-model", within, WithinStore(empty_split, 4))
    other = StoreReliability("other.h5", 60, None, None, "unknown", within, within, kind="example")
    cross = CrossRun(0.5, 48.0, 0.75)
    one_store = ReliabilityReport("difference-of-means", (store,))
    two_stores = ReliabilityReport("difference-of-means", (store, other), cross, CrossRun(None, 48.0, None),
                                   ("same mask seed",))
    analyses = EstimateAnalyses(Path("folder/infl.h5"), "influence", "class", (10, 12), "folder/run.h5", "run.h5",
                                True, ranking, recommendation, (subpop,), None, None, lds, ("LDS: note",))
    example_analyses = EstimateAnalyses(Path("ex.h5"), "influence", "example", (12, 10), "run.h5", "run.h5", True,
                                        leakage=leakage, mislabels=mislabels)
    bare_analyses = EstimateAnalyses(Path("dm.h5"), "datamodels", "class", (10, 12), "gone.h5", "gone.h5", False)
    answer = Answer("classes", "Which classes?", "c3 helps", "good", ("class", "mean"), (("c3", "+0.25"),),
                    ("good",), ("evidence",), ("caveat",), (1, 2))
    return {
        "ClassEffect": effects[0], "ClassEffect/no interval": effects[1], "ClassEvidence": evidence[0],
        "ClassEvidence/none": evidence[1], "ClassRanking": ranking, "TargetEffect": subpop.targets[0],
        "Subpopulation": subpop, "Verification": verify, "Explanation": explanation, "Explanation/verified": verified,
        "CounterfactualResult": counterfactual, "CounterfactualResult/one order": same_order,
        "RemovalCandidate": candidates[1], "RemovalCandidate/none": candidates[0], "PredictionTrust": trust,
        "PredictionTrust/unknown": unknown_trust, "Recommendation": recommendation,
        "Recommendation/plain": plain_recommendation, "LeakPair": pair, "SourceCopy": copy, "SourceCopy/near": near,
        "LeakageScore": leak_score, "LeakageReport": leakage, "LeakageReport/bare": bare_leakage,
        "MislabelCandidate": flip, "MislabelCandidate/unplanted": unplanted, "MislabelScore": flip_score,
        "MislabelReport": mislabels, "MislabelReport/bare": bare_mislabels, "DemoSummary": demo,
        "DemoSummary/bare": bare_demo, "LdsCurve": curve, "LdsResult": lds, "LdsResult/bare": bare_lds,
        "SplitHalfReliability": split, "SplitHalfReliability/empty": empty_split, "WithinStore": within,
        "StoreReliability": store, "CrossRun": cross, "ReliabilityReport/one": one_store,
        "ReliabilityReport/two": two_stores, "EstimateAnalyses": analyses, "EstimateAnalyses/example": example_analyses,
        "EstimateAnalyses/bare": bare_analyses, "EstimateSection": EstimateSection(analyses),
        "CounterfactualSection": CounterfactualSection(same_order.curve, "data:image/png;base64,"),
        "DetectionRow/leakage": DetectionRow("ex.h5", "leakage", leak_score),
        "DetectionRow/mislabels": DetectionRow("ex.h5", "mislabels", flip_score), "Answer": answer,
        "StoreTrust": StoreTrust("run.h5", "class", 40, 0.5, 0.75, {"0.8": 60.0, "0.9": None}),
        "StoreTrust/bare": StoreTrust("run.h5", "example", 4),
    }



def _planted_store(path: Path, harm: bool) -> Path:
    """An example-level store with planted leaks, decoys and flips (and harmful classes with `harm`), one row done."""
    import dataclasses

    from dmtoolkit.recipe import parse_recipe_dict
    from dmtoolkit.store import Planted, RunStore, create_store
    from tests.synthetic import synthetic_data

    data = synthetic_data(6, 3, per_class=1)
    truth = Planted(np.array([2, -1, -1, 0, -1, -1]), np.array([-1, 1, -1, -1, -1, -1]),
                    np.array([True] + [False] * 5), np.array([False, False, True, False, False, True]),
                    data.source_pool.labels, ("", "conflict", "", "", "noise", "") if harm else None,
                    np.array([-1, -1, -1, -1, 2, -1]) if harm else None)
    recipe = parse_recipe_dict({"name": "planted", "source": {"dataset": "synthetic"},
                                "target": {"dataset": "synthetic"},
                                "subsets": {"kind": "example", "alpha": 0.5, "models": 4, "seed": 1}})
    create_store(path, recipe, dataclasses.replace(data, planted=truth))
    with RunStore(path, writable=True) as store:
        store.write_row(0, np.zeros(3, np.float32), seed=0, source_accuracy=0.25, target_accuracy=0.75, seconds=2.0)
    return path


def summary_stores(folder: Path) -> dict[str, Path]:
    """name -> run store for `store_summary`: a class-level one, example-level ones with planted truth (with and
    without harmful classes) and an imported one (from a folder of .npy files)."""
    from dmtoolkit.store_import import import_store, read_folder
    from tests.synthetic import synthetic_store

    rng = np.random.default_rng(0)
    arrays = folder / "arrays"
    arrays.mkdir()
    np.save(arrays / "masks.npy", rng.random((4, 5)) < 0.5)
    np.save(arrays / "margins.npy", rng.normal(size=(4, 3)))
    return {"class": synthetic_store(folder / "class.h5", rng.normal(size=(6, 4)).astype(np.float32),
                                     completed=np.array([1, 1, 1, 1, 0, 0], bool)),
            "planted": _planted_store(folder / "planted.h5", harm=True),
            "leaks": _planted_store(folder / "leaks.h5", harm=False),
            "imported": import_store(folder / "imported.h5", read_folder(arrays))}


def plain_json(value: Any) -> bool:
    """Plain JSON values only: no tuples, NumPy scalars, Paths or dataclasses (what `to_json` must return)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)
