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
from dmtoolkit.estimate.base import ExtraDataset, InfluenceEstimator
from dmtoolkit.estimate.blocks import row_blocks, selected_rows
from dmtoolkit.estimate.splits import Draws, check_contiguous


class UndefinedInfluenceWarning(UserWarning):
    """Some units are in every model or in none, so their influence (or its error) is undefined (NaN)."""


class MeansAccumulator:
    """Streaming sums for difference-of-means influence; feed row blocks with `add`.

    Each block costs one float32 product [M, 1]ᵀ·[F, F², 1] of shape (P+1)×(2T+1) (or [M, 1]ᵀ·[F, 1]
    without standard errors), added into float64 sums: the extra row gives the column sums of F and F²
    (and m), the extra column the counts n_in, so nothing else touches the block.
    """

    def __init__(self, num_units: int, num_targets: int, device: torch.device, *, errors: bool = True,
                 grouped: bool = False) -> None:
        self.device = device
        self.num_units, self.num_targets, self.errors = num_units, num_targets, errors
        self.clusters = ClusterSums(num_units, num_targets, device) if errors and grouped else None
        self.welch = errors and self.clusters is None  # only Welch's error needs Mᵀ(F²) in the main product
        self.moments = 2 if self.welch else 1
        self.sums = torch.zeros(num_units + 1, self.moments * num_targets + 1, dtype=torch.float64, device=device)
        self.shift: torch.Tensor | None = None
        self._carry: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, masks: np.ndarray, margins: np.ndarray, draws: np.ndarray | None = None) -> None:
        """Add a block of models: masks (r, P) bool, margins (r, T), and their draw ids when grouped.

        Draws are runs of consecutive rows; a run that may continue into the next block is carried over.
        """
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
        if self.welch:
            torch.mul(right[:, :T], right[:, :T], out=right[:, T:2 * T])
        right[:, -1] = 1
        self.sums.add_(left.T @ right)
        if self.clusters is not None:
            self._add_clusters(left[:, :P], right[:, :T], np.asarray(draws))

    def _add_clusters(self, masks: torch.Tensor, shifted: torch.Tensor, draws: np.ndarray) -> None:
        if self._carry is not None:
            carry_masks, carry_margins, carry_draws = self._carry
            masks, shifted = torch.cat([carry_masks, masks]), torch.cat([carry_margins, shifted])
            draws = np.concatenate([carry_draws, draws])
        last = len(draws) - int(np.argmax(draws[::-1] != draws[-1])) if (draws != draws[-1]).any() else 0
        self._carry = (masks[last:], shifted[last:], draws[last:])
        if last:
            self.clusters.add(masks[:last], shifted[:last], draws[:last])

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
        estimator.stderr_, estimator.stderr_dof_ = None, None
        if self.clusters is not None:
            if self._carry is not None and len(self._carry[2]):
                self.clusters.add(*self._carry)
            self._carry = None
            estimator.stderr_ = self.clusters.stderr(n_in[:, 0], n_out[:, 0], s_in, s_out)
            estimator.stderr_dof_ = self.clusters.groups - 1
        elif self.welch:
            estimator.stderr_ = self._welch_stderr(n_in, n_out, s_in, s_out, mean_in, mean_out)
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


