"""Detection scores on arrays: standardising an influence matrix so a copy stands out (per target, and both ways)
and the rank-based area under the ROC curve a detector's ranking is scored with.

Used by `detect_leakage` (the z-score rankings) and `detect_mislabels` (the AUC of its listing against planted
label flips); pure functions of NumPy arrays.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for `positive` (Mann-Whitney, ties count half); None if undefined."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_target_z(matrix: np.ndarray) -> np.ndarray:
    """Each column standardised over the source examples: (x − mean) / std, NaN ignored; 0 where std is 0.

    Targets whose margins vary a lot get large influences everywhere; ranking z-scores asks instead which
    source example stands out *for that target*, as a copy of it should.
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN (undefined) column: NaN, scored 0 below
        mean, std = np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
        return np.where(std > 0, (matrix - mean) / np.where(std > 0, std, 1), 0.0)


def two_way_z(matrix: np.ndarray) -> np.ndarray:
    """Standardised within its target column plus within its source row.

    A copy of a target stands out both among the sources for that target and among the targets for that
    source; a source that helps many look-alike targets (an in-distribution image, a near-duplicate of a
    whole class) stands out only in the first way.
    """
    return per_target_z(matrix) + per_target_z(matrix.T).T
