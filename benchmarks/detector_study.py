"""Leakage and mislabel detectors measured out of sample: fresh planting seeds, a second target, nothing planted.

Detector rules and the FDR threshold were chosen on the development store (the example recipe as it ships:
planting, source, mask and training seed 0, MNIST target). This study scores them, at their defaults, on
stores the choices never saw:

- `seed-3`, `seed-6`, `seed-7` (the fresh seeds): the example recipe with planting, source, mask and training
  seeds all set to 3, 6, 7 (other planted images, other pool, other masks, other training randomness);
- `seed-1`, `seed-2`: the same, but looked at while the rules were explored, so reported apart and never
  counted as out of sample;
- `fashion`: the fashion-mnist target (seed 4; copied images keep their class by index, since fashion
  classes have no glyph of the same name);
- `null`: nothing planted (leaks, decoys, near copies, flips all 0; seed 5) — the detectors should say so.

Each store has `--models` models (512 by default, as in the demo). Per store the study fits difference of
means and datamodels (fit / λ-selection / test rows from the library's unit-aware split, complementary
pairs kept together), runs `detect_leakage` and `detect_mislabels` with default options on each estimate,
and records leak precision and recall, decoys flagged, flip precision, recall and AUC, and LDS on the test
rows. Stores are resumed when they exist.

    .venv/bin/python benchmarks/detector_study.py --out runs/detectors            # all settings
    .venv/bin/python benchmarks/detector_study.py --out runs/detectors --settings null,seed-3 --train-only
    .venv/bin/python benchmarks/detector_study.py --out runs/detectors --settings dev   # the tuning store

Writes OUT/detectors.json and OUT/detectors.md (per-setting rows, then mean ± SD over the fresh seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from studies import chosen, saved_results  # benchmarks/ is on sys.path when this script runs

from dmtoolkit.analyze import detect_leakage, detect_mislabels
from dmtoolkit.estimate.fit import fit_store
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.estimate.registry import make_estimator
from dmtoolkit.recipe import Recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.store import RunStore

RECIPES = Path(__file__).resolve().parent.parent / "dmtoolkit" / "recipes"
EXAMPLE_RECIPE = "glyphs-to-mnist-examples.yaml"


def _seeds(seed: int) -> dict[str, Any]:
    return {"planting.seed": seed, "source.seed": seed, "subsets.seed": seed, "training.seed": seed}


NOTHING_PLANTED = {"planting.leaks": 0, "planting.decoys": 0, "planting.near_copies": 0, "planting.flip_fraction": 0.0}

# name -> recipe overrides on the example recipe; "dev" is the store every rule and threshold was chosen on
SETTINGS: dict[str, dict[str, Any]] = {
    "dev": {},
    "seed-1": _seeds(1),
    "seed-2": _seeds(2),
    "seed-3": _seeds(3),
    "seed-6": _seeds(6),
    "seed-7": _seeds(7),
    "fashion": {**_seeds(4), "target.dataset": "fashion-mnist", "planting.copy_labels": "by-index"},
    "null": {**_seeds(5), **NOTHING_PLANTED},
}
FRESH_SEEDS = ("seed-3", "seed-6", "seed-7")
# seeds 1 and 2 were looked at while the rules were being explored (2026-12-02), so they are reported
# separately and never count as out of sample
EXPLORED_SEEDS = ("seed-1", "seed-2")


def setting_recipe(name: str, models: int) -> Recipe:
    return recipe_with(RECIPES / EXAMPLE_RECIPE, SETTINGS[name], origin=f"detector study {name}", models=models)


# the regression estimator needs more draws (complementary pairs count once) than source examples:
# 256 pairs for 400 examples cannot identify it, so it is not part of this study
ESTIMATORS = ("difference-of-means", "datamodels")


def analyse(name: str, runs: Path, out: Path) -> dict[str, Any]:
    """Fit every estimator (test rows held out, whole pairs), LDS on the test rows, detectors at their defaults."""
    figures: dict[str, Any] = {"setting": name, "overrides": SETTINGS[name]}
    with RunStore(runs) as store:
        figures["models"] = int(len(store.completed_rows()))
        figures["units"] = store.num_units
    for estimator in ESTIMATORS:
        path = out / f"{name}-{estimator}.h5"
        started = time.perf_counter()
        fit_store(runs, path, make_estimator(estimator, device="cpu"), force=True)
        row: dict[str, Any] = {"fit_seconds": time.perf_counter() - started}
        lds = evaluate(runs, path)
        row["lds_test"], row["test_models"] = lds.lds_mean, lds.heldout_models
        leak, flips = detect_leakage(path, store=runs), detect_mislabels(path, store=runs)
        row["leakage_message"], row["mislabels_message"] = leak.message, flips.message
        row["leaks_flagged"], row["flips_flagged"] = len(leak.flagged), len(flips.flagged)
        row["look_alikes"] = len(leak.influence_only)
        for key in ("planted", "planted_influence_only", "planted_pixel_only", "planted_feature_top", "planted_top"):
            score = getattr(leak, key)
            row[f"leak_{key}"] = None if score is None else score.to_json()
        for key in ("planted", "planted_top"):
            score = getattr(flips, key)
            row[f"flip_{key}"] = None if score is None else score.to_json()
        figures[estimator] = row
        print(f"{name} {estimator}: LDS {_num(row['lds_test'])} on {row['test_models']} test models; "
              f"{leak.message}; {flips.message}", flush=True)
    return figures


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _get(row: dict[str, Any], key: str, field: str) -> float | None:
    score = row.get(key)
    return None if score is None else score.get(field)


COLUMNS = (("LDS test", lambda r: r["lds_test"]),
           ("leaks flagged", lambda r: r["leaks_flagged"]),
           ("leak precision", lambda r: _get(r, "leak_planted", "precision_at_k")),
           ("leak recall", lambda r: _get(r, "leak_planted", "recall_at_k")),
           ("decoys flagged", lambda r: _get(r, "leak_planted", "decoys_flagged")),
           ("influence-only precision", lambda r: _get(r, "leak_planted_influence_only", "precision_at_k")),
           ("influence-only recall", lambda r: _get(r, "leak_planted_influence_only", "recall_at_k")),
           ("pixel-only precision", lambda r: _get(r, "leak_planted_pixel_only", "precision_at_k")),
           ("pixel-only recall", lambda r: _get(r, "leak_planted_pixel_only", "recall_at_k")),
           ("feature-only top-20 precision", lambda r: _get(r, "leak_planted_feature_top", "precision_at_k")),
           ("top-20 leak precision", lambda r: _get(r, "leak_planted_top", "precision_at_k")),
           ("flips flagged", lambda r: r["flips_flagged"]),
           ("flip precision", lambda r: _get(r, "flip_planted", "precision_at_k")),
           ("flip recall", lambda r: _get(r, "flip_planted", "recall_at_k")),
           ("flip AUC", lambda r: _get(r, "flip_planted", "auc")),
           ("top-20 flip precision", lambda r: _get(r, "flip_planted_top", "precision_at_k")))


def table(results: dict[str, dict[str, Any]], estimator: str) -> str:
    """Markdown: one row per setting, then mean ± SD over the fresh planting seeds."""
    head = "| setting | models | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, figures in results.items():
        row = figures[estimator]
        cells = [_num(f(row), ".3f" if isinstance(f(row), float) else "") if f(row) is not None else "-" for _, f in COLUMNS]
        lines.append(f"| {name} | {figures['models']} | " + " | ".join(cells) + " |")
    fresh = [results[s][estimator] for s in FRESH_SEEDS if s in results]
    if len(fresh) >= 2:
        cells = []
        for _, f in COLUMNS:
            values = [f(r) for r in fresh if f(r) is not None]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) >= 2 else "-")
        lines.append(f"| fresh seeds ({', '.join(s for s in FRESH_SEEDS if s in results)}): mean ± SD | | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default=",".join(s for s in SETTINGS if s != "dev"))
    parser.add_argument("--models", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    names = chosen(args.settings, SETTINGS, "settings")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "detectors.json"
    results = saved_results(results_path)
    for name in names:
        runs = args.out / f"{name}-runs.h5"
        seconds = ensure_trained(runs, setting_recipe(name, args.models), workers=args.workers, device="cpu",
                                 progress=False).seconds
        print(f"{name}: trained in {seconds / 60:.1f} min", flush=True)
        if not args.train_only:
            results[name] = analyse(name, runs, args.out)
            results_path.write_text(json.dumps(results, indent=2, default=float))
    order = [s for s in SETTINGS if s in results]
    results = {s: results[s] for s in order}
    text = "\n\n".join(f"### {estimator}\n\n{table(results, estimator)}" for estimator in ESTIMATORS
                       if all(estimator in r for r in results.values()))
    (args.out / "detectors.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
