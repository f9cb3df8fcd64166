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

The mean LDS carries a percentile bootstrap interval over the test models (`lds_interval`): the held-out
sampling units, by the estimators' own rule (`store_units`: an antithetic pair, an orthogonal block, else a
model; held-out splits keep them whole), are resampled with replacement and the mean LDS recomputed, so the
interval says how much the score would move on another set of test models of the same size (the estimate
itself is held fixed). Fewer than 3 held-out units give no interval.
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
from dmtoolkit.estimate.fit import store_units
from dmtoolkit.store import RunStore

HISTOGRAM_EDGES = np.round(np.linspace(-1, 1, 21), 10)
BOOTSTRAP_DRAWS = 400
INTERVAL_LEVEL = 0.95


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
    lds_interval: tuple[float, float] | None = None  # 95% bootstrap over held-out sampling units
    heldout_units: int = 0                            # held-out sampling units resampled

    def to_json(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator, "estimate_file": str(self.estimate_file), "store": str(self.store),
            "heldout_models": self.heldout_models, "targets": list(self.targets),
            "lds_mean": self.lds_mean, "lds_median": self.lds_median,
            "lds_interval": None if self.lds_interval is None else list(self.lds_interval),
            "heldout_units": self.heldout_units,
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


def bootstrap_lds_interval(predicted: np.ndarray, actual: np.ndarray, units: np.ndarray, *,
                           draws: int = BOOTSTRAP_DRAWS, level: float = INTERVAL_LEVEL,
                           seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the mean LDS when the test models' sampling units (`units`, one id per row of
    predicted/actual (n, T)) are resampled with replacement; None with fewer than 3 units or no defined mean.

    Ranks are taken once on the test set and a draw reweights its models by how often their unit was drawn,
    so a draw's score per target is the weighted correlation of those ranks (all draws in a few matrix
    products; re-ranking every resample gives the same interval to about 0.01, at a hundred times the cost).
    """
    ids, members = np.unique(units, return_inverse=True)
    if len(ids) < 3:
        return None
    lds = lds_per_target(predicted, actual)
    defined = np.isfinite(lds)
    if not defined.any():
        return None
    abstains = defined & (np.ptp(predicted, axis=0) == 0)  # constant prediction: scores 0 in every draw
    ranked = defined & ~abstains
    ra, rb = rankdata(predicted[:, ranked], axis=0), rankdata(actual[:, ranked], axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)) for _ in range(draws)])
    weights = counts[:, members].astype(np.float64)  # (draws, n)
    total = weights.sum(1, keepdims=True)
    mean_a, mean_b = weights @ ra / total, weights @ rb / total
    cov = weights @ (ra * rb) / total - mean_a * mean_b
    var_a = weights @ (ra * ra) / total - mean_a**2
    var_b = weights @ (rb * rb) / total - mean_b**2
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where((var_a > 0) & (var_b > 0), cov / np.sqrt(var_a * var_b), np.nan)
    scores = np.full((draws, int(defined.sum())), 0.0)
    scores[:, ranked[defined]] = corr
    # a draw of one repeated unit (likely with few units: 3 units give 1 draw in 9) has no rank variance, so no
    # target's correlation and no mean is defined in it: such draws are left out of the percentiles (they were
    # NaN, which made the whole interval NaN with a "Mean of empty slice" warning)
    defined_scores = np.isfinite(scores)
    per_draw = defined_scores.sum(axis=1)
    keep = per_draw > 0
    if keep.sum() < draws / 2:
        return None
    means = np.where(defined_scores, scores, 0.0)[keep].sum(axis=1) / per_draw[keep]
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def evaluate(store_path: str | Path, estimate_path: str | Path, *, block_rows: int = 1024,
             draws: int = BOOTSTRAP_DRAWS) -> LdsResult:
    """LDS of an ESTIMATE.h5 on its test rows: mean, median, per target, histogram."""
    est = load_estimate(estimate_path)
    rows = est.test_rows
    if len(rows) < 3:
        raise StoreError(f"{est.path}: only {len(rows)} held-out test models, LDS needs at least 3; "
                         "refit with a larger --holdout-frac or train more models")
    with RunStore(store_path) as store:
        est.check_store(store)
        units = store_units(store).ids[rows]  # the draws: a pair's or a block's models are one
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
        lds_interval=bootstrap_lds_interval(predicted, actual, units, draws=draws) if mean is not None else None,
        heldout_units=len(np.unique(units)),
    )
