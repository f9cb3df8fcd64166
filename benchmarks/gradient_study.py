"""The gradient estimator against datamodels and difference of means, per CPU-minute (issue 16's figures).

Per setting one example-level store is trained (resumed when it exists; `ensure_trained`, as every benchmark):

- `examples`: the example recipe as it ships (`glyphs-to-mnist-examples.yaml`: 36 glyph classes × 10 images
  plus 20 planted leaks and 20 decoys, ~400 pool images, 3% label flips; every seed 0). It is the development
  store: λ and the projection dimension's defaults, and the detectors' rules, were looked at on it.
- `pool-5000`: the same recipe and planting with `source.max_per_class` = 140 (36 × 140 + 40 = 5,080 pool
  images) and fresh seeds (planting, source, masks, training: 11), so out of sample. Its few hundred subset
  models are ground truth: their held-out rows are the LDS test rows.

On each store, with the library's held-out split (`fit_store`'s `dmtoolkit.stats.splits.split_rows`: `--holdout-frac` of the completed
rows, seed 0, whole antithetic pairs; the same test rows for every estimate of a setting, checked):

- difference of means and datamodels (`make_estimator`, fitted by `fit_store` with `fit_models=N`) on the
  *first N fitting rows* (row order; whole pairs: `dmtoolkit.stats.splits.first_rows`) for every N in `--dm-sizes` (a size above the fitting rows available is capped
  at all of them, and the table gives the number actually used);
- the gradient estimator (`fit_gradient`) from N retrained networks for every N in `--networks` (the rows are
  a seeded draw from the fitting rows, nested: the 4 networks include the 1), per `--head`.

Every estimate gets LDS on the test rows (`evaluate`), `detect_leakage` and `detect_mislabels` at their
defaults (FDR 5%; without the feature-similarity model, which does not depend on the estimate), scored
against the planted leaks and flips. Two kinds of detection figures, kept apart in the table:

- *FDR flags* (leak precision/recall of the flagged likely copies, flips flagged): only estimates with
  standard errors (difference of means) can flag; datamodels and the gradient estimator have none and flag
  nothing by design;
- *rankings*, which every estimate has: leak recall in the top k one-per-source pairs of the default
  ranking (k = number of planted leaks, so recall = precision there), flip AUC of the listing order
  (p-value for difference of means, mean influence otherwise) and flip precision in its top k (k = flips).

CPU-minutes, all single-thread seconds (store workers and fit processes run one torch thread each):

- difference of means / datamodels: the store's recorded per-model `seconds` summed over the rows the
  estimate used (its fitting and λ-selection rows; not the test rows, which only score), plus the fit's
  wall time in its one-thread process;
- gradient estimator: the fit's wall time in its one-thread process, which is the per-network seconds it
  records (`gradient/seconds`: retrain — with the row's batched group unless `--alone` — transfer, score)
  plus loading and saving; both, and the process CPU time, are in the JSON.

Fits run in `--workers` one-thread processes. Estimate files are reused when they exist, match the store's
current content and have their timing sidecar (`*.h5.json`); `--analyze-only` trains and fits nothing (it
analyses the estimates the other arguments name, so give it the sizes, networks and heads they were fitted with).

    .venv/bin/python benchmarks/gradient_study.py --out runs/gradient --settings examples
    .venv/bin/python benchmarks/gradient_study.py --out runs/gradient --settings pool-5000
    .venv/bin/python benchmarks/gradient_study.py --out runs/gradient --settings examples \\
        --head fixed,differentiated --networks 1,4,16            # the differentiated head (≈7× per network)
    .venv/bin/python benchmarks/gradient_study.py --out runs/gradient --analyze-only   # tables from files

Defaults: `examples` 2,048 models, `--dm-sizes 256,512,1024,2048` (2,048 caps at the 1,842 fitting rows; pass
`--models 2304` for 2,048 true fitting rows); `pool-5000` 384 models (346 fitting rows, 38 test), `--dm-sizes
96,192,384`; `--networks 1,4,16,64`, `--proj-dim 512`, `--lambda 0.1`, `--head fixed`, kernel `trak`. A smoke test:
`--models 64 --dm-sizes 32,64 --networks 1,2 --pool-images-per-class 20`.

Writes OUT/{setting}-runs.h5 (stores), OUT/{setting}-*.h5 (estimates), OUT/gradient.json (every figure),
OUT/gradient.md (a table per setting and the issue's goals) and OUT/gradient.png (LDS against CPU-minutes,
log x, one line per estimator, one panel per setting).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from detector_study import EXAMPLE_RECIPE, RECIPES, _num, _seeds  # benchmarks/ is on sys.path
from studies import chosen, saved_results

from dmtoolkit.analyze import detect_leakage, detect_mislabels
from dmtoolkit.errors import StoreError
from dmtoolkit.estimate.files import load_estimate, read_extra
from dmtoolkit.estimate.fit import completed_rows, store_draws
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.estimate.options import GRADIENT_LAMBDA, GRADIENT_PROJ_DIM
from dmtoolkit.recipe import Recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.stats.splits import split_rows
from dmtoolkit.store import RunStore

POOL_PER_CLASS = 140  # 36 classes × 140 + 20 leaks + 20 decoys = 5,080 pool images
POOL_SEED = 11
SETTINGS = ("examples", "pool-5000")
DEFAULT_MODELS = {"examples": 2048, "pool-5000": 384}
DEFAULT_DM_SIZES = {"examples": "256,512,1024,2048", "pool-5000": "96,192,384"}
SUBSET_ESTIMATORS = ("difference-of-means", "datamodels")
SPLIT_SEED = 0  # fit_store's and fit_gradient's default: the held-out split (and the gradient's row draw)
# issue 16's goals
GOAL_EXAMPLES_LDS, GOAL_EXAMPLES_NETWORKS, GOAL_EXAMPLES_CPU_FRACTION = 0.36, 64, 0.1
GOAL_POOL_LDS, GOAL_POOL_AUC, GOAL_POOL_CPU_MINUTES = 0.2, 0.8, 60.0


def setting_overrides(name: str, per_class: int, epochs: float | None = None) -> dict[str, Any]:
    if name == "examples":
        return {}
    return {**_seeds(POOL_SEED), "source.max_per_class": per_class,
            **({} if epochs is None else {"training.epochs": epochs})}


def setting_recipe(name: str, models: int, per_class: int, epochs: float | None = None) -> Recipe:
    return recipe_with(RECIPES / EXAMPLE_RECIPE, setting_overrides(name, per_class, epochs),
                       origin=f"gradient study {name}", models=models)


def split_of(runs: Path, holdout_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fitting rows, test rows, draw id of every store row): the split `fit_store` makes, from the library."""
    with RunStore(runs) as store:
        rows, draws = completed_rows(store), store_draws(store)
    fit, test = split_rows(rows, holdout_frac, SPLIT_SEED, draws.ids)
    return fit, test, draws.ids


