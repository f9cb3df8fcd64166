"""Reading estimator outputs (INFLUENCE.h5, DATAMODELS.h5) the same way for every analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dmtoolkit.errors import StoreError, UserError

INFLUENCE_SCHEMA = "dmtoolkit.influence"
DATAMODELS_SCHEMA = "dmtoolkit.datamodels"


@dataclass(frozen=True)
class Estimate:
    """An (units × targets) effect matrix and what its rows and columns are.

    `matrix[k, j]` is the influence (difference of means) or datamodel weight of source unit k on target
    example `target_index[j]` of the run store (datamodel files may cover a slice of the targets).
    """

    path: Path
    schema: str
    kind: str
    matrix: np.ndarray
    unit_names: list[str]
    target_names: list[str]
    target_index: np.ndarray
    store_path: Path | None

    @property
    def estimator(self) -> str:
        return "influence" if self.schema == INFLUENCE_SCHEMA else "datamodels"

    @property
    def target_classes(self) -> list[str]:
        """Class name of each column (target names are "index:class")."""
        return [name.split(":", 1)[1] if ":" in name else name for name in self.target_names]


def _strings(f: h5py.File, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in f[name][()]]


def load_estimate(path: str | Path) -> Estimate:
    """Open an INFLUENCE.h5 or DATAMODELS.h5; refuses anything else with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such file; make one with `dmtoolkit influence` or `dmtoolkit datamodels`")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path}: not an HDF5 file; give a file made by `dmtoolkit influence` or `dmtoolkit datamodels`")
    with h5py.File(path, "r") as f:
        schema = f.attrs.get("schema")
        if schema not in (INFLUENCE_SCHEMA, DATAMODELS_SCHEMA):
            raise StoreError(f"{path}: not an influence or datamodels file (schema {schema!r}); "
                             "make one with `dmtoolkit influence` or `dmtoolkit datamodels`")
        matrix = f["influence" if schema == INFLUENCE_SCHEMA else "weights"][()].astype(np.float64)
        start = int(f.attrs.get("target_start", 0))
        store = f.attrs.get("source_store", f.attrs.get("source_path"))
        return Estimate(
            path=path, schema=str(schema), kind=str(f.attrs["kind"]), matrix=matrix,
            unit_names=_strings(f, "unit_names"), target_names=_strings(f, "target_names"),
            target_index=np.arange(start, start + matrix.shape[1]),
            store_path=Path(str(store)) if store is not None else None,
        )


def require_kind(est: Estimate, kind: str, command: str) -> None:
    if est.kind != kind:
        other = "class" if kind == "example" else "example"
        raise UserError(f"{est.path}: `{command}` needs {kind}-level estimates, this file is {est.kind}-level; "
                        f"give a file computed from a {kind}-level run store (not {other}-level)")


def store_path_of(est: Estimate, store: str | Path | None = None) -> Path:
    """The run store an estimate came from (or `store` if given), checked to exist."""
    path = Path(store) if store is not None else est.store_path
    if path is None:
        raise StoreError(f"{est.path}: does not name its run store; pass --store STORE.h5")
    if not path.exists():
        raise StoreError(f"{est.path}: its run store {path} does not exist (moved?); pass --store STORE.h5")
    return path
