"""Analyses over estimates: rank classes, subpopulations, explain, counterfactuals, leakage, mislabels.

Each takes an estimate file's path or an `OpenedEstimate` (`open_estimate(path, store)`: its run store opened
and hash-checked once for every analysis given it); `analyse_estimate` runs all that apply (the report's),
`analyse_store` a run store's summary and reliability.

Every analysis returns a typed result (see `dmtoolkit.analyze.results`); none draws, prints or imports
click: `dmtoolkit.report` and the CLI render the results. Names are imported on first use, so
`dmtoolkit.analyze.options` and `.results` stay cheap to import (no torch) for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmtoolkit.lazy import lazy_exports

_EXPORTS = {  # name -> submodule that defines it
    "class_positions": "classes", "explain_target": "classes", "rank_classes": "classes", "subpopulation": "classes",
    "Estimate": "estimates", "load_estimate": "estimates", "OpenedEstimate": "estimates", "open_estimate": "estimates",
    "EstimateAnalyses": "overview", "analyse_estimate": "overview", "StoreAnalyses": "overview",
    "analyse_store": "overview",
    "detect_leakage": "leakage", "detect_mislabels": "mislabels", "near_duplicate_scores": "copies",
    "CounterfactualPlan": "retrain", "check_counterfactual": "retrain", "counterfactual": "retrain",
    "load_counterfactual": "retrain", "plan_counterfactual": "retrain", "save_counterfactual": "retrain",
    "train_counterfactual": "retrain", "train_masks": "retrain", "verify_explanation": "retrain",
    "recommend_removal": "recommend", "removal_ranking": "recommend", "split_targets": "recommend",
    "predicted_removal_change": "recommend",
}

__all__ = [
    "CounterfactualPlan", "Estimate", "EstimateAnalyses", "OpenedEstimate", "StoreAnalyses", "analyse_estimate",
    "analyse_store", "open_estimate", "check_counterfactual", "class_positions", "counterfactual", "detect_leakage",
    "detect_mislabels", "explain_target", "load_counterfactual", "load_estimate", "near_duplicate_scores",
    "plan_counterfactual", "predicted_removal_change", "rank_classes", "recommend_removal", "removal_ranking",
    "save_counterfactual", "split_targets", "subpopulation", "train_counterfactual",
    "train_masks", "verify_explanation",
]

if TYPE_CHECKING:
    from dmtoolkit.analyze.classes import class_positions, explain_target, rank_classes, subpopulation
    from dmtoolkit.analyze.copies import near_duplicate_scores
    from dmtoolkit.analyze.estimates import Estimate, OpenedEstimate, load_estimate, open_estimate
    from dmtoolkit.analyze.leakage import detect_leakage
    from dmtoolkit.analyze.mislabels import detect_mislabels
    from dmtoolkit.analyze.overview import EstimateAnalyses, StoreAnalyses, analyse_estimate, analyse_store
    from dmtoolkit.analyze.recommend import (
        predicted_removal_change,
        recommend_removal,
        removal_ranking,
        split_targets,
    )
    from dmtoolkit.analyze.retrain import (
        CounterfactualPlan,
        check_counterfactual,
        counterfactual,
        load_counterfactual,
        plan_counterfactual,
        save_counterfactual,
        train_counterfactual,
        train_masks,
        verify_explanation,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