# --- fitting (one-thread worker processes) -------------------------------------------------------------
def fit_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fit one estimate to JOB["path"] (via a temporary file) and write its timing sidecar; runs in a worker."""
    import torch

    torch.set_num_threads(1)
    path, tmp = Path(job["path"]), Path(job["path"] + ".tmp")
    wall, cpu = time.perf_counter(), time.process_time()
    if job["estimator"] == "gradient":
        from dmtoolkit.estimate.gradient import fit_gradient

        fit_gradient(job["runs"], tmp, models=job["networks"], proj_dim=job["proj_dim"], lam=job["lambda"],
                     head=job["head"], kernel=job["kernel"], whole_groups=job["whole_groups"], device="cpu",
                     holdout_frac=job["holdout_frac"], seed=SPLIT_SEED, force=True)
    else:
        from dmtoolkit.estimate.fit import fit_store
        from dmtoolkit.estimate.registry import make_estimator

        fit_store(job["runs"], tmp, make_estimator(job["estimator"], device="cpu"), test_fraction=job["holdout_frac"],
                  seed=SPLIT_SEED, force=True, fit_models=job["size"])
    timing = {"fit_wall_seconds": time.perf_counter() - wall, "fit_process_cpu_seconds": time.process_time() - cpu,
              "job": job}
    Path(job["path"] + ".json").write_text(json.dumps(timing, indent=2))
    os.replace(tmp, path)
    print(f"  fitted {path.name} in {timing['fit_wall_seconds']:.0f} s", flush=True)
    return timing


def usable(path: Path, runs: Path) -> bool:
    """An estimate made earlier from the store in its current state, with its timing sidecar."""
    if not path.exists() or not Path(str(path) + ".json").exists():
        return False
    try:
        with RunStore(runs) as store:
            load_estimate(path).check_store(store)
    except StoreError:
        return False
    return True


def gradient_name(setting: str, head: str, args: argparse.Namespace, networks: int) -> str:
    alone = "-alone" if args.alone else ""
    return f"{setting}-gradient-{head}-{args.kernel}-k{args.proj_dim}-l{args.lam:g}{alone}-{networks}.h5"


def plan(setting: str, runs: Path, args: argparse.Namespace, sizes: list[int], fit_count: int) -> list[dict[str, Any]]:
    """Every estimate of the setting: (label, path, job) for the subset estimators at each size and the gradient
    estimator at each network count and head."""
    base = {"runs": str(runs), "holdout_frac": args.holdout_frac}
    jobs = []
    for size in sorted({min(s, fit_count) for s in sizes}):
        for estimator in SUBSET_ESTIMATORS:
            jobs.append({**base, "estimator": estimator, "size": size,
                         "path": str(args.out / f"{setting}-{estimator}-{size}.h5")})
    for head in args.heads:
        for n in args.networks:
            jobs.append({**base, "estimator": "gradient", "head": head, "networks": n, "proj_dim": args.proj_dim,
                         "lambda": args.lam, "kernel": args.kernel, "whole_groups": not args.alone,
                         "path": str(args.out / gradient_name(setting, head, args, n))})
    return jobs


def try_fit(job: dict[str, Any]) -> str | None:
    """`fit_job`, returning the error (one line) instead of raising, so one failed fit does not stop the rest."""
    try:
        fit_job(job)
    except Exception as error:  # reported by the driver and recorded in gradient.json
        print(f"  FAILED {Path(job['path']).name}: {type(error).__name__}: {error}", flush=True)
        return f"{Path(job['path']).name}: {type(error).__name__}: {error}"
    return None


def run_fits(jobs: list[dict[str, Any]], workers: int) -> list[str]:
    """Fit every job (largest first, so the long gradient fits start early); the errors of those that failed."""
    jobs = sorted(jobs, key=lambda j: -(j.get("networks", 0) * 100 + j.get("size", 0) / 100))
    if workers <= 1 or len(jobs) <= 1:
        return [e for e in map(try_fit, jobs) if e]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [e for e in pool.map(try_fit, jobs) if e]


# --- analysis ------------------------------------------------------------------------------------------
def _score(score: Any, field: str) -> float | None:
    return None if score is None else getattr(score, field)


def analyse_estimate(job: dict[str, Any], runs: Path, seconds: np.ndarray, planted: dict[str, int]) -> dict[str, Any]:
    path = Path(job["path"])
    timing = json.loads(Path(job["path"] + ".json").read_text())
    est = load_estimate(path)
    row: dict[str, Any] = {"estimator": job["estimator"], "file": path.name,
                           "fit_wall_seconds": timing["fit_wall_seconds"],
                           "fit_process_cpu_seconds": timing["fit_process_cpu_seconds"],
                           "test_rows": est.test_rows.tolist(), "has_stderr": est.stderr is not None}
    if job["estimator"] == "gradient":
        per_network = read_extra(path, "gradient/seconds")
        row.update(label=f"gradient ({job['head']} head)", head=job["head"], kernel=job["kernel"],
                   proj_dim=job["proj_dim"], lambda_relative=job["lambda"], whole_groups=job["whole_groups"],
                   models=int(job["networks"]), count_kind="networks",
                   network_rows=read_extra(path, "gradient/rows").tolist(),
                   network_seconds=per_network.tolist(),
                   network_margin_error=read_extra(path, "gradient/margin_error").tolist(),
                   network_source_accuracy=read_extra(path, "gradient/source_accuracy").tolist(),
                   train_cpu_seconds=0.0, cpu_seconds=timing["fit_wall_seconds"])
    else:
        used = np.union1d(est.fit_rows, est.selection_rows)
        row.update(label=job["estimator"], size_requested=int(job["size"]), models=int(len(used)),
                   count_kind="subset models", selection_rows=int(len(est.selection_rows)),
                   train_cpu_seconds=float(seconds[used].sum()),
                   cpu_seconds=float(seconds[used].sum()) + timing["fit_wall_seconds"])
    row["cpu_minutes"] = row["cpu_seconds"] / 60
    try:
        lds = evaluate(runs, path)
        row.update(lds_test=lds.lds_mean, lds_interval=lds.lds_interval, lds_median=lds.lds_median,
                   test_models=lds.heldout_models,
                   lds_undefined_targets=lds.undefined_targets, lds_constant_predictions=lds.constant_predictions)
    except StoreError as error:  # too few test rows (a smoke test's tiny store)
        row.update(lds_test=None, lds_error=str(error))
    leak = detect_leakage(path, store=runs, features=False, top=max(1, planted["leaks"]))
    flips = detect_mislabels(path, store=runs, top=max(1, planted["flips"]))
    row.update(leakage_message=leak.message, mislabels_message=flips.message,
               leaks_flagged=len(leak.flagged), look_alikes=len(leak.influence_only), flips_flagged=len(flips.flagged),
               leak_fdr_precision=_score(leak.planted, "precision_at_k"),
               leak_fdr_recall=_score(leak.planted, "recall_at_k"),
               decoys_flagged=_score(leak.planted, "decoys_flagged"),
               leak_topk_recall=_score(leak.planted_top, "recall_at_k"),
               leak_topk_precision=_score(leak.planted_top, "precision_at_k"),
               flip_fdr_precision=_score(flips.planted, "precision_at_k"),
               flip_fdr_recall=_score(flips.planted, "recall_at_k"),
               flip_auc=_score(flips.planted, "auc"),
               flip_topk_precision=_score(flips.planted_top, "precision_at_k"))
    for key, score in (("leak_planted", leak.planted), ("leak_planted_top", leak.planted_top),
                       ("flip_planted", flips.planted), ("flip_planted_top", flips.planted_top)):
        row[key] = None if score is None else score.to_json()
    print(f"  {row['label']} × {row['models']}: {row['cpu_minutes']:.2f} CPU-min, LDS {_num(row['lds_test'])}, "
          f"leak top-k recall {_num(row['leak_topk_recall'], '.2f')}, flip AUC {_num(row['flip_auc'], '.3f')}",
          flush=True)
    return row


def analyse_setting(setting: str, runs: Path, jobs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    with RunStore(runs) as store:
        rows = store.completed_rows()
        seconds = store.column("seconds")
        planted_truth = store.planted()
        figures: dict[str, Any] = {
            "setting": setting,
            "overrides": setting_overrides(setting, store.recipe.source.max_per_class, store.recipe.training.epochs),
            "store": str(runs), "models": int(len(rows)), "units": int(store.num_units),
            "targets": int(store.num_targets), "holdout_frac": args.holdout_frac,
            "store_cpu_minutes": float(seconds[rows].sum()) / 60,
            "per_model_seconds": float(seconds[rows].mean()) if len(rows) else None,
            "target_accuracy": float(np.nanmean(store.column("target_accuracy")[rows])) if len(rows) else None}
    planted = {"leaks": int((planted_truth.leak_target >= 0).sum()) if planted_truth is not None else 0,
               "flips": int(planted_truth.flipped.sum()) if planted_truth is not None else 0}
    figures["planted"] = planted
    fit, test, _ = split_of(runs, args.holdout_frac)
    figures["fitting_rows"], figures["test_models"] = int(len(fit)), int(len(test))
    results = []
    for job in jobs:
        if not usable(Path(job["path"]), runs):
            print(f"  {Path(job['path']).name}: not fitted yet, skipped", flush=True)
            continue
        row = analyse_estimate(job, runs, seconds, planted)
        if row.pop("test_rows") != test.tolist():
            raise SystemExit(f"{job['path']}: its test rows are not the store's held-out split; refit it")
        results.append(row)
    figures["estimates"] = results
    figures["goals"] = goals(setting, results)
    gradient = [r for r in results if r["estimator"] == "gradient"]
    if gradient:  # mean recorded seconds per network, per head
        figures["gradient_seconds_per_network"] = {
            head: float(np.mean([s for r in gradient if r["head"] == head for s in r["network_seconds"]]))
            for head in sorted({r["head"] for r in gradient})}
    return figures


def goals(setting: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 16's goals, checked on the gradient rows (each row on its own)."""
    gradient = [r for r in results if r["estimator"] == "gradient" and r.get("lds_test") is not None]
    if setting == "examples":
        dm = [r for r in results if r["estimator"] == "datamodels"]
        if not dm:
            return {}
        largest = max(dm, key=lambda r: r["models"])
        budget = GOAL_EXAMPLES_CPU_FRACTION * largest["cpu_minutes"]
        met = [r["file"] for r in gradient if r["lds_test"] >= GOAL_EXAMPLES_LDS and r["models"] <= GOAL_EXAMPLES_NETWORKS
               and r["cpu_minutes"] < budget]
        return {"goal": f"LDS ≥ {GOAL_EXAMPLES_LDS} with ≤ {GOAL_EXAMPLES_NETWORKS} networks at < "
                        f"{GOAL_EXAMPLES_CPU_FRACTION:g} × datamodels at {largest['models']} models' CPU-minutes "
                        f"({largest['cpu_minutes']:.1f}, so < {budget:.2f})",
                "datamodels_reference_models": largest["models"], "datamodels_reference_lds": largest["lds_test"],
                "cpu_budget_minutes": budget, "met_by": met, "met": bool(met)}
    met = [r["file"] for r in gradient if r["lds_test"] >= GOAL_POOL_LDS and (r["flip_auc"] or 0) >= GOAL_POOL_AUC
           and r["cpu_minutes"] <= GOAL_POOL_CPU_MINUTES]
    return {"goal": f"LDS ≥ {GOAL_POOL_LDS} and flip AUC ≥ {GOAL_POOL_AUC} within {GOAL_POOL_CPU_MINUTES:g} "
                    "CPU-minutes (the gradient estimator's own cost)", "met_by": met, "met": bool(met)}


