"""Intervals: the two-sided quantile every interval uses (Student t with the design's degrees of freedom, normal
without them), the bounds value ∓ q·stderr, and percentile intervals of resampled statistics."""

from __future__ import annotations

import numpy as np
from scipy import stats


def interval_quantile(level: float, dof: int | None) -> float:
    """Two-sided quantile for a `level` interval: Student t with `dof` degrees of freedom, normal for None."""
    return float(stats.t.ppf((1 + level) / 2, dof) if dof else stats.norm.ppf((1 + level) / 2))


def interval_bounds(values: np.ndarray, stderr: np.ndarray, level: float, dof: int | None) -> tuple[np.ndarray, np.ndarray]:
    """values ∓ q·stderr with q the two-sided `level` quantile (Student t with `dof`, normal for None); NaN where
    the value or its error is undefined."""
    q = interval_quantile(level, dof)
    values, stderr = np.asarray(values, np.float64), np.asarray(stderr, np.float64)
    return values - q * stderr, values + q * stderr


def percentile_interval(samples: np.ndarray, level: float, minimum: float) -> tuple[float, float] | None:
    """Central `level` percentile interval of the finite `samples` (e.g. bootstrap draws; NaN marks a draw where
    the statistic is undefined); None with fewer than `minimum` finite ones."""
    samples = np.asarray(samples)
    samples = samples[np.isfinite(samples)]
    if len(samples) < minimum:
        return None
    tail = (1 - level) / 2
    return float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))
