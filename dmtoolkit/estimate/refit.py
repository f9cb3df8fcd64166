"""Refit an estimate's estimator on other per-model values, exactly as the estimate was fitted.

Difference of means and the regression estimator are linear in the margins, so the influence of a unit on
any per-model quantity (a target-class mean margin, the source accuracy) and its design-valid standard
error come from refitting the same estimator, with the settings, fit rows and draws recorded in
the estimate file, on that quantity.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import numpy as np

from dmtoolkit.errors import UserError
from dmtoolkit.estimate.base import Estimator
from dmtoolkit.estimate.files import Estimate
from dmtoolkit.estimate.fit import store_draws
from dmtoolkit.estimate.registry import make_estimator
from dmtoolkit.store import RunStore


def refit_on_values(estimate: Estimate, store: RunStore, values: np.ndarray, *, device: str | None = "cpu") -> Estimator:
    """The estimate's estimator refitted on `values` ((m,) or (m, k), one row per store row) over the estimate's
    fit rows and the store's draws. The store must be the estimate's (check it first)."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        values = values[:, None]
    if len(values) != store.num_models:
        raise UserError(f"{len(values)} values for a store of {store.num_models} models")
    return refit_on_rows(estimate, store, values, estimate.fit_rows, device=device, masks=store.masks[()])


def refit_on_rows(estimate: Estimate, store: RunStore, values: Any, rows: np.ndarray, *, device: str | None = "cpu",
                  masks: Any = None) -> Estimator:
    """A new estimator of the estimate's kind, with its recorded settings, fitted on `values` (any (m, k)
    row-sliceable array, one row per store row, e.g. the store's margins) over `rows` and the store's draws
    (`masks`: the store's masks unless given)."""
    recorded = json.loads(estimate.attrs.get("settings", "{}") or "{}")
    entry = make_estimator(estimate.estimator)
    accepted = inspect.signature(type(entry).__init__).parameters
    estimator = make_estimator(estimate.estimator, **{k: v for k, v in recorded.items() if k in accepted and k != "device"},
                               device=device)
    estimator.fit(store.masks if masks is None else masks, values, rows, unit_names=store.unit_names,
                  draws=store_draws(store))
    return estimator
