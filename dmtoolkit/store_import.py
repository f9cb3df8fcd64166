"""`dmtoolkit store import`: a run store from masks and margins computed elsewhere (e.g. the datamodels repo).

The result follows the run-store contract (`dmtoolkit.store.RUN_DATASETS`) so `store info`, `store validate`,
the estimators, `evaluate`, `rank` and `report` accept it; it has no recipe and no images (attributes `origin`
"imported", `images` false), so training, counterfactuals and pixel-based analyses refuse it in one line.
What it was made from (each file's path and sha256, the options) is the `import` attribute; its sha256 stands
in for the recipe hash, so estimates made from it name exactly that import.

Inputs are read through `np.load(..., mmap_mode="r")` and written in row blocks, so arrays larger than memory
(the datamodels repo's `.npy` memmaps) import. Rows whose `completed` flag is unset keep their masks; their
margins are stored as NaN (the contract's "not written yet"): the datamodels writer leaves zeros there.
An example-level import may also bring each model's stated-label source margins on the pool
(`source_margins`, (m, P)) and on held-out source test examples (`source_test_margins`, (m, S)), as the
built-in trainer records them; estimates fitted on the store then carry the label check `mislabels` flags from.
Draws: rows are independent draws unless `design="antithetic"` says rows 2i and 2i+1 are
complementary (checked), which standard errors and held-out splits then respect.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from dmtoolkit import __version__
from dmtoolkit.atomic import check_output, replacing
from dmtoolkit.errors import UserError
from dmtoolkit.paths import check_input_file
from dmtoolkit.store import DATASETS_BY_NAME, ROW_CHUNK, RUN_DATASETS, SCHEMA_NAME, SCHEMA_VERSION, _create_dataset
from dmtoolkit.text_input import read_text_input

__all__ = ["IMPORT_DESIGNS", "NPZ_KEYS", "ImportArrays", "import_arrays", "import_store", "read_folder", "read_npy", "read_npz",
           "read_unit_names"]

NPZ_KEYS = ("masks", "margins", "completed", "unit_names", "target_labels", "source_margins", "source_test_margins")
LABEL_MARGINS = ("source_margins", "source_test_margins")
FOLDER_FILES = {"masks": "masks.npy", "margins": "margins.npy", "completed": "_completed.npy"}
IMPORT_DESIGNS = ("random", "antithetic")
UNKNOWN_CLASS = "(unknown)"
MAX_TARGET_CLASSES = 10_000  # a target label's class index must be below this (each class gets a stored name)
MAX_UNIT_NAMES_BYTES = 256 << 20  # largest --unit-names file read (a million 250-byte names)
BLOCK_ELEMENTS = 1 << 24  # about 16M values per block read from the inputs (64 MiB of float32)


class ImportInputError(UserError):
    """Bad input to `store import` (kept apart from StoreError so tests can tell them apart)."""


@dataclass
class ImportArrays:
    """The arrays to import (any may be a read-only memmap) and the files they came from (role -> path)."""

    masks: np.ndarray
    margins: np.ndarray
    completed: np.ndarray | None = None
    unit_names: list[str] | None = None
    target_labels: np.ndarray | None = None
    source_margins: np.ndarray | None = None
    source_test_margins: np.ndarray | None = None
    sources: dict[str, Path] = field(default_factory=dict)


def _fail(message: str) -> None:
    raise ImportInputError(message)


def _input_file(path: Path, what: str) -> None:
    """A one-line error unless `path` is a non-empty regular file (a link to one is fine): says what it is."""
    check_input_file(path, what, error=ImportInputError)


def read_npy(path: str | Path, role: str) -> np.ndarray:
    """One `.npy` array, memory-mapped (never unpickled); a one-line error for a missing, empty or foreign file."""
    path = Path(path)
    _input_file(path, f"the {role} array, a .npy file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # EOFError: a truncated header (click would say "Aborted!")
        _fail(f"{path}: not a readable .npy array for {role} ({(str(error) or type(error).__name__).splitlines()[0]})")


def read_unit_names(path: str | Path) -> list[str]:
    """Unit names from a text file, one a line (a trailing empty line is ignored)."""
    path = Path(path)
    _input_file(path, "the unit names, one a line")
    return read_text_input(path, "unit names file", limit=MAX_UNIT_NAMES_BYTES, error=ImportInputError).splitlines()


def read_npz(path: str | Path) -> ImportArrays:
    """The arrays of one `.npz` named as in `NPZ_KEYS` (`masks` and `margins` required; other names refused)."""
    path = Path(path)
    _input_file(path, "the .npz to import")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        _fail(f"{path}: not a readable .npz archive ({(str(error) or type(error).__name__).splitlines()[0]})")
    if not isinstance(npz, np.lib.npyio.NpzFile):
        _fail(f"{path}: holds one array, not an .npz archive of named arrays; use --masks/--margins for .npy files")
    with npz:
        unknown = sorted(set(npz.files) - set(NPZ_KEYS))
        if unknown:
            _fail(f"{path}: unknown array name(s) {', '.join(unknown)}; an import .npz holds {', '.join(NPZ_KEYS)}")
        for key in ("masks", "margins"):
            if key not in npz.files:
                _fail(f"{path}: no array named {key!r} (it holds {', '.join(npz.files) or 'nothing'})")
        try:
            arrays = {key: npz[key] for key in npz.files}
        except ValueError as error:
            _fail(f"{path}: an array cannot be read without unpickling ({str(error).splitlines()[0]}); "
                  "store unit_names as a unicode array (np.array(names, dtype=str))")
    names = arrays.get("unit_names")
    return ImportArrays(masks=arrays["masks"], margins=arrays["margins"], completed=arrays.get("completed"),
                        unit_names=None if names is None else [str(n) for n in np.asarray(names).reshape(-1)],
                        target_labels=arrays.get("target_labels"), source_margins=arrays.get("source_margins"),
                        source_test_margins=arrays.get("source_test_margins"), sources={"npz": path})


def read_folder(path: str | Path) -> ImportArrays:
    """A datamodels-style folder: `masks.npy`, `margins.npy` and (optionally) `_completed.npy`, memory-mapped."""
    path = Path(path)
    if not path.is_dir():
        _fail(f"{path}: no such folder (a datamodels-style folder holds masks.npy, margins.npy, _completed.npy)")
    arrays, sources = {}, {}
    for role, name in FOLDER_FILES.items():
        file = path / name
        if not os.path.lexists(file):
            if role == "completed":
                continue
            _fail(f"{path}: no {name} in the folder (it needs masks.npy and margins.npy, optionally _completed.npy)")
        arrays[role], sources[role] = read_npy(file, role), file
    return ImportArrays(masks=arrays["masks"], margins=arrays["margins"], completed=arrays.get("completed"),
                        sources=sources)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_arrays(out_path: str | Path, masks: np.ndarray, margins: np.ndarray, *,
                  completed: np.ndarray | None = None, unit_names: list[str] | None = None,
                  target_labels: np.ndarray | None = None, source_margins: np.ndarray | None = None,
                  source_test_margins: np.ndarray | None = None, kind: str = "class", alpha: float | None = None,
                  design: str = "random", force: bool = False) -> Path:
    """`import_store` from in-memory arrays (or memmaps): masks (m, P) 0/1, margins (m, T), optional completed
    (m,), one name per unit, one integer class per target, and (example level) the stated-label source margins
    (m, P) and source test margins (m, S) of the label check. Returns the store's path."""
    arrays = ImportArrays(masks=np.asarray(masks) if not isinstance(masks, np.memmap) else masks,
                          margins=np.asarray(margins) if not isinstance(margins, np.memmap) else margins,
                          completed=None if completed is None else np.asarray(completed),
                          unit_names=None if unit_names is None else [str(n) for n in unit_names],
                          target_labels=None if target_labels is None else np.asarray(target_labels),
                          source_margins=source_margins, source_test_margins=source_test_margins)
    return import_store(out_path, arrays, kind=kind, alpha=alpha, design=design, force=force)


