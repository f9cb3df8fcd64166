"""The HDF5 run store: one self-describing file per experiment, rows are models.

Crash safety rests on one rule: after `create` (which writes a temporary file and renames it into
place) no HDF5 metadata ever changes. Every per-model dataset is fixed-size, uncompressed and fully
allocated at creation, so writing a row only overwrites raw bytes in place. A row's data are written,
flushed and fsynced before its `completed` flag is set (and flushed and fsynced again), so a kill at
any moment leaves at worst a half-written row whose flag is still unset; resume recomputes it.

Every dataset is declared once, in `RUN_DATASETS`: `create_store` writes it, `RunStore.schema_problems`
(behind `dmtoolkit store validate`) checks it, and merging copies its `ROW_COLUMNS`. Outside store code, read a store
through `RunStore`'s accessors rather than by dataset name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from dmtoolkit import __version__
from dmtoolkit.atomic import check_output, replacing
from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import StoreError
from dmtoolkit.lock import WriterLock
from dmtoolkit.masks import make_masks
from dmtoolkit.paths import check_input_file
from dmtoolkit.plugins import load_function, source_sha256
from dmtoolkit.recipe import Recipe, parse_recipe_text

SCHEMA_NAME = "dmtoolkit.run"
SCHEMA_VERSION = 1
ROW_CHUNK = 64

IMAGE = ("*", "*", "*")  # y, x, channel: any size
IMAGE_AXES = "example, y, x, channel"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the run store, as created, validated and merged.

    `shape` names each axis size by a symbol (see the comment above `RUN_DATASETS`). `storage` says how it is
    laid out: "rows" datasets are preallocated, fixed and uncompressed, filled with `fill` and then
    overwritten row by row in place (the crash-safety rule); "masks" is written whole at creation,
    chunked by rows and compressed; "data" is written whole and compressed when large. `column`
    marks the per-model results a row carries (`RunStore.write_row`, merge); `planted` datasets exist
    only when ground truth was planted, `harm` ones (planted too) only when harmful classes were (the store's
    `planted_harm` attribute). `meaning` may name `{kind}` (class or example).
    """

    name: str
    dtype: str  # a numpy dtype, or "str" for variable-length UTF-8 strings
    shape: tuple[str, ...]
    axes: str
    meaning: str
    storage: Literal["rows", "masks", "data"] = "data"
    fill: object = None
    column: bool = False
    planted: bool = False
    harm: bool = False
    image: bool = False  # pixels: absent from imported stores (`dmtoolkit store import` brings none)
    examples: bool = False  # example-level stores only, and optional: stores made before 0.x, imports lack it

    def shape_text(self, dims: dict[str, int]) -> str:
        """The expected shape, sizes filled in where known: "(8, 120)", "(N, *, *, *)"."""
        sizes = [str(dims.get(symbol, symbol)) for symbol in self.shape]
        return f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"


