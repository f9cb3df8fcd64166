"""Reliability of class influence per CPU-minute, for each training/transfer lever, measured in one run.

For every lever (a set of recipe overrides on the default class-level recipe) the study trains a store
(resuming one that exists), then prints and saves: split-half Spearman of per-class mean influence at
1/4, 1/2 and all of the models (two disjoint halves of whole draws from a seeded split; mean and
SD over 10 split seeds, and the seed-0 split alone), how many digits have their own glyph class in their
top 5 source classes, class-influence LDS on held-out models, target accuracy, CPU-minutes, and the
number of models that split-half 0.8 would need (Spearman-Brown from the measured value). `--seed-check
LEVER` retrains that lever with another shared training seed and reports how far its ranking moves.

Every statistic is built from the library's parts (`dmtoolkit.analyze.reliability`, `dmtoolkit.stats`): halves and
held-out models are whole draws (an antithetic pair or an orthogonal block stays on one side), digit
ranks follow `rank_classes`' order (`dmtoolkit.stats.ranking`), and stores are created or resumed and trained by
`ensure_trained`. The split-half at a given size, class LDS on arrays and digit ranks only this study reports
are defined here (tests/test_signal_study.py checks them against NumPy and scipy references).

    .venv/bin/python benchmarks/signal_study.py --models 256 --out runs/signal \\
        --levers default,logits-antithetic,ridge-logits-antithetic [--seed-check ridge-logits-antithetic]
    .venv/bin/python benchmarks/signal_study.py --analyse runs/signal/*.h5     # no training
    .venv/bin/python benchmarks/signal_study.py --merge runs/*/signal.json --out runs/all   # no computing

Writes OUT/signal.json, OUT/signal-table.md (the ablation table) and OUT/signal.png (split-half against
models and against CPU-minutes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from studies import chosen  # benchmarks/ is on sys.path when this script runs

from dmtoolkit.analyze import detect_leakage, detect_mislabels
from dmtoolkit.analyze.reliability import (
    DEFAULT_ESTIMATOR,
    SplitHalfReliability,
    class_influence,
    draw_ids,
)
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.datamodels import fit_datamodels
from dmtoolkit.estimate.influence import UndefinedInfluenceWarning, compute_influence, influence_from_arrays
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.recipe import Recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.stats.correlation import TARGET_RELIABILITY, spearman
from dmtoolkit.stats.lds import lds_per_target
from dmtoolkit.stats.ranking import nanmean_rows, rank_positions
from dmtoolkit.stats.splits import holdout_split, split_halves
from dmtoolkit.store import RunStore, create_store
from dmtoolkit.train.baselines import transfer_baselines
from dmtoolkit.train.job import RunContext

RECIPES = Path(__file__).resolve().parent.parent / "dmtoolkit" / "recipes"
CLASS_RECIPE, EXAMPLE_RECIPE = "glyphs-to-mnist.yaml", "glyphs-to-mnist-examples.yaml"
FRACTIONS = (0.25, 0.5, 1.0)
SPLIT_SEEDS = 10
HOLDOUT_FRAC = 0.1  # models (whole draws) held out for class LDS

# The levers were measured from the session-1 default (135 glyph classes, 100 per class, 2 epochs, logistic
# head, random masks); ORIGINAL restores it on top of today's default recipe so each row is reproducible.
ORIGINAL: dict[str, Any] = {"source.classes": None, "source.max_per_class": 100, "training.epochs": 2,
                            "subsets.antithetic": False, "transfer.head": "logistic", "transfer.ridge": 1.0,
                            "subsets.design": "random", "training.randomness": "shared"}
RIDGE: dict[str, Any] = {"transfer.head": "ridge", "subsets.antithetic": True}
DIGITS_AND_CAPITALS = [*"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
# The session-1 example-level recipe (135 classes, 8 epochs of batch 128, logistic head, random masks).
EXAMPLE_ORIGINAL: dict[str, Any] = {"source.classes": None, "training.epochs": 8, "training.batch_size": 128,
                                    "transfer.head": "logistic", "subsets.antithetic": False}

LEVERS: dict[str, dict[str, Any]] = {
    "naive": {"training.randomness": "per-model", "transfer.feature_layer": "conv"},
    "per-model-seeds": {"training.randomness": "per-model"},
    "session-1-default": {},
    "default": {"current": True},
    # the default recipe as it was until 2026-12-04 (random masks), which docs/signal.md's class table measured
    "random-design": {"current": True, "subsets.design": "random", "training.randomness": "shared"},
    "conv-features": {"transfer.feature_layer": "conv"},
    "slots-no-norm": {"training.order": "slots", "model.norm": "none"},
    "logits": {"transfer.feature_layer": "logits"},
    "antithetic": {"subsets.antithetic": True},
    "logits-antithetic": {"transfer.feature_layer": "logits", "subsets.antithetic": True},
    "ridge-antithetic": {"transfer.head": "ridge", "subsets.antithetic": True},
    "ridge-logits-antithetic": {"transfer.head": "ridge", "transfer.feature_layer": "logits",
                                "subsets.antithetic": True},
    "ridge-low-lr": {**RIDGE, "training.lr": 0.02},
    "ridge-1-epoch": {**RIDGE, "training.epochs": 1},
    "ridge-big-target-train": {**RIDGE, "target.train_size": 2000},
    "ridge-small-target-train": {**RIDGE, "target.train_size": 100},
    "ridge-36-classes": {**RIDGE, "source.classes": DIGITS_AND_CAPITALS, "training.epochs": 6},
    "ridge-memorise": {**RIDGE, "training.epochs": 8},
    "ridge-narrow": {**RIDGE, "model.hidden": 16},
    "ridge-light-penalty": {**RIDGE, "transfer.ridge": 0.01},
    "ridge-alpha-0.2": {"transfer.head": "ridge", "subsets.alpha": 0.2},
    "ridge-no-antithetic": {"transfer.head": "ridge"},
    "ridge-half-epoch": {**RIDGE, "training.epochs": 0.5},
    "ridge-1-epoch-alpha-0.2": {"transfer.head": "ridge", "training.epochs": 1, "subsets.alpha": 0.2},
    "ridge-orthogonal-1-epoch": {**RIDGE, "training.epochs": 1, "subsets.design": "orthogonal"},
    "ridge-orthogonal": {**RIDGE, "subsets.design": "orthogonal"},
    "ridge-36-classes-orthogonal": {**RIDGE, "source.classes": DIGITS_AND_CAPITALS, "training.epochs": 6,
                                    "subsets.design": "orthogonal"},
    "ridge-36-classes-200-per-class": {**RIDGE, "source.classes": DIGITS_AND_CAPITALS, "training.epochs": 3,
                                       "source.max_per_class": 200},
    "ridge-36-classes-200-per-class-penalty-0.1": {**RIDGE, "source.classes": DIGITS_AND_CAPITALS,
                                                   "training.epochs": 3, "source.max_per_class": 200,
                                                   "transfer.ridge": 0.1},
    "examples-logistic": {"recipe": EXAMPLE_RECIPE, **EXAMPLE_ORIGINAL},
    "examples-ridge-antithetic": {"recipe": EXAMPLE_RECIPE, **EXAMPLE_ORIGINAL, **RIDGE},
    "examples-ridge-36-classes": {"recipe": EXAMPLE_RECIPE, **EXAMPLE_ORIGINAL, **RIDGE,
                                  "source.classes": DIGITS_AND_CAPITALS},
    "examples-default": {"recipe": EXAMPLE_RECIPE},   # 36 classes, ridge, antithetic, trained to memorise
}


def lever_recipe(overrides: dict[str, Any], models: int, training_seed: int = 0) -> Recipe:
    """The lever's base recipe (`recipe` key; default class-level otherwise) with its dotted-key overrides,
    then `models` and the shared training seed (validated like any recipe)."""
    overrides = dict(overrides)
    base = overrides.pop("recipe", CLASS_RECIPE)
    if base == CLASS_RECIPE and not overrides.pop("current", False):
        overrides = {**ORIGINAL, **overrides}
    return recipe_with(RECIPES / base, overrides, origin="signal study lever", models=models,
                       training_seed=training_seed)


# Statistics only this study reports, built from the library's parts: halves of whole draws
# (`split_halves`, `holdout_split`), its estimators (`class_influence`, `influence_from_arrays`), Spearman
# and LDS (`dmtoolkit.stats`), and `rank_classes`' order (`dmtoolkit.stats.ranking`).
MIN_HELDOUT = 3  # as `dmtoolkit evaluate`: a Spearman over fewer held-out models says nothing


# split-half at a given size (this study only) -----------------------------------------------------------
@dataclass(frozen=True)
class SplitHalf:
    """One split: Spearman of per-unit mean influence between the halves (None when undefined) and the
    positions of the rows in each half."""

    correlation: float | None
    first: np.ndarray
    second: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"correlation": self.correlation, "first": self.first.tolist(), "second": self.second.tolist()}


def split_half(masks: np.ndarray, margins: np.ndarray, draws: Sequence[int] | np.ndarray, *,
               count: int | None = None, seed: int = 0, estimator: str = DEFAULT_ESTIMATOR) -> SplitHalf:
    """Split-half correlation of per-unit mean influence: `split_halves(draws, count, seed)`, the
    library's estimator on each half, Spearman (average ranks) of the two per-unit means."""
    first, second = split_halves(draws, count=count, seed=seed)
    if len(first) < 2 or len(second) < 2:
        return SplitHalf(None, first, second)
    a = class_influence(masks[first], margins[first], estimator=estimator)
    b = class_influence(masks[second], margins[second], estimator=estimator)
    correlation = None if a is None or b is None else spearman(nanmean_rows(a), nanmean_rows(b))
    return SplitHalf(correlation, first, second)


