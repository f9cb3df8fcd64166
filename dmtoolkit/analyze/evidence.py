"""Evidence thresholds: one-sided p-values from design-valid standard errors, Simes per row, Benjamini–Hochberg.

The estimators' standard errors follow the mask design (cluster over complementary pairs or orthogonal
blocks, Student t with G − 1 degrees of freedom; `dmtoolkit.estimate.difference_of_means`), and their
calibration is checked by simulation (`dmtoolkit.estimate.calibration`). A p-value here answers "is this
entry really above (below) zero?"; Benjamini–Hochberg then keeps the expected share of false flags among
all flags at most `fdr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def fdr_phrase(fdr: float) -> str:
    """0.05 -> "FDR 5%"."""
    return f"FDR {100 * fdr:g}%"


# --- calibration of the gradient estimator's across-network standard error (estimate/ensemble.py) ---
@dataclass(frozen=True)
class NetworkCalibration:
    """Coverage of the level intervals and the false discovery proportion of BH flags at `fdr`, over simulated
    runs where each network's scores are the truth plus network noise."""

    networks: int
    replications: int
    level: float
    fdr: float
    coverage: float
    false_discovery_rate: float
    power: float
    mean_flags: float


def network_calibration(networks: int, *, replications: int = 200, level: float = 0.95, fdr: float = 0.05,
                        **simulation: Any) -> NetworkCalibration:
    """Coverage and FDR of the across-network standard error (`across_networks`) on `simulate_network_scores`:
    the t intervals mean ± q·se and one-sided p-values (mean > 0) with Benjamini–Hochberg over all entries, as
    `dmtoolkit leakage` flags."""
    from dmtoolkit.estimate.calibration import interval_quantile
    from dmtoolkit.estimate.ensemble import across_networks, simulate_network_scores

    hits, fdp, power, flags = [], [], [], []
    for r in range(replications):
        truth, scores = simulate_network_scores(r, networks=networks, **simulation)
        result = across_networks(scores)
        q = interval_quantile(level, result.dof)
        hits.append(np.mean(np.abs(result.mean - truth) <= q * result.stderr))
        flagged = bh_adjusted(one_sided_pvalues(result.mean, result.stderr, result.dof, "greater")) <= fdr
        real = truth > 0
        fdp.append(float((flagged & ~real).sum() / max(1, flagged.sum())))
        power.append(float((flagged & real).sum() / max(1, real.sum())))
        flags.append(int(flagged.sum()))
    return NetworkCalibration(networks, replications, level, fdr, float(np.mean(hits)), float(np.mean(fdp)),
                              float(np.mean(power)), float(np.mean(flags)))