# Axis-size symbols: m models (rows), P units subsampled (source classes or pool examples), T target test
# examples, N source pool examples, K source classes, S source test examples, R target train examples,
# C target classes; "*" any size.
RUN_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("masks", "bool", ("m", "P"), "model, unit",
                "mask[i, u] is true when model i's training subset keeps source {kind} u", storage="masks"),
    DatasetSpec("unit_names", "str", ("P",), "unit", "name of each subsampled unit ({kind}), the columns of masks"),
    DatasetSpec("margins", "float32", ("m", "T"), "model, target example",
                "margin z_y - max_{{k!=y}} z_k of the transferred model on each target test example; NaN until written",
                storage="rows", fill=np.nan, column=True),
    DatasetSpec("completed", "bool", ("m",), "model",
                "true once the model's row is durably written; only completed rows count", storage="rows", fill=False),
    DatasetSpec("predictions", "int16", ("m", "T"), "model, target example",
                "class the transferred model predicts for each target test example; -1 until written",
                storage="rows", fill=-1, column=True),
    DatasetSpec("source_margins", "float16", ("m", "P"), "model, source pool example",
                "margin z_y - max_{{k!=y}} z_k of the source model on each pool example under its stated label y, "
                "whether or not the model trained on it (the label check `mislabels` flags from); NaN until written "
                "or when the trainer gives none", storage="rows", fill=np.nan, column=True, examples=True),
    DatasetSpec("source_test_margins", "float16", ("m", "S"), "model, source test example",
                "the same margin on each source test example (correct labels, never trained on): the label check's "
                "reference; NaN until written or when the trainer gives none",
                storage="rows", fill=np.nan, column=True, examples=True),
    DatasetSpec("seed", "int64", ("m",), "model", "training seed the model used", storage="rows", fill=-1, column=True),
    DatasetSpec("source_accuracy", "float32", ("m",), "model",
                "accuracy of the source model on the source test split, in [0, 1]",
                storage="rows", fill=np.nan, column=True),
    DatasetSpec("target_accuracy", "float32", ("m",), "model",
                "accuracy of the transferred model on the target test set, in [0, 1]",
                storage="rows", fill=np.nan, column=True),
    DatasetSpec("seconds", "float32", ("m",), "model",
                "wall-clock seconds spent computing the model (its share of a batched group)",
                storage="rows", fill=np.nan, column=True),
    DatasetSpec("source/images", "uint8", ("N", *IMAGE), IMAGE_AXES, "source training pool images (after planting), uint8", image=True),
    DatasetSpec("source/labels", "int64", ("N",), "example", "class index of each source pool example"),
    DatasetSpec("source/class_names", "str", ("K",), "class", "source class names"),
    DatasetSpec("source/example_ids", "str", ("N",), "example", "stable id of each source pool example"),
    DatasetSpec("source/test_images", "uint8", ("S", *IMAGE), IMAGE_AXES, "source test images (held-out fonts/families)", image=True),
    DatasetSpec("source/test_labels", "int64", ("S",), "example", "class index of each source test example"),
    DatasetSpec("target/train_images", "uint8", ("R", *IMAGE), IMAGE_AXES,
                "target training images the transfer head is fitted on", image=True),
    DatasetSpec("target/train_labels", "int64", ("R",), "example", "class index of each target training example"),
    DatasetSpec("target/images", "uint8", ("T", *IMAGE), IMAGE_AXES, "target test images; the columns of margins", image=True),
    DatasetSpec("target/labels", "int64", ("T",), "example", "class index of each target test example"),
    DatasetSpec("target/class_names", "str", ("C",), "class", "target class names"),
    DatasetSpec("source/planted_leak", "int64", ("N",), "example",
                "index of the target TEST example this source example copies, -1 if none", planted=True),
    DatasetSpec("source/planted_decoy", "int64", ("N",), "example",
                "index of the target TRAIN example this source example copies, -1 if none", planted=True),
    DatasetSpec("source/planted_near_copy", "bool", ("N",), "example",
                "true when the planted copy is a near copy (shift or noise)", planted=True),
    DatasetSpec("source/planted_flip", "bool", ("N",), "example", "true when the example's label was flipped", planted=True),
    DatasetSpec("source/original_labels", "int64", ("N",), "example", "label before flipping", planted=True),
    DatasetSpec("source/planted_harm", "str", ("K",), "class",
                "harm planted in each source class (conflict, noise, shuffled, duplicate), '' if none",
                planted=True, harm=True),
    DatasetSpec("source/planted_harm_from", "int64", ("K",), "class",
                "conflict: the target class whose train images were added (-1 when several); duplicate: the source class copied; "
                "else -1", planted=True, harm=True),
)
DATASETS_BY_NAME = {spec.name: spec for spec in RUN_DATASETS}
ROW_COLUMNS: tuple[str, ...] = tuple(spec.name for spec in RUN_DATASETS if spec.column)
# the per-model float columns and their meanings (read them with `RunStore.column`)
PER_MODEL_FLOATS: dict[str, str] = {spec.name: spec.meaning for spec in RUN_DATASETS
                                    if spec.column and spec.shape == ("m",) and spec.dtype == "float32"}