# --- outputs -------------------------------------------------------------------------------------------
def _cell(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _fdr(value: Any, spec: str = ".3f") -> Any:
    """A cell of an FDR column: n/a for an estimate without standard errors (it cannot flag by design)."""
    return lambda r: _cell(r[value], spec) if r.get("has_stderr", True) else "n/a"


COLUMNS = (("estimator", lambda r: r["label"]),
           ("models / networks", lambda r: f"{r['models']} {'networks' if r['count_kind'] == 'networks' else 'models'}"),
           ("CPU-min", lambda r: _cell(r["cpu_minutes"], ".2f")),
           ("LDS (test rows) [95% over test models]", lambda r: _cell(r["lds_test"]) + (
               f" [{r['lds_interval'][0]:.3f}, {r['lds_interval'][1]:.3f}]" if r.get("lds_interval") else "")),
           ("FDR: leaks flagged", _fdr("leaks_flagged")),
           ("FDR: leak precision", _fdr("leak_fdr_precision", ".2f")),
           ("FDR: leak recall", _fdr("leak_fdr_recall", ".2f")),
           ("FDR: flips flagged", _fdr("flips_flagged")),
           ("FDR: flip precision", _fdr("flip_fdr_precision", ".2f")),
           ("rank: leak recall@k", lambda r: _cell(r["leak_topk_recall"], ".2f")),
           ("rank: flip AUC", lambda r: _cell(r["flip_auc"])),
           ("rank: flip precision@k", lambda r: _cell(r["flip_topk_precision"], ".2f")))


def table(figures: dict[str, Any]) -> str:
    p = figures["planted"]
    lines = [f"### {figures['setting']}",
             "",
             f"{figures['models']} models ({figures['store_cpu_minutes']:.1f} CPU-min, "
             f"{_cell(figures['per_model_seconds'], '.2f')} s per model), {figures['units']} pool images, "
             f"{figures['targets']} targets; {figures['fitting_rows']} fitting rows, LDS on the "
             f"{figures['test_models']} held-out test models; {p['leaks']} planted leaks, {p['flips']} flips. "
             f"Overrides of the example recipe: {json.dumps(figures['overrides'])}."
             + "".join(f" Gradient estimator, {head} head: {value:.1f} s per network."
                       for head, value in figures.get("gradient_seconds_per_network", {}).items()),
             "",
             "| " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in figures["estimates"]:
        lines.append("| " + " | ".join(f(r) for _, f in COLUMNS) + " |")
    lines += ["",
              "FDR columns: flagged at FDR 5% (only difference of means has the standard errors to flag; datamodels "
              "and the gradient estimator have none and flag nothing by design: n/a). Rank columns: ranking quality, every estimator — "
              f"leak recall among the top k = {p['leaks']} pairs (one per source, default two-way-z ranking), flip "
              f"AUC of the listing order and flip precision in its top k = {p['flips']}. CPU-min: subset estimators "
              "= stored training seconds of the rows used + fit; gradient = its fit (retraining included)."]
    for error in figures.get("fit_errors", []):
        lines += ["", f"Fit failed: {error}"]
    goal = figures.get("goals") or {}
    if goal:
        lines += ["", f"Goal: {goal['goal']}: **{'met' if goal['met'] else 'not met'}**"
                  + (f" (by {', '.join(goal['met_by'])})" if goal["met_by"] else "") + "."]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        figures = results[name]
        lines: dict[str, list[dict[str, Any]]] = {}
        for r in figures["estimates"]:
            if r.get("lds_test") is not None:
                lines.setdefault(r["label"], []).append(r)
        for label, rows in lines.items():
            rows = sorted(rows, key=lambda r: r["models"])
            x, y = [max(r["cpu_minutes"], 1e-3) for r in rows], [r["lds_test"] for r in rows]
            (handle,) = ax.plot(x, y, marker="o", label=label)
            for r, xi, yi in zip(rows, x, y):
                ax.annotate(str(r["models"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=handle.get_color())
        goal = figures.get("goals") or {}
        target = GOAL_EXAMPLES_LDS if name == "examples" else GOAL_POOL_LDS
        ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"goal LDS {target}")
        if "cpu_budget_minutes" in goal:
            ax.axvline(goal["cpu_budget_minutes"], color="grey", lw=0.8, ls=":",
                       label=f"goal CPU: 1/10 of datamodels at {goal['datamodels_reference_models']}")
        elif name != "examples":
            ax.axvline(GOAL_POOL_CPU_MINUTES, color="grey", lw=0.8, ls=":",
                       label=f"goal CPU: {GOAL_POOL_CPU_MINUTES:g} min")
        ax.set_xscale("log")
        ax.set_xlabel("CPU-minutes (single thread)")
        ax.set_ylabel(f"LDS on {figures['test_models']} held-out models")
        ax.set_title(f"{name}: {figures['units']} pool images, {figures['models']} models")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--models", type=int, help="store size (default: examples 2048, pool-5000 384)")
    parser.add_argument("--dm-sizes", help="subset models (first fitting rows) for difference of means and "
                                           f"datamodels (default: {DEFAULT_DM_SIZES})")
    parser.add_argument("--networks", default="1,4,16,64", help="gradient estimator network counts")
    parser.add_argument("--proj-dim", type=int, default=GRADIENT_PROJ_DIM)
    parser.add_argument("--lambda", dest="lam", type=float, default=GRADIENT_LAMBDA)
    parser.add_argument("--head", default="fixed", help="fixed, differentiated, or both comma-separated")
    parser.add_argument("--kernel", default="trak", choices=("trak", "gauss-newton"))
    parser.add_argument("--alone", action="store_true", help="retrain gradient networks alone, not with their group")
    parser.add_argument("--pool-images-per-class", type=int, default=POOL_PER_CLASS,
                        help="pool-5000's source.max_per_class (smaller only for a smoke test)")
    parser.add_argument("--pool-epochs", type=float, default=None,
                        help="pool-5000's training.epochs (default: the recipe's 30; ≈ 12× the example store's steps)")
    parser.add_argument("--holdout-frac", type=float, default=0.1, help="test rows (fit_store's test_fraction)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--analyze-only", action="store_true", help="train and fit nothing; analyse existing files")
    args = parser.parse_args()
    names = chosen(args.settings, SETTINGS, "settings")
    args.heads = [h for h in args.head.split(",") if h]
    if not set(args.heads) <= {"fixed", "differentiated"}:
        raise SystemExit(f"--head {args.head}: fixed, differentiated or both")
    args.networks = _ints(args.networks)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "gradient.json"
    results = saved_results(results_path)
    for name in names:
        runs = args.out / f"{name}-runs.h5"
        if not args.analyze_only:
            recipe = setting_recipe(name, args.models or DEFAULT_MODELS[name], args.pool_images_per_class,
                                    args.pool_epochs)
            seconds = ensure_trained(runs, recipe, workers=args.workers, device="cpu", progress=False).seconds
            print(f"{name}: store trained ({seconds / 60:.1f} min wall now)", flush=True)
        elif not runs.exists():
            print(f"{name}: no store {runs}, skipped")
            continue
        fit, _, _ = split_of(runs, args.holdout_frac)
        sizes = _ints(DEFAULT_DM_SIZES[name] if args.dm_sizes is None else args.dm_sizes)  # "": none
        jobs = plan(name, runs, args, sizes, len(fit))
        if not args.analyze_only:
            pending = [j for j in jobs if not usable(Path(j["path"]), runs)]
            print(f"{name}: {len(pending)} of {len(jobs)} estimates to fit", flush=True)
            started = time.perf_counter()
            errors = run_fits(pending, args.workers)
            print(f"{name}: fitted in {(time.perf_counter() - started) / 60:.1f} min wall"
                  + (f"; {len(errors)} failed" if errors else ""), flush=True)
        results[name] = analyse_setting(name, runs, jobs, args)
        if not args.analyze_only:
            results[name]["fit_errors"] = errors
        results_path.write_text(json.dumps(results, indent=2, default=float))
    results = {s: results[s] for s in SETTINGS if s in results}
    text = "\n\n".join(table(figures) for figures in results.values())
    (args.out / "gradient.md").write_text(text + "\n")
    if results:
        plot(results, args.out / "gradient.png")
    print(text)


if __name__ == "__main__":
    main()
