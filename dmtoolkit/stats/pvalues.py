"""Evidence on arrays: one-sided p-values from standard errors, Simes per row, Benjamini–Hochberg.

A p-value here answers "is this entry really above (below) zero?" from an estimate and its design-valid standard
error (Student t with the design's degrees of freedom); Benjamini–Hochberg then keeps the expected share of false
flags among all flags at most `fdr`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from dmtoolkit.errors import UserError


def check_fdr(fdr: float) -> None:
    if not 0 < fdr < 1:
        raise UserError(f"fdr={fdr} must be between 0 and 1 (e.g. 0.05)")


def one_sided_pvalues(coef: np.ndarray, stderr: np.ndarray, dof: int | None, side: str) -> np.ndarray:
    """P(T ≥ t) (side "greater") or P(T ≤ t) ("less") for t = coef / stderr, Student t with `dof` degrees of
    freedom (normal when None or < 1); 1 where the entry or its error is undefined or the error is 0."""
    coef, stderr = np.asarray(coef, np.float64), np.asarray(stderr, np.float64)
    ok = np.isfinite(coef) & np.isfinite(stderr) & (stderr > 0)
    t = np.where(ok, coef / np.where(ok, stderr, 1), 0.0)
    dist = stats.norm if dof is None or dof < 1 else stats.t(dof)
    p = dist.sf(t) if side == "greater" else dist.cdf(t)
    return np.where(ok, p, 1.0)


def simes(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Simes' combination along `axis`: min_k p_(k) · n / k, a p-value for "some entry of the row is non-null"
    (valid under independence and positive dependence)."""
    p = np.sort(np.asarray(p, np.float64), axis=axis)
    n = p.shape[axis]
    shape = [1] * p.ndim
    shape[axis] = n
    return np.minimum(1.0, (p * n / np.arange(1, n + 1).reshape(shape)).min(axis=axis))


def bh_adjusted(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of all entries together (scipy's implementation)."""
    p = np.asarray(p, np.float64)
    if p.size == 0:
        return p.copy()
    return stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)


def benjamini_hochberg(p: np.ndarray, fdr: float) -> np.ndarray:
    """Which entries pass Benjamini–Hochberg at false discovery rate `fdr` (all entries form one family)."""
    check_fdr(fdr)
    return bh_adjusted(p) <= fdr


def conformal_pvalues(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Lower-tail conformal p-values, (1 + #{reference ≤ score}) / (1 + n): the evidence that a score is more
    extreme than the n reference scores, valid (super-uniform) when the score and the reference are exchangeable
    (Bates et al. 2023, "Testing for outliers with conformal p-values"; Benjamini–Hochberg over them controls
    the FDR). Undefined (NaN) scores get 1; the smallest possible p-value is 1 / (n + 1)."""
    scores = np.asarray(scores, np.float64)
    reference = np.sort(np.asarray(reference, np.float64)[np.isfinite(reference)])
    below = np.searchsorted(reference, np.where(np.isfinite(scores), scores, np.inf), side="right")
    return np.where(np.isfinite(scores), (1 + below) / (1 + len(reference)), 1.0)


def fewest_flaggable(tests: int, smallest_p: float, fdr: float) -> int:
    """The fewest flags Benjamini–Hochberg at `fdr` can make over `tests` p-values none of which is below
    `smallest_p` (it flags k only with some p ≤ fdr · k / tests): ⌈tests · smallest_p / fdr⌉."""
    return int(np.ceil(tests * smallest_p / fdr - 1e-9))