def split_half_reliability(masks: np.ndarray, margins: np.ndarray, draws: Sequence[int] | np.ndarray, *,
                           count: int | None = None, seeds: Sequence[int] = range(10),
                           estimator: str = DEFAULT_ESTIMATOR) -> SplitHalfReliability:
    """`split_half` for each of `seeds` at `count` rows (default: all)."""
    splits = [split_half(masks, margins, draws, count=count, seed=s, estimator=estimator) for s in seeds]
    half = float(np.mean([(len(s.first) + len(s.second)) / 2 for s in splits])) if splits else 0.0
    return SplitHalfReliability(count=len(masks) if count is None else count, seeds=tuple(seeds),
                                values=tuple(s.correlation for s in splits), half_models=half)


# LDS on arrays --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutLDS:
    """LDS of class influence used as a linear predictor, fitted on `fit` rows and scored on `held` rows:
    the mean over targets with a defined score (None when nothing could be scored) and each target's score."""

    mean: float | None
    per_target: np.ndarray
    fit: np.ndarray
    held: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "per_target": [float(v) if np.isfinite(v) else None for v in self.per_target],
                "fit": self.fit.tolist(), "held": self.held.tolist()}


def lds_from_arrays(masks: np.ndarray, margins: np.ndarray, *, draws: Sequence[int] | np.ndarray | None = None,
                    holdout_frac: float = 0.1, seed: int = 0, estimator: str = DEFAULT_ESTIMATOR) -> HeldOutLDS:
    """Hold out whole draws (`holdout_split`; default: every row its own draw), fit the library's
    `estimator` on the rest and score its linear prediction with `lds_per_target`. Needs MIN_HELDOUT held rows."""
    draws = np.arange(len(masks)) if draws is None else np.asarray(draws)
    fit, held = holdout_split(draws, holdout_frac, seed)
    empty = np.full(margins.shape[1], np.nan)
    if len(held) < MIN_HELDOUT or len(fit) < 2:
        return HeldOutLDS(None, empty, fit, held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedInfluenceWarning)
        try:
            fitted = influence_from_arrays(masks[fit], margins[fit], device="cpu", errors=False, estimator=estimator)
        except UserError:
            return HeldOutLDS(None, empty, fit, held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = lds_per_target(fitted.predict(masks[held]), margins[held])
    finite = scores[np.isfinite(scores)]
    return HeldOutLDS(float(finite.mean()) if len(finite) else None, scores, fit, held)


# digit ranks ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitRanks:
    """For each target class, the position (1 = most positive) of the source class of the same name among
    all source classes, by mean influence over that class's target examples; None when there is no such
    source class, no such target example, or its influence is undefined."""

    target_classes: tuple[str, ...]
    ranks: tuple[int | None, ...]

    def in_top(self, k: int) -> int:
        """How many target classes have their own source class among the top `k`."""
        return sum(1 for r in self.ranks if r is not None and r <= k)

    def to_json(self) -> dict[str, Any]:
        return dict(zip(self.target_classes, self.ranks))


def digit_ranks(influence: np.ndarray, source_names: Sequence[str], target_names: Sequence[str],
                target_labels: np.ndarray) -> DigitRanks:
    """`DigitRanks` of an influence matrix (P source classes, T target examples with `target_labels`
    indexing `target_names`); the same positions `class_positions(path, [name], target_class=name)` gives."""
    source_names, labels = list(source_names), np.asarray(target_labels)
    ranks: list[int | None] = []
    for label, name in enumerate(target_names):
        columns = np.flatnonzero(labels == label)
        if name not in source_names or len(columns) == 0:
            ranks.append(None)
            continue
        ranks.append(rank_positions(nanmean_rows(influence, columns))[source_names.index(name)])
    return DigitRanks(tuple(target_names), tuple(ranks))


ESTIMATORS = ("difference-of-means", "regression")


def estimator_reliability(masks: np.ndarray, margins: np.ndarray, draws: np.ndarray, seconds: np.ndarray,
                          estimator: str, names: tuple[list[str], list[str], np.ndarray]) -> dict[str, Any]:
    """Split-half at 1/4, 1/2 and all models, models needed for 0.8, digit ranks and LDS for one estimator."""
    m, figures = len(masks), {}
    split_halves = {}
    for frac in FRACTIONS:
        count = int(m * frac)
        halves = split_half_reliability(masks, margins, draws, count=count, seeds=range(SPLIT_SEEDS),
                                        estimator=estimator)
        split_halves[frac] = halves
        seed0 = halves.values[0]
        figures[f"split_half@{count}"] = None if halves.mean is None else {
            "seed0": None if seed0 is None else round(seed0, 3), "mean": round(halves.mean, 3),
            "sd": round(halves.sd, 3), "cpu_minutes": round(float(seconds.sum()) * frac / 60, 1)}
    needed = split_halves[1.0].models_for(TARGET_RELIABILITY)
    figures["models_for_0.8"] = None if needed is None else int(round(needed))
    influence = class_influence(masks, margins, estimator=estimator)
    ranks = None if influence is None else digit_ranks(influence, *names)
    figures["digit_ranks"] = [] if ranks is None else list(ranks.ranks)
    figures["digits_in_top5"] = 0 if ranks is None else ranks.in_top(5)
    lds = lds_from_arrays(masks, margins, draws=draws, holdout_frac=HOLDOUT_FRAC, estimator=estimator).mean
    figures["class_lds"] = None if lds is None else round(lds, 3)
    figures["mean_class_influence"] = None if influence is None else nanmean_rows(influence).round(6).tolist()
    return figures


def example_reliability(path: Path) -> dict[str, Any]:
    """Example-level figures: planted-leak precision@L (L = planted leaks) and flipped-label AUC from both
    estimators, and datamodel LDS on held-out models. Detection never reads the planted truth; scoring does."""
    figures: dict[str, Any] = {}
    with RunStore(path) as store:
        planted = store.planted()
        leaks = 0 if planted is None else int((planted.leak_target >= 0).sum())
    with tempfile.TemporaryDirectory() as tmp:
        influence, datamodels = Path(tmp) / "influence.h5", Path(tmp) / "datamodels.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_influence(path, influence, device="cpu", holdout_frac=0.1)
            fit_datamodels(path, datamodels, device="cpu", n_lambdas=50, val_frac=0.1)
        figures["datamodel_lds"] = round(float(evaluate(path, datamodels).lds_mean), 3)
        figures["influence_lds"] = round(float(evaluate(path, influence).lds_mean), 3)
        for name, estimate in (("influence", influence), ("datamodels", datamodels)):
            if leaks:
                planted = detect_leakage(estimate, top=leaks).planted
                figures[f"{name}_leak_precision"] = round(planted.precision_at_k, 3)
                figures[f"{name}_decoys_flagged"] = planted.decoys_flagged
                raw = detect_leakage(estimate, top=leaks, ranking="influence", all_pairs=True).planted
                figures[f"{name}_leak_precision_raw_pairs"] = round(raw.precision_at_k, 3)
            for by in ("worst", "mean"):
                flips = detect_mislabels(estimate, by=by).planted
                if flips is not None and flips.auc is not None:
                    figures[f"{name}_flip_auc{'' if by == 'worst' else '_mean'}"] = round(flips.auc, 3)
    return figures


def analyse(path: Path) -> dict[str, Any]:
    """Every reliability figure of one store (completed rows only)."""
    with RunStore(path) as store:
        if store.kind == "example":
            return analyse_examples(path)
        rows = store.completed_rows()
        masks, margins = store.read_rows(rows)
        masks, margins = masks.astype(np.float32), margins.astype(np.float32)
        draws = draw_ids(store, store.num_models)[rows]
        names = (store.source_class_names, store.target_class_names, store.target_labels)
        seconds, accuracy = store.column("seconds")[rows], store.column("target_accuracy")[rows]
    m = len(rows)
    result: dict[str, Any] = {"store": str(path), "models": m, "cpu_minutes": round(float(seconds.sum()) / 60, 1),
                              "target_accuracy": round(float(accuracy.mean()), 4)}
    baselines = transfer_baselines(RunContext.from_store(path, "cpu"))
    result["baseline_accuracy"] = {name: round(value, 4) for name, value in baselines.items()}
    for estimator in ESTIMATORS:
        result[estimator] = estimator_reliability(masks, margins, draws, seconds, estimator, names)
    return result


def store_prefix(path: Path, count: int, out: Path) -> Path:
    """A new store holding the first `count` completed models of `path`, at the same rows: the store its recipe
    would have given with fewer models (masks are a function of the seed and the row). Made through the store
    API (`create_store`, `write_row`); the original is only read."""
    with RunStore(path) as full:
        rows = full.completed_rows()[:count]
        recipe = full.recipe
        size = max(int(rows[-1]) + 1 if len(rows) else 0, 2)
        size += size % 2 if recipe.subsets.antithetic else 0
        create_store(out, recipe.with_overrides(models=size), full.run_data(), force=True)
        masks, margins = full.read_rows(rows)
        predictions = full.predictions[rows] if len(rows) else np.zeros((0, full.num_targets), np.int16)
        seeds, source_acc, target_acc, seconds = (full.column(name)[rows] for name in
                                                  ("seed", "source_accuracy", "target_accuracy", "seconds"))
    with RunStore(out, writable=True) as part:
        if not np.array_equal(part.read_rows(rows)[0], masks):
            raise UserError(f"{path}: its masks are not the ones its recipe draws, so no smaller store can match it")
        for i, row in enumerate(rows):
            part.write_row(int(row), margins[i], seed=int(seeds[i]), source_accuracy=float(source_acc[i]),
                           target_accuracy=float(target_acc[i]), seconds=float(seconds[i]),
                           predictions=predictions[i])
    return out


def analyse_examples(path: Path) -> dict[str, Any]:
    """Figures of an example-level store at 1/4, 1/2 and all of its models: size, cost, accuracy and the
    detection/LDS figures."""
    with RunStore(path) as store:
        rows = store.completed_rows()
        seconds, accuracy = store.column("seconds")[rows], store.column("target_accuracy")[rows]
    result: dict[str, Any] = {"store": str(path), "level": "example", "models": len(rows),
                              "cpu_minutes": round(float(seconds.sum()) / 60, 1),
                              "target_accuracy": round(float(accuracy.mean()), 4)}
    with tempfile.TemporaryDirectory() as tmp:
        for frac in FRACTIONS[:-1]:
            count = int(len(rows) * frac)
            prefix = store_prefix(path, count, Path(tmp) / f"prefix-{count}.h5")
            result[f"at@{count}"] = {"cpu_minutes": round(float(seconds[:count].sum()) / 60, 1),
                                     **example_reliability(prefix)}
    return {**result, **example_reliability(path)}


def ranking_agreement(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Spearman between two stores' per-class mean influences (e.g. two shared training seeds)."""
    x = np.asarray(a["difference-of-means"]["mean_class_influence"], dtype=float)
    y = np.asarray(b["difference-of-means"]["mean_class_influence"], dtype=float)
    return spearman(x, y)


def _halves(figures: dict[str, Any]) -> list[tuple[int, dict[str, Any] | None]]:
    return [(int(k.split("@")[1]), v) for k, v in figures.items() if k.startswith("split_half@")]


def _fmt(value: Any, spec: str = "+.2f") -> str:
    return "—" if value is None else format(value, spec)


def print_row(name: str, r: dict[str, Any]) -> None:
    if r.get("level") == "example":
        for models, figures in _example_sizes(r):
            shown = "  ".join(f"{k} {v}" for k, v in figures.items() if k not in ("store", "level", "overrides", "models"))
            print(f"{name:28s} models {models:5d}  {shown}", flush=True)
        return
    base = r["baseline_accuracy"]
    print(f"{name:28s} models {r['models']:5d}  cpu-min {r['cpu_minutes']:6.1f}  acc {r['target_accuracy']:.3f} "
          f"(raw {base['raw pixels']:.3f}, untrained {base['untrained network']:.3f})", flush=True)
    for estimator in ESTIMATORS:
        e = r[estimator]
        halves = "  ".join(f"{c}: {_fmt(v and v['mean'])}±{_fmt(v and v['sd'], '.2f')}" for c, v in _halves(e))
        print(f"    {estimator:20s} split-half {halves}  need≈{e['models_for_0.8']}  "
              f"digits top5 {e['digits_in_top5']}/10  LDS {_fmt(e['class_lds'], '+.3f')}", flush=True)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The ablation table docs/signal.md shows, one row per lever and estimator."""
    lines = ["| lever | estimator | models | CPU-min | target acc (raw / untrained) | split-half ¼ · ½ · all "
             "| models for 0.8 | digits in top 5 | class LDS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r.get("level") == "example":
            continue
        base = r["baseline_accuracy"]
        for estimator in ESTIMATORS:
            e = r[estimator]
            halves = " · ".join(_fmt(v and v["mean"]) for _, v in _halves(e))
            lines.append(f"| {name} | {estimator} | {r['models']} | {r['cpu_minutes']} | {r['target_accuracy']:.3f} "
                         f"({base['raw pixels']:.3f} / {base['untrained network']:.3f}) | {halves} | "
                         f"{e['models_for_0.8'] or '—'} | {e['digits_in_top5']}/10 | {_fmt(e['class_lds'], '+.3f')} |")
    return "\n".join(lines) + "\n"


def example_table(results: dict[str, dict[str, Any]]) -> str:
    """Example-level figures, one row per lever."""
    keys = ["models", "cpu_minutes", "target_accuracy", "influence_leak_precision", "datamodels_leak_precision",
            "influence_leak_precision_raw_pairs", "influence_flip_auc", "datamodels_flip_auc", "influence_flip_auc_mean",
            "influence_lds", "datamodel_lds"]
    lines = ["| lever | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, r in results.items():
        if r.get("level") == "example":
            for models, figures in _example_sizes(r):
                lines.append(f"| {name} | {models} | " + " | ".join(str(figures.get(k, "—")) for k in keys[1:]) + " |")
    return "\n".join(lines) + "\n"


def _example_sizes(r: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(models, figures) at each analysed size of an example-level result, smallest first."""
    sizes = [(int(k.split("@")[1]), v) for k, v in r.items() if k.startswith("at@")]
    return [*sizes, (r["models"], {k: v for k, v in r.items() if not k.startswith("at@")})]


EXAMPLE_CURVES = (("influence_leak_precision", "leak precision@L (influence)"),
                  ("datamodels_flip_auc", "flipped-label AUC (datamodels)"),
                  ("datamodel_lds", "datamodel LDS"))
EXAMPLE_GOALS = {"influence_leak_precision": 0.8, "datamodels_flip_auc": 0.75, "datamodel_lds": 0.3}


def plot(results: dict[str, dict[str, Any]], png: Path) -> None:
    """Class level: split-half against models and CPU-minutes; example level (if any): detection and LDS
    against models. Dotted lines are the goals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = {name: r for name, r in results.items() if r.get("level") == "example"}
    fig, axes = plt.subplots(1, 3 if examples else 2, figsize=(18 if examples else 12, 4.5))
    by_models, by_minutes = axes[0], axes[1]
    for index, (name, r) in enumerate(r for r in results.items() if r[1].get("level") != "example"):
        colour = f"C{index % 10}"
        for estimator, style in zip(ESTIMATORS, ("-", "--")):
            points = [(c, v) for c, v in _halves(r[estimator]) if v is not None]
            if not points:
                continue
            label = name if estimator == ESTIMATORS[0] else None
            by_models.errorbar([c for c, _ in points], [v["mean"] for _, v in points],
                               yerr=[v["sd"] for _, v in points], marker="o", capsize=3, ls=style, color=colour,
                               label=label)
            by_minutes.plot([v["cpu_minutes"] for _, v in points], [v["mean"] for _, v in points], marker="o",
                            ls=style, color=colour)
    for ax, label in ((by_models, "models"), (by_minutes, "CPU-minutes of training")):
        ax.axhline(TARGET_RELIABILITY, color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("split-half Spearman, per-class mean influence")
        ax.set_ylim(-0.4, 1.0)
    by_models.set_title("class level — solid: difference of means, dashed: regression", fontsize=9)
    if by_models.get_legend_handles_labels()[0]:
        by_models.legend(fontsize=7)
    if examples:
        ax = axes[2]
        for index, (name, r) in enumerate(examples.items()):
            sizes = _example_sizes(r)
            for (key, label), marker in zip(EXAMPLE_CURVES, "osd"):
                colour = f"C{list(EXAMPLE_GOALS).index(key)}"
                ax.plot([m for m, _ in sizes], [f.get(key) for _, f in sizes], marker=marker, color=colour,
                        alpha=1.0 if index == len(examples) - 1 else 0.4,
                        label=f"{label}: {name}")
                ax.axhline(EXAMPLE_GOALS[key], color=colour, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("models")
        ax.set_ylim(0, 1.0)
        ax.set_title("example level (dotted: goals)", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def merge(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Results of earlier runs (their signal.json files), one dict; later files win on equal names."""
    results: dict[str, dict[str, Any]] = {}
    for path in paths:
        for name, r in json.loads(path.read_text()).items():
            label = f"{name}-{r['models']}"
            results[label] = r
            print_row(label, r)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", default="default,logits-antithetic,ridge-logits-antithetic",
                        help=f"comma-separated, from: {', '.join(LEVERS)}")
    parser.add_argument("--models", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/signal"))
    parser.add_argument("--seed-check", default=None, help="lever to retrain with shared training seed 1")
    parser.add_argument("--analyse", nargs="*", type=Path, default=None, help="only analyse these stores")
    parser.add_argument("--merge", nargs="*", type=Path, default=None,
                        help="only combine earlier runs' signal.json files into one table and plot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    if args.merge is not None:
        results = merge(args.merge)
    elif args.analyse is not None:
        for path in args.analyse:
            results[path.stem] = analyse(path)
            print_row(path.stem, results[path.stem])
    else:
        names = chosen(args.levers, LEVERS, "levers")
        jobs = [(n, 0) for n in names] + ([(args.seed_check, 1)] if args.seed_check else [])
        for name, seed in jobs:
            label = name if seed == 0 else f"{name}@seed{seed}"
            path = args.out / f"{label}-{args.models}.h5"
            wall = ensure_trained(path, lever_recipe(LEVERS[name], args.models, seed), workers=args.workers,
                                  device="cpu", progress=False).seconds
            results[label] = {**analyse(path), "overrides": LEVERS[name], "train_wall_s_now": round(wall, 1)}
            print_row(label, results[label])
        if args.seed_check:
            moved = ranking_agreement(results[args.seed_check], results[f"{args.seed_check}@seed1"])
            print(f"ranking agreement between shared training seeds 0 and 1 ({args.seed_check}): "
                  f"Spearman {_fmt(moved, '+.3f')}")
            results[f"{args.seed_check}@seed1"]["agreement_with_seed0"] = None if moved is None else round(moved, 3)
    (args.out / "signal.json").write_text(json.dumps(results, indent=1))
    (args.out / "signal-table.md").write_text(markdown_table(results) + "\n" + example_table(results))
    plot(results, args.out / "signal.png")
    print(f"wrote {args.out / 'signal.json'}, {args.out / 'signal-table.md'} and {args.out / 'signal.png'}")


if __name__ == "__main__":
    main()
