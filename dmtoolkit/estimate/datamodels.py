"""Datamodels (Ilyas et al., 2022): one sparse linear model per target example, fitted by our lasso path.

`fit_datamodels` runs `LassoPath` (registered as "datamodels") on a run store's completed models and
writes ESTIMATE.h5: weights in mask units (margin change when the unit is added to a subset), bias,
chosen λ, validation MSE and the path curves. Three disjoint sets of models: test rows held out from
everything (`holdout_frac`, scored by `dmtoolkit evaluate`), validation rows that choose λ (`val_frac`
of the rest) and the rows the weights are fitted on. `targets` fits a column slice, so a large job
can be split across processes (one output file per slice).
"""

from __future__ import annotations

from pathlib import Path

from dmtoolkit.devices import resolve_device
from dmtoolkit.estimate.fit import fit_store
from dmtoolkit.estimate.lasso import LassoPath
from dmtoolkit.estimate.options import DATAMODELS_BLOCK_ROWS, EPS, N_LAMBDAS, TEST_FRACTION, VAL_FRACTION


def fit_datamodels(store_path: str | Path, out_path: str | Path, *, device: str | None = None,
                   targets: slice | None = None, n_lambdas: int = N_LAMBDAS, eps: float = EPS,
                   val_frac: float = VAL_FRACTION, holdout_frac: float = TEST_FRACTION, seed: int = 0,
                   block_rows: int = DATAMODELS_BLOCK_ROWS,
                   tol: float = 1e-4, max_iter: int = 2000, patience: int | None = 5,
                   force: bool = False) -> LassoPath:
    """Fit datamodels for the store's completed models (targets slice optional); write ESTIMATE.h5.

    Memory is O(P² + P·T) floats (the Gram matrix and the weights) plus a block of rows, whatever m,
    and each solver iteration costs O(P²·T): the Gram form suits up to about 10⁴ units (P² float32 is
    400 MB at P = 10⁴).
    """
    resolve_device(device)  # an unusable device is the first thing to hear about
    model = LassoPath(n_lambdas, eps, tol=tol, max_iter=max_iter, patience=patience, val_frac=val_frac,
                      seed=seed, block_rows=block_rows, device=device)
    model.check_settings()
    return fit_store(store_path, out_path, model, test_fraction=holdout_frac, seed=seed, targets=targets, force=force)
