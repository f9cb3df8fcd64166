"""Datamodels (Ilyas et al., 2022): one sparse linear model per target example, fitted by our lasso path.

`fit_datamodels` streams a run store's completed models into `LassoPath` and writes DATAMODELS.h5:
weights in mask units (margin change when the unit is added to a subset), bias, chosen λ, validation
MSE and the path curves, plus the split seed and validation rows so `dmtoolkit evaluate` scores the
models on exactly the models they were not fitted on. `targets` fits a column slice, so a large job
can be split across processes (one output file per slice).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from dmtoolkit.errors import UserError
from dmtoolkit.estimate.common import (
    completed_rows,
    put,
    refuse_overwrite,
    source_attrs,
    write_atomic,
)
from dmtoolkit.estimate.lasso import LassoPath
from dmtoolkit.store import RunStore

SCHEMA_NAME = "dmtoolkit.datamodels"
SCHEMA_VERSION = 1
OBJECTIVE = "(1/(2n)) * ||y - Xs w - b||^2 + lambda * ||w||_1 with Xs = (masks - mask_mean) / mask_scale"


class TargetColumns:
    """Row-sliceable view of columns start:stop of a (m, T) dataset, read one row range at a time."""

    def __init__(self, data: h5py.Dataset, columns: slice) -> None:
        self.data, self.columns = data, columns
        self.shape = (data.shape[0], columns.stop - columns.start)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.data[rows, self.columns]


def parse_targets(spec: str | slice | None, num_targets: int) -> slice:
    """`None` → all targets; "A:B" (either side may be empty) or a slice → a checked slice 0 ≤ A < B ≤ T."""
    if spec is None:
        return slice(0, num_targets)
    if isinstance(spec, slice):
        start, stop = spec.start, spec.stop
    else:
        parts = spec.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(p) if p.strip() else None for p in parts)
        except ValueError:
            raise UserError(f"--targets {spec!r} is not of the form A:B; give e.g. --targets 0:{num_targets}") from None
    start = 0 if start is None else start
    stop = num_targets if stop is None else stop
    if not 0 <= start < stop <= num_targets:
        raise UserError(f"--targets {start}:{stop} is outside the store's targets 0:{num_targets}; "
                        f"give A:B with 0 <= A < B <= {num_targets}")
    return slice(start, stop)


def fit_datamodels(store_path: str | Path, out_path: str | Path, *, device: str | None = None,
                   targets: str | slice | None = None, n_lambdas: int = 100, eps: float = 1e-3,
                   val_frac: float = 0.1, seed: int = 0, block_rows: int = 1024, tol: float = 1e-4,
                   max_iter: int = 2000, patience: int | None = 5, force: bool = False) -> LassoPath:
    """Fit datamodels for the store's completed models (targets slice optional); write DATAMODELS.h5.

    Memory is O(P² + P·T) floats (the Gram matrix and the weights) plus a block of rows, whatever m,
    and each solver iteration costs O(P²·T): the Gram form suits up to about 10⁴ units (P² float32 is
    400 MB at P = 10⁴).
    """
    if n_lambdas < 1:
        raise UserError(f"--lambdas {n_lambdas} must be at least 1")
    if not 0 < eps < 1:
        raise UserError(f"--eps {eps} must be in (0, 1): the path ends at eps * lambda_max")
    if not 0 < val_frac < 1:
        raise UserError(f"--val-frac {val_frac} must be in (0, 1): lambda is chosen on held-out models")
    refuse_overwrite(out_path, force)
    with RunStore(store_path) as store:
        rows = completed_rows(store)
        columns = parse_targets(targets, store.num_targets)
        n_val = round(val_frac * len(rows))
        if n_val < 1 or len(rows) - n_val < 2:
            raise UserError(f"{store.path}: {len(rows)} completed models with --val-frac {val_frac} leave "
                            f"{len(rows) - n_val} to fit and {n_val} to validate (need 2 and 1); "
                            "run `dmtoolkit train` for more models or change --val-frac")
        model = LassoPath(n_lambdas, eps, tol=tol, max_iter=max_iter, patience=patience, val_frac=val_frac,
                          seed=seed, block_rows=block_rows, device=device)
        model.fit(store.file["masks"], TargetColumns(store.file["margins"], columns), rows=rows)
        attrs = source_attrs(store, store.content_hash())
        unit_names = store.unit_names
        target_names = store.target_names[columns]
    _write(out_path, model, attrs, columns, unit_names, target_names, force=force)
    return model


def _write(out_path: str | Path, model: LassoPath, attrs: dict, columns: slice, unit_names: list[str],
           target_names: list[str], *, force: bool) -> None:
    unit = f"{attrs['kind']} unit"
    curve = "λ step, target example"

    def fill(f: h5py.File) -> None:
        f.attrs.update(attrs)
        f.attrs.update({
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "estimator": "lasso path, FISTA on the Gram matrix (dmtoolkit.estimate.lasso.LassoPath)",
            "objective": OBJECTIVE,
            "target_start": columns.start,
            "target_stop": columns.stop,
            "split_seed": model.seed,
            "val_frac": model.val_frac,
            "n_lambdas": model.n_lambdas,
            "eps": model.eps,
            "tol": model.tol,
            "patience": -1 if model.patience is None else model.patience,
        })
        put(f, "weights", model.coef_, f"change in predicted margin when the {unit} is in the subset (mask units)",
            "unit, target example", "margin per unit")
        put(f, "bias", model.intercept_, "predicted margin of the empty subset", "target example", "margin")
        put(f, "lambda", model.alpha_, "chosen λ (lowest validation MSE), on the standardised problem",
            "target example", "objective units")
        put(f, "lambda_max", model.lambda_max_, "smallest λ whose solution is all zero", "target example", "objective units")
        put(f, "val_mse", model.val_mse_, "validation mean squared error at the chosen λ", "target example", "margin²")
        put(f, "path/lambdas", model.lambdas_, "λ grid, geometric from lambda_max down to eps*lambda_max", curve, "objective units")
        put(f, "path/val_mse", model.path_val_mse_, "validation MSE along the path; NaN after early stopping", curve, "margin²")
        put(f, "path/objective", model.path_objective_, "training objective at each λ; NaN after early stopping", curve, "objective units")
        put(f, "path/nnz", model.path_nnz_, "number of nonzero weights at each λ", curve, "units")
        put(f, "path/n_iter", model.n_iter_, "FISTA iterations spent at each λ", curve, "iterations")
        put(f, "mask_mean", model.mean_, f"fraction of training models with the {unit}", "unit", "fraction")
        put(f, "mask_scale", model.scale_, "standard deviation of the mask column (1 where constant)", "unit", "fraction")
        put(f, "train_rows", model.train_rows_, "run-store rows (models) the weights were fitted on", "model", "row index")
        put(f, "val_rows", model.val_rows_, "run-store rows held out to choose λ; `dmtoolkit evaluate` scores these",
            "model", "row index")
        put(f, "unit_names", np.array(unit_names), "name of each unit (rows of weights)", "unit", "name")
        put(f, "target_names", np.array(target_names), "index:class of each fitted target example (columns)",
            "target example", "name")

    write_atomic(out_path, fill, force=force)
