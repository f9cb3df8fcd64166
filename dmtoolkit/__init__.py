"""dmtoolkit: which source data help or hurt a transfer-learned model (datamodels for transfer learning).

The Python API (`import dmtoolkit as dm`; walk-through in docs/python-api.md) is the names in `__all__`:

- run stores: `open_store`, `RunStore`, `create_store`, `load_recipe`, `build_run_data`, `import_arrays`,
  `import_store`, `validate_store`, `store_summary`
- estimators: `make_estimator`, `estimator_names`, `ESTIMATORS`, `Estimator`, `influence_from_arrays`,
  `fit_store`, `compute_influence`, `fit_datamodels`, `load_estimate`, `evaluate`
- analyses (typed results with `to_json()`): `rank_classes`, `subpopulation`, `explain_target`,
  `detect_leakage`, `detect_mislabels`, `counterfactual`, `recommend_removal`; how reproducible a store's class answers are:
  `reliability_report`; the HTML report: `build_report`
- errors: `UserError`, `StoreError`

Names are imported on first use (module `__getattr__`), so `import dmtoolkit` stays light: no torch, no
numpy until a name that needs them is touched. This package module is the public facade above every layer;
it names modules by string and imports them lazily, so the layering of the modules themselves is unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {  # public name -> module that defines it
    "RunStore": "store", "open_store": "store", "create_store": "store", "load_recipe": "recipe",
    "build_run_data": "run.prepare", "import_arrays": "store_import", "import_store": "store_import",
    "validate_store": "store_checks", "store_summary": "store_checks",
    "make_estimator": "estimate.registry", "estimator_names": "estimate.registry", "ESTIMATORS": "estimate.registry",
    "Estimator": "estimate.base", "influence_from_arrays": "estimate.influence", "fit_store": "estimate.fit",
    "compute_influence": "estimate.influence", "fit_datamodels": "estimate.datamodels",
    "load_estimate": "estimate.files", "evaluate": "estimate.lds",
    "rank_classes": "analyze.classes", "subpopulation": "analyze.classes", "explain_target": "analyze.classes",
    "detect_leakage": "analyze.examples", "detect_mislabels": "analyze.examples", "counterfactual": "analyze.retrain",
    "recommend_removal": "analyze.recommend", "reliability_report": "reliability",
    "build_report": "report.html",
    "UserError": "errors", "StoreError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