def _check_shapes(a: ImportArrays, kind: str) -> tuple[int, int, int]:
    masks, margins = a.masks, a.margins
    if masks.ndim != 2:
        _fail(f"masks have shape {masks.shape}; expected 2-D (models, units)")
    if margins.ndim != 2:
        _fail(f"margins have shape {margins.shape}; expected 2-D (models, targets)")
    (m, P), T = masks.shape, margins.shape[1]
    if margins.shape[0] != m:
        _fail(f"masks have {m} rows but margins have {margins.shape[0]}; both need one row per model")
    if m < 2 or P < 2 or T < 1:
        _fail(f"masks {masks.shape} and margins {margins.shape}: need at least 2 models, 2 units and 1 target")
    if masks.dtype != bool and masks.dtype.kind not in "iuf":
        _fail(f"masks have dtype {masks.dtype}; expected bool or 0/1 numbers")
    if margins.dtype.kind not in "iuf":
        _fail(f"margins have dtype {margins.dtype}; expected numbers")
    if a.completed is not None:
        if a.completed.shape != (m,):
            _fail(f"completed has shape {a.completed.shape}; expected ({m},), one flag per model")
        c = np.asarray(a.completed)
        if c.dtype != bool and not ((c == 0) | (c == 1)).all():
            _fail("completed holds values other than 0/1")
    if a.unit_names is not None:
        if len(a.unit_names) != P:
            _fail(f"{len(a.unit_names)} unit names for {P} units (mask columns); give one name per unit")
        if len(set(a.unit_names)) != P:
            dup = next(n for n in a.unit_names if a.unit_names.count(n) > 1)
            _fail(f"unit name {dup!r} occurs more than once; unit names must be distinct")
    if a.target_labels is not None:
        t = np.asarray(a.target_labels)
        if t.shape != (T,):
            _fail(f"target labels have shape {t.shape}; expected ({T},), one per target (margin column)")
        if t.dtype.kind not in "iu" and not (t.dtype.kind == "f" and np.all(np.isfinite(t) & (t == np.round(t)))):
            _fail(f"target labels have dtype {t.dtype}; expected integer class indices")
        if len(t) and t.min() < 0:
            _fail("target labels hold negative values; expected class indices 0, 1, ...")
        if len(t) and t.max() >= MAX_TARGET_CLASSES:
            _fail(f"target labels hold class index {t.max():.0f}; expected class indices 0..K-1 with at most "
                  f"{MAX_TARGET_CLASSES:,} classes (K), one per target class")
    if kind not in ("class", "example"):
        _fail(f"kind {kind!r} is not one of class, example")
    return m, P, T, _check_label_margins(a, kind, m, P)


