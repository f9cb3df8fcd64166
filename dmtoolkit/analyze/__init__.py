"""Analyses over estimates: rank classes, subpopulations, explain, counterfactuals, leakage, mislabels."""

from dmtoolkit.analyze.classes import (
           class_positions,
           explain_target,
           rank_classes,
           subpopulation,
)
from dmtoolkit.analyze.estimates import Estimate, load_estimate
from dmtoolkit.analyze.examples import (
           detect_leakage,
           detect_mislabels,
           near_duplicate_scores,
)
from dmtoolkit.analyze.retrain import counterfactual, train_masks, verify_explanation

__all__ = ["Estimate", "class_positions", "counterfactual", "detect_leakage", "detect_mislabels", "explain_target", "load_estimate",
           "near_duplicate_scores", "rank_classes", "subpopulation", "train_masks", "verify_explanation"]