@dataclass(frozen=True)
class Split:
    """Images and labels of one split as stored: images uint8 (N, H, W, C), labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Planted:
    """Planted ground truth over the source pool; only scoring may read it, never an estimator."""

    leak_target: np.ndarray
    decoy_target: np.ndarray
    near_copy: np.ndarray
    flipped: np.ndarray
    original_labels: np.ndarray
    harm_kind: tuple[str, ...] | None = None  # per source class, "" where none; None: no harmful classes planted
    harm_from: np.ndarray | None = None

    @property
    def harmful_classes(self) -> np.ndarray:
        """Indices of the source classes planted to hurt the target (empty when none were)."""
        return np.flatnonzero([bool(k) for k in self.harm_kind or ()]).astype(np.int64)


@dataclass(frozen=True)
class RunData:
    """Everything a worker needs besides the recipe: the data every model of the run sees."""

    source_pool: Split
    source_test: Split
    source_class_names: tuple[str, ...]
    source_example_ids: tuple[str, ...]
    target_train: Split
    target_test: Split
    target_class_names: tuple[str, ...]
    fingerprints: dict[str, str]
    planted: Planted | None = None
    notes: tuple[str, ...] = ()  # conversions made while loading, one line each (`init` warns; not stored)

    def num_units(self, kind: str) -> int:
        return len(self.source_class_names) if kind == "class" else len(self.source_pool.labels)


def _create_dataset(f: h5py.File, spec: DatasetSpec, value: object, dims: dict[str, int], kind: str) -> None:
    """Create `spec` in `f` as its `storage` says (`value`: the content, None for "rows" datasets)."""
    if spec.storage == "rows":  # fixed, uncompressed, written in full now: later row writes never touch metadata
        shape = tuple(dims[symbol] for symbol in spec.shape)
        chunks = (min(shape[0], ROW_CHUNK),) + shape[1:] if all(shape) else None  # e.g. no source test examples
        ds = f.create_dataset(spec.name, shape=shape, dtype=spec.dtype, chunks=chunks, fillvalue=spec.fill,
                              track_times=False)
        ds[...] = np.full(shape, spec.fill, dtype=spec.dtype)
    elif spec.dtype == "str":
        ds = f.create_dataset(spec.name, data=list(value), dtype=h5py.string_dtype())
    else:
        data = np.asarray(value, dtype=spec.dtype)
        if spec.storage == "masks":
            kwargs = {"chunks": (min(data.shape[0], ROW_CHUNK), *data.shape[1:]), "compression": "gzip", "shuffle": True}
        else:
            kwargs = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if data.size > 1024 else {}
        ds = f.create_dataset(spec.name, data=data, **kwargs)
    ds.attrs["meaning"] = spec.meaning.format(kind=kind)
    ds.attrs["axes"] = spec.axes


def _dataset_values(data: RunData, masks: np.ndarray, units: tuple[str, ...]) -> dict[str, object]:
    """The content of every dataset written whole at creation, by name (see `RUN_DATASETS`)."""
    values: dict[str, object] = {
        "masks": masks, "unit_names": units,
        "source/images": data.source_pool.images, "source/labels": data.source_pool.labels,
        "source/class_names": data.source_class_names, "source/example_ids": data.source_example_ids,
        "source/test_images": data.source_test.images, "source/test_labels": data.source_test.labels,
        "target/train_images": data.target_train.images, "target/train_labels": data.target_train.labels,
        "target/images": data.target_test.images, "target/labels": data.target_test.labels,
        "target/class_names": data.target_class_names,
    }
    if data.planted is not None:
        p = data.planted
        values.update({"source/planted_leak": p.leak_target, "source/planted_decoy": p.decoy_target,
                       "source/planted_near_copy": p.near_copy, "source/planted_flip": p.flipped,
                       "source/original_labels": p.original_labels})
        if p.harm_kind is not None:
            values.update({"source/planted_harm": p.harm_kind, "source/planted_harm_from": p.harm_from})
    return values


def create_store(path: str | Path, recipe: Recipe, data: RunData, *, force: bool = False,
                 masks: np.ndarray | None = None, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write a new run store atomically (temp file, then rename), its masks drawn from the recipe's seed or,
    given `masks` (m, P), exactly those (recorded as explicit, e.g. a counterfactual's removal sets).

    The output guard (`dmtoolkit.atomic.check_output`) refuses a path that is not a regular file, one of
    `inputs`, an existing store without `force`, or one a live writer holds."""
    path = Path(path)
    inputs = tuple(inputs)
    check_output(path, force=force, inputs=inputs)
    kind, sub = recipe.subsets.kind, recipe.subsets
    num_units = data.num_units(kind)
    if num_units < 2:
        raise StoreError(f"{path}: the source has {num_units} {kind} unit(s); subsets need at least 2")
    explicit = masks is not None
    if explicit:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (sub.models, num_units):
            raise StoreError(f"{path}: explicit masks have shape {masks.shape}, the recipe needs "
                             f"({sub.models}, {num_units})")
    else:
        masks = make_masks(sub.seed, sub.models, num_units, sub.alpha, sub.antithetic, sub.design)
    m, T = sub.models, len(data.target_test.labels)
    if T == 0:
        raise StoreError(f"{path}: the target test set is empty; check the recipe's target dataset")
    units = data.source_class_names if kind == "class" else data.source_example_ids
    values = _dataset_values(data, masks, units)
    dims = {"m": m, "P": num_units, "T": T, "S": len(data.source_test.labels)}
    # a recipe's trainer is imported now, so `init` refuses one that cannot be imported; its source is hashed
    trainer_digest = source_sha256(load_function(recipe.trainer.function)) if recipe.trainer else None
    with replacing(path, force=force, inputs=inputs, fsync=True) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            _write_attributes(f, recipe, data, num_units, trainer_digest)
            f.attrs["masks_origin"] = "explicit" if explicit else "recipe seed"
            for spec in RUN_DATASETS:
                if (spec.planted and data.planted is None or spec.harm and not _has_harm(data)
                        or spec.examples and kind != "example"):
                    continue
                _create_dataset(f, spec, values.get(spec.name), dims, kind)
    return path


