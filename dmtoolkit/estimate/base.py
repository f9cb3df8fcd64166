"""The estimator interface: every estimator is a linear predictor of margins from masks.

Scikit-learn conventions: settings go to the constructor, `fit(masks, margins, rows)` returns self,
learned attributes end with `_`. Every fitted estimator has `coef_` (P, T) — the change in margin
attributed to each unit, in mask units — and `intercept_` (T,), so that

    predicted margin of a model with mask S = Σ_k coef_[k] · 1[k ∈ S] + intercept_.

LDS, the analyses and the report use only this, so they need no per-estimator branches. Extras
(standard errors, counts, a λ path) are further trailing-underscore attributes, and each estimator
lists what it saves beside coef_ and intercept_ with `extra_datasets()`.

A new estimator is one module with a subclass of `Estimator` plus one line in
`dmtoolkit.estimate.registry.ESTIMATORS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from dmtoolkit.estimate.options import BLOCK_ROWS

if TYPE_CHECKING:
    from dmtoolkit.estimate.splits import Draws


@dataclass(frozen=True)
class ExtraDataset:
    """An estimator output saved beside coef/intercept: the array and what it is (HDF5 attributes)."""

    name: str
    data: Any
    meaning: str
    axes: str
    units: str


class Estimator(ABC):
    """Fits a linear model of target margins on subset masks; see the module docstring."""

    name: ClassVar[str]
    """Registry name, as `--estimator` takes it."""

    coef_meaning: ClassVar[str] = "change in predicted margin when the unit is in the subset"

    coef_: np.ndarray
    intercept_: np.ndarray
    warnings_: tuple[str, ...] = ()
    """Warnings the fit raised, one line each (recorded in the estimate file)."""
    fit_rows_: np.ndarray
    """Rows the coefficients were fitted on."""
    selection_rows_: np.ndarray = np.zeros(0, np.int64)
    """Rows held out inside the fit to choose settings (datamodels' λ); empty for estimators without any."""

    @abstractmethod
    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None, draws: Draws | None = None) -> Self:
        """Fit on masks (m, P) 0/1 and margins (m, T), both sliceable by row ranges (arrays, h5py datasets).

        `rows` restricts the fit to those rows (default: all); `unit_names` only make messages readable;
        `draws` are the rows' draws (complementary pairs, orthogonal blocks; default: every row
        independent), which standard errors and internal splits must respect. Returns self.
        """

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted margins (n, T) for masks (n, P); see `linear_prediction`."""
        return linear_prediction(masks, self.coef_, self.intercept_)

    def settings(self) -> dict[str, Any]:
        """Constructor settings worth recording in the estimate file (numbers, strings, booleans)."""
        return {}

    def fitted_attributes(self) -> dict[str, Any]:
        """Descriptions of the fit recorded as file attributes (e.g. how standard errors were computed)."""
        return {}

    def extra_datasets(self) -> list[ExtraDataset]:
        """Fitted outputs saved beside coef_ and intercept_ (e.g. standard errors, counts, the λ path)."""
        return []

    def memory_bytes(self, num_units: int, num_targets: int) -> int:
        """A floor on the bytes the fit holds at once for P units and T targets (checked before fitting by
        `fit_store`): by default a float64 accumulator and float32 coefficients and errors per entry."""
        return 16 * num_units * num_targets



class InfluenceEstimator(Estimator):
    """What the streaming influence estimators share: their settings and the model counts they save."""

    def __init__(self, *, errors: bool = True, block_rows: int = BLOCK_ROWS, device: str | None = None) -> None:
        self.errors = errors
        self.block_rows = block_rows
        self.device = device

    def settings(self) -> dict[str, Any]:
        return {"errors": self.errors}

    def count_datasets(self, mean_meaning: str) -> list[ExtraDataset]:
        """n_in, n_out and mean_margin as saved extras (`mean_meaning` says what mean_margin is)."""
        return [
            ExtraDataset("n_in", self.n_in_, "fitted models whose subset contains the unit", "unit", "models"),
            ExtraDataset("n_out", self.n_out_, "fitted models whose subset lacks the unit", "unit", "models"),
            ExtraDataset("mean_margin", self.mean_margin_, mean_meaning, "target example", "margin"),
        ]


def linear_prediction(masks: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Σ_k coef[k] · mask[k] + intercept for each row of masks; undefined (NaN) coefficients count as 0.

    A NaN coefficient marks a unit that was in every model or in none, whose effect the data cannot
    tell: predicting as if it had none is the only honest choice, and it keeps predictions finite.
    """
    weights = np.nan_to_num(np.asarray(coef, dtype=np.float32), nan=0.0)
    return np.asarray(masks, dtype=np.float32) @ weights + np.asarray(intercept, dtype=np.float32)
