"""Estimators over a run store: difference-of-means influence, the lasso-path solver, datamodels, LDS."""

from dmtoolkit.estimate.datamodels import fit_datamodels
from dmtoolkit.estimate.influence import compute_influence, influence_from_arrays
from dmtoolkit.estimate.lasso import LassoPath
from dmtoolkit.estimate.lds import evaluate

__all__ = ["LassoPath", "compute_influence", "evaluate", "fit_datamodels", "influence_from_arrays"]