def _check_label_margins(a: ImportArrays, kind: str, m: int, P: int) -> int:
    """The label check's margins: both or neither, example level only, (m, P) and (m, S ≥ 1) numbers.
    Returns S (0 without them)."""
    given = [name for name in LABEL_MARGINS if getattr(a, name) is not None]
    if not given:
        return 0
    if kind != "example":
        _fail(f"{given[0]} are per source example; import them with --kind example")
    if len(given) == 1:
        missing = next(name for name in LABEL_MARGINS if name not in given)
        _fail(f"{given[0]} given without {missing}: the label check compares pool images with held-out source "
              "test images, so give both")
    pool, test = a.source_margins, a.source_test_margins
    if pool.shape != (m, P):
        _fail(f"source margins have shape {pool.shape}; expected ({m}, {P}), one per model and pool example")
    if test.ndim != 2 or test.shape[0] != m or test.shape[1] < 1:
        _fail(f"source test margins have shape {test.shape}; expected ({m}, S), one per model and source test "
              "example, S ≥ 1")
    for name, array in (("source margins", pool), ("source test margins", test)):
        if array.dtype.kind not in "iuf":
            _fail(f"{name} have dtype {array.dtype}; expected numbers")
    return int(test.shape[1])


def _block_rows(m: int, width: int) -> int:
    rows = max(ROW_CHUNK, (BLOCK_ELEMENTS // max(width, 1)) // ROW_CHUNK * ROW_CHUNK)  # even, chunk-aligned
    return min(rows, m)


def _new_dataset(f: h5py.File, name: str, shape: tuple[int, ...], kind: str, **kwargs: object) -> h5py.Dataset:
    spec = DATASETS_BY_NAME[name]
    ds = f.create_dataset(name, shape=shape, dtype=spec.dtype, track_times=False, **kwargs)
    ds.attrs["meaning"] = spec.meaning.format(kind=kind)
    ds.attrs["axes"] = spec.axes
    return ds


def import_store(out_path: str | Path, arrays: ImportArrays, *, kind: str = "class", alpha: float | None = None,
                 design: str = "random", force: bool = False) -> Path:
    """Write the run store `out_path` from `arrays` (atomically: on any bad input no file is left behind).

    Checks: shapes agree, masks are 0/1, completed rows have finite margins, unit names and target labels
    fit; with `design="antithetic"` rows 2i and 2i+1 must be complementary. `alpha` (the fraction of units
    a subset keeps) defaults to the masks' mean fraction.
    """
    out_path = Path(out_path)
    inputs = tuple(arrays.sources.values())
    check_output(out_path, force=force, inputs=inputs)
    if design not in IMPORT_DESIGNS:
        _fail(f"design {design!r} is not one of {', '.join(IMPORT_DESIGNS)}")
    if alpha is not None and not 0 < alpha < 1:
        _fail(f"alpha {alpha} must be between 0 and 1 (the fraction of units each subset keeps)")
    m, P, T, S = _check_shapes(arrays, kind)
    antithetic = design == "antithetic"
    if antithetic and m % 2:
        _fail(f"design antithetic needs an even number of rows (pairs 2i, 2i+1); the masks have {m}")
    completed = (np.ones(m, bool) if arrays.completed is None else np.asarray(arrays.completed).astype(bool))
    if completed.sum() == 0:
        _fail("no row is marked completed; nothing to import")
    unit_names = arrays.unit_names or [f"{kind} {u}" for u in range(P)]
    labels = None if arrays.target_labels is None else np.asarray(arrays.target_labels).astype(np.int64)
    target_classes = ([UNKNOWN_CLASS] if labels is None else [str(c) for c in range(int(labels.max()) + 1)])
    if labels is None:
        labels = np.zeros(T, np.int64)
    record = {
        "kind": kind, "design": design, "alpha_given": alpha, "models": m, "units": P, "targets": T,
        "completed": int(completed.sum()), "source_test_examples": S,
        "files": {role: {"path": str(Path(p).resolve()), "sha256": _sha256(Path(p))}
                  for role, p in sorted(arrays.sources.items())},
    }
    dims = {"m": m, "P": P, "T": T, "S": S}
    with replacing(out_path, force=force, inputs=inputs, fsync=True) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            kept, kept_completed = _write_rows(f, arrays, completed, dims, kind, antithetic)
            if S:
                _write_label_margins(f, arrays, completed, dims, kind)
            if alpha is None:
                alpha = round(kept / (m * P), 6)
            else:  # against the rows that ran (a writer may leave the masks of the others blank)
                _check_alpha(alpha, kept_completed, int(completed.sum()) * P)
            if not 0 < alpha < 1:
                _fail(f"the masks keep a fraction {alpha} of the units; subsets must keep some units and drop some")
            record["alpha"] = alpha
            _write_data(f, kind, unit_names, labels, target_classes, dims)
            text = json.dumps(record, sort_keys=True)
            f.attrs.update({
                "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "kind": kind, "alpha": alpha,
                "num_models": m, "num_units": P, "seed": -1, "antithetic": antithetic, "randomness": "unknown",
                "recipe": "", "recipe_hash": hashlib.sha256(text.encode()).hexdigest(),
                "fingerprints": json.dumps({role: v["sha256"] for role, v in record["files"].items()}, sort_keys=True),
                "planted": False, "package_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "masks_origin": "imported", "origin": "imported", "images": False, "import": text,
            })
    return out_path


def alpha_tolerance(alpha: float, entries: int) -> float:
    """How far a given alpha may lie from the masks' mean fraction: 3 binomial standard errors of a mean of
    `entries` Bernoulli(alpha) draws, plus 0.05 (masks drawn with exactly alpha*P units per row vary less)."""
    return 3 * float(np.sqrt(alpha * (1 - alpha) / max(entries, 1))) + 0.05


def _check_alpha(alpha: float, kept: int, entries: int) -> None:
    mean, tolerance = kept / entries, alpha_tolerance(alpha, entries)
    if abs(alpha - mean) > tolerance:
        _fail(f"--alpha {alpha:g} disagrees with the masks, whose completed rows keep a fraction {mean:.4f} of the units "
              f"(more than the allowed {tolerance:.3f}: 3 binomial standard errors + 0.05); give the alpha the "
              "masks were drawn with, or omit --alpha to use their mean")


def _write_rows(f: h5py.File, a: ImportArrays, completed: np.ndarray, dims: dict[str, int], kind: str,
                antithetic: bool) -> tuple[int, int]:
    """Masks, margins and the per-model columns, in row blocks; returns the number of kept units over all rows
    and over the completed rows."""
    m, P, T = dims["m"], dims["P"], dims["T"]
    chunk = min(m, ROW_CHUNK)
    masks = _new_dataset(f, "masks", (m, P), kind, chunks=(chunk, P), compression="gzip", shuffle=True)
    margins = _new_dataset(f, "margins", (m, T), kind, chunks=(chunk, T), fillvalue=np.nan)
    predictions = _new_dataset(f, "predictions", (m, T), kind, chunks=(chunk, T), fillvalue=-1)
    accuracy = np.full(m, np.nan, np.float32)
    kept = kept_completed = 0
    step = _block_rows(m, max(P, T))
    for start in range(0, m, step):
        stop = min(m, start + step)
        block = np.asarray(a.masks[start:stop])
        if block.dtype != bool:
            if not ((block == 0) | (block == 1)).all():
                bad = start + int(np.flatnonzero(~((block == 0) | (block == 1)).all(axis=1))[0])
                _fail(f"masks hold values other than 0/1 (first in row {bad}); masks must be 0/1 or bool")
            block = block.astype(bool)
        if antithetic:
            pairs = (block[0::2] == ~block[1::2]).all(axis=1)
            if not pairs.all():
                bad = start + 2 * int(np.flatnonzero(~pairs)[0])
                _fail(f"design antithetic: rows {bad} and {bad + 1} are not complementary masks; "
                      "import with --design random")
        kept += int(block.sum())
        kept_completed += int(block[completed[start:stop]].sum())
        masks[start:stop] = block
        done = completed[start:stop]
        values = np.array(a.margins[start:stop], dtype=np.float32)  # a copy: the input may be a read-only memmap
        finite = np.isfinite(values).all(axis=1)
        if (done & ~finite).any():
            bad = start + int(np.flatnonzero(done & ~finite)[0])
            _fail(f"row {bad} is marked completed but its margins hold NaN or infinity; "
                  "mark it not completed (--completed) or fix the margins")
        values[~done] = np.nan  # not written yet, whatever the source file holds there
        margins[start:stop] = values
        predictions[start:stop] = np.full((stop - start, T), -1, np.int16)
        accuracy[start:stop] = np.where(done, (values > 0).mean(axis=1), np.nan)
    for name, value in (("completed", completed), ("seed", np.full(m, -1, np.int64)),
                        ("source_accuracy", np.full(m, np.nan, np.float32)), ("target_accuracy", accuracy),
                        ("seconds", np.full(m, np.nan, np.float32))):
        ds = _new_dataset(f, name, (m,), kind, chunks=(chunk,), fillvalue=DATASETS_BY_NAME[name].fill)
        ds[...] = value
    return kept, kept_completed


def _write_label_margins(f: h5py.File, a: ImportArrays, completed: np.ndarray, dims: dict[str, int], kind: str) -> None:
    """`source_margins` and `source_test_margins` as the run-store contract lays them out (float16, NaN where a
    row gave none or is not completed), copied in row blocks."""
    m = dims["m"]
    for name in LABEL_MARGINS:
        spec = DATASETS_BY_NAME[name]
        width = dims[spec.shape[1]]
        target = _new_dataset(f, name, (m, width), kind, chunks=(min(m, ROW_CHUNK), width), fillvalue=np.nan)
        source = getattr(a, name)
        step = _block_rows(m, width)
        for start in range(0, m, step):
            stop = min(m, start + step)
            values = np.asarray(source[start:stop]).astype(np.float16)  # one rounding, from the input's dtype
            values[~completed[start:stop]] = np.nan
            target[start:stop] = values


def _write_data(f: h5py.File, kind: str, unit_names: list[str], labels: np.ndarray, target_classes: list[str],
                dims: dict[str, int]) -> None:
    """The datasets written whole: unit names and the label tables (no pixels: `images` is false)."""
    P = dims["P"]
    example = kind == "example"
    values = {
        "unit_names": unit_names,
        "source/labels": np.zeros(P if example else 0, np.int64),
        "source/class_names": [UNKNOWN_CLASS] if example else unit_names,
        "source/example_ids": unit_names if example else [],
        "source/test_labels": np.zeros(dims["S"], np.int64),  # labels unknown; margins are per stated label
        "target/train_labels": np.zeros(0, np.int64),
        "target/labels": labels,
        "target/class_names": target_classes,
    }
    for spec in RUN_DATASETS:
        if spec.name in values:
            _create_dataset(f, spec, values[spec.name], dims, kind)
