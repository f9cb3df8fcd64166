"""The linear datamodeling score (LDS) on arrays: per target, its summary, and its bootstrap over draws.

LDS of a target is the Spearman correlation, over held-out models, of predicted and true margins. A constant
prediction of a varying target scores 0 (abstaining earns nothing); a target whose true margins are constant has
no defined score and is left out of the mean and median. The bootstrap resamples whole draws (`draws`:
one id per model; a pair's or a block's models share one) with replacement.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from dmtoolkit.stats.correlation import spearman_columns
from dmtoolkit.stats.intervals import percentile_interval

BOOTSTRAP_RESAMPLES = 400
INTERVAL_LEVEL = 0.95


def lds_per_target(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman of each column; a constant prediction of a varying target scores 0 (abstaining earns nothing)."""
    lds = spearman_columns(predicted, actual)
    lds[(np.ptp(predicted, axis=0) == 0) & (np.ptp(actual, axis=0) > 0)] = 0.0
    return lds


def summarise_lds(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, float | None, float | None]:
    """(per-target LDS, mean, median over defined targets) of predicted vs actual margins, (n, T) each."""
    lds = lds_per_target(predicted, actual)
    finite = lds[np.isfinite(lds)]
    if not len(finite):
        return lds, None, None
    return lds, float(finite.mean()), float(np.median(finite))


def bootstrap_lds_interval(predicted: np.ndarray, actual: np.ndarray, draws: np.ndarray, *,
                           resamples: int = BOOTSTRAP_RESAMPLES, level: float = INTERVAL_LEVEL,
                           seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the mean LDS when the test models' draws (`draws`, one id per row of
    predicted/actual (n, T)) are resampled with replacement `resamples` times; None with fewer than 3 draws or
    no defined mean.

    Ranks are taken once on the test set and a resample reweights its models by how often their draw was
    picked, so a resample's score per target is the weighted correlation of those ranks (all resamples in a few
    matrix products; re-ranking every resample gives the same interval to about 0.01, at a hundred times the
    cost).
    """
    means = bootstrap_lds_means(predicted, actual, draws, resamples=resamples, seed=seed)
    if means is None:
        return None
    return percentile_interval(means, level, resamples / 2)  # a resample of one repeated draw defines no correlation


def bootstrap_lds_means(predicted: np.ndarray, actual: np.ndarray, draws: np.ndarray, *,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray | None:
    """The mean LDS of each bootstrap resample (`bootstrap_lds_interval`), (resamples,); None with fewer than 3
    draws or no defined mean. The resamples depend only on `draws`, `resamples` and `seed`, so two predictions of
    the same test models resampled with the same arguments are paired resample by resample."""
    ids, members = np.unique(draws, return_inverse=True)
    if len(ids) < 3:
        return None
    lds = lds_per_target(predicted, actual)
    defined = np.isfinite(lds)
    if not defined.any():
        return None
    abstains = defined & (np.ptp(predicted, axis=0) == 0)  # constant prediction: scores 0 in every resample
    ranked = defined & ~abstains
    ra, rb = rankdata(predicted[:, ranked], axis=0), rankdata(actual[:, ranked], axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)) for _ in range(resamples)])
    weights = counts[:, members].astype(np.float64)  # (resamples, n)
    total = weights.sum(1, keepdims=True)
    mean_a, mean_b = weights @ ra / total, weights @ rb / total
    cov = weights @ (ra * rb) / total - mean_a * mean_b
    var_a = weights @ (ra * ra) / total - mean_a**2
    var_b = weights @ (rb * rb) / total - mean_b**2
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where((var_a > 0) & (var_b > 0), cov / np.sqrt(var_a * var_b), np.nan)
    scores = np.full((resamples, int(defined.sum())), 0.0)
    scores[:, ranked[defined]] = corr
    # a resample of one repeated draw (likely with few draws: 3 draws give 1 resample in 9) has no rank variance,
    # so no target's correlation is defined in it: its mean is NaN (no warning), and the callers leave it out
    defined_scores = np.isfinite(scores)
    per_resample = defined_scores.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(per_resample > 0, np.where(defined_scores, scores, 0.0).sum(axis=1) / per_resample, np.nan)
