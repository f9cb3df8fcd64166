"""Estimators over a run store, behind one interface (`Estimator`: fit → coef_, intercept_) and a registry.

Difference of means and regression (`compute_influence`), datamodels (`fit_datamodels`, on our lasso
path `LassoPath`), any registered estimator (`fit_store`), estimate files (`load_estimate`), LDS (`evaluate`).
Names are imported on first use, so `dmtoolkit.estimate.registry` (the CLI's choices) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Estimator": "base", "linear_prediction": "base", "fit_datamodels": "datamodels", "Estimate": "files",
    "load_estimate": "files", "fit_store": "fit", "compute_influence": "influence",
    "influence_from_arrays": "influence", "LassoPath": "lasso", "LdsResult": "lds", "evaluate": "lds",
    "ESTIMATORS": "registry", "estimator_names": "registry", "make_estimator": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
