"""Estimators by name. The CLI's `--estimator` choices and every reader of estimate files come from here.

Entries name their class as "module:Class" and are imported only when asked for, so listing names
(the CLI's start-up) does not import torch. Adding an estimator: one module with an `Estimator`
subclass, one line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dmtoolkit.errors import UserError

if TYPE_CHECKING:
    from dmtoolkit.estimate.base import Estimator


@dataclass(frozen=True)
class EstimatorEntry:
    """A registered estimator: its name, where its class lives, which command fits it, and one line on it.

    `retrains`: the estimator cannot work from masks and margins alone; it retrains source networks from the
    run store it is constructed with (the gradient estimator), so its `fit` needs that store's own arrays.
    `networks_option`: for such an estimator, the option of its command that fits more networks (the networks
    its standard error is taken across).
    """

    name: str
    target: str
    command: str
    summary: str
    retrains: bool = False
    networks_option: str | None = None

    def load(self) -> type[Estimator]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


ESTIMATORS: dict[str, EstimatorEntry] = {e.name: e for e in (
    EstimatorEntry("difference-of-means", "dmtoolkit.estimate.difference_of_means:DifferenceOfMeans", "influence",
                   "difference of means (Algorithm 1, Jain et al. 2022)"),
    EstimatorEntry("regression", "dmtoolkit.estimate.regression:Regression", "influence",
                   "least squares of each target's margin on the masks (other units' linear effects removed)"),
    EstimatorEntry("datamodels", "dmtoolkit.estimate.lasso:LassoPath", "datamodels",
                   "sparse linear datamodels: lasso path, λ chosen per target on held-out models (Ilyas et al. 2022)"),
    EstimatorEntry("gradient", "dmtoolkit.estimate.gradient:GradientEstimator", "gradient",
                   "TRAK-style gradients of a few retrained source networks, through the transfer (example level)",
                   retrains=True, networks_option="--models"),
    EstimatorEntry("replay", "dmtoolkit.estimate.replay:ReplayEstimator", "replay",
                   "exact derivative of each transferred margin w.r.t. each source example's training weight, "
                   "through the replayed built-in training and the ridge head (example level)", retrains=True,
                   networks_option="--networks"),
)}


def estimator_names(command: str | None = None, *, from_arrays: bool = False) -> list[str]:
    """Registered names, optionally only those a CLI command (`influence`, `datamodels`, `gradient`) runs, or
    (`from_arrays`) only those that fit on any masks and margins (not retraining from a run store)."""
    return [name for name, e in ESTIMATORS.items()
            if (command is None or e.command == command) and not (from_arrays and e.retrains)]


def estimator_entry(name: str) -> EstimatorEntry:
    if name not in ESTIMATORS:
        raise UserError(f"unknown estimator {name!r}; use one of: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def make_estimator(name: str, **settings: Any) -> Estimator:
    """A new, unfitted estimator of the registered `name` with constructor `settings`."""
    return estimator_entry(name).load()(**settings)
