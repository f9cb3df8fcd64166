"""Issue 17's levers measured as agreement between independent runs, against models and CPU-minutes.

A *lever* is a named set of recipe overrides on the default class recipe (dmtoolkit/recipes/glyphs-to-mnist.yaml),
optionally on the fashion-mnist target (`--target fashion-mnist`: `target.dataset: fashion-mnist` and
`planting.copy_labels: by-index`, as removal_study.py's `fashion` setting). For each lever the study trains
`--runs` independent stores of `--models` models. Run s uses mask seed s AND training seed s
(`subsets.seed = training.seed = s`); source, target and planting seeds stay at the recipe's 0, so only the
run's own randomness differs. Run 0 is the development run (the recipe's own seeds); runs 1, 2, … are fresh. Levers are chosen on the pairs
with run 0 on MNIST; the table's "fresh pairs" column (pairs of fresh runs only) and fashion-mnist confirm.

For n in a grid (32, 64, 128, …, and `--models`) the study takes the first n rows of every store, cut back to
whole draws (`dmtoolkit.analyze.reliability.draw_ids`, cut by `dmtoolkit.stats.splits.whole_prefix`: an antithetic
pair or an orthogonal block is never cut, so an orthogonal design with 36 classes has points only at multiples of its 128-model block), and
for every influence estimator (`estimator_names("influence")`: difference-of-means, regression — estimators
cost no training, so all are evaluated on the same stores) records:

- cross-run agreement of the per-class ranking: `defined_spearman` of `nanmean_rows` (mean over targets, the
  rule `reliability_report` uses) for every pair of runs, mean and SD over pairs; the same for the class ×
  target-class matrix (`class_target_matrix`); and, per pair, the library's `CrossRun` (its `predicted` is the
  agreement the two stores' split-halves promise, so observed ≪ predicted says the split-halves are
  optimistic);
- within-store split-half of the ranking and of the matrix (`split_half_agreements`, 10 split seeds), mean
  over runs;
- CPU-minutes of one run: the stored per-model training seconds (`RunStore.row_values(...)["seconds"]`; each
  worker runs one torch thread, so these are CPU-seconds up to contention) of the rows used, plus the
  estimator's process CPU time on them.

From the mean cross-run ranking curve: models (and CPU-minutes) one run needs for agreement 0.8 and 0.9 with
another such run, interpolated on log(models) where the measured curve crosses the goal, otherwise the
library's Spearman–Brown extrapolation (`CrossRun.needed`) from the largest n, marked "extrapolated". Transfer
baselines (the recipe's head on raw pixels and on untrained networks, `dmtoolkit.train.baselines`, as in
signal_study.py) are recorded next to the models' target accuracy so transfer stays meaningful.

    .venv/bin/python benchmarks/reliability_study.py --out runs/reliability --models 256 --runs 3
    .venv/bin/python benchmarks/reliability_study.py --out runs/reliability --models 256 --runs 3 \\
        --target fashion-mnist
    .venv/bin/python benchmarks/reliability_study.py --out runs/reliability --models 512 --runs 3 \\
        --levers random,orthogonal          # grows the 256-model stores: only rows 256-511 are trained
    .venv/bin/python benchmarks/reliability_study.py --out /tmp/relstudy --models 32 --runs 2 \\
        --levers random,orthogonal          # smoke test

Cost (measured 2026-12-04 on this 2-core machine, run alone): ≈ 0.6 CPU-seconds per model for the default
recipe (epochs-1 ≈ 0.3), so one lever at 256 models × 3 runs ≈ 8 CPU-minutes ≈ 4.3 minutes wall with two
workers; analysis takes seconds; the seven default levers on one target at 256 models ≈ 30 minutes. Stores are resumed (only missing rows are trained; a store made with fewer
models of the same recipe is grown in place of its rows), so an interrupted command can simply be rerun.

Writes OUT/TARGET/LEVER/runS.h5 (stores), OUT/reliability.json (everything, merged over invocations),
OUT/reliability.md (a table per target and the issue's goals) and OUT/reliability.png (cross-run agreement of
the ranking against CPU-minutes of one run, log x, one line per lever × estimator; and against models).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from studies import chosen, saved_results  # benchmarks/ is on sys.path when this script runs

from dmtoolkit.analyze.reliability import (
    GOALS,
    CrossRun,
    WithinStore,
    class_influence,
    class_target_matrix,
    draw_ids,
    split_half_agreements,
)
from dmtoolkit.estimate.registry import estimator_names
from dmtoolkit.recipe import RECIPES_DIR, Recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.stats.ranking import nanmean_rows
from dmtoolkit.stats.splits import whole_prefix
from dmtoolkit.store import RunStore, create_store
from dmtoolkit.train.baselines import transfer_baselines
from dmtoolkit.train.job import RunContext
from dmtoolkit.train.job import group_size as group_size_of

CLASS_RECIPE = RECIPES_DIR / "glyphs-to-mnist.yaml"
TARGETS: dict[str, dict[str, Any]] = {
    "mnist": {},
    "fashion-mnist": {"target.dataset": "fashion-mnist", "planting.copy_labels": "by-index"},
}
# Every lever names its mask design and training randomness, so each reproduces whatever the recipe ships:
# the levers were measured when the recipe shipped random masks with one shared seed; `orthogonal` won
# (default since 2026-12-04), then `per-pair-orthogonal` (default later that day). `random` is the first.
RANDOM: dict[str, Any] = {"subsets.design": "random", "training.randomness": "shared"}
LEVERS: dict[str, dict[str, Any]] = {
    "random": {**RANDOM},
    "per-model": {**RANDOM, "training.randomness": "per-model"},
    "orthogonal": {"subsets.design": "orthogonal", "training.randomness": "shared"},
    "per-model-orthogonal": {"training.randomness": "per-model", "subsets.design": "orthogonal"},
    "no-antithetic": {**RANDOM, "subsets.antithetic": False},
    "epochs-1": {**RANDOM, "training.epochs": 1},
    "per-model-epochs-1": {**RANDOM, "training.randomness": "per-model", "training.epochs": 1},
    # measured after orthogonal became the default, so on it: training seeds as a blocking factor (a mask and
    # its complement share a seed, which cancels in every unit's contrast) and cheaper models
    "per-pair-orthogonal": {"subsets.design": "orthogonal", "training.randomness": "per-pair"},
    "seeds-4-orthogonal": {"subsets.design": "orthogonal", "training.randomness": "seed-blocks",
                           "training.seed_blocks": 4},
    "max-per-class-100-orthogonal": {"subsets.design": "orthogonal", "training.randomness": "shared",
                                     "source.max_per_class": 100},
    "resolution-12-orthogonal": {"subsets.design": "orthogonal", "training.randomness": "shared",
                                 "model.resolution": 12},
}
SPLIT_SEEDS = range(10)
DEV_SEED = 0  # the recipe's own mask and training seed: run 0 is the development run, runs 1.. are fresh


def run_seed(run: int) -> int:
    """Mask seed = training seed of run `run` (0 = the development run)."""
    return DEV_SEED + run


def lever_recipe(target: str, lever: str, run: int, models: int) -> Recipe:
    """The default class recipe with the target's and the lever's overrides, `models` models, and run's
    mask seed and training seed (source, target and planting seeds untouched)."""
    seed = run_seed(run)
    overrides = {**TARGETS[target], **LEVERS[lever], "subsets.seed": seed, "training.seed": seed}
    return recipe_with(CLASS_RECIPE, overrides, origin=f"reliability study {target}/{lever}", models=models)


# stores ----------------------------------------------------------------------------------------------------
def _same_recipe(a: Recipe, b: Recipe) -> bool:
    """Same recipe up to the number of models (a store of `a` can be grown into one of `b`)."""
    return a.with_overrides(models=b.subsets.models).hash() == b.hash()


def grow_store(path: Path, recipe: Recipe) -> None:
    """Replace a store of the same recipe with fewer models by one of `recipe.subsets.models`, keeping its
    completed rows of whole training groups (masks are a function of seed and row, and a group of
    `training.models_per_batch` models trains together, so those rows are what the larger store would train)."""
    grown = path.with_suffix(".grow.h5")
    with RunStore(path) as small:
        group = group_size_of(recipe)
        keep = small.completed_rows()
        keep = keep[keep < (small.num_models // group) * group]
        create_store(grown, recipe, small.run_data(), force=True)
        masks, margins = small.read_rows(keep)
        values = small.row_values(keep)
        predictions = small.predictions[keep] if len(keep) else None
    with RunStore(grown, writable=True) as big:
        if not np.array_equal(big.read_rows(keep)[0], masks):
            raise SystemExit(f"{path}: its masks differ from the ones the larger recipe draws; remove it")
        for i, row in enumerate(keep):
            big.write_row(int(row), margins[i], seed=int(values["seed"][i]),
                          source_accuracy=float(values["source_accuracy"][i]),
                          target_accuracy=float(values["target_accuracy"][i]), seconds=float(values["seconds"][i]),
                          predictions=None if predictions is None else predictions[i])
    os.replace(grown, path)


def ensure_store(path: Path, recipe: Recipe, workers: int) -> float:
    """Create, grow or resume the store so its first `recipe.subsets.models` rows are trained; wall seconds."""
    models = recipe.subsets.models
    if path.exists():
        with RunStore(path) as store:
            if not _same_recipe(store.recipe, recipe):
                raise SystemExit(f"{path}: exists from another recipe; remove it or pass another --out")
            have = store.num_models
        if have < models:
            grow_store(path, recipe)
        with RunStore(path) as store:  # (a larger store keeps its own recipe: only its first rows are trained)
            recipe = store.recipe
            pending = int((~store.completed_mask()[:models]).sum())
        if pending == 0:
            return 0.0
    else:
        pending = models
    return ensure_trained(path, recipe, workers=workers, device="cpu", limit=pending, progress=False).seconds


# analysis --------------------------------------------------------------------------------------------------
def grid(models: int) -> list[int]:
    sizes, n = [], 32
    while n < models:
        sizes.append(n)
        n *= 2
    return sizes + [models]


def read_run(path: Path, models: int) -> dict[str, Any]:
    with RunStore(path) as store:
        rows = np.arange(models)
        if not store.completed_mask()[:models].all():
            raise SystemExit(f"{path}: rows 0..{models - 1} are not all trained")
        masks, margins = store.read_rows(rows)
        values = store.row_values(rows)
        recipe = store.recipe
        return {"path": str(path), "masks": masks.astype(np.float32), "margins": margins.astype(np.float32),
                "draws": draw_ids(store, store.num_models)[:models], "seconds": values["seconds"],
                "target_accuracy": values["target_accuracy"], "labels": store.target_labels,
                "classes": len(store.target_class_names), "unit_names": store.unit_names,
                "mask_seed": recipe.subsets.seed, "training_seed": recipe.seeding[0],
                "randomness": store.randomness}


def _stats(values: list[float | None]) -> dict[str, Any]:
    defined = [v for v in values if v is not None]
    return {"mean": float(np.mean(defined)) if defined else None,
            "sd": float(np.std(defined)) if len(defined) > 1 else (0.0 if defined else None),
            "values": values}


def point(runs: list[dict[str, Any]], rows: int, estimator: str) -> dict[str, Any]:
    """Every figure at the first `rows` rows of each run (whole draws) for one estimator."""
    answers, within, cpu = [], [], []
    for run in runs:
        masks, margins, draws = run["masks"][:rows], run["margins"][:rows], run["draws"][:rows]
        started = time.process_time()
        influence = class_influence(masks, margins, estimator=estimator)
        fit_seconds = time.process_time() - started
        if influence is None:
            influence = np.full((masks.shape[1], margins.shape[1]), np.nan)
        ranking, matrix = split_half_agreements(masks, margins, draws, run["labels"], run["classes"],
                                                seeds=SPLIT_SEEDS, estimator=estimator)
        answers.append((nanmean_rows(influence), class_target_matrix(influence, run["labels"], run["classes"])))
        within.append((WithinStore(ranking, rows), WithinStore(matrix, rows)))
        cpu.append((float(run["seconds"][:rows].sum()) + fit_seconds) / 60)
    pairs = list(itertools.combinations(range(len(runs)), 2))
    cross = {what: [CrossRun.between(answers[i][k], answers[j][k], within[i][k], within[j][k]) for i, j in pairs]
             for k, what in enumerate(("ranking", "matrix"))}
    out: dict[str, Any] = {"rows": rows, "cpu_minutes": float(np.mean(cpu)), "cpu_minutes_per_run": cpu,
                           "pairs": [[runs[i]["mask_seed"], runs[j]["mask_seed"]] for i, j in pairs]}
    for k, what in enumerate(("ranking", "matrix")):
        out[f"cross_{what}"] = {**_stats([c.correlation for c in cross[what]]),
                                "predicted": _stats([c.predicted for c in cross[what]])["mean"],
                                "per_pair": [c.to_json() for c in cross[what]]}
        out[f"split_half_{what}"] = {**_stats([w[k].split.mean for w in within]),
                                     "half_models": float(np.mean([w[k].split.half_models for w in within])),
                                     "full": _stats([w[k].full for w in within])["mean"],
                                     "needed": {str(g): _stats([w[k].needed[str(g)] for w in within])["mean"]
                                                for g in GOALS}}
    return out


def needed(curve: list[dict[str, Any]], per_model_minutes: float, fit_minutes: float) -> dict[str, Any]:
    """Models (and CPU-minutes) of one run for cross-run ranking agreement of each goal: interpolated on
    log(models) where the mean curve crosses it, else Spearman–Brown from the largest point (`CrossRun`)."""
    measured = [(p["rows"], p["cross_ranking"]["mean"]) for p in curve if p["cross_ranking"]["mean"] is not None]
    result: dict[str, Any] = {}
    for goal in GOALS:
        models, extrapolated, at_most = None, False, False
        for k, (n, r) in enumerate(measured):
            if r >= goal:
                if k == 0:
                    models, at_most = float(n), True  # reached at the first point: at most this many
                else:
                    (n0, r0) = measured[k - 1]
                    w = (goal - r0) / (r - r0)
                    models = float(np.exp(np.log(n0) + w * (np.log(n) - np.log(n0))))
                break
        if models is None and measured:
            n, r = measured[-1]
            models = CrossRun(r, float(n), None).needed[str(goal)]
            extrapolated = True
        result[str(goal)] = {"models": models, "extrapolated": extrapolated, "at_most": at_most,
                             "cpu_minutes": None if models is None else models * per_model_minutes + fit_minutes}
    return result


def analyse_lever(target: str, lever: str, out: Path, models: int, runs: int) -> dict[str, Any]:
    data = [read_run(out / target / lever / f"run{r}.h5", models) for r in range(runs)]
    for a, b in itertools.combinations(data, 2):
        if a["unit_names"] != b["unit_names"] or not np.array_equal(a["labels"], b["labels"]):
            raise SystemExit(f"{a['path']} and {b['path']} answer different questions (classes or target set)")
        if a["mask_seed"] == b["mask_seed"] or a["training_seed"] == b["training_seed"]:
            raise SystemExit(f"{a['path']} and {b['path']} share a seed: not independent runs")
    baselines = transfer_baselines(RunContext.from_store(data[0]["path"], "cpu"))
    seconds = np.concatenate([d["seconds"] for d in data])
    sizes = sorted({whole_prefix(data[0]["draws"], n) for n in grid(models)} - {0})
    estimators: dict[str, Any] = {}
    for estimator in estimator_names("influence"):
        curve = [point(data, n, estimator) for n in sizes]
        last = curve[-1]
        fit_minutes = last["cpu_minutes"] - float(np.mean([d["seconds"][:last["rows"]].sum() for d in data])) / 60
        estimators[estimator] = {"curve": curve, "needed": needed(curve, float(seconds.mean()) / 60, fit_minutes),
                                 "at_models": last}
    return {"target": target, "lever": lever, "overrides": {**TARGETS[target], **LEVERS[lever]},
            "models": models, "runs": [{"run": r, "path": d["path"], "mask_seed": d["mask_seed"],
                                        "training_seed": d["training_seed"], "randomness": d["randomness"],
                                        "development": d["mask_seed"] == DEV_SEED,
                                        "cpu_minutes": float(d["seconds"].sum()) / 60,
                                        "target_accuracy": float(d["target_accuracy"].mean())}
                                       for r, d in enumerate(data)],
            "seeds": "run s: subsets.seed = training.seed = s; source, target and planting seeds 0; run 0 is the "
                     "development run (the recipe's own seeds), the others are fresh",
            "cpu_seconds_per_model": float(seconds.mean()),
            "target_accuracy": float(np.mean([d["target_accuracy"].mean() for d in data])),
            "baseline_accuracy": baselines, "estimators": estimators}


# report ----------------------------------------------------------------------------------------------------
def _num(x: float | None, fmt: str = "+.2f") -> str:
    return "—" if x is None else format(x, fmt)


def _need(entry: dict[str, Any]) -> str:
    if entry["models"] is None:
        return "—"
    mark = " (extrapolated)" if entry["extrapolated"] else ""
    return f"{'≤ ' if entry.get('at_most') else ''}{entry['models']:,.0f} · {entry['cpu_minutes']:.1f}{mark}"


def pair_mean(point: dict[str, Any], development: bool) -> float | None:
    """Mean cross-run ranking agreement over the pairs with (True) or without (False) the development run."""
    values = [v for pair, v in zip(point["pairs"], point["cross_ranking"]["values"])
              if v is not None and (DEV_SEED in pair) == development]
    return float(np.mean(values)) if values else None


def table(target: str, results: dict[str, Any]) -> str:
    first = next(iter(results.values()))
    lines = [f"### target {target}", "",
             f"Runs per lever: {len(first['runs'])} ({first['seeds']}). Cross-run: Spearman between two runs, mean "
             "± SD over pairs; split-half: halves of the N models, mean over runs. Needs: models · CPU-minutes of "
             "one run for cross-run ranking agreement 0.8 / 0.9.", "",
             "| lever | estimator | N | target acc (raw / untrained) | CPU-s per model | cross-run ranking at N "
             "(split-halves predict) | dev pairs · fresh pairs | cross-run matrix at N | split-half ranking at N | "
             "split-half needs for 0.9 | needs for 0.8 | needs for 0.9 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lever, res in results.items():
        base = res["baseline_accuracy"]
        acc = f"{res['target_accuracy']:.3f} ({base['raw pixels']:.3f} / {base['untrained network']:.3f})"
        for estimator, est in res["estimators"].items():
            at = est["at_models"]
            cr, cm, sh = at["cross_ranking"], at["cross_matrix"], at["split_half_ranking"]
            sh_need = sh["needed"]["0.9"]
            lines.append(f"| {lever} | {estimator} | {at['rows']} | {acc} | {res['cpu_seconds_per_model']:.2f} | "
                         f"{_num(cr['mean'])} ± {_num(cr['sd'], '.2f')} ({_num(cr['predicted'])}) | "
                         f"{_num(pair_mean(at, True))} · {_num(pair_mean(at, False))} | "
                         f"{_num(cm['mean'])} ± {_num(cm['sd'], '.2f')} | {_num(sh['mean'])} | "
                         f"{'—' if sh_need is None else f'{sh_need:,.0f}'} | "
                         f"{_need(est['needed']['0.8'])} | {_need(est['needed']['0.9'])} |")
    return "\n".join(lines)


def goals(target: str, results: dict[str, Any]) -> str:
    """The issue's three goals: the cheapest lever × estimator for each (extrapolated where not measured)."""
    rows = [(lever, estimator, est) for lever, res in results.items() for estimator, est in res["estimators"].items()]

    def best(key: str) -> tuple[str, str, dict[str, Any]] | None:
        options = [r for r in rows if r[2]["needed"][key]["cpu_minutes"] is not None]
        return min(options, key=lambda r: r[2]["needed"][key]["cpu_minutes"]) if options else None

    lines = [f"Goals on {target}:"]
    for key, limit in (("0.9", 15.0), ("0.8", 4.0)):
        b = best(key)
        if b is None:
            lines.append(f"- cross-run {key}: no lever has a positive agreement to extrapolate from")
            continue
        entry = b[2]["needed"][key]
        met = "met" if entry["cpu_minutes"] <= limit and not entry["extrapolated"] else (
            "within reach by extrapolation" if entry["cpu_minutes"] <= limit else "out of reach")
        lines.append(f"- cross-run {key} within {limit:g} CPU-min: {met}; cheapest {b[0]} / {b[1]}: {_need(entry)}")
    split = [(lever, estimator, est["at_models"]["split_half_ranking"]["needed"]["0.9"]) for lever, estimator, est
             in rows if est["at_models"]["split_half_ranking"]["needed"]["0.9"] is not None]
    if split:
        lever, estimator, models = min(split, key=lambda r: r[2])
        lines.append(f"- split-half 0.9 from ≤ 256 models: {'met' if models <= 256 else 'out of reach'} by "
                     f"Spearman–Brown; fewest {lever} / {estimator}: {models:,.0f} models")
    return "\n".join(lines)


def figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(7.5 * len(results), 11), squeeze=False)
    styles = {"difference-of-means": "-", "regression": "--"}
    cmap = plt.get_cmap("tab20")
    for col, (target, levers) in enumerate(results.items()):
        colors = {lever: cmap(i % 20) for i, lever in enumerate(levers)}
        for row, key in enumerate(("cpu_minutes", "rows")):
            ax = axes[row, col]
            for lever, res in levers.items():
                drawn: list[list[Any]] = []
                for estimator, est in res["estimators"].items():
                    pts = [p for p in est["curve"] if p["cross_ranking"]["mean"] is not None]
                    same = [p["cross_ranking"]["mean"] for p in pts]
                    if any(np.allclose(same, d) for d in drawn if len(d) == len(same)):
                        continue  # identical estimators (orthogonal designs): one line
                    drawn.append(same)
                    x = [p[key] for p in pts]
                    y = np.array([p["cross_ranking"]["mean"] for p in pts])
                    sd = np.array([p["cross_ranking"]["sd"] for p in pts])
                    ax.plot(x, y, styles.get(estimator, ":"), marker="o", color=colors[lever],
                            label=f"{lever} / {estimator}")
                    ax.fill_between(x, y - sd, y + sd, color=colors[lever], alpha=0.1)
            for goal in GOALS:
                ax.axhline(goal, color="k", lw=0.5, ls=":")
            ax.set_xscale("log")
            ax.set_xlabel("CPU-minutes of one run" if key == "cpu_minutes" else "models per run")
            ax.set_ylabel("cross-run Spearman of the class ranking")
            ax.set_title(f"{target}: agreement of independent runs (± SD over pairs)")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", choices=list(TARGETS), default="mnist")
    parser.add_argument("--levers", default="random,per-model,orthogonal,no-antithetic,epochs-1,per-model-epochs-1,"
                                            "per-model-orthogonal")
    parser.add_argument("--models", type=int, default=256, help="models per store")
    parser.add_argument("--runs", type=int, default=3, help="independent stores per lever (mask and training seed s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--analyse-only", action="store_true", help="no training; stores must be complete")
    args = parser.parse_args()
    names = chosen(args.levers, LEVERS, "levers")
    if args.runs < 2:
        raise SystemExit("cross-run agreement needs --runs 2 or more")
    import torch

    torch.set_num_threads(1)  # analysis in the driver: one core, leave the other to the machine
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "reliability.json"
    results: dict[str, dict[str, Any]] = saved_results(path)
    for lever in names:
        if not args.analyse_only:
            for run in range(args.runs):
                store = args.out / args.target / lever / f"run{run}.h5"
                wall = ensure_store(store, lever_recipe(args.target, lever, run, args.models), args.workers)
                if wall:
                    print(f"{args.target}/{lever} run {run}: trained in {wall / 60:.1f} min", flush=True)
        started = time.perf_counter()
        results.setdefault(args.target, {})[lever] = analyse_lever(args.target, lever, args.out, args.models,
                                                                   args.runs)
        print(f"{args.target}/{lever}: analysed in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        path.write_text(json.dumps(results, indent=2))
    ordered = {t: {lever: results[t][lever] for lever in LEVERS if lever in results[t]} for t in TARGETS
               if t in results}
    text = "\n\n".join(table(t, r) + "\n\n" + goals(t, r) for t, r in ordered.items()) + "\n"
    (args.out / "reliability.md").write_text(text)
    print(text, flush=True)
    figure(ordered, args.out / "reliability.png")


if __name__ == "__main__":
    main()
