"""Analyses that retrain: verify an explanation (remove one class) and counterfactual class removal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import h5py
import numpy as np

from dmtoolkit.analyze.classes import explain_target, rank_classes
from dmtoolkit.analyze.estimates import load_estimate, require_kind, store_path_of
from dmtoolkit.errors import UserError
from dmtoolkit.recipe import Recipe
from dmtoolkit.store import RunData, RunStore

SCHEMA_NAME = "dmtoolkit.counterfactual"
ORDERS = ("bottom", "top", "random")


def _progress(message: str) -> None:
    click.echo(message, err=True)


def train_masks(recipe: Recipe, data: RunData, masks: np.ndarray, *, seed: int, repeat: int = 0,
                device: str | None = None) -> list[Any]:
    """Train, transfer and score one model per mask row (run seed `seed`); results in row order.

    Model i trains with the seed for (training seed + `repeat`, seed, row i): two calls with the same
    arguments and number of rows give row i the same seed, so only the masks differ between them. Repeat 0
    uses the recipe's own training seed (the one shared-randomness influences are conditioned on); later
    repeats move it, so repeats differ in training randomness under shared randomness too.
    """
    from dmtoolkit.train.job import RunContext

    retrain = recipe.with_overrides(seed=seed, training_seed=recipe.training.seed + repeat)
    context = RunContext(retrain, np.asarray(masks, bool), data, device)
    groups = -(-len(masks) // context.group_size)
    results = [r for g in range(groups) for r in context.compute_group(g)]
    return sorted(results, key=lambda r: r.index)


def verify_explanation(path: str | Path, target: int, repeats: int, *, store: str | Path | None = None,
                       device: str | None = None, progress: Callable[[str], None] = _progress) -> dict[str, Any]:
    """Train `repeats` models without target's most negative class and `repeats` with it (all other classes in).

    Pair r of the two groups shares its training seeds (repeat r), so the class is the only difference.
    Returns the explanation plus how often the target is classified correctly in each group.
    """
    if repeats < 1:
        raise UserError(f"--verify {repeats} must be at least 1")
    explanation = explain_target(path, target, store=store)
    if not explanation["most_negative"]:
        raise UserError(f"{path}: target {target} has no defined influences to verify")
    worst = explanation["most_negative"][0]
    est = load_estimate(path)
    with RunStore(store_path_of(est, store)) as run:
        recipe, data = run.recipe, run.run_data()
        num_units, base_seed = run.num_units, run.seed
    kept = np.ones((1, num_units), bool)
    removed = kept.copy()
    removed[0, worst["index"]] = False
    correct = {"removed": [], "kept": []}
    started = time.perf_counter()
    for r in range(repeats):
        for name, mask in (("removed", removed), ("kept", kept)):
            result = train_masks(recipe, data, mask, seed=base_seed + 1 + r, repeat=r, device=device)[0]
            correct[name].append(bool(result.margins[target] > 0))
        progress(f"verify: {r + 1}/{repeats} pairs trained ({time.perf_counter() - started:.0f}s)")
    explanation["verify"] = {
        "class": worst["name"], "repeats": repeats,
        "correct_removed": int(sum(correct["removed"])), "correct_kept": int(sum(correct["kept"])),
        "rate_removed": float(np.mean(correct["removed"])), "rate_kept": float(np.mean(correct["kept"])),
    }
    return explanation


def parse_ks(spec: str, num_units: int) -> list[int]:
    try:
        ks = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k {spec!r} is not a comma-separated list of integers, e.g. --k 0,5,10") from None
    if not ks:
        raise UserError("--k is empty; give e.g. --k 0,5,10")
    bad = [k for k in ks if not 0 <= k < num_units]
    if bad:
        raise UserError(f"--k {bad[0]} is out of range: remove between 0 and {num_units - 1} of {num_units} classes")
    return sorted(set(ks))


def removal_order(influence_path: str | Path, order: str, repeats: int, seed: int) -> list[list[int]]:
    """Class indices in the order they are removed, one list per repeat (the same for bottom/top).

    bottom: most negative mean influence first; top: most positive first (ties: lower index first);
    classes whose influence is undefined (NaN) come last. random: a fresh permutation per repeat.
    """
    ranking = rank_classes(influence_path, top=1)
    num_units = len(load_estimate(influence_path).unit_names)
    defined = {e["index"] for e in ranking["overall"]}
    undefined = [k for k in range(num_units) if k not in defined]
    if order == "bottom":
        return [[e["index"] for e in ranking["bottom_all"]] + undefined] * repeats
    if order == "top":
        return [[e["index"] for e in ranking["overall"]] + undefined] * repeats
    if order == "random":
        rng = np.random.default_rng(seed)
        return [[int(k) for k in rng.permutation(num_units)] for _ in range(repeats)]
    raise UserError(f"--order {order!r} must be one of {', '.join(ORDERS)}")


def counterfactual(recipe: Recipe, influence_path: str | Path, out: str | Path, *, order: str = "bottom",
                   ks: str | list[int] = "0,5,10", repeats: int = 3, data: RunData | None = None,
                   device: str | None = None, png: str | Path | None = None, force: bool = False,
                   progress: Callable[[str], None] = _progress) -> dict[str, Any]:
    """Retrain with the k most negative / positive / random classes removed; target accuracy per k.

    Repeat r trains one model per k with run seed recipe.seed + 1 + r and training seed + r (with shared
    training randomness all k of a repeat share initialisation and data order, and repeats differ).
    Writes OUT.h5 (accuracy (repeats, len(k)), masks, removed classes) and returns mean and std over
    repeats per k.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out}: already exists; pass --force to overwrite it, or choose another -o path")
    if repeats < 1:
        raise UserError(f"--repeats {repeats} must be at least 1")
    if order not in ORDERS:
        raise UserError(f"--order {order!r} must be one of {', '.join(ORDERS)}")
    est = load_estimate(influence_path)
    require_kind(est, "class", "counterfactual")
    if recipe.subsets.kind != "class":
        raise UserError(f"recipe {recipe.name!r} is {recipe.subsets.kind}-level; counterfactual removes classes, "
                        "give a class-level recipe")
    if data is None:
        from dmtoolkit.run.prepare import build_run_data
        data = build_run_data(recipe)
    if list(data.source_class_names) != est.unit_names:
        raise UserError(f"{influence_path}: its source classes differ from recipe {recipe.name!r}'s; "
                        "give the recipe the influences were computed for")
    P = len(est.unit_names)
    k_list = parse_ks(ks, P) if isinstance(ks, str) else parse_ks(",".join(map(str, ks)), P)
    orders = removal_order(influence_path, order, repeats, recipe.subsets.seed)
    accuracy = np.zeros((repeats, len(k_list)))
    all_masks = np.ones((repeats, len(k_list), P), bool)
    started = time.perf_counter()
    for r in range(repeats):
        for i, k in enumerate(k_list):
            all_masks[r, i, orders[r][:k]] = False
        results = train_masks(recipe, data, all_masks[r], seed=recipe.subsets.seed + 1 + r, repeat=r, device=device)
        accuracy[r] = [res.target_accuracy for res in results]
        progress(f"counterfactual: repeat {r + 1}/{repeats} done ({time.perf_counter() - started:.0f}s)")
    mean, std = accuracy.mean(0), accuracy.std(0, ddof=1) if repeats > 1 else np.zeros(len(k_list))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"schema": SCHEMA_NAME, "schema_version": 1, "order": order, "repeats": repeats,
                        "recipe": recipe.canonical_json(), "recipe_hash": recipe.hash(),
                        "influence_file": str(Path(influence_path).resolve())})
        for name, value, meaning, axes in (
            ("k", np.array(k_list), "number of classes removed", "k"),
            ("accuracy", accuracy, "target test accuracy of the retrained model", "repeat, k"),
            ("accuracy_mean", mean, "mean accuracy over repeats", "k"),
            ("accuracy_std", std, "standard deviation (ddof=1) of accuracy over repeats; 0 for one repeat", "k"),
            ("masks", all_masks, "classes kept by each retrained model", "repeat, k, class"),
        ):
            ds = f.create_dataset(name, data=value)
            ds.attrs.update({"meaning": meaning, "axes": axes})
        f.create_dataset("class_names", data=est.unit_names, dtype=h5py.string_dtype())
    tmp.replace(out)
    result = {"file": str(out), "order": order, "repeats": repeats, "k": k_list,
              "accuracy_mean": mean.tolist(), "accuracy_std": std.tolist(), "accuracy": accuracy.tolist(),
              "removed_first": [est.unit_names[k] for k in orders[0][:max(k_list)]]}
    if png is not None:
        from dmtoolkit.report.plots import line_plot
        line_plot({order: (k_list, mean, std)}, "classes removed (k)", "target accuracy",
                  "Counterfactual retraining", png)
    return result
