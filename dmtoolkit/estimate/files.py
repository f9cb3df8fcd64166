"""Estimate files (ESTIMATE.h5): the one owner of their schema, how they are saved and loaded, and the
check that the run store they name is the one they were computed from.

Every estimator's file has the same core, so every reader (LDS, analyses, report) is estimator-blind:
- `coef` (P, T): the estimator's coefficients in mask units (influence, regression coefficient or
  datamodel weight of unit k on target column j); `intercept` (T,); `f̂(S) = Σ_k coef[k]·1[k∈S] + intercept`;
- `unit_names` (P,), `target_names` (T,) ("index:class"), columns are store targets target_start..target_stop;
- `rows/fit`, `rows/selection` (models that chose settings such as λ; may be empty), `rows/test` (held out
  from everything, scored by `dmtoolkit evaluate`);
- estimator extras (e.g. `stderr`, `n_in`, `lambda`, `path/...`) as further datasets;
- attributes: schema and version, `estimator` (registry name) and its settings, the source run store's
  path, content hash and recipe hash, kind, subset fraction, the split seed, package version, time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from dmtoolkit import __version__
from dmtoolkit.atomic import write_atomic
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.paths import check_input_file

if TYPE_CHECKING:
    from dmtoolkit.estimate.base import Estimator, ExtraDataset
    from dmtoolkit.estimate.splits import RowSplit
    from dmtoolkit.store import RunStore

SCHEMA_NAME = "dmtoolkit.estimate"
SCHEMA_VERSION = 1
OLD_SCHEMAS = ("dmtoolkit.influence", "dmtoolkit.datamodels")
MAKE_ONE = "make one with `dmtoolkit influence`, `dmtoolkit datamodels` or `dmtoolkit gradient`"
CORE_DATASETS = ("coef", "intercept", "unit_names", "target_names", "rows/fit", "rows/selection", "rows/test")


@dataclass(frozen=True)
class Provenance:
    """The run store an estimate comes from, as recorded in the estimate file."""

    store_path: Path
    store_hash: str
    recipe_hash: str
    kind: str
    subset_fraction: float

    @classmethod
    def of(cls, store: RunStore) -> Provenance:
        return cls(store.path.resolve(), store.content_hash(), store.recipe_hash, store.kind, store.subset_fraction)


@dataclass(frozen=True)
class Estimate:
    """A loaded estimate file: the (units × targets) coefficient matrix and what its rows and columns are.

    `matrix[k, j]` is the coefficient of source unit k on target example `target_index[j]` of the run store
    (files may cover a slice of the targets); `stderr` is None when the estimator gives none, and
    `stderr_dof` the degrees of freedom of its t intervals (None: normal).
    """

    path: Path
    schema: str
    estimator: str
    kind: str
    subset_fraction: float
    matrix: np.ndarray
    intercept: np.ndarray
    stderr: np.ndarray | None
    stderr_dof: int | None
    unit_names: list[str]
    target_names: list[str]
    target_index: np.ndarray
    store_path: Path | None
    store_hash: str
    fit_rows: np.ndarray
    selection_rows: np.ndarray
    test_rows: np.ndarray
    attrs: dict[str, Any] = field(repr=False)

    @property
    def target_classes(self) -> list[str]:
        """Class name of each column (target names are "index:class")."""
        return [name.split(":", 1)[1] if ":" in name else name for name in self.target_names]

    @property
    def columns(self) -> slice:
        """The store's target columns this estimate covers."""
        return slice(int(self.target_index[0]), int(self.target_index[-1]) + 1) if len(self.target_index) else slice(0, 0)

    def check_store(self, store: RunStore) -> None:
        """The one check that this estimate belongs to `store` as it is now; every analysis goes through it.

        First its shapes (units P, target columns within T, `rows/*` within the m models: cheap, metadata only),
        then the store's content hash against the one recorded when the estimate was fitted: a store from
        another run, or one into which more models were trained since (a stale estimate), is refused with
        `stale_estimate_message`.
        """
        m, P, T = store.num_models, store.num_units, store.num_targets
        fit = self.fit_rows
        if self.matrix.shape[0] != P:
            why = f"the estimate has {self.matrix.shape[0]} units, the store {P}"
        elif self.columns.stop > T:
            why = f"the estimate covers target columns {self.columns.start}..{self.columns.stop - 1}, the store has {T}"
        elif any(len(rows) and (rows.min() < 0 or rows.max() >= m)
                 for rows in (fit, self.selection_rows, self.test_rows)):
            why = f"the estimate names rows the store's {m} models do not have"
        else:
            current = store.content_hash()
            if current == self.store_hash:
                return
            why = (f"content hash {self.store_hash[:12]}… recorded, {current[:12]}… now: another run, or more models "
                   "finished since")
        raise StoreError(stale_estimate_message(self.path, store.path, why, self.estimator))


