"""The linear datamodeling score (LDS) on arrays: per target, its summary, and its bootstrap over sampling draws.

LDS of a target is the Spearman correlation, over held-out models, of predicted and true margins. A constant
prediction of a varying target scores 0 (abstaining earns nothing); a target whose true margins are constant has
no defined score and is left out of the mean and median. The bootstrap resamples whole sampling draws (`units`:
one id per model; a pair's or a block's models share one) with replacement.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from dmtoolkit.stats.correlation import spearman_columns
from dmtoolkit.stats.intervals import percentile_interval

BOOTSTRAP_DRAWS = 400
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


def bootstrap_lds_interval(predicted: np.ndarray, actual: np.ndarray, units: np.ndarray, *,
                           draws: int = BOOTSTRAP_DRAWS, level: float = INTERVAL_LEVEL,
                           seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the mean LDS when the test models' sampling units (`units`, one id per row of
    predicted/actual (n, T)) are resampled with replacement; None with fewer than 3 units or no defined mean.

    Ranks are taken once on the test set and a draw reweights its models by how often their unit was drawn,
    so a draw's score per target is the weighted correlation of those ranks (all draws in a few matrix
    products; re-ranking every resample gives the same interval to about 0.01, at a hundred times the cost).
    """
    means = bootstrap_lds_means(predicted, actual, units, draws=draws, seed=seed)
    if means is None:
        return None
    return percentile_interval(means, level, draws / 2)  # draws of one repeated unit define no correlation


def bootstrap_lds_means(predicted: np.ndarray, actual: np.ndarray, units: np.ndarray, *,
                        draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> np.ndarray | None:
    """The mean LDS of each bootstrap draw (`bootstrap_lds_interval`), (draws,); None with fewer than 3 units or no
    defined mean. The draws depend only on `units`, `draws` and `seed`, so two predictions of the same test
    models resampled with the same arguments are paired draw by draw."""
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
    # target's correlation is defined in it: its mean is NaN (no warning), and the callers leave such draws out
    defined_scores = np.isfinite(scores)
    per_draw = defined_scores.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(per_draw > 0, np.where(defined_scores, scores, 0.0).sum(axis=1) / per_draw, np.nan)
