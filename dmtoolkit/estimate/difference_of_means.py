"""Difference of means (Algorithm 1 of Jain et al., 2022), streamed over row blocks.

Infl[k, j] = mean margin on target j over models whose subset contains unit k
           − mean margin on target j over models whose subset does not.

It is the maximum-sample-reuse Banzhaf estimator. With masks M (m×P, 0/1) and margins F (m×T) every
quantity comes from one matrix product per row block, Mᵀ[F, F²] (plus a row and a column of ones for
sums and counts), accumulated in float64: S = MᵀF is the "in" sum, colsum(F) − S the "out" sum, and
Mᵀ(F²) the in-group second moment that Welch's standard error sqrt(var_in/n_in + var_out/n_out)
needs. Without standard errors (`errors=False`) the product is MᵀF alone, half the work. Margins are
shifted by a per-target constant (the first block's mean) before the product so float32 block sums
do not lose the small differences.

As a linear predictor (the estimator interface) the influences are centred on the fitted models:
f̂(S) = mean_margin + Σ_k Infl_k · (1[k ∈ S] − n_in_k / m), i.e. intercept_ = mean_margin − Σ_k Infl_k · n_in_k / m.
"""

from __future__ import annotations

import warnings
from typing import Any, Self

import numpy as np
import torch

from dmtoolkit.devices import resolve_device
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.base import Estimator, ExtraDataset
from dmtoolkit.estimate.blocks import BLOCK_ROWS, row_blocks, selected_rows



class UndefinedInfluenceWarning(UserWarning):
    """Some units are in every model or in none, so their influence (or its error) is undefined (NaN)."""


class MeansAccumulator:
    """Streaming sums for difference-of-means influence; feed row blocks with `add`.

    Each block costs one float32 product [M, 1]ᵀ·[F, F², 1] of shape (P+1)×(2T+1) (or [M, 1]ᵀ·[F, 1]
    without standard errors), added into float64 sums: the extra row gives the column sums of F and F²
    (and m), the extra column the counts n_in, so nothing else touches the block.
    """

    def __init__(self, num_units: int, num_targets: int, device: torch.device, *, errors: bool = True) -> None:
        self.device = device
        self.num_units, self.num_targets, self.errors = num_units, num_targets, errors
        self.moments = 2 if errors else 1
        self.sums = torch.zeros(num_units + 1, self.moments * num_targets + 1, dtype=torch.float64, device=device)
        self.shift: torch.Tensor | None = None

    def add(self, masks: np.ndarray, margins: np.ndarray) -> None:
        """Add a block of models: masks (r, P) bool, margins (r, T)."""
        r, P, T = len(masks), self.num_units, self.num_targets
        if r == 0:
            return
        f = torch.as_tensor(np.asarray(margins, dtype=np.float32), device=self.device)
        if self.shift is None:
            self.shift = f.mean(0)
        left = torch.empty(r, P + 1, dtype=torch.float32, device=self.device)
        left[:, :P] = torch.as_tensor(np.asarray(masks, dtype=bool), device=self.device)
        left[:, P] = 1
        right = torch.empty(r, self.moments * T + 1, dtype=torch.float32, device=self.device)
        torch.sub(f, self.shift, out=right[:, :T])
        if self.errors:
            torch.mul(right[:, :T], right[:, :T], out=right[:, T:2 * T])
        right[:, -1] = 1
        self.sums.add_(left.T @ right)

    def finish(self, estimator: DifferenceOfMeans, unit_names: list[str] | None) -> None:
        """Set the estimator's fitted attributes; NaN (with a warning) where undefined."""
        if self.shift is None:
            raise UserError("no models were given; influence needs at least 2")
        P, T = self.num_units, self.num_targets
        m = int(self.sums[P, -1].item())
        n_in = self.sums[:P, -1:].round()
        n_out = m - n_in
        # per-unit factors, NaN where undefined so that NaN propagates without full-size masking
        defined = (n_in > 0) & (n_out > 0)
        inv_in = torch.where(defined, 1 / n_in, torch.nan)
        inv_out = torch.where(defined, 1 / n_out, torch.nan)
        s_in = self.sums[:P, :T]
        s_out = self.sums[P, :T] - s_in
        mean_in, mean_out = s_in * inv_in, s_out * inv_out
        influence = mean_in - mean_out
        n_in_np = n_in[:, 0].long().cpu().numpy()
        messages = undefined_unit_messages(n_in_np, m, unit_names, errors=self.errors)
        for message in messages:
            warnings.warn(message, UndefinedInfluenceWarning, stacklevel=3)
        mean_margin = self.sums[P, :T] / m + self.shift.double()
        rates = (n_in[:, 0] / m)
        intercept = mean_margin - (torch.nan_to_num(influence, nan=0.0) * rates[:, None]).sum(0)
        estimator.coef_ = influence.float().cpu().numpy()
        estimator.intercept_ = intercept.float().cpu().numpy()
        estimator.stderr_ = (self._welch_stderr(n_in, n_out, s_in, s_out, mean_in, mean_out)
                             if self.errors else None)
        estimator.n_in_ = n_in_np
        estimator.n_out_ = m - n_in_np
        estimator.mean_margin_ = mean_margin.float().cpu().numpy()
        estimator.num_models_ = m
        estimator.warnings_ = tuple(messages)

    def _welch_stderr(self, n_in: torch.Tensor, n_out: torch.Tensor, s_in: torch.Tensor, s_out: torch.Tensor,
                      mean_in: torch.Tensor, mean_out: torch.Tensor) -> np.ndarray:
        """sqrt(var_in/n_in + var_out/n_out) from the second moments; NaN where a group has fewer than 2 models."""
        P, T = self.num_units, self.num_targets
        welch = (n_in > 1) & (n_out > 1)
        se_in = torch.where(welch, 1 / (n_in * (n_in - 1)), torch.nan)
        se_out = torch.where(welch, 1 / (n_out * (n_out - 1)), torch.nan)
        q_in = self.sums[:P, T:2 * T]
        q_out = self.sums[P, T:2 * T] - q_in
        var = torch.addcmul(q_in, s_in, mean_in, value=-1).clamp_(min=0).mul_(se_in)
        var.add_(torch.addcmul(q_out, s_out, mean_out, value=-1).clamp_(min=0).mul_(se_out))
        return var.sqrt_().float().cpu().numpy()


