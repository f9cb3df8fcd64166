"""Evidence in words and its calibration: the FDR phrase the analyses print, and the simulation that checks the
gradient estimator's across-network standard error with the intervals and Benjamini–Hochberg flags the analyses use.

The statistics themselves (one-sided p-values from design-valid standard errors, Simes, Benjamini–Hochberg, the
`fdr` check) are `dmtoolkit.stats.pvalues`; the estimators' standard errors follow the mask design (cluster over
complementary pairs or orthogonal blocks, Student t with G − 1 degrees of freedom;
`dmtoolkit.estimate.difference_of_means`), and their calibration is checked by simulation
(`dmtoolkit.estimate.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dmtoolkit.stats.intervals import interval_quantile
from dmtoolkit.stats.pvalues import bh_adjusted, one_sided_pvalues


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

