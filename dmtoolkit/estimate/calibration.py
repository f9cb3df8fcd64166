"""Are the intervals honest? Coverage of nominal intervals on simulated linear effects, per mask design.

Margins are simulated as masks·β + noise with masks from `dmtoolkit.masks.make_masks`, so the effect each
estimator targets is known exactly: with fixed-size subsets a unit displaces the others, and difference of
means estimates β_k − Σ_(l≠k) β_l / (P − 1) (regression: β_k relative to the average unit); an orthogonal
block is balanced with orthogonal columns, so both estimate β_k. The fraction of (unit, target) intervals
estimate ± q·stderr that contain that effect, over replications, should match the nominal level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmtoolkit.estimate.registry import make_estimator
from dmtoolkit.estimate.splits import Draws, design_draws
from dmtoolkit.masks import make_masks
from dmtoolkit.stats.intervals import interval_quantile

DESIGNS = ("random", "antithetic", "orthogonal", "orthogonal+antithetic")


@dataclass(frozen=True)
class Simulation:
    """One simulated run: masks (m, P), margins (m, T), the effects the estimators target, its draws."""

    masks: np.ndarray
    margins: np.ndarray
    means_effect: np.ndarray
    regression_effect: np.ndarray
    draws: Draws


def simulate(design: str, replication: int, *, units: int = 36, models: int = 256, targets: int = 4,
             effect_sd: float = 0.5, noise: float = 1.0) -> Simulation:
    """Masks of `design` (one of DESIGNS, α = 0.5) and margins = masks·β + N(0, noise²), seeded by `replication`."""
    if design not in DESIGNS:
        raise ValueError(f"design {design!r} is not one of {', '.join(DESIGNS)}")
    antithetic = design.endswith("antithetic")
    layout = "orthogonal" if design.startswith("orthogonal") else "random"
    masks = make_masks(100 + replication, models, units, 0.5, antithetic=antithetic, design=layout)
    rng = np.random.default_rng([7, replication])
    beta = rng.normal(0, effect_sd, (units, targets))
    margins = (masks @ beta + rng.normal(0, noise, (models, targets))).astype(np.float32)
    if layout == "orthogonal":
        means_effect = regression_effect = beta
    else:
        means_effect = beta - (beta.sum(0) - beta) / (units - 1)
        regression_effect = beta - beta.mean(0)
    return Simulation(masks, margins, means_effect, regression_effect,
                      design_draws(models, units, antithetic=antithetic, design=layout))


@dataclass(frozen=True)
class Coverage:
    """Fraction of nominal-`level` intervals that contained the simulated effect."""

    estimator: str
    design: str
    models: int
    replications: int
    level: float
    design_aware: bool
    coverage: float


def interval_coverage(estimator: str, design: str, *, models: int = 256, replications: int = 60,
                      level: float = 0.9, design_aware: bool = True) -> Coverage:
    """Coverage of `estimator`'s intervals over `replications` simulated runs of `design`.

    `design_aware=False` fits as if every row were an independent draw (the check that ignoring pairs or
    blocks is visible)."""
    hits = []
    for r in range(replications):
        sim = simulate(design, r, models=models)
        model = make_estimator(estimator, device="cpu").fit(sim.masks, sim.margins,
                                                             draws=sim.draws if design_aware else None)
        truth = sim.regression_effect if estimator == "regression" else sim.means_effect
        q = interval_quantile(level, model.stderr_dof_)
        hits.append(np.abs(model.coef_ - truth) <= q * model.stderr_)
    return Coverage(estimator, design, models, replications, level, design_aware, float(np.mean(hits)))