class ClusterSums:
    """Per-draw sums for a design-based (cluster) standard error of difference of means.

    Linearised, unit k's difference of means is Σ_i ψ_i with ψ_i = m_ik (f_i − μ_in)/n_in − (1 − m_ik)(f_i − μ_out)/n_out.
    The draws g (a complementary pair, an orthogonal block) are the clusters, so Var ≈ G/(G−1) Σ_g B_g² with
    B_g = Σ_(i∈g) ψ_i. For a complementary pair this is exactly the paired-difference variance, for a
    balanced block the variance of the G block estimates over G; intervals use Student's t with G − 1
    degrees of freedom. With S_g = Σ_(i∈g) m_i f_i, c_g = Σ_(i∈g) m_i, t_g = Σ_(i∈g) f_i, n_g = |g|:
    B_g = a S_g − w t_g − c_g u + n_g v  (a = 1/n_in + 1/n_out, w = 1/n_out, u = μ_in/n_in + μ_out/n_out,
    v = μ_out/n_out), so one pass accumulating ΣS², ΣS·t, ΣcS, ΣnS, Σc·t, Σt², Σn·t, Σc², Σn·c, Σn² suffices.
    S_g comes from one batched product per chunk of draws (cost m·P·T, as the main product).
    """

    CHUNK_ELEMENTS = 1 << 22  # draws × P × T floats per batched product

    def __init__(self, num_units: int, num_targets: int, device: torch.device) -> None:
        P, T = num_units, num_targets
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.SS, self.St, self.cS, self.nS, self.ct = (zeros(P, T) for _ in range(5))
        self.tt, self.nt = zeros(T), zeros(T)
        self.cc, self.nc = zeros(P), zeros(P)
        self.nn = 0.0
        self.groups = 0

    def add(self, masks: torch.Tensor, shifted: torch.Tensor, draws: np.ndarray) -> None:
        """Add complete draws: masks (r, P) 0/1 float, shifted margins (r, T), draw ids (r,) in runs."""
        starts = np.flatnonzero(np.r_[True, draws[1:] != draws[:-1]])
        sizes = np.diff(np.r_[starts, len(draws)])
        G, L = len(starts), int(sizes.max())
        P, T = masks.shape[1], shifted.shape[1]
        group = torch.as_tensor(np.repeat(np.arange(G), sizes), device=masks.device)
        slot = torch.as_tensor(np.arange(len(draws)) - np.repeat(starts, sizes), device=masks.device)
        chunk = max(1, self.CHUNK_ELEMENTS // max(1, L * (P + T) + P * T))
        for lo in range(0, G, chunk):
            hi = min(lo + chunk, G)
            rows = slice(int(starts[lo]), int(starts[hi]) if hi < G else len(draws))
            g, s = group[rows] - lo, slot[rows]
            padded_masks = torch.zeros(hi - lo, L, P, dtype=torch.float32, device=masks.device)
            padded_margins = torch.zeros(hi - lo, L, T, dtype=torch.float32, device=masks.device)
            padded_masks[g, s], padded_margins[g, s] = masks[rows], shifted[rows]
            S = torch.bmm(padded_masks.transpose(1, 2), padded_margins).double()  # (g, P, T)
            c = padded_masks.sum(1).double()  # (g, P)
            t = padded_margins.sum(1).double()  # (g, T)
            n = torch.as_tensor(sizes[lo:hi], dtype=torch.float64, device=masks.device)
            self.SS += (S * S).sum(0)
            self.St += (S * t[:, None, :]).sum(0)
            self.cS += (S * c[:, :, None]).sum(0)
            self.nS += (S * n[:, None, None]).sum(0)
            self.ct += c.T @ t
            self.tt += (t * t).sum(0)
            self.nt += n @ t
            self.cc += (c * c).sum(0)
            self.nc += n @ c
            self.nn += float((n * n).sum())
            self.groups += hi - lo

    def stderr(self, n_in: torch.Tensor, n_out: torch.Tensor, s_in: torch.Tensor, s_out: torch.Tensor) -> np.ndarray:
        """sqrt(G/(G−1) Σ_g B_g²) per (unit, target); NaN where a side is empty or there are fewer than 2 draws."""
        G = self.groups
        defined = (n_in > 0) & (n_out > 0)
        if G < 2:
            return torch.full_like(s_in, torch.nan).float().cpu().numpy()
        inv_in = torch.where(defined, 1 / n_in, torch.nan)[:, None]
        inv_out = torch.where(defined, 1 / n_out, torch.nan)[:, None]
        mu_in, mu_out = s_in * inv_in, s_out * inv_out
        a, w = inv_in + inv_out, inv_out
        u, v = mu_in * inv_in + mu_out * inv_out, mu_out * inv_out
        total = (a * a * self.SS + w * w * self.tt[None, :] + u * u * self.cc[:, None] + v * v * self.nn
                 - 2 * a * w * self.St - 2 * a * u * self.cS + 2 * a * v * self.nS + 2 * w * u * self.ct
                 - 2 * w * v * self.nt[None, :] - 2 * u * v * self.nc[:, None])
        return (total.clamp_(min=0) * (G / (G - 1))).sqrt_().float().cpu().numpy()


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


class DifferenceOfMeans(InfluenceEstimator):
    """Mean margin with the unit minus without it, with standard errors that follow the mask design.

    Fitted: coef_ (P, T) influences (NaN where undefined), intercept_ (T,), stderr_ (P, T) or None,
    n_in_ / n_out_ (P,) model counts, mean_margin_ (T,), num_models_, warnings_.
    """

    name = "difference-of-means"
    coef_meaning = "mean margin with the unit in the subset minus without it; NaN where undefined"

    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None, draws: Draws | None = None) -> Self:
        """See `Estimator.fit`; `draws` are the rows' draws (default: independent rows), which the
        standard errors respect: Welch's for independent rows, the cluster formula otherwise."""
        device = resolve_device(self.device)
        rows = selected_rows(masks, margins, rows)
        grouped = draws is not None and not draws.singletons
        if grouped:
            check_contiguous(draws.ids)
        acc = MeansAccumulator(masks.shape[1], margins.shape[1], device, errors=self.errors, grouped=grouped)
        for block, (mask_block, margin_block) in row_blocks([masks, margins], rows, self.block_rows):
            acc.add(mask_block, margin_block, draws.ids[block] if grouped else None)
        acc.finish(self, unit_names)
        self.fit_rows_ = rows
        self.stderr_method_ = (("cluster over draws: " + draws.design) if grouped else
                               "Welch, sqrt(var_in/n_in + var_out/n_out), independent rows" if self.errors else
                               "not computed (errors=False)")
        return self

    def fitted_attributes(self) -> dict[str, Any]:
        return {"stderr_method": self.stderr_method_,
                "stderr_dof": -1 if self.stderr_dof_ is None else int(self.stderr_dof_)}

    def extra_datasets(self) -> list[ExtraDataset]:
        extras = []
        if self.stderr_ is not None:
            extras.append(ExtraDataset("stderr", self.stderr_, f"standard error of the coefficient ({self.stderr_method_})",
                                       "unit, target example", "margin"))
        return extras + self.count_datasets("mean margin over the fitted models")