def stale_estimate_message(estimate: Path, store: Path, why: str, estimator: str = "difference-of-means") -> str:
    """The one message for an estimate whose run store is not (or no longer) the one it was computed from; the
    command it suggests is the one that made this kind of estimate (so copying it keeps the estimator)."""
    from dmtoolkit.estimate.registry import ESTIMATORS

    entry = ESTIMATORS.get(estimator)
    command = entry.command if entry else "influence"
    chosen = f" --estimator {estimator}" if command == "influence" and estimator != "difference-of-means" else ""
    return (f"{estimate} was not computed from {store} in its current state ({why}); recompute the estimate from the "
            f"store as it is now (`dmtoolkit {command} {store} -o {estimate}{chosen} --force`, with the settings you "
            "used) or pass the run store it came from")


def _put(group: h5py.Group, name: str, data: Any, meaning: str, axes: str, units: str) -> None:
    """A dataset that explains itself (meaning, axes, units); 2-D arrays are tiled for partial reads."""
    data = np.asarray(data)
    if data.dtype.kind in "UO":
        ds = group.create_dataset(name, data=data.astype(object), dtype=h5py.string_dtype())
    elif data.ndim == 2 and data.size:
        ds = group.create_dataset(name, data=data, chunks=(min(data.shape[0], 256), min(data.shape[1], 256)))
    else:
        ds = group.create_dataset(name, data=data)
    ds.attrs.update({"meaning": meaning, "axes": axes, "units": units})


