"""Human and machine summaries of a run store, and a validator that lists every problem it finds."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from dmtoolkit.errors import RecipeError
from dmtoolkit.masks import make_masks
from dmtoolkit.store import RunStore


def _stats(values: np.ndarray) -> dict[str, float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def store_summary(path: str | Path) -> dict[str, Any]:
    """What a person asks first: progress, accuracies, shapes, recipe, planted counts."""
    with RunStore(path) as store:
        done = store.completed_mask()
        record = store.import_record
        recipe = None if record else store.recipe
        own = "(the trainer's own data)"
        source_dataset = "imported" if record else recipe.source.dataset if recipe.source else own
        target_dataset = "imported" if record else recipe.target.dataset if recipe.target else own
        summary: dict[str, Any] = {
            "path": str(store.path),
            "recipe": "(imported: no recipe)" if record else recipe.name,
            "recipe_hash": store.recipe_hash,
            "kind": store.kind,
            "alpha": store.subset_fraction,
            "seed": store.seed,
            "randomness": store.randomness,
            "models": {"completed": int(done.sum()), "total": store.num_models},
            "shapes": {"masks": list(store.masks.shape), "margins": list(store.margins.shape)},
            "trainer": "(imported)" if record else store.trainer,
            "source": {"dataset": source_dataset, "classes": len(store.source_class_names),
                       "pool_examples": store.num_source_examples, "test_examples": store.num_source_test},
            "target": {"dataset": target_dataset, "classes": len(store.target_class_names),
                       "train_examples": store.num_target_train, "test_examples": store.num_targets},
            "source_accuracy": _stats(store.column("source_accuracy")[done]),
            "target_accuracy": _stats(store.column("target_accuracy")[done]),
            "seconds_per_model": _stats(store.column("seconds")[done]),
            "created": store.created,
            "package_version": store.package_version,
        }
        if record:
            summary["imported"] = {"design": record["design"], "files": record["files"]}
        planted = store.planted()
        if planted is not None:
            leaks = planted.leak_target >= 0
            summary["planted"] = {
                "leaks": int(leaks.sum()),
                "decoys": int((planted.decoy_target >= 0).sum()),
                "near_copy_leaks": int((leaks & planted.near_copy).sum()),
                "flipped": int(planted.flipped.sum()),
            }
            if planted.harm_kind is not None:
                names = store.source_class_names
                summary["planted"]["harmful"] = {names[k]: planted.harm_kind[k] for k in planted.harmful_classes}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned lines for a terminal."""
    def stat(name: str, fmt: str = "{:.3f}") -> str:
        s = summary[name]
        return "n/a" if s is None else f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])} (min {fmt.format(s['min'])}, max {fmt.format(s['max'])})"

    src, tgt, models = summary["source"], summary["target"], summary["models"]
    lines = [
        f"store       {summary['path']}",
        f"recipe      {summary['recipe']} ({summary['recipe_hash'][:12]})",
        f"subsets     {summary['kind']}-level, alpha {summary['alpha']}, seed {summary['seed']}, randomness {summary['randomness']}",
        f"models      {models['completed']}/{models['total']} completed",
        f"trainer     {summary['trainer']}",
        f"masks       {tuple(summary['shapes']['masks'])} bool   margins {tuple(summary['shapes']['margins'])} float32",
        f"source      {src['dataset']}: {src['classes']} classes, {src['pool_examples']} pool examples, {src['test_examples']} test",
        f"target      {tgt['dataset']}: {tgt['classes']} classes, {tgt['train_examples']} train, {tgt['test_examples']} test",
        f"source acc  {stat('source_accuracy')}",
        f"target acc  {stat('target_accuracy')}",
        f"seconds     {stat('seconds_per_model', '{:.2f}')} per model",
    ]
    if "imported" in summary:
        files = ", ".join(f"{role} {v['path']} (sha256 {v['sha256'][:12]})"
                          for role, v in summary["imported"]["files"].items())
        lines.append(f"imported    design {summary['imported']['design']}; from {files or 'in-memory arrays'}")
    if "planted" in summary:
        p = summary["planted"]
        lines.append(f"planted     {p['leaks']} leaks ({p['near_copy_leaks']} near copies), {p['decoys']} decoys, {p['flipped']} flipped labels")
        if "harmful" in p:
            classes = ", ".join(f"{name} ({kind})" for name, kind in p["harmful"].items())
            lines.append(f"            {len(p['harmful'])} harmful classes: {classes}")
    return "\n".join(lines)


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
        units = len(store.source_class_names) if store.kind == "class" else store.num_source_examples
        if units != P:
            problems.append(f"masks have {P} units but the source has {units} {store.kind} units")
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
    m, P = store.num_models, store.num_units
    units = len(store.source_class_names) if store.kind == "class" else store.num_source_examples
    if units != P:
        problems.append(f"masks have {P} units but the source has {units} {store.kind} units")
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
