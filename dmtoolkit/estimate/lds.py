"""Linear datamodeling score (LDS): how well an estimate predicts margins of models it never saw.

For each target example, LDS is the Spearman rank correlation, over the estimate's test rows (models
held out from fitting and from choosing any setting), between the predicted and the true margin. Every
estimator is a linear predictor, f̂(S) = intercept + Σ_k coef_k · 1[k ∈ S] (undefined, NaN,
coefficients count 0), so LDS needs no per-estimator code.

A constant prediction (e.g. a datamodel whose chosen λ zeroed every weight) ranks nothing and scores
0, so abstaining is not rewarded; a target whose true held-out margins are all equal has no defined
score and is left out of the mean, median and histogram (counted as `undefined_targets`).

The estimate file must name this store's current content hash; otherwise the rows it recorded may
mean something else, and `evaluate` refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from dmtoolkit.errors import StoreError
from dmtoolkit.estimate.base import linear_prediction
from dmtoolkit.estimate.blocks import TargetColumns, row_blocks
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.store import RunStore

HISTOGRAM_EDGES = np.round(np.linspace(-1, 1, 21), 10)


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of a with the same column of b (average ranks for ties); NaN if constant."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    denom = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(0) / denom, np.nan)


def lds_per_target(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman of each column; a constant prediction of a varying target scores 0 (abstaining earns nothing)."""
    lds = spearman_columns(predicted, actual)
    lds[(np.ptp(predicted, axis=0) == 0) & (np.ptp(actual, axis=0) > 0)] = 0.0
    return lds


@dataclass(frozen=True)
class LdsResult:
    """LDS of one estimate on its test rows: summary, per-target scores and a histogram over [-1, 1]."""

    estimator: str
    estimate_file: Path
    store: Path
    heldout_models: int
    targets: tuple[int, int]
    lds_mean: float | None
    lds_median: float | None
    undefined_targets: int
    constant_predictions: int
    lds_per_target: tuple[float | None, ...]
    histogram_edges: tuple[float, ...]
    histogram_counts: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator, "estimate_file": str(self.estimate_file), "store": str(self.store),
            "heldout_models": self.heldout_models, "targets": list(self.targets),
            "lds_mean": self.lds_mean, "lds_median": self.lds_median,
            "undefined_targets": self.undefined_targets, "constant_predictions": self.constant_predictions,
            "lds_per_target": list(self.lds_per_target),
            "histogram": {"edges": list(self.histogram_edges), "counts": list(self.histogram_counts)},
        }


def summarise_lds(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, float | None, float | None]:
    """(per-target LDS, mean, median over defined targets) of predicted vs actual margins, (n, T) each."""
    lds = lds_per_target(predicted, actual)
    finite = lds[np.isfinite(lds)]
    if not len(finite):
        return lds, None, None
    return lds, float(finite.mean()), float(np.median(finite))


def evaluate(store_path: str | Path, estimate_path: str | Path, *, block_rows: int = 1024) -> LdsResult:
    """LDS of an ESTIMATE.h5 on its test rows: mean, median, per target, histogram."""
    est = load_estimate(estimate_path)
    rows = est.test_rows
    if len(rows) < 3:
        raise StoreError(f"{est.path}: only {len(rows)} held-out test models, LDS needs at least 3; "
                         "refit with a larger --holdout-frac or train more models")
    with RunStore(store_path) as store:
        est.check_store(store)
        margins = TargetColumns(store.margins, est.columns)
        predicted, actual = [], []
        for _, (masks, block) in row_blocks([store.masks, margins], rows, block_rows):
            predicted.append(linear_prediction(masks, est.matrix, est.intercept))
            actual.append(block)
    predicted, actual = np.concatenate(predicted), np.concatenate(actual)
    lds, mean, median = summarise_lds(predicted, actual)
    finite = lds[np.isfinite(lds)]
    counts, edges = np.histogram(finite, bins=HISTOGRAM_EDGES)
    return LdsResult(
        estimator=est.estimator, estimate_file=est.path, store=Path(store_path), heldout_models=len(rows),
        targets=(est.columns.start, est.columns.stop), lds_mean=mean, lds_median=median,
        undefined_targets=int(len(lds) - len(finite)),
        constant_predictions=int((np.ptp(predicted, axis=0) == 0).sum()),
        lds_per_target=tuple(float(v) if np.isfinite(v) else None for v in lds),
        histogram_edges=tuple(edges.tolist()), histogram_counts=tuple(int(c) for c in counts),
    )
