"""dmtoolkit: which source data help or hurt a transfer-learned model (datamodels for transfer learning).

The Python API (`import dmtoolkit as dm`; walk-through in docs/python-api.md) is the names in `__all__`:

- run stores: `open_store`, `RunStore`, `create_store`, `load_recipe`, `build_run_data`, `train` (the pending
  rows, as `dmtoolkit train`), `import_arrays`, `import_store`, `validate_store`, `store_summary`
- estimators: `make_estimator`, `estimator_names`, `ESTIMATORS`, `Estimator`, `influence_from_arrays`,
  `fit_store`, `compute_influence`, `fit_datamodels`, `load_estimate`, `open_estimate`, `evaluate`
- analyses (typed results with `to_json()`; `print()` shows the CLI's text, `to_frame()` a DataFrame): `rank_classes`, `subpopulation`, `explain_target`,
  `detect_leakage`, `detect_mislabels`, `counterfactual`, `recommend_removal`; how reproducible a store's class answers are:
  `reliability_report`; the HTML report: `build_report`
- errors: `UserError`, `StoreError`

Names are imported on first use (module `__getattr__`), so `import dmtoolkit` stays light: no torch, no
numpy until a name that needs them is touched. This package module is the public facade above every layer;
it names modules by string and imports them lazily, so the layering of the modules themselves is unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from dmtoolkit.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {  # public name -> module that defines it
    "RunStore": "store", "open_store": "store", "create_store": "store", "load_recipe": "recipe",
    "build_run_data": "run.prepare", "train": "run.api", "import_arrays": "store_import", "import_store": "store_import",
    "validate_store": "store_checks", "store_summary": "store_checks",
    "make_estimator": "estimate.registry", "estimator_names": "estimate.registry", "ESTIMATORS": "estimate.registry",
    "Estimator": "estimate.base", "influence_from_arrays": "estimate.influence", "fit_store": "estimate.fit",
    "compute_influence": "estimate.influence", "fit_datamodels": "estimate.datamodels",
    "load_estimate": "estimate.files", "open_estimate": "estimate.files", "evaluate": "estimate.lds",
    "rank_classes": "analyze.classes", "subpopulation": "analyze.classes", "explain_target": "analyze.classes",
    "detect_leakage": "analyze.leakage", "detect_mislabels": "analyze.mislabels", "counterfactual": "analyze.retrain",
    "recommend_removal": "analyze.recommend", "reliability_report": "analyze.reliability",
    "build_report": "report.html",
    "UserError": "errors", "StoreError": "errors",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


# `dm.train` is a function, and `dmtoolkit.train` is also the subpackage of trainers. Importing a subpackage
# sets the package's attribute of that name to it, so without the two classes below the first `dm.train(...)`
# (which imports dmtoolkit.train.*) would turn `dm.train` into the subpackage.
class _TrainFunction:
    """`dm.train` (`dmtoolkit.run.api.train`, imported on first call). Any other attribute is the subpackage's,
    so `dmtoolkit.train.contract.Job` and `import dmtoolkit.train.job as job` keep working."""

    @property
    def __wrapped__(self) -> Any:  # inspect.signature(dm.train) and help text follow it
        return importlib.import_module(f"{__name__}.run.api").train

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.__wrapped__.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(f"{__name__}.train"), name)

    def __repr__(self) -> str:
        return "<function dmtoolkit.train: train the pending rows of a store (dmtoolkit.run.api.train)>"


class _Package(types.ModuleType):
    """This module's type: it keeps `train` the function when the subpackage `dmtoolkit.train` is imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return  # the subpackage stays in sys.modules and behind _TrainFunction's attributes
        super().__setattr__(name, value)


train = _TrainFunction()
sys.modules[__name__].__class__ = _Package
