"""Analyses that retrain: verify an explanation (remove one class) and counterfactual class removal.

A counterfactual runs in three steps a caller can also take one by one: `plan_counterfactual` checks the
request and fixes the masks to train (a `CounterfactualPlan`; `check_counterfactual` is its part that
needs no data), `train_counterfactual` trains them, and `save_counterfactual` writes OUT.h5 through the
one atomic-write helper. Progress goes to an optional
`progress(message)` callback; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from dmtoolkit.analyze.classes import explain_target, rank_classes
from dmtoolkit.analyze.estimates import Estimate, load_estimate, open_estimate, require_kind
from dmtoolkit.analyze.options import COUNTERFACTUAL_KS, COUNTERFACTUAL_REPEATS, DETECT_FDR, INTERVAL_LEVEL, ORDERS
from dmtoolkit.analyze.results import ClassRanking, CounterfactualCurve, CounterfactualResult, Explanation, Verification
from dmtoolkit.atomic import check_output, write_atomic
from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.recipe import Recipe
from dmtoolkit.store import DATASETS_BY_NAME, RunData, RunStore
from dmtoolkit.train.job import ModelResult

if TYPE_CHECKING:
    from dmtoolkit.run.base import Executor

SCHEMA_NAME = "dmtoolkit.counterfactual"
SCHEMA_VERSION = 1

Progress = Callable[[str], None]


def _silent(message: str) -> None:
    pass


ExecutorFactory = Callable[[], "Executor"]


def train_masks(recipe: Recipe, data: RunData, masks: np.ndarray, *, seed: int, repeat: int = 0,
                device: str | None = None, executor: ExecutorFactory | None = None,
                store: str | Path | None = None) -> list[ModelResult]:
    """Train, transfer and score one model per mask row (run seed `seed`); results in row order.

    The recipe with the overrides below and the masks make a `TrainingPlan` over `data`, which any executor
    computes exactly as it computes a run (`executor()` makes one; default: this process, on `device`), with
    the same retry-then-report rule; nothing is written. `store`: the run store `data` were read from, if
    any; worker processes then read the data from it instead of receiving a copy. Model i trains with the
    seed for (training seed + `repeat`, seed, row i): two calls with the same arguments and number of rows
    give row i the same seed, so only the masks differ between them. Repeat 0 uses the recipe's own
    training seed (the one shared-randomness influences are conditioned on); later repeats move it, so
    repeats differ in training randomness under shared randomness too. Per-pair and seed-blocks randomness
    seed antithetic pairs; here every row of a repeat shares the repeat's seed, as the two halves of a pair
    do. Results are those a run store would hold (its float32 columns), as when retraining wrote one.
    """
    from dmtoolkit.recipe_overrides import apply_overrides
    from dmtoolkit.run.driver import TrainingFailed, train_plan
    from dmtoolkit.run.executors import make_executor
    from dmtoolkit.train.job import TrainingPlan, group_size

    masks = np.asarray(masks, dtype=bool)
    rows = len(masks)
    if masks.ndim != 2 or masks.shape[1] != data.num_units(recipe.subsets.kind) or not rows:
        raise ValueError(f"masks have shape {masks.shape}, expected (models, {data.num_units(recipe.subsets.kind)})")
    models = max(rows, 2)  # a recipe has 2 models at least
    section = "trainer" if recipe.trainer else "training"
    overrides: dict[str, object] = {
        "subsets.models": models, "subsets.seed": seed, "subsets.antithetic": False,
        "subsets.design": "random", f"{section}.seed": recipe.seeding[0] + repeat,
    }
    if recipe.seeding[1] in ("per-pair", "seed-blocks"):
        # these seed antithetic pairs; a retraining's rows are compared with each other, as a pair's are,
        # so they share the repeat's seed
        overrides[f"{section}.randomness"] = "shared"
    retrain = apply_overrides(recipe, overrides, origin=f"retraining of recipe {recipe.name!r}")
    if rows < models and group_size(retrain) > 1:
        # a model's margins depend on the batched group it trains in: a single row trains beside a copy of
        # itself, as it did when retraining wrote a store (2 models at least)
        masks = np.concatenate([masks, masks[:1]])
    plan = TrainingPlan(retrain, masks, store=None if store is None else Path(store), data=data)
    try:
        results = train_plan(plan, executor() if executor else make_executor("local", 1, device))
    except TrainingFailed as error:  # nothing is kept: say what failed, not how to resume it
        raise TrainingFailed(f"retraining {rows} model{'s' * (rows > 1)} of recipe {recipe.name!r} failed "
                             f"({error.reason}); nothing was saved, run the command again to retry",
                             reason=error.reason) from None
    return [_as_stored(result) for result in results[:rows]]


def _as_stored(result: ModelResult) -> ModelResult:
    """`result` as a run store row holds it (`RUN_DATASETS`' dtypes: float32 margins and accuracies)."""
    def column(name: str, value: object) -> np.ndarray:
        return np.asarray(value, dtype=DATASETS_BY_NAME[name].dtype)

    margins = column("margins", result.margins)
    predictions = column("predictions", np.full(len(margins), DATASETS_BY_NAME["predictions"].fill)
                         if result.predictions is None else result.predictions)  # -1: none given
    return ModelResult(result.index, margins, int(column("seed", result.seed)),
                       float(column("source_accuracy", result.source_accuracy)),
                       float(column("target_accuracy", result.target_accuracy)),
                       float(column("seconds", result.seconds)), predictions)


# --- explain --verify -------------------------------------------------------------------------------
def verify_explanation(path: str | Path, target: int, repeats: int, *, store: str | Path | None = None,
                       device: str | None = None, progress: Progress | None = None,
                       executor: ExecutorFactory | None = None, level: float = INTERVAL_LEVEL,
                       fdr: float = DETECT_FDR) -> Explanation:
    """Train `repeats` models without target's most negative class and `repeats` with it (all other classes in).

    Pair r is trained as rows 0 and 1 of one retraining (repeat r, run seed + 1 + r): under shared or
    per-pair training randomness (the default recipe's) they share initialisation and data order, so the
    class is the only difference. Returns the explanation with its `verify` filled in.
    """
    if repeats < 1:
        raise UserError(f"repeats={repeats} must be at least 1")
    progress = progress or _silent
    with open_estimate(path, store) as opened:  # one open and one hash check for the explanation and the retraining
        explanation = explain_target(opened, target, level=level, fdr=fdr)
        if not explanation.most_negative:
            raise UserError(f"{path}: target {target} has no defined influences to verify")
        worst = explanation.most_negative[0]
        run = opened.run()
        run.require(Capability.RECIPE, "explain --verify")
        recipe, data, source = run.recipe, run.run_data(), run.path
        num_units, base_seed = run.num_units, run.seed
    kept = np.ones((1, num_units), bool)
    removed = kept.copy()
    removed[0, worst.index] = False
    correct: dict[str, list[bool]] = {"removed": [], "kept": []}
    started = time.perf_counter()
    for r in range(repeats):
        pair = train_masks(recipe, data, np.concatenate([removed, kept]), seed=base_seed + 1 + r, repeat=r,
                           device=device, executor=executor, store=source)
        for name, result in zip(("removed", "kept"), pair):
            correct[name].append(bool(result.margins[target] > 0))
        progress(f"verify: {r + 1}/{repeats} pairs trained ({time.perf_counter() - started:.0f}s)")
    verification = Verification(
        class_name=worst.name, repeats=repeats,
        correct_removed=int(sum(correct["removed"])), correct_kept=int(sum(correct["kept"])),
        rate_removed=float(np.mean(correct["removed"])), rate_kept=float(np.mean(correct["kept"])))
    return dataclasses.replace(explanation, verify=verification)


# --- counterfactual: plan, train, save ----------------------------------------------------------------
@dataclass(frozen=True)
class CounterfactualPlan:
    """What a counterfactual retrains, fixed before any training.

    recipe: the (class-level) recipe models are trained with; influence_file: the class influences giving the
    order; out: the OUT.h5 to write (`force`: overwrite it); order: bottom | top | random; repeats: models per
    k; k: numbers of classes removed, sorted; class_names: the source classes (the estimate's units);
    removal: per repeat, every class index in the order classes are removed (first k are removed at k).
    """

    recipe: Recipe
    influence_file: Path
    out: Path
    order: str
    repeats: int
    k: tuple[int, ...]
    class_names: tuple[str, ...]
    removal: tuple[tuple[int, ...], ...]
    force: bool = False

    @property
    def masks(self) -> np.ndarray:
        """(repeats, len(k), classes) bool: the classes kept by each model to train."""
        masks = np.ones((self.repeats, len(self.k), len(self.class_names)), bool)
        for r in range(self.repeats):
            for i, k in enumerate(self.k):
                masks[r, i, list(self.removal[r][:k])] = False
        return masks

    def seed(self, repeat: int) -> int:
        """Run seed of repeat `repeat` (its training seed is the recipe's + repeat; see `train_masks`)."""
        return self.recipe.subsets.seed + 1 + repeat


def check_ks(ks: Sequence[int], num_units: int) -> list[int]:
    """Numbers of classes to remove, sorted and distinct, each checked to be in 0..num_units-1 (one class at
    least stays). The CLI's `--k 0,5,10` becomes this list as it is parsed (`dmtoolkit.cli.IntList`)."""
    if isinstance(ks, str):
        raise TypeError(f"ks must be a list of integers such as [0, 5, 10], not {ks!r}")
    ks = [int(k) for k in ks]
    bad = [k for k in ks if not 0 <= k < num_units]
    if bad:
        raise UserError(f"k={bad[0]} is out of range: remove between 0 and {num_units - 1} of {num_units} classes")
    return sorted(set(ks))


def removal_order(ranking: ClassRanking, num_units: int, order: str, repeats: int, seed: int) -> list[list[int]]:
    """Class indices in the order they are removed, one list per repeat (the same for bottom/top).

    bottom: most negative mean influence first; top: most positive first (ties: lower index first);
    classes whose influence is undefined (NaN) come last. random: a fresh permutation per repeat.
    """
    defined = {e.index for e in ranking.overall}
    undefined = [k for k in range(num_units) if k not in defined]
    if order == "bottom":
        return [[e.index for e in ranking.bottom_all] + undefined] * repeats
    if order == "top":
        return [[e.index for e in ranking.overall] + undefined] * repeats
    if order == "random":
        rng = np.random.default_rng(seed)
        return [[int(k) for k in rng.permutation(num_units)] for _ in range(repeats)]
    raise UserError(f"order {order!r} must be one of {', '.join(ORDERS)}")


def check_counterfactual(recipe: Recipe, influence_path: str | Path, out: str | Path, *, order: str = ORDERS[0],
                         repeats: int = COUNTERFACTUAL_REPEATS, force: bool = False) -> Estimate:
    """The checks that need no data (output free, repeats, order, class-level estimate and recipe), so a
    request can fail before its data are built; returns the estimate."""
    check_output(out, force=force, inputs=(influence_path,))
    if repeats < 1:
        raise UserError(f"repeats={repeats} must be at least 1")
    if order not in ORDERS:
        raise UserError(f"order {order!r} must be one of {', '.join(ORDERS)}")
    est = load_estimate(influence_path)
    require_kind(est, "class", "counterfactual")
    check_output(out, force=force, inputs=(influence_path, est.store_path))
    if est.store_path is not None and est.store_path.exists():
        with RunStore(est.store_path) as run:
            run.require(Capability.RECIPE, "counterfactual")
    if recipe.subsets.kind != "class":
        raise UserError(f"recipe {recipe.name!r} is {recipe.subsets.kind}-level; counterfactual removes classes, "
                        "give a class-level recipe")
    return est


def plan_counterfactual(recipe: Recipe, influence_path: str | Path, out: str | Path, *, data: RunData,
                        order: str = ORDERS[0], ks: Sequence[int] = COUNTERFACTUAL_KS,
                        repeats: int = COUNTERFACTUAL_REPEATS, force: bool = False) -> CounterfactualPlan:
    """Check a counterfactual request (see `check_counterfactual`; also that `data` has the estimate's
    classes, and k) and fix its removal orders; raises UserError before anything is trained."""
    est = check_counterfactual(recipe, influence_path, out, order=order, repeats=repeats, force=force)
    if list(data.source_class_names) != est.unit_names:
        raise UserError(f"{influence_path}: its source classes differ from recipe {recipe.name!r}'s; "
                        "give the recipe the influences were computed for")
    P = len(est.unit_names)
    k_list = check_ks(ks, P)
    if not k_list:
        raise UserError("k is empty; give e.g. 0,5,10")
    orders = removal_order(rank_classes(influence_path, top=1, level=None), P, order, repeats, recipe.subsets.seed)
    return CounterfactualPlan(recipe=recipe, influence_file=Path(influence_path), out=Path(out), order=order,
                              repeats=repeats, k=tuple(k_list), class_names=tuple(est.unit_names),
                              removal=tuple(tuple(o) for o in orders), force=force)


def train_counterfactual(plan: CounterfactualPlan, data: RunData, *, device: str | None = None,
                         progress: Progress | None = None, executor: ExecutorFactory | None = None) -> np.ndarray:
    """Train the plan's models on `data` (the data the plan was made for); target accuracy (repeats, len(k)).

    Repeat r trains its len(k) models as rows of one call (run seed `plan.seed(r)`, training seed + r): with
    shared training randomness all k of a repeat share initialisation and data order, and repeats differ.
    """
    if tuple(data.source_class_names) != plan.class_names:
        raise ValueError("train_counterfactual: the data's source classes are not the plan's; "
                         "make the plan with plan_counterfactual(..., data=data)")
    progress = progress or _silent
    masks = plan.masks
    accuracy = np.zeros((plan.repeats, len(plan.k)))
    started = time.perf_counter()
    for r in range(plan.repeats):
        results = train_masks(plan.recipe, data, masks[r], seed=plan.seed(r), repeat=r, device=device,
                              executor=executor)
        accuracy[r] = [res.target_accuracy for res in results]
        progress(f"counterfactual: repeat {r + 1}/{plan.repeats} done ({time.perf_counter() - started:.0f}s)")
    return accuracy


def save_counterfactual(plan: CounterfactualPlan, accuracy: np.ndarray) -> CounterfactualResult:
    """Write OUT.h5 (accuracy (repeats, len(k)), its mean and std, masks, class names) atomically; the result."""
    accuracy = np.asarray(accuracy, dtype=np.float64)
    if accuracy.shape != (plan.repeats, len(plan.k)):
        raise ValueError(f"accuracy has shape {accuracy.shape}, the plan trains {(plan.repeats, len(plan.k))}")
    mean = accuracy.mean(0)
    std = accuracy.std(0, ddof=1) if plan.repeats > 1 else np.zeros(len(plan.k))

    def fill(f: h5py.File) -> None:
        f.attrs.update({"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "order": plan.order,
                        "repeats": plan.repeats, "recipe": plan.recipe.canonical_json(),
                        "recipe_hash": plan.recipe.hash(), "influence_file": str(plan.influence_file.resolve())})
        for name, value, meaning, axes in (
            ("k", np.array(plan.k), "number of classes removed", "k"),
            ("accuracy", accuracy, "target test accuracy of the retrained model", "repeat, k"),
            ("accuracy_mean", mean, "mean accuracy over repeats", "k"),
            ("accuracy_std", std, "standard deviation (ddof=1) of accuracy over repeats; 0 for one repeat", "k"),
            ("masks", plan.masks, "classes kept by each retrained model", "repeat, k, class"),
        ):
            ds = f.create_dataset(name, data=value)
            ds.attrs.update({"meaning": meaning, "axes": axes})
        f.create_dataset("class_names", data=list(plan.class_names), dtype=h5py.string_dtype())

    write_atomic(plan.out, fill, force=plan.force, inputs=(plan.influence_file,))
    return CounterfactualResult(
        file=str(plan.out), order=plan.order, repeats=plan.repeats, k=plan.k,
        accuracy_mean=tuple(mean.tolist()), accuracy_std=tuple(std.tolist()),
        accuracy=tuple(tuple(row) for row in accuracy.tolist()),
        removed_first=tuple(plan.class_names[k] for k in plan.removal[0][:max(plan.k)]),
        removed_per_repeat=tuple(tuple(plan.class_names[k] for k in order[:max(plan.k)]) for order in plan.removal))


def counterfactual(recipe: Recipe, influence_path: str | Path, out: str | Path, *, order: str = ORDERS[0],
                   ks: Sequence[int] = COUNTERFACTUAL_KS, repeats: int = COUNTERFACTUAL_REPEATS,
                   data: RunData | None = None, device: str | None = None, force: bool = False,
                   progress: Progress | None = None, executor: ExecutorFactory | None = None) -> CounterfactualResult:
    """Retrain with the k most negative / positive / random classes removed; target accuracy per k.

    Plan, train and save in one call (see the module docstring); `data` defaults to the recipe's data,
    built after the checks that need none.
    """
    if data is None:
        from dmtoolkit.run.prepare import build_run_data

        check_counterfactual(recipe, influence_path, out, order=order, repeats=repeats, force=force)
        data = build_run_data(recipe)
    plan = plan_counterfactual(recipe, influence_path, out, data=data, order=order, ks=ks, repeats=repeats,
                               force=force)
    accuracy = train_counterfactual(plan, data, device=device, progress=progress, executor=executor)
    return save_counterfactual(plan, accuracy)


def load_counterfactual(path: str | Path) -> CounterfactualCurve:
    """The accuracy curve of a counterfactual file (what the report shows)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA_NAME:
            raise StoreError(f"{path}: not a counterfactual file (schema {f.attrs.get('schema')!r})")
        return CounterfactualCurve(
            file=str(path), order=str(f.attrs["order"]), repeats=int(f.attrs["repeats"]),
            k=tuple(int(k) for k in f["k"][()]), mean=tuple(float(v) for v in f["accuracy_mean"][()]),
            std=tuple(float(v) for v in f["accuracy_std"][()]))
