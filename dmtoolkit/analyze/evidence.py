"""Evidence in words and its calibration: the FDR and share phrases the analyses print, the one-sided p-values of an
estimate's entries with the line that says how they were made (`influence_pvalues`, which `detect_leakage` and
`detect_mislabels` flag with), and the simulation that checks the gradient estimator's across-network standard
error with the intervals and Benjamini–Hochberg flags the analyses use.

The statistics themselves (one-sided p-values from design-valid standard errors, Simes, Benjamini–Hochberg, the
`fdr` check) are `dmtoolkit.stats.pvalues`; the estimators' standard errors follow the mask design (cluster over
complementary pairs or orthogonal blocks, Student t with G − 1 degrees of freedom;
`dmtoolkit.estimate.difference_of_means`), and their calibration is checked by simulation
(`dmtoolkit.estimate.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dmtoolkit.analyze.options import MIN_EVIDENCE_DOF
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.registry import estimator_entry
from dmtoolkit.stats.intervals import interval_quantile
from dmtoolkit.stats.pvalues import bh_adjusted, check_fdr, one_sided_pvalues

if TYPE_CHECKING:
    from dmtoolkit.analyze.estimates import Estimate


def check_detection(top: int, fdr: float, name: str, value: str, choices: tuple[str, ...]) -> None:
    """The arguments leakage and mislabels share: rows to list, the FDR, and the one setting that chooses how
    pairs or examples are scored (`name` as it reads in the message, e.g. "ranking " or "by=")."""
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    if value not in choices:
        raise UserError(f"{name}{value!r} is not one of {', '.join(choices)}")
    check_fdr(fdr)


def fdr_phrase(fdr: float) -> str:
    """0.05 -> "FDR 5%"."""
    return f"FDR {100 * fdr:g}%"


def share_phrase(part: int, whole: int) -> str:
    """3 of 400 -> "0.8%"; 7,441 of 52,376 -> "14%"."""
    share = 100 * part / max(whole, 1)
    return f"{share:.2g}%" if share < 10 else f"{share:.0f}%"


def influence_pvalues(est: Estimate, side: str) -> tuple[np.ndarray | None, str]:
    """One-sided p-values of every entry from the estimate's standard errors, and how they were made (or why
    there are none)."""
    if est.stderr is None:
        if est.attrs.get("stderr_missing"):  # the estimator says why this estimate has none (e.g. one network)
            return None, str(est.attrs["stderr_missing"])
        return None, (f"{est.estimator} estimates carry no standard errors, so no p-values and nothing is flagged; "
                      "for evidence thresholds fit `dmtoolkit influence` (difference of means or regression)")
    if not np.isfinite(est.stderr).any():
        return None, ("the estimate's standard errors are undefined (fewer than 2 draws: one orthogonal "
                      "block or pair), so no p-values and nothing is flagged; train more models")
    method = est.attrs.get("stderr_method", "standard errors")
    dof = est.stderr_dof
    law = f"Student t, {dof} dof" if dof else "normal"
    evidence = f"one-sided p-values from {method} ({law})"
    entry = estimator_entry(est.estimator)
    if dof is not None and dof < MIN_EVIDENCE_DOF and entry.networks_option:
        evidence += (f"; only {dof + 1} networks, so every p-value rests on the same few networks and the FDR is "
                     f"not guaranteed: fit more networks ({entry.networks_option})")
    elif dof is not None and dof < MIN_EVIDENCE_DOF:
        evidence += (f"; only {dof + 1} draws, so every p-value rests on the same few draw means and the "
                     "FDR is not guaranteed: train more models (more pairs or blocks)")
    return one_sided_pvalues(est.matrix, est.stderr, dof, side), evidence


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