def _has_harm(data: RunData) -> bool:
    return data.planted is not None and data.planted.harm_kind is not None


def _write_attributes(f: h5py.File, recipe: Recipe, data: RunData, num_units: int,
                      trainer_digest: str | None = None) -> None:
    sub = recipe.subsets
    f.attrs.update({
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "kind": sub.kind,
        "alpha": sub.alpha,
        "num_models": sub.models,
        "num_units": num_units,
        "seed": sub.seed,
        "antithetic": sub.antithetic,
        "randomness": recipe.seeding[1],
        "trainer": recipe.trainer_name,
        "recipe": recipe.canonical_json(),
        "recipe_hash": recipe.hash(),
        "fingerprints": json.dumps(data.fingerprints, sort_keys=True),
        "planted": data.planted is not None,
        **({"planted_harm": True} if _has_harm(data) else {}),  # (absent, not False: older stores' attributes)
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if trainer_digest:
        f.attrs["trainer_source_sha256"] = trainer_digest
    if recipe.own_data is not None:  # the trainer brings its data: the splits hold blank placeholders, not pixels
        f.attrs["images"] = False


def _open_h5(path: Path, mode: str) -> h5py.File:
    check_input_file(path, "a run store", missing=f"{path}: no such store; create one with `dmtoolkit init "
                     f"RECIPE.yaml {path}`", error=StoreError)
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path}: not an HDF5 file (corrupt or another format); recreate it with `dmtoolkit init`")
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as error:
        raise StoreError(f"{path}: HDF5 file cannot be opened ({error.args[0] if error.args else error}); it may be corrupt") from None


# attributes read by name when a store is open (the rest have defaults)
REQUIRED_ATTRIBUTES = ("kind", "alpha", "seed", "randomness", "recipe", "recipe_hash", "fingerprints", "package_version")
RECREATE = "recreate it with `dmtoolkit init` (or `dmtoolkit store import`) and train again"


def _more(count: int) -> str:
    return f" (+{count} more problem{'s' * (count > 1)})" if count else ""


_SCANS: dict[tuple[int, int, int, int], tuple[str, np.ndarray]] = {}  # file identity -> `RunStore._scan` result


class RunStore:
    """An open run store. Read-only by default; `writable=True` takes the single-writer lock."""

    def __init__(self, path: str | Path, *, writable: bool = False, check_datasets: bool = True) -> None:
        """Open (and with `writable`, lock) the store, refusing in one line a file that is not a run store of this
        schema, lacks a required attribute or (unless `check_datasets` is False, as `store validate` opens it to
        list every problem) any dataset of `RUN_DATASETS` with its dtype and shape: metadata only, no data read."""
        self.path = Path(path)
        if not self.path.exists():  # before locking: no stray STORE.lock, no traceback for a missing folder
            _open_h5(self.path, "r")
        self._lock = WriterLock(self.path).acquire() if writable else None
        try:
            self.file = _open_h5(self.path, "r")
            self._check_schema()
            if check_datasets:
                self.check_datasets()
            if writable:  # checked read-only first: a refused writer leaves the file untouched (even its mtime)
                self._check_recipe_hash()
                self.file.close()
                self.file = _open_h5(self.path, "r+")
                self._inode = _file_identity(os.fstat(self._fd()))
                self.rows_written = 0
        except BaseException:
            if getattr(self, "file", None):
                self.file.close()
            if self._lock:
                self._lock.release()
            raise

    def _check_schema(self) -> None:
        schema = self.file.attrs.get("schema")
        if schema != SCHEMA_NAME:
            self.file.close()
            raise StoreError(f"{self.path}: not a dmtoolkit run store (schema {schema!r}); point at a file made by `dmtoolkit init`")
        version = int(self.file.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            self.file.close()
            raise StoreError(
                f"{self.path}: run store schema version {version}, this dmtoolkit reads version {SCHEMA_VERSION}; "
                "use the matching dmtoolkit version or recreate the store"
            )
        missing = [name for name in REQUIRED_ATTRIBUTES if name not in self.file.attrs]
        if missing:
            self.file.close()
            raise StoreError(f"{self.path}: damaged run store: attribute {missing[0]!r} is missing"
                             f"{_more(len(missing) - 1)}; {RECREATE}")

    def check_datasets(self) -> None:
        """Refuse, in one line, a store whose datasets do not match `RUN_DATASETS` (missing, renamed, another
        dtype or shape): what every command that opens a store relies on. Metadata only."""
        problems = self.schema_problems()
        if problems:
            raise StoreError(f"{self.path}: damaged run store: {problems[0]}{_more(len(problems) - 1)}; "
                             f"`dmtoolkit store validate {self.path}` lists every problem; {RECREATE}")

    def _check_recipe_hash(self) -> None:
        """A writer must not add rows made by a recipe other than the one the store's rows came from."""
        if self.imported:  # no recipe: its recipe_hash is the hash of the import record (see store_import.py)
            return
        if self.recipe.hash() != self.recipe_hash:
            raise StoreError(
                f"{self.path}: the stored recipe does not match the recipe hash its rows were made with; "
                "refusing to add rows (recreate the store with `dmtoolkit init`)"
            )

    # context management -------------------------------------------------------------------------
    def close(self) -> None:
        if self.file:
            self.file.close()
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None and self._lock is not None and self.file:
                self.check_still_at_path()  # the end of a writer: its rows are where the path says
        finally:
            self.close()

    def _fd(self) -> int:
        return int(self.file.id.get_vfd_handle())

    def check_still_at_path(self) -> None:
        """A writer's check (before each row and at the end): the open file is still the file at `self.path`.

        If the path was replaced (e.g. `mv`, or another tool's rename) or deleted, rows written now would go to a
        file nobody can reach: raise one line instead. When the open file has no name left, its content (every
        completed row, this run's included) is first copied to `STORE.h5.rescued-TIME.h5` beside the path.
        """
        if self._lock is None:
            return
        try:
            now = _file_identity(os.stat(self.path))
        except OSError:
            now = None
        if now == self._inode:
            return
        what = "moved or deleted" if now is None else "replaced by another file"
        written = f"{self.rows_written} row{'s' * (self.rows_written != 1)} written by this run"
        if os.fstat(self._fd()).st_nlink > 0:
            where = (f"the open file still exists under another name (moved or linked), with {written} and every "
                     "row completed before; nothing was deleted")
        else:
            rescued = self._rescue()
            where = (f"{written} and every row completed before are kept in {rescued} (move it back to "
                     f"{self.path} and rerun `dmtoolkit train` to resume)" if rescued else
                     f"{written} are lost with it (no copy could be made beside it)")
        raise StoreError(f"{self.path}: was {what} while training; stopped writing: {where}")

    def _rescue(self) -> Path | None:
        """Copy the open (deleted) file beside its old path, never over a file; its path, or None."""
        self.file.flush()
        fd = self._fd()
        rescued = self.path.with_name(f"{self.path.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.h5")
        try:
            out = os.open(rescued, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return None
        try:
            offset = 0
            while chunk := os.pread(fd, 1 << 24, offset):
                os.write(out, chunk)
                offset += len(chunk)
            os.fsync(out)
        except OSError:
            os.close(out)
            rescued.unlink(missing_ok=True)
            return None
        os.close(out)
        return rescued

    # metadata -----------------------------------------------------------------------------------
    @property
    def recipe(self) -> Recipe:
        self.require(Capability.RECIPE)
        return parse_recipe_text(self.file.attrs["recipe"], origin=f"{self.path} (stored recipe)")

    def has(self, capability: Capability) -> bool:
        """Whether this store supports what `capability` names (for code that chooses a path; see `require`)."""
        return capability.present(self)

    def require(self, capability: Capability, command: str | None = None) -> None:
        """Refuse, in the capability's one line naming `dmtoolkit COMMAND`, a store that lacks it."""
        capability.require(self, self.path, command)

    @property
    def imported(self) -> bool:
        """Made by `dmtoolkit store import` from masks and margins computed elsewhere: no recipe, no images."""
        return self.file.attrs.get("origin", "recipe") == "imported"

    @property
    def has_images(self) -> bool:
        """The store holds source and target pixels (not an imported store, nor one whose trainer brings its own
        data)."""
        return bool(self.file.attrs.get("images", True))

    @property
    def import_record(self) -> dict | None:
        """What an imported store was made from (source files, their sha256, options); None otherwise."""
        return json.loads(self.file.attrs["import"]) if self.imported else None

    @property
    def antithetic(self) -> bool:
        """Rows 2i and 2i+1 are complementary masks (one draw), as recorded at creation."""
        return bool(self.file.attrs.get("antithetic", False))

    @property
    def recipe_hash(self) -> str:
        return str(self.file.attrs["recipe_hash"])

    @property
    def kind(self) -> str:
        return str(self.file.attrs["kind"])

    @property
    def subset_fraction(self) -> float:
        """α: the fraction of units each subset keeps (the recipe's `subsets.alpha`)."""
        return float(self.file.attrs["alpha"])

    @property
    def seed(self) -> int:
        return int(self.file.attrs["seed"])

    @property
    def created(self) -> str:
        """Creation time stamp (with the recipe hash, tells two stores at one path apart)."""
        return str(self.file.attrs.get("created", ""))

    @property
    def num_models(self) -> int:
        return int(self.file["masks"].shape[0])

    @property
    def num_units(self) -> int:
        return int(self.file["masks"].shape[1])

    @property
    def num_targets(self) -> int:
        return int(self.file["margins"].shape[1])

    @property
    def unit_names(self) -> list[str]:
        return list(self.file["unit_names"].asstr()[()])

    @property
    def target_names(self) -> list[str]:
        """One readable name per target test example: its index and true class."""
        classes = self.strings("target/class_names")
        return [f"{j}:{classes[label]}" for j, label in enumerate(self.file["target/labels"][()])]

    @property
    def has_planted(self) -> bool:
        return bool(self.file.attrs.get("planted", False))

    @property
    def has_planted_harm(self) -> bool:
        """Whether harmful source classes were planted (`planting.harmful`)."""
        return self.has_planted and bool(self.file.attrs.get("planted_harm", False))

    def strings(self, name: str) -> list[str]:
        return list(self.file[name].asstr()[()])

    def schema_problems(self) -> list[str]:
        """Every dataset of `RUN_DATASETS` that is missing or has another dtype or shape (empty when all match).

        Axis sizes are bound by the first dataset naming them (m and P by masks, T by margins) and must
        agree everywhere else; planted datasets are required only when the store says it has them.
        """
        f, problems, dims = self.file, [], {}
        for spec in RUN_DATASETS:
            if ((spec.planted and not self.has_planted) or (spec.harm and not self.has_planted_harm)
                    or (spec.image and not self.has_images) or (spec.examples and spec.name not in f)):
                continue
            if spec.name not in f or not isinstance(f[spec.name], h5py.Dataset):
                problems.append(f"dataset {spec.name!r} is missing")
                continue
            ds = f[spec.name]
            if spec.dtype == "str":
                dtype_ok, expected_dtype = h5py.check_string_dtype(ds.dtype) is not None, "string"
            else:
                dtype_ok, expected_dtype = ds.dtype == np.dtype(spec.dtype), str(np.dtype(spec.dtype))
            shape_ok = len(ds.shape) == len(spec.shape)
            if shape_ok:
                for symbol, size in zip(spec.shape, ds.shape):
                    if symbol != "*" and dims.setdefault(symbol, size) != size:
                        shape_ok = False
            if not (dtype_ok and shape_ok):
                problems.append(f"{spec.name}: expected {expected_dtype} {spec.shape_text(dims)}, "
                                f"found {ds.dtype} {ds.shape}")
        return problems

    # datasets, read through these accessors outside store code -----------------------------------
    @property
    def masks(self) -> h5py.Dataset:
        """(m, P) bool subset masks, sliceable by row ranges."""
        return self.file["masks"]

    @property
    def margins(self) -> h5py.Dataset:
        """(m, T) float32 target margins (NaN until written), sliceable by row ranges."""
        return self.file["margins"]

    @property
    def source_margins(self) -> h5py.Dataset | None:
        """(m, P) float16 stated-label source margins on the pool per model (NaN where not given); None when the
        store keeps none (class level, made before they were recorded, imported)."""
        return self.file["source_margins"] if "source_margins" in self.file else None

    @property
    def source_test_margins(self) -> h5py.Dataset | None:
        """(m, S) float16, the same on the source test examples; None like `source_margins`."""
        return self.file["source_test_margins"] if "source_test_margins" in self.file else None

    @property
    def predictions(self) -> h5py.Dataset:
        """(m, T) int16 predicted target class per model (-1 until written)."""
        return self.file["predictions"]

    def column(self, name: str) -> np.ndarray:
        """The whole per-model column `name` (m,): one of `seed`, `source_accuracy`, `target_accuracy`, `seconds`."""
        if name not in ROW_COLUMNS or len(DATASETS_BY_NAME[name].shape) != 1:
            raise KeyError(f"{name!r} is not a per-model column of a run store")
        return self.file[name][()]

    def row_values(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every row column (`ROW_COLUMNS`) of the given increasing, distinct rows: what `write_row` writes."""
        rows = np.asarray(rows, dtype=np.int64)
        return {name: self.file[name][rows] for name in ROW_COLUMNS if name in self.file}

    @property
    def explicit_masks(self) -> bool:
        """The masks were given at creation (not drawn from the recipe's seed), so they cannot be re-derived."""
        return self.file.attrs.get("masks_origin", "recipe seed") == "explicit"

    @property
    def trainer(self) -> str:
        """What computed the rows: the recipe's MODULE:FUNCTION, or builtin:ARCH."""
        return str(self.file.attrs.get("trainer", "")) or self.recipe.trainer_name

    @property
    def trainer_source_sha256(self) -> str | None:
        """sha256 of the trainer's source file when the store was created (None: built-in or no file)."""
        value = self.file.attrs.get("trainer_source_sha256")
        return None if value is None else str(value)

    @property
    def randomness(self) -> str:
        """The recipe's training randomness ("shared" or "per-model"), as recorded at creation."""
        return str(self.file.attrs["randomness"])

    @property
    def package_version(self) -> str:
        return str(self.file.attrs["package_version"])

    @property
    def fingerprints(self) -> dict[str, str]:
        """Fingerprints of the datasets the store was made from (equal data, equal fingerprints)."""
        return json.loads(self.file.attrs["fingerprints"])

    @property
    def num_source_examples(self) -> int:
        """N: examples in the source pool."""
        return int(self.file["source/labels"].shape[0])

    @property
    def num_source_test(self) -> int:
        return int(self.file["source/test_labels"].shape[0])

    @property
    def num_target_train(self) -> int:
        return int(self.file["target/train_labels"].shape[0])

    @property
    def source_labels(self) -> np.ndarray:
        return self.file["source/labels"][()]

    @property
    def source_class_names(self) -> list[str]:
        return self.strings("source/class_names")

    @property
    def source_example_ids(self) -> list[str]:
        return self.strings("source/example_ids")

    @property
    def target_labels(self) -> np.ndarray:
        return self.file["target/labels"][()]

    @property
    def target_class_names(self) -> list[str]:
        return self.strings("target/class_names")

    def source_images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, C) images of the given source pool examples, in the given order."""
        self.require(Capability.IMAGES)
        return _take(self.file["source/images"], indices)

    def target_images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, C) images of the given target test examples, in the given order."""
        self.require(Capability.IMAGES)
        return _take(self.file["target/images"], indices)

    def planted(self) -> Planted | None:
        """Planted ground truth (scoring only; never read by an estimator), or None when nothing was planted."""
        if not self.has_planted:
            return None
        f = self.file
        harm = ((tuple(self.strings("source/planted_harm")), f["source/planted_harm_from"][()])
                if self.has_planted_harm else (None, None))
        return Planted(*(f[f"source/{n}"][()] for n in
                         ("planted_leak", "planted_decoy", "planted_near_copy", "planted_flip", "original_labels")),
                       *harm)

    def run_data(self) -> RunData:
        """The stored data, as workers need it to train and transfer any model of the run (a trainer that brings
        its own data gets the blank placeholder splits its store holds)."""
        if self.imported:
            self.require(Capability.IMAGES)
        f = self.file
        split = lambda images, labels: Split(f[images][()], f[labels][()])  # noqa: E731
        planted = self.planted()
        return RunData(
            source_pool=split("source/images", "source/labels"),
            source_test=split("source/test_images", "source/test_labels"),
            source_class_names=tuple(self.strings("source/class_names")),
            source_example_ids=tuple(self.strings("source/example_ids")),
            target_train=split("target/train_images", "target/train_labels"),
            target_test=split("target/images", "target/labels"),
            target_class_names=tuple(self.strings("target/class_names")),
            fingerprints=self.fingerprints,
            planted=planted,
        )

    # rows ---------------------------------------------------------------------------------------
    def completed_mask(self) -> np.ndarray:
        return self.file["completed"][()].astype(bool)

    def completed_rows(self) -> np.ndarray:
        return np.flatnonzero(self.completed_mask())

    def pending_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.completed_mask())

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (r, P) bool and margins (r, T) float32 of the given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_models):
            raise StoreError(f"{self.path}: row {rows[(rows < 0) | (rows >= self.num_models)][0]} out of range "
                             f"(the store has {self.num_models} rows)")
        unique, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing, distinct rows only
        masks = self.file["masks"][unique] if len(rows) else np.zeros((0, self.num_units), bool)
        margins = self.file["margins"][unique] if len(rows) else np.zeros((0, self.num_targets), np.float32)
        return masks[inverse].astype(bool), margins[inverse]

    def iter_blocks(self, rows: np.ndarray | None = None, block_rows: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Stream (rows, masks, margins) in blocks of at most `block_rows` completed rows (default: all completed)."""
        rows = self.completed_rows() if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), block_rows):
            block = rows[start:start + block_rows]
            yield (block, *self.read_rows(block))

    def write_row(self, index: int, margins: np.ndarray, *, seed: int, source_accuracy: float,
                  target_accuracy: float, seconds: float, predictions: np.ndarray | None = None,
                  source_margins: np.ndarray | None = None, source_test_margins: np.ndarray | None = None) -> None:
        """Write one model's results, durably, then mark it completed (see module docstring). The stated-label
        source margins are kept where the store has room for them (example-level stores) and dropped elsewhere."""
        if self._lock is None:
            raise StoreError(f"{self.path}: opened read-only; open it writable to add rows")
        self.check_still_at_path()
        margins = np.asarray(margins, dtype=np.float32)
        if margins.shape != (self.num_targets,):
            raise StoreError(f"{self.path}: row {index} has {margins.shape} margins, expected ({self.num_targets},)")
        if not np.isfinite(margins).all():
            raise StoreError(f"{self.path}: row {index} has non-finite margins; the model diverged (lower the learning rate)")
        values = {"margins": margins, "predictions": None if predictions is None else np.asarray(predictions, np.int16),
                  "seed": seed, "source_accuracy": source_accuracy, "target_accuracy": target_accuracy,
                  "seconds": seconds, "source_margins": source_margins, "source_test_margins": source_test_margins}
        f = self.file
        for name in ROW_COLUMNS:
            if values[name] is not None and name in f:
                if f[name].shape[1:] != np.shape(values[name]):
                    raise StoreError(f"{self.path}: row {index} has {np.shape(values[name])} {name}, expected "
                                     f"{f[name].shape[1:]}")
                f[name][index] = values[name]
        self._sync()
        f["completed"][index] = True
        self._sync()
        self.rows_written += 1

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self._fd())  # the open file itself, whatever is at the path now

    def content_hash(self) -> str:
        """SHA-256 over the recipe hash, masks, completion flags and completed margins: what estimates depend on."""
        return self._scan()[0]

    def nonfinite_rows(self) -> np.ndarray:
        """Completed rows whose margins are not all finite (a store made or edited by another tool)."""
        return self._scan()[1]

    def _scan(self) -> tuple[str, np.ndarray]:
        """One pass over the completed rows for the content hash and the non-finite rows; kept while the store is
        open read-only (a writer's rows change it), and across opens of the same unchanged file in this process
        (same device, inode, size and mtime), so a command that opens a store several times (the report: rank,
        recommend, leakage, LDS per estimate) scans it once."""
        cached = getattr(self, "_scanned", None)
        if cached is not None:
            return cached
        st = os.stat(self.path)
        # a file changed within the clock's coarse tick could keep its mtime: only files settled for 2 s are shared
        settled = self._lock is None and time.time_ns() - st.st_mtime_ns > 2_000_000_000
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if settled else None
        if identity in _SCANS:
            self._scanned = _SCANS[identity]
            return self._scanned
        digest = hashlib.sha256(self.recipe_hash.encode())
        completed = self.completed_mask()
        digest.update(completed.tobytes())
        nonfinite = []
        for rows, masks, margins in self.iter_blocks(np.flatnonzero(completed)):
            digest.update(rows.tobytes())
            digest.update(np.packbits(masks, axis=1).tobytes())
            digest.update(margins.tobytes())
            nonfinite.append(rows[~np.isfinite(margins).all(axis=1)])
        result = digest.hexdigest(), np.concatenate(nonfinite) if nonfinite else np.zeros(0, np.int64)
        if self._lock is None:
            self._scanned = result
        if identity is not None:
            _SCANS[identity] = result
        return result


def _file_identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def open_store(path: str | Path, *, writable: bool = False) -> RunStore:
    """Open a run store (read-only by default; `writable=True` takes the single-writer lock to `write_row`)."""
    return RunStore(path, writable=writable)


def _take(dataset: h5py.Dataset, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """dataset[indices] for any order and repeats (h5py itself reads increasing, distinct indices only)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) == 0:
        return np.zeros((0, *dataset.shape[1:]), dataset.dtype)
    unique, inverse = np.unique(indices, return_inverse=True)
    return dataset[unique][inverse]
