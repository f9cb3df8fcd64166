"""Spearman correlation and Spearman–Brown: how two rankings agree and how agreement grows with models.

Spearman uses average ranks for ties (as LDS). Spearman–Brown takes a reliability measured with some models to
`factor` times as many (kρ / (1 + (k − 1)ρ)); `models_for_reliability` inverts it for a goal.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

TARGET_RELIABILITY = 0.8
"""The reliability an answer should reach (the usual goal for a measurement read by itself)."""
MIN_DEFINED = 3
"""`defined_spearman` needs at least this many entries defined in both."""


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of a with the same column of b (average ranks for ties); NaN if constant."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    denom = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(0) / denom, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman correlation of two vectors (average ranks for ties, as LDS); None when undefined (a NaN or a
    constant vector)."""
    value = float(spearman_columns(x[:, None], y[:, None])[0])
    return value if np.isfinite(value) else None


def defined_spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """`spearman` of the entries of `a` and `b` (any shape, flattened) that are finite in both; None with fewer
    than MIN_DEFINED of them."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    return spearman(a[keep], b[keep]) if keep.sum() >= MIN_DEFINED else None


def spearman_brown(reliability: float, factor: float) -> float:
    """Reliability of a measurement `factor` times as long (here: as many models): kρ / (1 + (k − 1)ρ)."""
    if factor <= 0:
        raise ValueError(f"length factor {factor} must be positive")
    return factor * reliability / (1 + (factor - 1) * reliability)


def projected_reliability(reliability: float | None, factor: float) -> float | None:
    """Spearman–Brown to `factor` times the models; None unless 0 < reliability and 0 < factor (a negative
    correlation is no reliability to extrapolate)."""
    return spearman_brown(reliability, factor) if reliability is not None and reliability > 0 and factor > 0 else None


def models_for_reliability(reliability: float, models: float, goal: float = TARGET_RELIABILITY) -> float | None:
    """Models needed for reliability `goal` when `models` give `reliability` (inverse Spearman–Brown);
    None unless 0 < reliability < 1."""
    if not 0 < goal < 1:
        raise ValueError(f"goal reliability {goal} must be in (0, 1)")
    if not 0 < reliability < 1:
        return None
    return models * (goal / (1 - goal)) / (reliability / (1 - reliability))


def models_needed(reliability: float | None, models: float, goals: tuple[float, ...]) -> dict[str, float | None]:
    """`models_for_reliability` for each of `goals` (keyed by str(goal)); all None when `reliability` is."""
    return {str(goal): None if reliability is None else models_for_reliability(reliability, models, goal)
            for goal in goals}
