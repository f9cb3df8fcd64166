"""Fit any registered estimator on a run store and save it: the one path from STORE.h5 to ESTIMATE.h5.

The completed rows are split into test rows (held out from everything; `dmtoolkit evaluate` scores
them) and the rest, which the estimator fits on (and, for datamodels, splits again to choose λ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmtoolkit.atomic import check_output
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.base import Estimator, ExtraDataset
from dmtoolkit.estimate.blocks import TargetColumns
from dmtoolkit.estimate.files import Provenance, save_estimate
from dmtoolkit.estimate.registry import ESTIMATORS
from dmtoolkit.estimate.splits import Draws, RowSplit, design_draws, detect_draws
from dmtoolkit.resources import require_memory
from dmtoolkit.stats.splits import first_rows, split_rows
from dmtoolkit.store import RunStore


def completed_rows(store: RunStore, minimum: int = 2) -> np.ndarray:
    """The store's completed rows; refuses too few of them, or completed rows whose margins are not finite."""
    rows = store.completed_rows()
    if len(rows) < minimum:
        raise StoreError(
            f"{store.path}: only {len(rows)} of {store.num_models} models are completed, estimates need at least "
            f"{minimum}; run `dmtoolkit train {store.path}` first"
        )
    bad = store.nonfinite_rows().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise StoreError(f"{store.path}: completed rows {shown} have non-finite margins; see `dmtoolkit store "
                         "validate` and retrain or drop them")
    return rows


def store_draws(store: RunStore) -> Draws:
    """The draws of a store's rows: from the mask design its recipe names, or, for masks given
    explicitly, complementary pairs where every even row's complement follows it. An imported store's rows are
    independent unless its import said `--design antithetic` (checked then: rows 2i, 2i+1 complementary)."""
    if store.imported:
        return design_draws(store.num_models, store.num_units, antithetic=store.antithetic)
    if store.explicit_masks:
        return detect_draws(store.masks[()])
    sub = store.recipe.subsets
    return design_draws(store.num_models, store.num_units, antithetic=sub.antithetic, design=sub.design)


def check_targets(targets: slice | None, num_targets: int) -> slice:
    """`None` → all targets; a slice (either end may be None) → a checked slice 0 ≤ A < B ≤ T. The CLI's
    `--targets A:B` becomes this slice as it is parsed (`dmtoolkit.cli.TargetRange`)."""
    if targets is None:
        return slice(0, num_targets)
    if not isinstance(targets, slice):
        raise TypeError(f"targets must be a slice of target columns such as slice(0, {num_targets}), "
                        f"not {targets!r}")
    start = 0 if targets.start is None else targets.start
    stop = num_targets if targets.stop is None else targets.stop
    if not 0 <= start < stop <= num_targets:
        raise UserError(f"targets {start}:{stop} is outside the store's targets 0:{num_targets}; "
                        f"give A:B with 0 <= A < B <= {num_targets}")
    return slice(start, stop)


def _device_name(device: object) -> str | None:
    return None if device is None else str(device)


def fit_store(store_path: str | Path, out_path: str | Path, estimator: Estimator, *, test_fraction: float = 0.1,
              seed: int = 0, targets: slice | None = None, force: bool = False,
              fit_models: int | None = None) -> Estimator:
    """Fit `estimator` on the store's completed models less a held-out test fraction; write ESTIMATE.h5.

    `test_fraction` of the completed rows (drawn with `seed`, recorded in the file) are left out for
    `dmtoolkit evaluate`; 0 fits on all of them (evaluate then has nothing to score). Whole draws
    (complementary pairs, orthogonal blocks) are held out, and the estimator is told the draws so its
    standard errors follow the design. `targets` (a slice such as slice(0, 64)) fits a slice of the
    target columns, so a large job can be split across processes. `fit_models`, for
    learning curves, fits on only the first that many of the fitting rows (row order, whole draws:
    `dmtoolkit.stats.splits.first_rows`) and leaves the test rows as they are.
    """
    if not 0 <= test_fraction < 1:
        raise UserError(f"test fraction {test_fraction} must be in [0, 1)")
    check_output(out_path, force=force, inputs=(store_path,))
    with RunStore(store_path) as store:
        rows = completed_rows(store)
        columns = check_targets(targets, store.num_targets)
        width, P = columns.stop - columns.start, store.num_units
        device = _device_name(getattr(estimator, "device", None))
        require_memory(estimator.memory_bytes(P, 1), what=f"{estimator.name} with {P:,} units",
                       flag="use a class-level store, or the difference-of-means estimator (`dmtoolkit influence`)",
                       device=device)
        require_memory(estimator.memory_bytes(P, width), what=f"{estimator.name}: the {P:,} × {width:,} unit × "
                       "target matrices", flag="fit fewer target examples at a time with --targets A:B", device=device)
        draws = store_draws(store)
        fit_rows, test_rows = split_rows(rows, test_fraction, seed, draws.ids)
        if len(fit_rows) < 2:
            raise UserError(f"{store.path}: holding out {len(test_rows)} of {len(rows)} completed models leaves "
                            f"{len(fit_rows)} to fit; lower the test fraction or train more models")
        if fit_models is not None:
            fit_rows = first_rows(fit_rows, fit_models, draws.ids)
        margins = store.margins if columns == slice(0, store.num_targets) else TargetColumns(store.margins, columns)
        estimator.fit(store.masks, margins, fit_rows, unit_names=store.unit_names, draws=draws)
        extras = _store_label_check(store, estimator)
        provenance = Provenance.of(store)
        unit_names, target_names = store.unit_names, store.target_names[columns]
    split = RowSplit(fit=estimator.fit_rows_, selection=estimator.selection_rows_, test=test_rows, seed=seed,
                     test_fraction=test_fraction, draw_design=draws.design)
    save_estimate(out_path, estimator, provenance=provenance, split=split, unit_names=unit_names,
                  target_names=target_names, columns=columns, summary=ESTIMATORS[estimator.name].summary, force=force,
                  inputs=(store_path,), extras=extras)
    return estimator


def _store_label_check(store: RunStore, estimator: Estimator) -> list[ExtraDataset]:
    """The label check of the models the estimator was fitted on (`store_label_check`), for an estimate file;
    nothing when the store recorded no source margins. It replaces the check a gradient estimator computed from
    its own few networks: the store's fitting models include the rows those networks retrain, and more."""
    from dmtoolkit.estimate.label_check import store_label_check

    check = store_label_check(store, np.union1d(estimator.fit_rows_, estimator.selection_rows_))
    return [] if check is None else check.datasets()