def undefined_unit_messages(n_in: np.ndarray, m: int, unit_names: list[str] | None, *,
                            errors: bool = True) -> list[str]:
    """One line per kind of undefined unit: in every model or in none (NaN influence), or in one (NaN error)."""
    names = unit_names or [str(k) for k in range(len(n_in))]
    out = []
    checks = [((n_in == 0) | (n_in == m), "in every model or in none, so their influence is NaN")]
    if errors:
        checks.append((np.isin(n_in, (1, m - 1)), "in (or out of) only one model, so their standard error is NaN"))
    for bad, what in checks:
        if bad.any():
            listed = ", ".join(names[k] for k in np.flatnonzero(bad)[:5])
            more = f" and {bad.sum() - 5} more" if bad.sum() > 5 else ""
            out.append(f"{bad.sum()} of {len(n_in)} units ({listed}{more}) are {what}; train more models to define it")
    return out


class DifferenceOfMeans(Estimator):
    """Mean margin with the unit minus without it, with Welch standard errors (see the module docstring).

    Fitted: coef_ (P, T) influences (NaN where undefined), intercept_ (T,), stderr_ (P, T) or None,
    n_in_ / n_out_ (P,) model counts, mean_margin_ (T,), num_models_, warnings_.
    """

    name = "difference-of-means"
    coef_meaning = "mean margin with the unit in the subset minus without it; NaN where undefined"

    def __init__(self, *, errors: bool = True, block_rows: int = BLOCK_ROWS, device: str | None = None) -> None:
        self.errors = errors
        self.block_rows = block_rows
        self.device = device

    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None) -> Self:
        device = resolve_device(self.device)
        rows = selected_rows(masks, margins, rows)
        acc = MeansAccumulator(masks.shape[1], margins.shape[1], device, errors=self.errors)
        for _, (mask_block, margin_block) in row_blocks([masks, margins], rows, self.block_rows):
            acc.add(mask_block, margin_block)
        acc.finish(self, unit_names)
        self.fit_rows_ = rows
        return self

    def settings(self) -> dict[str, Any]:
        return {"errors": self.errors}

    @property
    def stderr_method(self) -> str:
        """How stderr_ was computed (recorded in the estimate file)."""
        return "Welch, sqrt(var_in/n_in + var_out/n_out)" if self.errors else "not computed (errors=False)"

    def extra_datasets(self) -> list[ExtraDataset]:
        extras = []
        if self.stderr_ is not None:
            extras.append(ExtraDataset("stderr", self.stderr_, f"standard error of the coefficient ({self.stderr_method})",
                                       "unit, target example", "margin"))
        return extras + [
            ExtraDataset("n_in", self.n_in_, "fitted models whose subset contains the unit", "unit", "models"),
            ExtraDataset("n_out", self.n_out_, "fitted models whose subset lacks the unit", "unit", "models"),
            ExtraDataset("mean_margin", self.mean_margin_, "mean margin over the fitted models", "target example",
                         "margin"),
        ]