def save_estimate(out_path: str | Path, estimator: Estimator, *, provenance: Provenance, split: RowSplit,
                  unit_names: list[str], target_names: list[str], columns: slice, summary: str,
                  force: bool = False, inputs: tuple[str | Path, ...] = (),
                  extras: Sequence[ExtraDataset] = ()) -> Path:
    """Write a fitted estimator to ESTIMATE.h5 atomically through the output guard (`inputs`: files it was
    computed from, never overwritten; an existing output only with `force`, and not while a writer holds it).
    `extras`: datasets beside the estimator's own (the store's label check), replacing any of the same name."""
    unit = f"{provenance.kind} unit"

    def fill(f: h5py.File) -> None:
        f.attrs.update({
            "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
            "estimator": estimator.name, "estimator_summary": summary,
            "settings": json.dumps(estimator.settings(), sort_keys=True),
            "predictor": "margin(S) ~ intercept + sum_k coef[k] * 1[k in S] (NaN coefficients count 0)",
            "source_store": str(provenance.store_path), "source_hash": provenance.store_hash,
            "source_recipe_hash": provenance.recipe_hash, "kind": provenance.kind,
            "subset_fraction": provenance.subset_fraction,
            "split_seed": split.seed, "test_fraction": split.test_fraction,
            "target_start": columns.start, "target_stop": columns.stop,
            "sampling_units": split.draw_design,  # what a draw is (the name files have always used)
            "warnings": "\n".join(estimator.warnings_),
            "package_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        f.attrs.update(estimator.fitted_attributes())
        _put(f, "coef", estimator.coef_, f"{estimator.coef_meaning} ({unit}, mask units)", "unit, target example",
             "margin per unit")
        _put(f, "intercept", estimator.intercept_, "predicted margin of the empty subset", "target example", "margin")
        _put(f, "unit_names", np.array(unit_names), "name of each unit (rows of coef)", "unit", "name")
        _put(f, "target_names", np.array(target_names), "index:class of each target example (columns of coef)",
             "target example", "name")
        _put(f, "rows/fit", split.fit, "run-store rows (models) the coefficients were fitted on", "model", "row index")
        _put(f, "rows/selection", split.selection, "rows held out inside the fit to choose settings (e.g. λ)",
             "model", "row index")
        _put(f, "rows/test", split.test, "completed rows held out from everything; `dmtoolkit evaluate` scores these",
             "model", "row index")
        replaced = {extra.name for extra in extras}
        for extra in (*(e for e in estimator.extra_datasets() if e.name not in replaced), *extras):
            _put(f, extra.name, extra.data, extra.meaning, extra.axes, extra.units)

    return write_atomic(out_path, fill, force=force, inputs=inputs)


def _strings(f: h5py.File, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in f[name][()]]


def _check_shapes(f: h5py.File, path: Path) -> None:
    """The core datasets' shapes and dtypes agree with each other (metadata only, no data read): coef (P, T)
    numbers; intercept (T,); stderr, when present, (P, T); unit_names (P,); target_names (T,); `rows/*` 1-D
    integer row indices; the recorded target columns span T."""
    def bad(name: str, what: str) -> StoreError:
        return StoreError(f"{path}: damaged estimate file ({name} {what}); recompute it ({MAKE_ONE})")

    for name in (*CORE_DATASETS, "stderr"):
        if name in f and not isinstance(f[name], h5py.Dataset):
            raise bad(name, "is not a dataset")
    coef = f["coef"]
    if coef.ndim != 2 or coef.dtype.kind not in "fiu":
        raise bad("coef", f"is {coef.dtype} {coef.shape}, expected numbers (units, targets)")
    P, T = coef.shape
    expected = {"intercept": ((T,), "fiu"), "stderr": ((P, T), "fiu"), "unit_names": ((P,), "SOU"),
                "target_names": ((T,), "SOU")}
    for name, (shape, kinds) in expected.items():
        if name in f and (f[name].shape != shape or f[name].dtype.kind not in kinds):
            raise StoreError(f"{path}: damaged estimate file (coef is {coef.shape} but {name} is {f[name].dtype} "
                             f"{f[name].shape}; they must agree: {name} {shape}); recompute it ({MAKE_ONE})")
    for name in ("rows/fit", "rows/selection", "rows/test"):
        if f[name].ndim != 1 or (f[name].shape[0] and f[name].dtype.kind not in "iu"):
            raise bad(name, f"is {f[name].dtype} {f[name].shape}, expected integer row indices (n,)")
    start, stop = f.attrs.get("target_start"), f.attrs.get("target_stop")
    if start is not None and stop is not None and int(stop) - int(start) != T:
        raise bad("coef", f"has {T} target columns, the file records columns {int(start)}..{int(stop) - 1}")


def load_estimate(path: str | Path) -> Estimate:
    """Open an estimate file; anything else (missing, foreign, truncated, old) is a one-line StoreError."""
    path = check_input_file(path, "an estimate file", missing=f"{path}: no such estimate file; {MAKE_ONE}",
                            error=StoreError)
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path}: not an HDF5 file; give an estimate file ({MAKE_ONE})")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise StoreError(f"{path}: cannot be read as HDF5 ({error.args[0] if error.args else error}); it may be "
                         f"truncated or corrupt: recompute it ({MAKE_ONE})") from None
    with f:
        schema = f.attrs.get("schema")
        if schema in OLD_SCHEMAS:
            raise StoreError(f"{path}: an estimate file of an older dmtoolkit (schema {schema!r}); recompute it "
                             f"({MAKE_ONE})")
        if schema != SCHEMA_NAME:
            raise StoreError(f"{path}: not a dmtoolkit estimate file (schema {schema!r}); {MAKE_ONE}")
        if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StoreError(f"{path}: estimate schema version {f.attrs.get('schema_version')}, this dmtoolkit "
                             f"reads {SCHEMA_VERSION}; recompute it ({MAKE_ONE})")
        missing = [name for name in CORE_DATASETS if name not in f]
        if missing:
            raise StoreError(f"{path}: incomplete estimate file (no {missing[0]!r}); recompute it ({MAKE_ONE})")
        _check_shapes(f, path)
        try:
            matrix = f["coef"][()].astype(np.float64)
            start = int(f.attrs["target_start"])
            return Estimate(
                path=path, schema=str(schema), estimator=str(f.attrs["estimator"]), kind=str(f.attrs["kind"]),
                subset_fraction=float(f.attrs["subset_fraction"]), matrix=matrix,
                intercept=f["intercept"][()].astype(np.float64),
                stderr=f["stderr"][()].astype(np.float64) if "stderr" in f else None,
                stderr_dof=int(f.attrs["stderr_dof"]) if int(f.attrs.get("stderr_dof", -1)) > 0 else None,
                unit_names=_strings(f, "unit_names"), target_names=_strings(f, "target_names"),
                target_index=np.arange(start, start + matrix.shape[1]),
                store_path=Path(str(f.attrs["source_store"])), store_hash=str(f.attrs["source_hash"]),
                fit_rows=f["rows/fit"][()], selection_rows=f["rows/selection"][()], test_rows=f["rows/test"][()],
                attrs=dict(f.attrs),
            )
        except (KeyError, OSError) as error:
            raise StoreError(f"{path}: damaged estimate file ({error}); recompute it ({MAKE_ONE})") from None


