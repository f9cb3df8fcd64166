"""The regression estimator: least squares of each target's margin on all masks at once.

margin_j(S) ≈ b_j + Σ_k β_kj 1[k ∈ S]; β_kj is unit k's influence with every other unit's linear effect
removed rather than averaged over (difference of means leaves those effects in its noise). Each block
adds [M, 1]ᵀ[M, 1] (the Gram matrix, (P+1)²) and [M, 1]ᵀF into float64 sums, plus Σ F² for the
residual variance; memory is O(P² + P·T) whatever the number of models. It needs more models than units.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch

from dmtoolkit.devices import resolve_device
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.base import ExtraDataset, InfluenceEstimator
from dmtoolkit.estimate.blocks import row_blocks, selected_rows
from dmtoolkit.estimate.splits import Draws


class RegressionAccumulator:
    """Streaming sums for least squares of margins on masks; feed row blocks with `add`."""

    def __init__(self, num_units: int, num_targets: int, device: torch.device) -> None:
        self.device = device
        self.num_units, self.num_targets = num_units, num_targets
        self.gram = torch.zeros(num_units + 1, num_units + 1, dtype=torch.float64, device=device)
        self.cross = torch.zeros(num_units + 1, num_targets, dtype=torch.float64, device=device)
        self.squares = torch.zeros(num_targets, dtype=torch.float64, device=device)
        self.shift: torch.Tensor | None = None

    def add(self, masks: np.ndarray, margins: np.ndarray) -> None:
        """Add a block of models: masks (r, P) bool, margins (r, T)."""
        if len(masks) == 0:
            return
        f = torch.as_tensor(np.asarray(margins, dtype=np.float32), device=self.device)
        if self.shift is None:
            self.shift = f.mean(0)
        f = (f - self.shift).double()
        left = torch.ones(len(masks), self.num_units + 1, dtype=torch.float64, device=self.device)
        left[:, :self.num_units] = torch.as_tensor(np.asarray(masks, dtype=bool), device=self.device)
        self.gram.add_(left.T @ left)
        self.cross.add_(left.T @ f)
        self.squares.add_((f * f).sum(0))

    def finish(self, estimator: Regression) -> None:
        """Set the estimator's coefficients (and their OLS standard errors).

        When every subset has the same size (the default random design) the masks sum to a constant, so
        only differences between units are identified: the coefficients are then the solution that sums to
        zero over units (each unit against the average unit), like difference of means, which also compares
        a unit with the ones it displaces.
        """
        if self.shift is None:
            raise UserError("no models were given; the regression estimator needs models")
        P = self.num_units
        m = int(self.gram[P, P].item())
        counts = self.gram[:P, P]
        centred = self.gram[:P, :P] - torch.outer(counts, counts) / m
        cross = self.cross[:P] - torch.outer(counts, self.cross[P]) / m
        values, vectors = torch.linalg.eigh(centred)
        null = values <= 1e-9 * values[-1].clamp(min=1e-300)
        fixed_size = int(null.sum()) == 1 and abs(float(vectors[:, 0].sum())) ** 2 > P * (1 - 1e-6)
        rank = P - int(null.sum())
        if m <= rank + 1 or (null.any() and not fixed_size):
            raise UserError(f"the regression estimator needs more models than units + 1, with the masks not "
                            f"collinear (have {m} models spanning {rank} of {P} units; complementary mask "
                            "pairs count once); train more models or use --estimator difference-of-means")
        inverse_values = torch.where(null, torch.zeros_like(values), 1 / values)
        pseudo_inverse = (vectors * inverse_values) @ vectors.T
        coef = pseudo_inverse @ cross
        intercept = (self.cross[P] - counts @ coef) / m
        stderr = None
        if estimator.errors:
            fitted_squares = (coef * cross).sum(0) + self.cross[P] ** 2 / m
            residual = (self.squares - fitted_squares).clamp_(min=0) / (m - rank - 1)
            stderr = (pseudo_inverse.diagonal()[:, None] * residual[None, :]).sqrt().float().cpu().numpy()
        n_in = counts.round().long().cpu().numpy()
        estimator.coef_ = coef.float().cpu().numpy()
        estimator.intercept_ = (intercept + self.shift.double()).float().cpu().numpy()
        estimator.stderr_ = stderr
        estimator.n_in_, estimator.n_out_ = n_in, m - n_in
        estimator.mean_margin_ = (intercept + (counts / m) @ coef + self.shift.double()).float().cpu().numpy()
        estimator.num_models_ = m
        estimator.stderr_dof_ = m - rank - 1  # residual degrees of freedom of the t intervals
        estimator.warnings_ = ()


class Regression(InfluenceEstimator):
    """Least squares on all masks at once (see the module docstring).

    Fitted: coef_ (P, T), intercept_ (T,), stderr_ (P, T) OLS standard errors or None, n_in_ / n_out_ (P,),
    mean_margin_ (T,) the fit at every unit's inclusion rate, num_models_, warnings_.
    """

    name = "regression"
    coef_meaning = "least-squares coefficient of the unit in the margin's regression on all masks"

    def memory_bytes(self, num_units: int, num_targets: int) -> int:
        """The (P+1) × (P+1) float64 Gram matrix and its inverse, X'y (float64), coefficients and errors."""
        return 16 * (num_units + 1) ** 2 + 16 * num_units * num_targets

    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None, draws: Draws | None = None) -> Self:
        device = resolve_device(self.device)
        rows = selected_rows(masks, margins, rows)
        acc = RegressionAccumulator(masks.shape[1], margins.shape[1], device)
        for _, (mask_block, margin_block) in row_blocks([masks, margins], rows, self.block_rows):
            acc.add(mask_block, margin_block)
        acc.finish(self)
        self.fit_rows_ = rows
        return self

    def fitted_attributes(self) -> dict[str, Any]:
        # Conditional on the masks the coefficients are linear in the margins, so the OLS variance holds for
        # any mask design as long as the models' noise is independent (pairs and blocks share only masks).
        return {"stderr_method": "OLS, sqrt(residual variance * (XᵀX)⁻¹_kk), conditional on the masks"
                if self.errors else "not computed (errors=False)", "stderr_dof": self.stderr_dof_}

    def extra_datasets(self) -> list[ExtraDataset]:
        extras = []
        if self.stderr_ is not None:
            extras.append(ExtraDataset("stderr", self.stderr_, "standard error of the coefficient (OLS, "
                                       "sqrt(residual variance * (XᵀX)⁻¹_kk))", "unit, target example", "margin"))
        return extras + self.count_datasets("the fit with every unit at its inclusion rate")
