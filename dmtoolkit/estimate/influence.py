"""Class or example influence of every unit on every target: the `dmtoolkit influence` entry points.

`compute_influence` fits an influence estimator from the registry (difference of means by default,
or regression) on a run store and writes ESTIMATE.h5; `influence_from_arrays` does the same on
in-memory arrays and returns the fitted estimator (coef_, intercept_, stderr_, n_in_, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmtoolkit.devices import resolve_device
from dmtoolkit.estimate.base import Estimator
from dmtoolkit.estimate.difference_of_means import UndefinedInfluenceWarning
from dmtoolkit.estimate.fit import fit_store
from dmtoolkit.estimate.options import BLOCK_ROWS, TEST_FRACTION
from dmtoolkit.estimate.registry import make_estimator

__all__ = ["BLOCK_ROWS", "UndefinedInfluenceWarning", "compute_influence", "influence_from_arrays"]


def influence_from_arrays(masks: np.ndarray, margins: np.ndarray, *, device: str | None = None,
                          block_rows: int = BLOCK_ROWS, errors: bool = True,
                          estimator: str = "difference-of-means") -> Estimator:
    """Fit `estimator` on in-memory masks (m, P) and margins (m, T); `errors=False` skips standard errors."""
    model = make_estimator(estimator, errors=errors, block_rows=block_rows, device=device)
    return model.fit(np.asarray(masks), np.asarray(margins))


def compute_influence(store_path: str | Path, out_path: str | Path, *, device: str | None = None,
                      block_rows: int = BLOCK_ROWS, holdout_frac: float = TEST_FRACTION, seed: int = 0,
                      force: bool = False, errors: bool = True, estimator: str = "difference-of-means",
                      targets: slice | None = None) -> Estimator:
    """Write ESTIMATE.h5 for a run store with an influence estimator and return the fitted estimator.

    A random `holdout_frac` of the completed models (drawn with `seed`, rows recorded in the file) is
    left out of the fit so `dmtoolkit evaluate` can score the estimate on models it never saw; 0 fits on
    every completed model. `errors=False` skips the standard errors (no `stderr` dataset).
    """
    resolve_device(device)  # an unusable device is the first thing to hear about
    model = make_estimator(estimator, errors=errors, block_rows=block_rows, device=device)
    return fit_store(store_path, out_path, model, test_fraction=holdout_frac, seed=seed, targets=targets, force=force)