def open_checked_store(est: Estimate, store: str | Path | None = None, *,
                       required: bool = True) -> RunStore | None:
    """The run store an estimate came from (or `store` if given), opened read-only and checked to be that store
    in its current state: every analysis opens it here (through `OpenedEstimate`), so each refuses a stale
    estimate the same way.

    A store of the same shape from another run would silently score the wrong images and planted truth, and
    one into which more models were trained since gives other answers than the estimate, so its shapes and
    content hash must match those the estimate recorded (`Estimate.check_store`). With `required=False`, None
    when no `store` is given and the recorded one is not there (the caller says what it leaves out); a store
    that is there is always checked. The caller closes it (use `with`).
    """
    from dmtoolkit.store import RunStore

    path = Path(store) if store is not None else est.store_path
    if path is None:
        if not required:
            return None
        raise StoreError(f"{est.path}: does not name its run store; pass --store STORE.h5")
    if not path.exists():
        if not required and store is None:
            return None
        raise StoreError(f"{est.path}: its run store {path} does not exist (moved?); pass --store STORE.h5")
    return _checked(est, RunStore(path))


def _checked(est: Estimate, run: RunStore) -> RunStore:
    try:
        est.check_store(run)
    except BaseException:
        run.close()
        raise
    return run


class OpenedEstimate:
    """An estimate with its run store: what every analysis takes (a task object, not paths).

    `estimate` is the loaded file; the run store it came from (or `store`, when given: one that moved) is opened
    read-only and checked against the estimate (`Estimate.check_store`: shapes, then the content hash that scans
    every completed row) once, on the first `using_store`, and kept for the next analyses; a failure to open or
    check is kept too and raised again to each analysis that asks. Held as a context manager (`open_estimate`),
    it closes the store at the end. Built by `as_opened` from a path for one analysis (`keep_open=False`), it
    closes the store after that analysis, as the path-taking forms always did.

    The store is read-only here, but another process may append rows to it meanwhile (readers take no lock), so
    one object should live for one command, not longer: the check holds for the state it saw.
    """

    def __init__(self, estimate: Estimate, store: str | Path | None = None, *, run: RunStore | None = None,
                 keep_open: bool = True) -> None:
        """`run`: a store already opened by the caller (checked on first use, closed with this object)."""
        self.estimate = estimate
        self.store = Path(store) if store is not None else None
        self.keep_open = keep_open
        self._run = run
        self._checked = False
        self._failure: UserError | None = None

    @classmethod
    def open(cls, path: str | Path, store: str | Path | None = None) -> OpenedEstimate:
        """Load the estimate file at `path` (its store is opened when an analysis first needs it)."""
        return cls(load_estimate(path), store)

    @property
    def store_path(self) -> Path | None:
        """The run store this reads: `store` if given, else the one the estimate records."""
        return self.store if self.store is not None else self.estimate.store_path

    @property
    def has_store(self) -> bool:
        """Whether that run store is there (it may still be refused as stale or foreign when opened)."""
        return self.store_path is not None and self.store_path.exists()

    def run(self, *, required: bool = True) -> RunStore | None:
        """The checked run store, opened on first use; None when it is not there and not `required` (see
        `open_checked_store` for the rules and messages)."""
        if self._failure is not None:
            raise self._failure.with_traceback(None)
        if not self._checked:
            try:
                self._run = (_checked(self.estimate, self._run) if self._run is not None  # the caller's store
                             else open_checked_store(self.estimate, self.store, required=False))
            except UserError as error:
                self._run, self._failure = None, error
                raise
            self._checked = True
        if self._run is None and required:
            open_checked_store(self.estimate, self.store, required=True)  # raises the one message of a missing store
        return self._run

    @contextmanager
    def using_store(self, *, required: bool = True) -> Iterator[RunStore | None]:
        """`run(required=...)` for one analysis's `with` block; closes the store at the end unless `keep_open`."""
        try:
            yield self.run(required=required)
        finally:
            if not self.keep_open:
                self.close()

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
            self._run = None
        self._checked = False

    def __enter__(self) -> OpenedEstimate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_opened(source: str | Path | OpenedEstimate, store: str | Path | None = None) -> OpenedEstimate:
    """What an analysis reads from `source`: the caller's OpenedEstimate itself (its store stays open for the next
    analysis; `store` must then not be given, it was chosen when opening), or an estimate file's path loaded for
    this one analysis (the store, `store` or the recorded one, is closed when the analysis is done)."""
    if isinstance(source, OpenedEstimate):
        if store is not None:
            raise ValueError("give the run store when opening the estimate (open_estimate(path, store)), not to "
                             "an analysis of an opened estimate")
        return source
    return OpenedEstimate(load_estimate(source), store, keep_open=False)


def open_estimate(path: str | Path, store: str | Path | None = None) -> OpenedEstimate:
    """An estimate file opened for several analyses: `with open_estimate(path) as opened: rank_classes(opened)`;
    its run store (`store` if given, else the recorded one) is opened and hash-checked once, closed at the end."""
    return OpenedEstimate.open(path, store)


def recorded_store(path: Path) -> Path | None:
    """The run store an estimate file records, read without checks (None for anything unreadable, which the
    analysis itself then reports): for the output guard, before any analysis runs."""
    if not path.is_file():  # (a FIFO would block the read)
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            recorded = f.attrs.get("source_store")
        return Path(str(recorded)) if recorded else None
    except Exception:  # noqa: BLE001 - an unreadable estimate is reported by the analysis itself
        return None


def read_extra(path: str | Path, name: str) -> np.ndarray | None:
    """One estimator extra (e.g. "n_in", "path/val_mse") of an estimate file, or None if it has none."""
    with h5py.File(path, "r") as f:
        return f[name][()] if name in f else None
