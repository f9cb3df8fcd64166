"""Removal curves with enough repeats to tell, predicted gains checked by retraining, and a k chosen on validation.

For each setting an influence store is trained (the recipe's masks and shared training seed), and class
influence (difference of means) is estimated from it. The target's test examples are split once, by a
seeded permutation, into a *validation* half and a *test* half: removal orders are ranked by mean influence
over the validation half only, k for the recommendation is chosen on validation accuracy only, and the
figures quoted are on the test half. Then, for each repeat r = 1..R (training seed = recipe's + r, never
the store's own seed 0, so the retrainings are independent of the models the influences came from), one
model is trained on the full source and one per (order, k) with the k most positive (top), most negative
(bottom) or random classes removed.

Reported per setting: accuracy curves (mean and 95% interval over repeats, t with R − 1 dof); the gain of
each removal over the full source as a paired difference (same repeat, same training seed); top − random
at each k; the predicted change of mean margin and accuracy from the influence (linear predictor
f̂_j(S) = mean_j + Σ_k Infl_kj · (1[k ∈ S] − α)) against the retrained change, with their correlation;
and two recommendations verified on the test half: `dmtoolkit recommend`'s (k from the *predicted* validation
accuracy, chosen before any retraining; its k joins the grid) and the bottom-order k with the best *retrained*
validation accuracy. Margins of every retraining are saved (OUT/NAME-retrain.npz), so `--analyze-only`
recomputes every figure without training.

    .venv/bin/python benchmarks/removal_study.py --out runs/removal                       # all settings
    .venv/bin/python benchmarks/removal_study.py --out runs/removal --settings default --repeats 3 --models 64

Writes OUT/removal.json, OUT/removal.md and OUT/removal.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from studies import chosen, saved_results  # benchmarks/ is on sys.path when this script runs

from dmtoolkit.analyze.options import RECOMMEND_SPLIT_SEED
from dmtoolkit.analyze.recommend import predicted_removal_change, recommend_removal, removal_ranking
from dmtoolkit.analyze.retrain import train_masks
from dmtoolkit.estimate import compute_influence
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.recipe import RECIPES_DIR, Recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.run.executors import make_executor
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.stats.intervals import interval_quantile
from dmtoolkit.store import RunData, RunStore
from dmtoolkit.train.job import group_size as group_size_of

# Measured (docs/signal.md) with the random mask design, the recipe's default until 2026-12-04; pinned so the
# documented figures reproduce now that the recipe ships the orthogonal design.
MEASURED_DESIGN: dict[str, Any] = {"subsets.design": "random", "training.randomness": "shared"}
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {**MEASURED_DESIGN},
    "all-135": {**MEASURED_DESIGN, "source.classes": None},
    "fashion": {**MEASURED_DESIGN, "target.dataset": "fashion-mnist", "planting.copy_labels": "by-index"},
}
KS = {"default": (0, 2, 4, 8, 12, 16), "all-135": (0, 5, 10, 20, 40, 60), "fashion": (0, 2, 4, 8, 12, 16)}
ORDERS = ("bottom", "top", "random")
SPLIT_SEED = RECOMMEND_SPLIT_SEED  # the library's default split, so `dmtoolkit recommend` sees the same parts


def setting_recipe(name: str, models: int) -> Recipe:
    return recipe_with(RECIPES_DIR / "glyphs-to-mnist.yaml", SETTINGS[name], origin=f"removal study {name}",
                       models=models)


def interval(values: np.ndarray) -> dict[str, float]:
    """Mean and 95% t interval over repeats (axis 0)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    mean, sd = float(values.mean()), float(values.std(ddof=1)) if n > 1 else 0.0
    half = float(interval_quantile(0.95, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "se": sd / np.sqrt(n) if n else 0.0}


def removal_sets(influence: np.ndarray, validation: np.ndarray, ks: list[int], repeats: int,
                 seed: int) -> dict[str, list[list[np.ndarray]]]:
    """Per order, per repeat, per k: the class indices removed (orders from mean influence over validation, by the
    library's `removal_ranking`; random: a fresh permutation per repeat)."""
    bottom = removal_ranking(influence, validation)
    top = removal_ranking(-influence, validation)
    rng = np.random.default_rng(seed)
    random_orders = [rng.permutation(influence.shape[0]) for _ in range(repeats)]
    return {"bottom": [[bottom[:k] for k in ks] for _ in range(repeats)],
            "top": [[top[:k] for k in ks] for _ in range(repeats)],
            "random": [[order[:k] for k in ks] for order in random_orders]}


def layout_of(ks: list[int]) -> list[tuple[str, int]]:
    """Rows trained per repeat: the full source, then every (order, index of k > 0)."""
    return [("full", 0)] + [(order, i) for order in ORDERS for i, k in enumerate(ks) if k > 0]


def run_setting(name: str, out: Path, models: int, repeats: int, workers: int) -> None:
    """Train the influence store and the retrainings of one setting; margins go to OUT/NAME-retrain.npz."""
    recipe = setting_recipe(name, models)
    data = build_run_data(recipe)
    store, estimate = out / f"{name}-runs.h5", out / f"{name}-influence.h5"
    started = time.perf_counter()
    ensure_trained(store, recipe, workers=workers, device="cpu", progress=False, data=data)
    store_minutes = (time.perf_counter() - started) / 60
    if not estimate.exists():
        compute_influence(store, estimate, device="cpu")
    est = load_estimate(estimate)
    recommendation = recommend_removal(estimate, store=store)  # before any retraining; chosen k joins the grid
    validation = np.array(recommendation.validation_columns)
    ks = sorted(set(KS[name]) | {recommendation.chosen.k})
    influence = est.matrix.astype(np.float64)
    sets = removal_sets(influence, validation, ks, repeats, seed=SPLIT_SEED + 1)
    layout = layout_of(ks)
    P, T = influence.shape
    saved_path = out / f"{name}-retrain.npz"
    if saved_path.exists():  # an earlier run: train only the k it lacks (e.g. a revised recommendation's)
        extend_setting(name, saved_path, recipe, data, influence, validation, ks, repeats, workers)
        return
    margins = np.zeros((repeats, len(layout), T), np.float32)
    started = time.perf_counter()
    for r in range(repeats):
        margins[r] = retrain_repeat(recipe, data, sets, layout, r, P, workers)
        print(f"{name}: repeat {r + 1}/{repeats} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    retrain_minutes = (time.perf_counter() - started) / 60
    np.savez(saved_path, margins=margins, ks=np.array(ks), store_minutes=store_minutes,
             retrain_minutes=retrain_minutes)


def retrain_repeat(recipe: Recipe, data: RunData, sets: dict[str, list[list[np.ndarray]]],
                   layout: list[tuple[str, int]], r: int, num_classes: int, workers: int) -> np.ndarray:
    """Margins (rows of `layout` × targets) of repeat r: training seed = recipe's + 1 + r, run seed fixed per r."""
    masks = np.ones((len(layout), num_classes), bool)
    for row, (order, i) in enumerate(layout):
        if order != "full":
            masks[row, sets[order][r][i]] = False
    results = train_masks(recipe, data, masks, seed=recipe.subsets.seed + 1000 + r, repeat=r + 1,
                          device="cpu", executor=lambda: make_executor("local", workers, "cpu"))
    return np.stack([res.margins for res in results])


def extend_setting(name: str, saved_path: Path, recipe: Recipe, data: RunData, influence: np.ndarray,
                   validation: np.ndarray, ks: list[int], repeats: int, workers: int) -> None:
    """Add to saved retrainings the (order, k) rows for the k in `ks` they lack, with the same repeats and
    seeds. Models train in batched groups (`training.models_per_batch`) and a model's result depends on its
    group, so each repeat retrains the saved layout's first group (the full source and its neighbours) in
    front of the new rows and checks it reproduces the saved margins: that shows the new rows are trained
    exactly as the saved ones were, with the same repeat's training randomness."""
    saved = dict(np.load(saved_path))
    old_ks = [int(k) for k in saved["ks"]]
    missing = [k for k in ks if k not in old_ks]
    if not missing:
        return
    if saved["margins"].shape[0] != repeats:
        raise SystemExit(f"{saved_path} has {saved['margins'].shape[0]} repeats, not {repeats}: pass --repeats "
                         f"{saved['margins'].shape[0]} to extend it, or move it away to start afresh")
    new_ks = sorted(set(old_ks) | set(missing))
    sets = removal_sets(influence, validation, new_ks, repeats, seed=SPLIT_SEED + 1)
    new_layout, old_layout = layout_of(new_ks), layout_of(old_ks)
    first = old_layout[:group_size_of(recipe)]
    replayed = [(order, new_ks.index(old_ks[i])) for order, i in first]
    added = replayed + [(order, new_ks.index(k)) for order in ORDERS for k in missing]
    old_margins = saved["margins"]
    margins = np.zeros((repeats, len(new_layout), old_margins.shape[2]), np.float32)
    started = time.perf_counter()
    for r in range(repeats):
        fresh = retrain_repeat(recipe, data, sets, added, r, influence.shape[0], workers)
        difference = float(np.abs(fresh[:len(first)] - old_margins[r, :len(first)]).max())
        if difference > 1e-4:
            raise SystemExit(f"{saved_path}: repeat {r + 1}'s first group did not reproduce (max margin difference "
                             f"{difference:.2g}); move the file away and rerun the setting from scratch")
        for row, (order, i) in enumerate(new_layout):
            k = new_ks[i]
            if order != "full" and k in missing:
                margins[r, row] = fresh[added.index((order, i))]
            else:
                margins[r, row] = old_margins[r, 0 if order == "full" else old_layout.index((order, old_ks.index(k)))]
        print(f"{name}: extending repeat {r + 1}/{repeats} with k = {missing} "
              f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    saved.update(margins=margins, ks=np.array(new_ks),
                 retrain_minutes=float(saved["retrain_minutes"]) + (time.perf_counter() - started) / 60)
    np.savez(saved_path, **saved)


def analyze_setting(name: str, out: Path) -> dict[str, Any]:
    """Every figure of one setting from its saved retrainings, the estimate and the library's recommendation."""
    store, estimate = out / f"{name}-runs.h5", out / f"{name}-influence.h5"
    saved = np.load(out / f"{name}-retrain.npz")
    margins, ks = saved["margins"].astype(np.float64), [int(k) for k in saved["ks"]]
    repeats = margins.shape[0]
    est = load_estimate(estimate)
    with RunStore(store) as run:
        completed = len(run.completed_rows())
    recommendation = recommend_removal(estimate, store=store)
    validation, test = np.array(recommendation.validation_columns), np.array(recommendation.test_columns)
    influence, intercept = est.matrix.astype(np.float64), est.intercept.astype(np.float64)
    sets = removal_sets(influence, validation, ks, repeats, seed=SPLIT_SEED + 1)  # the sets that were trained
    layout = layout_of(ks)
    acc = {split: (margins[:, :, cols] > 0).mean(2) for split, cols in (("validation", validation), ("test", test))}
    mean_margin = {split: margins[:, :, cols].mean(2) for split, cols in (("validation", validation), ("test", test))}

    def column(order: str, i: int) -> int:
        return 0 if ks[i] == 0 else layout.index((order, i))

    curves: dict[str, Any] = {}
    for order in ORDERS:
        curves[order] = []
        for i, k in enumerate(ks):
            c = column(order, i)
            curves[order].append({"k": k, "test_accuracy": interval(acc["test"][:, c]),
                                  "gain": interval(acc["test"][:, c] - acc["test"][:, 0]),
                                  "validation_accuracy": interval(acc["validation"][:, c]),
                                  "margin_change": interval(mean_margin["test"][:, c] - mean_margin["test"][:, 0])})
    top_minus_random = [{"k": k, **interval(acc["test"][:, column("top", i)] - acc["test"][:, column("random", i)])}
                        for i, k in enumerate(ks) if k > 0]
    # prediction on the test part, by the library's linear predictor, against the retrained change
    predictions = []
    for order in ORDERS:
        for i, k in enumerate(ks):
            if k == 0:
                continue
            c = column(order, i)
            changes = [predicted_removal_change(influence, intercept, sets[order][r][i], test) for r in range(repeats)]
            predictions.append({"order": order, "k": k,
                                "predicted_margin_change": float(np.mean([x[0] for x in changes])),
                                "predicted_accuracy_change": float(np.mean([x[1] - x[2] for x in changes])),
                                "retrained_margin_change": float(np.mean(mean_margin["test"][:, c]
                                                                         - mean_margin["test"][:, 0])),
                                "retrained_accuracy_change": float(np.mean(acc["test"][:, c] - acc["test"][:, 0]))})
    corr = {key: float(stats.pearsonr([p[f"predicted_{key}"] for p in predictions],
                                      [p[f"retrained_{key}"] for p in predictions])[0])
            for key in ("margin_change", "accuracy_change")}
    # (a) the toolkit's recommendation, chosen before retraining from predicted validation accuracy
    chosen = ks.index(recommendation.chosen.k)
    predicted = {"k": recommendation.chosen.k, "removed": list(recommendation.chosen.removed),
                 "message": recommendation.message, "harmful": recommendation.harmful,
                 "predicted_accuracy_change": recommendation.chosen.predicted_accuracy_change,
                 "predicted_margin_change": recommendation.chosen.predicted_margin_change,
                 "test_gain": interval(acc["test"][:, column("bottom", chosen)] - acc["test"][:, 0])}
    # (b) k chosen by retrained validation accuracy over the grid (k = 0 allowed), verified on test
    val_means = [float(acc["validation"][:, column("bottom", i)].mean()) for i in range(len(ks))]
    best = int(np.argmax(val_means))
    retrained = {"k": ks[best], "validation_accuracy": val_means[best],
                 "removed": [est.unit_names[j] for j in sets["bottom"][0][best]],
                 "test_gain": interval(acc["test"][:, column("bottom", best)] - acc["test"][:, 0])}
    best_bottom = max(range(1, len(ks)), key=lambda i: curves["bottom"][i]["gain"]["mean"])
    return {"setting": name, "overrides": dict(SETTINGS[name]), "models": completed,
            "classes": influence.shape[0], "targets": {"validation": len(validation), "test": len(test)},
            "repeats": repeats, "ks": ks, "store_minutes": float(saved["store_minutes"]),
            "retrain_minutes": float(saved["retrain_minutes"]),
            "curves": curves, "top_minus_random": top_minus_random, "predictions": predictions,
            "prediction_correlation": corr, "recommendation": predicted, "retrained_choice": retrained,
            "best_bottom_gain_on_test": {"k": ks[best_bottom], **curves["bottom"][best_bottom]["gain"],
                                         "note": "best over the grid on test itself: descriptive, not a choice"},
            "full_source_test_accuracy": interval(acc["test"][:, 0])}


def _ci(x: dict[str, float], digits: int = 3) -> str:
    return f"{x['mean']:+.{digits}f} [{x['low']:+.{digits}f}, {x['high']:+.{digits}f}]"


def table(result: dict[str, Any]) -> str:
    ks = result["ks"]
    lines = [f"### {result['setting']} ({result['classes']} classes, {result['models']} models for influence, "
             f"{result['repeats']} repeats per point)", "",
             f"Full source, test half: {result['full_source_test_accuracy']['mean']:.3f} "
             f"[{result['full_source_test_accuracy']['low']:.3f}, {result['full_source_test_accuracy']['high']:.3f}]",
             "", "| k | bottom removed: gain | top removed: gain | random removed: gain | top − random |",
             "|---|---|---|---|---|"]
    tmr = {d["k"]: d for d in result["top_minus_random"]}
    for i, k in enumerate(ks):
        if k == 0:
            continue
        cells = [_ci(result["curves"][o][i]["gain"]) for o in ORDERS]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {_ci(tmr[k])} |")
    rec, chosen = result["recommendation"], result["retrained_choice"]
    corr = result["prediction_correlation"]
    noun = "class" if rec["k"] == 1 else "classes"
    lines += ["", f"`dmtoolkit recommend` (k from predicted validation accuracy among the {rec.get('harmful')} most "
              f"negative classes with evidence of harm at FDR 5%, before retraining): remove {rec['k']} {noun}, "
              f"predicted accuracy change {rec['predicted_accuracy_change']:+.3f}; "
              f"retrained test gain {_ci(rec['test_gain'])}.",
              f"k chosen on retrained validation accuracy: {chosen['k']}; test gain {_ci(chosen['test_gain'])}.",
              f"Predicted vs retrained change over all removal sets (test part): Pearson "
              f"{corr['margin_change']:.2f} (mean margin), {corr['accuracy_change']:.2f} (accuracy)."]
    return "\n".join(lines)


def figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.5 * len(results), 7), squeeze=False)
    colors = {"bottom": "tab:green", "top": "tab:red", "random": "tab:gray"}
    for col, (name, res) in enumerate(results.items()):
        ax = axes[0, col]
        for order in ORDERS:
            points = res["curves"][order]
            ks = [p["k"] for p in points]
            mean = [p["test_accuracy"]["mean"] for p in points]
            low = [p["test_accuracy"]["low"] for p in points]
            high = [p["test_accuracy"]["high"] for p in points]
            ax.plot(ks, mean, "o-", color=colors[order], label=f"{order} removed")
            ax.fill_between(ks, low, high, color=colors[order], alpha=0.2)
        ax.set_title(f"{name}: {res['repeats']} repeats, 95% CI")
        ax.set_xlabel("classes removed (k)")
        ax.set_ylabel("target test accuracy")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for order in ORDERS:
            pts = [p for p in res["predictions"] if p["order"] == order]
            ax.scatter([p["predicted_margin_change"] for p in pts], [p["retrained_margin_change"] for p in pts],
                       color=colors[order], label=order)
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title(f"predicted vs retrained (r = {res['prediction_correlation']['margin_change']:.2f})")
        ax.set_xlabel("predicted change of mean margin")
        ax.set_ylabel("retrained change of mean margin")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--models", type=int, default=512, help="models in each influence store")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--analyze-only", action="store_true",
                        help="recompute every figure from the saved retrainings (OUT/NAME-retrain.npz)")
    args = parser.parse_args()
    names = chosen(args.settings, SETTINGS, "settings")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "removal.json"
    results = saved_results(path)
    for name in names:
        if not args.analyze_only:
            run_setting(name, args.out, args.models, args.repeats, args.workers)
        results[name] = analyze_setting(name, args.out)
        path.write_text(json.dumps(results, indent=2))
        print(table(results[name]), flush=True)
    ordered = {s: results[s] for s in SETTINGS if s in results}
    (args.out / "removal.md").write_text("\n\n".join(table(r) for r in ordered.values()) + "\n")
    figure(ordered, args.out / "removal.png")


if __name__ == "__main__":
    main()
