"""Linear datamodeling score (LDS): how well an estimator predicts margins of models it never saw.

For each target example, LDS is the Spearman rank correlation, over held-out models, between the
predicted and the true margin. Predictions:

- datamodels: f̂(S) = bias + Σ_k weights_k · 1[k ∈ S], scored on the validation rows recorded in
  DATAMODELS.h5 (the models used to choose λ but never to fit the weights);
- class influence used as a linear predictor: f̂(S) = mean_margin + Σ_k Infl_k · (1[k ∈ S] − α),
  scored on the held-out rows recorded in INFLUENCE.h5 (`compute_influence(holdout_frac=...)`).
  Undefined (NaN) influences contribute 0.

A constant prediction (e.g. a datamodel whose chosen λ zeroed every weight) ranks nothing and scores
0, so abstaining is not rewarded; a target whose true held-out margins are all equal has no defined
score and is left out of the mean, median and histogram (counted as `undefined_targets`).

The estimator file must name this store's current content hash; otherwise the rows it recorded may
mean something else, and `evaluate` refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.stats import rankdata

from dmtoolkit.errors import StoreError
from dmtoolkit.estimate import datamodels, influence
from dmtoolkit.estimate.common import row_blocks
from dmtoolkit.store import RunStore

HISTOGRAM_EDGES = np.round(np.linspace(-1, 1, 21), 10)


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of a with the same column of b (average ranks for ties); NaN if constant."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    denom = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(0) / denom, np.nan)


def influence_predictor(influence: np.ndarray, mean_margin: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights, offset) of influence used as a linear predictor, f̂(S) = mask·weights + offset; NaN counts 0."""
    weights = np.nan_to_num(influence, nan=0.0)
    return weights, mean_margin - alpha * weights.sum(0)


def lds_per_target(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman of each column; a constant prediction of a varying target scores 0 (abstaining earns nothing)."""
    lds = spearman_columns(predicted, actual)
    lds[(np.ptp(predicted, axis=0) == 0) & (np.ptp(actual, axis=0) > 0)] = 0.0
    return lds


def _open_estimator(path: Path) -> h5py.File:
    if not path.exists():
        raise StoreError(f"{path}: no such estimator file; make one with `dmtoolkit influence` or `dmtoolkit datamodels`")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path}: not an HDF5 file; point --estimator at a file made by `dmtoolkit influence` or `datamodels`")
    f = h5py.File(path, "r")
    schema = f.attrs.get("schema")
    if schema not in (influence.SCHEMA_NAME, datamodels.SCHEMA_NAME):
        f.close()
        raise StoreError(f"{path}: not an influence or datamodels file (schema {schema!r}); "
                         "make one with `dmtoolkit influence` or `dmtoolkit datamodels`")
    return f


def evaluate(store_path: str | Path, estimator_path: str | Path, *, block_rows: int = 1024) -> dict[str, Any]:
    """LDS of an INFLUENCE.h5 or DATAMODELS.h5 on its held-out models: mean, median, per target, histogram."""
    estimator_path = Path(estimator_path)
    with _open_estimator(estimator_path) as est, RunStore(store_path) as store:
        store_hash = store.content_hash()
        if est.attrs["source_hash"] != store_hash:
            raise StoreError(
                f"{estimator_path} was computed from a different state of {store.path} (content hash "
                f"{est.attrs['source_hash'][:12]}… vs {store_hash[:12]}…, e.g. more models finished since); "
                "recompute it with `dmtoolkit influence` or `dmtoolkit datamodels`"
            )
        is_datamodels = est.attrs["schema"] == datamodels.SCHEMA_NAME
        rows = est["val_rows" if is_datamodels else "holdout_rows"][()]
        if len(rows) < 3:
            flag = "--val-frac" if is_datamodels else "--holdout-frac"
            raise StoreError(f"{estimator_path}: only {len(rows)} held-out models, LDS needs at least 3; "
                             f"refit with a larger {flag} or train more models")
        if is_datamodels:
            columns = slice(int(est.attrs["target_start"]), int(est.attrs["target_stop"]))
            weights, offset = est["weights"][()], est["bias"][()]
        else:
            columns = slice(0, store.num_targets)
            weights, offset = influence_predictor(est["influence"][()], est["mean_margin"][()],
                                                  float(est.attrs["alpha"]))
        predicted, actual = [], []
        for _, (masks, margins) in row_blocks([store.file["masks"], store.file["margins"]], rows, block_rows):
            predicted.append(masks.astype(np.float32) @ weights + offset)
            actual.append(margins[:, columns])
    predicted, actual = np.concatenate(predicted), np.concatenate(actual)
    lds = lds_per_target(predicted, actual)
    constant_prediction = np.ptp(predicted, axis=0) == 0
    finite = lds[np.isfinite(lds)]
    counts, edges = np.histogram(finite, bins=HISTOGRAM_EDGES)
    return {
        "estimator": "datamodels" if is_datamodels else "influence",
        "estimator_file": str(estimator_path),
        "store": str(Path(store_path)),
        "heldout_models": len(rows),
        "targets": [columns.start, columns.stop],
        "lds_mean": float(finite.mean()) if len(finite) else None,
        "lds_median": float(np.median(finite)) if len(finite) else None,
        "undefined_targets": int(len(lds) - len(finite)),
        "constant_predictions": int(constant_prediction.sum()),
        "lds_per_target": [float(v) if np.isfinite(v) else None for v in lds],
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }
