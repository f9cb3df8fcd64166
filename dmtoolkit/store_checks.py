"""Human and machine summaries of a run store (`StoreSummary`), and a validator that lists every problem it finds."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmtoolkit.display import Displayable, JsonResult, json_field
from dmtoolkit.errors import RecipeError
from dmtoolkit.masks import make_masks
from dmtoolkit.store import RunStore


@dataclass(frozen=True)
class Spread(JsonResult):
    """Mean, standard deviation (ddof 0), min and max of a per-model value over the completed rows."""

    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Spread | None:
        """Over the finite `values`; None when there are none."""
        values = values[np.isfinite(values)]
        if not len(values):
            return None
        return cls(float(values.mean()), float(values.std()), float(values.min()), float(values.max()))


@dataclass(frozen=True)
class ModelCount(JsonResult):
    completed: int
    total: int


@dataclass(frozen=True)
class StoreShapes(JsonResult):
    masks: tuple[int, ...]
    margins: tuple[int, ...]


@dataclass(frozen=True)
class SourceCounts(JsonResult):
    dataset: str
    classes: int
    pool_examples: int
    test_examples: int


@dataclass(frozen=True)
class TargetCounts(JsonResult):
    dataset: str
    classes: int
    train_examples: int
    test_examples: int


@dataclass(frozen=True)
class ImportedFrom(JsonResult):
    """How an imported store was made: its design and the files read (role -> {"path", "sha256"}; none for
    in-memory arrays)."""

    design: str
    files: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class PlantedCounts(JsonResult):
    """Planted ground truth, counted; harmful: class name -> kind of harm (None: no harmful classes planted)."""

    leaks: int
    decoys: int
    near_copy_leaks: int
    flipped: int
    harmful: Mapping[str, str] | None = json_field(omit="none", default=None)


@dataclass(frozen=True, repr=False)
class StoreSummary(Displayable):
    """What a person asks first about a run store (`store_summary`; what `dmtoolkit store info` prints):
    progress, accuracies, shapes, recipe, where an imported store came from (None: not imported) and the planted
    counts (None: nothing planted); the JSON leaves those two keys out when None."""

    path: str
    recipe: str
    recipe_hash: str
    kind: str
    alpha: float
    seed: int
    randomness: str
    models: ModelCount
    shapes: StoreShapes
    trainer: str
    source: SourceCounts
    target: TargetCounts
    source_accuracy: Spread | None
    target_accuracy: Spread | None
    seconds_per_model: Spread | None
    created: str
    package_version: str
    imported: ImportedFrom | None = json_field(omit="none", default=None)
    planted: PlantedCounts | None = json_field(omit="none", default=None)
    label_margins: int | None = json_field(omit="none", default=None)  # completed rows with source margins

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Each per-model value over the completed rows (None where there are none)."""
        rows = []
        for name in ("source_accuracy", "target_accuracy", "seconds_per_model"):
            spread = getattr(self, name)
            rows.append((name, *((None,) * 4 if spread is None else (spread.mean, spread.std, spread.min,
                                                                      spread.max))))
        return ("value", "mean", "std", "min", "max"), rows


def store_summary(path: str | Path) -> StoreSummary:
    """What a person asks first: progress, accuracies, shapes, recipe, planted counts (`print()` it for the text
    `dmtoolkit store info` prints, `to_json()` for its --json)."""
    with RunStore(path) as store:
        done = store.completed_mask()
        record = store.import_record
        recipe = None if record else store.recipe
        own = "(the trainer's own data)"
        source_dataset = "imported" if record else recipe.source.dataset if recipe.source else own
        target_dataset = "imported" if record else recipe.target.dataset if recipe.target else own
        planted = store.planted()
        counts = None
        if planted is not None:
            leaks = planted.leak_target >= 0
            names = store.source_class_names
            counts = PlantedCounts(
                leaks=int(leaks.sum()), decoys=int((planted.decoy_target >= 0).sum()),
                near_copy_leaks=int((leaks & planted.near_copy).sum()), flipped=int(planted.flipped.sum()),
                harmful=None if planted.harm_kind is None else {names[k]: planted.harm_kind[k]
                                                                for k in planted.harmful_classes})
        return StoreSummary(
            path=str(store.path),
            recipe="(imported: no recipe)" if record else recipe.name,
            recipe_hash=store.recipe_hash,
            kind=store.kind,
            alpha=store.subset_fraction,
            seed=store.seed,
            randomness=store.randomness,
            models=ModelCount(int(done.sum()), store.num_models),
            shapes=StoreShapes(tuple(store.masks.shape), tuple(store.margins.shape)),
            trainer="(imported)" if record else store.trainer,
            source=SourceCounts(source_dataset, len(store.source_class_names), store.num_source_examples,
                                store.num_source_test),
            target=TargetCounts(target_dataset, len(store.target_class_names), store.num_target_train,
                                store.num_targets),
            source_accuracy=Spread.of(store.column("source_accuracy")[done]),
            target_accuracy=Spread.of(store.column("target_accuracy")[done]),
            seconds_per_model=Spread.of(store.column("seconds")[done]),
            created=store.created,
            package_version=store.package_version,
            imported=ImportedFrom(record["design"], record["files"]) if record else None,
            planted=counts,
            label_margins=_rows_with_label_margins(store, done),
        )


def _rows_with_label_margins(store: RunStore, done: np.ndarray) -> int | None:
    """How many completed rows recorded their stated-label source margins (the label check's evidence); None
    when the store has no room for them (class level, older stores, imports that brought none)."""
    margins = store.source_margins
    if margins is None:
        return None
    rows = np.flatnonzero(done)
    if len(rows) == 0:
        return 0
    return int(sum(np.isfinite(margins[rows[s:s + 256], 0]).sum() for s in range(0, len(rows), 256)))


def validate_store(path: str | Path) -> list[str]:
    """Every problem found (empty when valid): schema, shapes, dtypes, masks re-derived, finite completed rows."""
    problems: list[str] = []
    with RunStore(path, check_datasets=False) as store:  # lists every dataset problem instead of the first
        if store.imported:
            return _imported_problems(store)
        try:
            recipe = store.recipe
        except RecipeError as error:
            return [f"stored recipe does not validate: {error}"]
        if recipe.hash() != store.recipe_hash:
            problems.append("recipe_hash attribute does not match the stored recipe")
        problems += store.schema_problems()  # every dataset's presence, dtype and shape, from the schema table
        if problems:
            return problems
        m, P = store.num_models, store.num_units
        problems += _unit_problems(store)
        if recipe.subsets.models != m:
            problems.append(f"recipe asks for {recipe.subsets.models} models, store has {m} rows")
        if not problems and not store.explicit_masks:
            sub = recipe.subsets
            derived = make_masks(sub.seed, m, P, sub.alpha, sub.antithetic, sub.design)
            bad = np.flatnonzero((derived != store.masks[()]).any(axis=1))
            if len(bad):
                problems.append(f"masks of {len(bad)} rows differ from those re-derived from seed {sub.seed} (first: row {bad[0]})")
        problems += _row_problems(store)
    return problems


def _unit_problems(store: RunStore) -> list[str]:
    """The masks' columns against the source: one per class (class level) or per pool example (example level)."""
    P = store.num_units
    units = len(store.source_class_names) if store.kind == "class" else store.num_source_examples
    return [f"masks have {P} units but the source has {units} {store.kind} units"] if units != P else []


def _row_problems(store: RunStore) -> list[str]:
    """Completed rows: finite margins, accuracies in [0, 1], a recorded seed (imported rows have none)."""
    problems = []
    done = store.completed_mask()
    bad = store.nonfinite_rows()
    if len(bad):
        problems.append(f"{len(bad)} completed rows have non-finite margins (first: row {bad[0]})")
    for name in ("source_accuracy", "target_accuracy"):
        values = store.column(name)[done]
        if not np.all((values >= 0) & (values <= 1) | np.isnan(values) & (name == "source_accuracy")):
            problems.append(f"{name}: completed rows hold values outside [0, 1]")
    if not store.imported and (store.column("seed")[done] < 0).any():
        problems.append("seed: completed rows without a recorded training seed")
    return problems


def _imported_problems(store: RunStore) -> list[str]:
    """`validate_store` for a store made by `store import`: its import record stands in for the recipe."""
    text = str(store.file.attrs.get("import", ""))
    if not text or hashlib.sha256(text.encode()).hexdigest() != store.recipe_hash:
        return ["recipe_hash attribute does not match the stored import record"]
    problems = store.schema_problems()
    if problems:
        return problems
    m = store.num_models
    problems += _unit_problems(store)
    if int(store.file.attrs["num_models"]) != m:
        problems.append(f"the import recorded {store.file.attrs['num_models']} models, store has {m} rows")
    if store.antithetic:
        for start in range(0, m, 4096):
            block = store.masks[start:start + 4096]
            pairs = (block[0::2] == ~block[1::2]).all(axis=1)
            if not pairs.all():
                row = start + 2 * int(np.flatnonzero(~pairs)[0])
                problems.append(f"design antithetic, but rows {row} and {row + 1} are not complementary")
                break
    return problems + _row_problems(store)
