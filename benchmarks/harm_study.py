"""Planted harmful source classes (issue 34): do they hurt, does `recommend` find them, does removing them pay?

Four steps, each calling the library (`recipe_with`, `build_run_data`, `train_masks`, `ensure_trained`,
`compute_influence`, `recommend_removal`); every figure is printed and written to OUT/harm-STEP.json.

check   On the DEVELOPMENT seed (planting seed 0), retrain the full planted source and the source without each
        planted class (and without all of them), R repeats (training seed = recipe's + 1 + r, the same for every
        row of a repeat, so each difference is paired); the accuracy change on the whole target test set with
        its 95% t interval. A kind is used as ground truth only if removing it gains (interval above 0).
power   On FRESH seeds (planting, subset and training seed all = s, s >= 1): one influence store with the
        shipped recipe's design plus the planting, trained in steps to each model count; at each count the class
        influences (difference of means) and `recommend_removal` (validation half, evidence gate at FDR 5%):
        where the planted classes rank, recall of the flagged classes, clean classes flagged, CPU-minutes.
loop    On the same fresh stores at the largest count: `recommend`'s chosen set retrained against the full
        source and against removing as many random classes (fresh per repeat), R repeats; the gain on the test
        half (never used by `recommend`) with its 95% interval, beside the gain `recommend` predicted.
rule    On the DEVELOPMENT store only (`power --development --seeds 0` builds it): over many validation/test splits,
        the set each variant of recommend's last step chooses (best predicted accuracy with ties to the smaller k,
        as before; ties decided by the mean-margin evidence at 0, 1 or 2 targets), each distinct set retrained
        against the full source, and each choice's gain on its own split's test half. Used to choose the tie rule;
        with --seeds, the same on fresh seeds' stores to check it.

    nice -n 5 .venv/bin/python benchmarks/harm_study.py check --out /work/runs/harm --repeats 10
    nice -n 5 .venv/bin/python benchmarks/harm_study.py power --out /work/runs/harm --seeds 1,2,3 --models 128,256,512
    nice -n 5 .venv/bin/python benchmarks/harm_study.py loop --out /work/runs/harm --seeds 1,2,3 --repeats 10
    nice -n 10 .venv/bin/python benchmarks/harm_study.py power --out /work/runs/harm --kinds conflict --seeds 0 --models 128,256,512 --development
    nice -n 10 .venv/bin/python benchmarks/harm_study.py rule --out /work/runs/harm --models 512 --splits 50 --repeats 10
    nice -n 10 .venv/bin/python benchmarks/harm_study.py rule --out /work/runs/harm --models 512 --splits 50 --repeats 10 --seeds 6,7,8
    (add --target fashion-mnist to any step for the fashion-mnist target)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dmtoolkit.analyze.recommend import (
    choose_removal,
    predicted_removal_change,
    recommend_removal,
    removal_ranking,
)
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

KINDS = ["conflict", "noise", "shuffled", "duplicate"]
DEV_SEED = 0


def study_recipe(seed: int, kinds: list[str], target: str = "mnist5k", models: int | None = None,
                 extra: dict[str, Any] | None = None) -> Recipe:
    """The shipped recipe plus harmful classes planted with `seed` (also the subset and training seed)."""
    overrides: dict[str, Any] = {"planting.seed": seed, "planting.harmful": {"kinds": kinds, **(extra or {})},
                                 "subsets.seed": seed, "training.seed": seed}
    if target != "mnist5k":
        overrides.update({"target.dataset": target, "planting.copy_labels": "by-index"})
    return recipe_with(RECIPES_DIR / "glyphs-to-mnist.yaml", overrides, origin="harm study", models=models)


def interval(values: np.ndarray) -> dict[str, float]:
    """Mean, sd, standard error and 95% t interval over repeats."""
    values = np.asarray(values, np.float64)
    n = len(values)
    mean, sd = float(values.mean()), float(values.std(ddof=1)) if n > 1 else 0.0
    half = float(interval_quantile(0.95, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "se": sd / np.sqrt(n), "low": mean - half, "high": mean + half}


def ci(x: dict[str, float]) -> str:
    return f"{x['mean']:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}]"


def retrain(recipe: Recipe, data: RunData, masks: np.ndarray, repeat: int, columns: np.ndarray | None = None,
            workers: int = 1, margins_too: bool = False) -> Any:
    """Target accuracy (on `columns`, default all) of one model per mask row, repeat `repeat`'s training seed
    (with `margins_too`, also the mean margin per row)."""
    results = train_masks(recipe, data, masks, seed=recipe.subsets.seed + 1000 + repeat, repeat=repeat + 1,
                          device="cpu", executor=lambda: make_executor("local", workers, "cpu"))
    margins = np.stack([r.margins for r in results])
    if columns is not None:
        margins = margins[:, columns]
    return ((margins > 0).mean(1), margins.mean(1)) if margins_too else (margins > 0).mean(1)


# --- check -----------------------------------------------------------------------------------------
def check(repeats: int, kinds: list[str], extra: dict[str, Any], target: str, workers: int) -> dict[str, Any]:
    recipe = study_recipe(DEV_SEED, kinds, target, extra=extra)
    data = build_run_data(recipe)
    assert data.planted is not None
    harmful = data.planted.harmful_classes
    names = data.source_class_names
    P = len(names)
    rows = np.ones((len(harmful) + 2, P), bool)  # full, without each planted class, without all of them
    for i, k in enumerate(harmful):
        rows[1 + i, k] = False
    rows[-1, harmful] = False
    started = time.perf_counter()
    acc = np.stack([retrain(recipe, data, rows, r, workers=workers) for r in range(repeats)])
    minutes = (time.perf_counter() - started) / 60
    result = {"seed": DEV_SEED, "target": target, "repeats": repeats, "overrides": extra, "full": interval(acc[:, 0]),
              "minutes": minutes, "removed": []}
    for i, k in enumerate(harmful):
        gain = interval(acc[:, 1 + i] - acc[:, 0])
        result["removed"].append({"class": names[k], "kind": data.planted.harm_kind[k], "gain": gain,
                                  "hurts": bool(gain["low"] > 0)})
    result["all_removed"] = interval(acc[:, -1] - acc[:, 0])
    result["mean_single_removal"] = interval(acc[:, 1:-1].mean(1) - acc[:, 0])  # per repeat, over planted classes
    result["accuracy"] = acc.tolist()
    print(f"check ({target}, development seed {DEV_SEED}, {repeats} repeats, {minutes:.1f} min): full planted source "
          f"{ci(result['full'])}")
    for row in result["removed"]:
        print(f"  without {row['class']:>4} ({row['kind']:>9}): gain {ci(row['gain'])} "
              f"{'HURTS' if row['hurts'] else 'not shown to hurt'}")
    print(f"  without one planted class, mean over them: gain {ci(result['mean_single_removal'])}")
    print(f"  without all planted: gain {ci(result['all_removed'])}")
    return result


# --- power -----------------------------------------------------------------------------------------
def snapshot(store: Path, count: int, scratch: Path) -> Path:
    """`store` as it was with its first `count` rows completed (a copy with the later completion flags cleared),
    so an estimate fitted then still matches the store's content hash; `store` itself when it has no more."""
    with RunStore(store) as run:
        if len(run.completed_rows()) <= count:
            return store
    shutil.copyfile(store, scratch)
    with h5py.File(scratch, "r+") as f:
        f["completed"][count:] = False
    return scratch


def store_paths(out: Path, target: str, seed: int) -> tuple[Path, Path]:
    tag = "" if target == "mnist5k" else f"-{target}"
    return out / f"power{tag}-seed{seed}-runs.h5", out / f"power{tag}-seed{seed}"


def fresh_or_development(seed: int, development: bool) -> None:
    """Seed 0 is the development seed: power and loop run on it only when asked (--development), to choose a rule."""
    if seed == DEV_SEED and not development:
        raise SystemExit("power and loop use fresh seeds; seed 0 is the development seed (pass --development to "
                         "build or read its store for choosing a rule, never for reporting)")


def power(out: Path, seeds: list[int], counts: list[int], kinds: list[str], extra: dict[str, Any], target: str,
          workers: int, development: bool = False) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        fresh_or_development(seed, development)
        recipe = study_recipe(seed, kinds, target, models=max(counts), extra=extra)
        store, prefix = store_paths(out, target, seed)
        for count in sorted(counts):
            missing = count
            if store.exists():
                with RunStore(store) as run:
                    missing = count - len(run.completed_rows())
            if missing > 0:  # (limit counts rows to add, in whole groups, first pending first)
                ensure_trained(store, recipe, workers=workers, device="cpu", limit=missing, progress=False)
            with RunStore(store) as run:
                done = run.completed_rows()
                done = done[done < count]  # (a later run re-analyses a grown store as it was at `count` models)
                cpu_minutes = float(np.nansum(run.column("seconds")[done])) / 60
                planted = run.planted()
                names = run.source_class_names
            assert planted is not None and len(done) >= count
            estimate = Path(f"{prefix}-{count}-influence.h5")
            if not estimate.exists():
                compute_influence(store, estimate, device="cpu", holdout_frac=0.0)  # (held-out rows are whole blocks)
            rec = recommend_removal(estimate, store=snapshot(store, count, out / "snapshot.h5"))
            harmful = set(planted.harmful_classes.tolist())
            flagged = {e.index for e in rec.removal_evidence if e.significant}
            q = {e.index: e.q_value for e in rec.removal_evidence}
            order = removal_ranking(load_estimate(estimate).matrix, np.array(rec.validation_columns)).tolist()
            ranks = sorted(order.index(k) + 1 for k in harmful)
            chosen = {names.index(n) for n in rec.chosen.removed}
            row = {"seed": seed, "models": len(done), "cpu_minutes": cpu_minutes,
                   "planted": {names[k]: planted.harm_kind[k] for k in sorted(harmful)},
                   "ranks": ranks, "at_bottom": sum(r <= len(harmful) for r in ranks),
                   "flagged": sorted(names[k] for k in flagged),
                   "recall": len(flagged & harmful) / len(harmful),
                   "clean_flagged": sorted(names[k] for k in flagged - harmful),
                   "planted_q": [q.get(k) for k in sorted(harmful)],
                   "clean_min_q": min((v for k, v in q.items() if k not in harmful and v is not None), default=None),
                   "chosen": sorted(rec.chosen.removed), "chosen_recall": len(chosen & harmful) / len(harmful),
                   "chosen_clean": len(chosen - harmful)}
            rows.append(row)
            print(f"{target} seed {seed}, {row['models']} models ({cpu_minutes:.1f} CPU-min): planted ranks "
                  f"{ranks}, q {['%.3g' % v for v in row['planted_q'] if v is not None]}; flagged recall {row['recall']:.2f}, "
                  f"smallest clean q {row['clean_min_q'] if row['clean_min_q'] is None else round(row['clean_min_q'], 3)}, clean flagged {row['clean_flagged'] or 'none'}; "
                  f"recommend removes {row['chosen']}", flush=True)
    summary = []
    for count in sorted(counts):
        at = [r for r in rows if r["models"] == count]
        recall = np.array([r["recall"] for r in at])
        summary.append({"models": count, "seeds": len(at),
                        "cpu_minutes": float(np.mean([r["cpu_minutes"] for r in at])),
                        "recall_mean": float(recall.mean()), "recall_min": float(recall.min()),
                        "recall_max": float(recall.max()),
                        "seeds_no_clean_flagged": sum(not r["clean_flagged"] for r in at),
                        "seeds_goal_met": sum(r["recall"] >= 0.8 and not r["clean_flagged"] for r in at),
                        "planted_in_bottom": float(np.mean([r["at_bottom"] / len(r["ranks"]) for r in at]))})
        s = summary[-1]
        print(f"{target} {count} models ({s['cpu_minutes']:.1f} CPU-min/seed): recall {s['recall_mean']:.2f} "
              f"(min {s['recall_min']:.2f}, max {s['recall_max']:.2f}); no clean class flagged in "
              f"{s['seeds_no_clean_flagged']}/{s['seeds']} seeds; goal met in {s['seeds_goal_met']}/{s['seeds']}; "
              f"planted classes in the bottom {len(kinds)}: {s['planted_in_bottom']:.2f}")
    return {"target": target, "kinds": kinds, "overrides": extra, "rows": rows, "summary": summary}


# --- loop ------------------------------------------------------------------------------------------
def loop(out: Path, seeds: list[int], count: int, repeats: int, target: str, workers: int,
         development: bool = False) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        fresh_or_development(seed, development)
        store, prefix = store_paths(out, target, seed)
        estimate = Path(f"{prefix}-{count}-influence.h5")
        if not estimate.exists():
            raise SystemExit(f"{estimate} is missing: run `power` for seed {seed} with {count} models first")
        # the store as the estimate saw it (a later `power` run may have grown it past `count`)
        rec = recommend_removal(estimate, store=snapshot(store, count, out / f"snapshot-{target}-{seed}.h5"))
        est = load_estimate(estimate)
        with RunStore(store) as run:
            recipe, data = run.recipe, run.run_data()
            names = run.source_class_names
        assert data.planted is not None
        harmful = set(data.planted.harmful_classes.tolist())
        chosen = np.array(sorted(names.index(n) for n in rec.chosen.removed), int)
        k, P = len(chosen), len(names)
        test = np.array(rec.test_columns)
        if k == 0:
            print(f"{target} seed {seed}: recommend removes nothing; no retraining")
            rows.append({"seed": seed, "k": 0})
            continue
        rng = np.random.default_rng([seed, 7])
        started = time.perf_counter()
        acc, margin = [], []
        for r in range(repeats):
            masks = np.ones((4, P), bool)
            masks[1, chosen] = False
            masks[2, rng.choice(P, k, replace=False)] = False
            masks[3, sorted(harmful)] = False  # the oracle: every planted class removed
            a, m = retrain(recipe, data, masks, r, columns=test, workers=workers, margins_too=True)
            acc.append(a)
            margin.append(m)
        acc, margin = np.array(acc), np.array(margin)
        predicted = predicted_removal_change(est.matrix, est.intercept, chosen, test)
        oracle = predicted_removal_change(est.matrix, est.intercept, np.array(sorted(harmful)), test)
        row = {"seed": seed, "k": k, "removed": sorted(rec.chosen.removed),
               "planted_in_chosen": len(set(chosen.tolist()) & harmful), "planted": len(harmful),
               "full": interval(acc[:, 0]), "gain": interval(acc[:, 1] - acc[:, 0]),
               "random_gain": interval(acc[:, 2] - acc[:, 0]), "vs_random": interval(acc[:, 1] - acc[:, 2]),
               "oracle_gain": interval(acc[:, 3] - acc[:, 0]),
               "predicted_validation_gain": rec.chosen.predicted_accuracy_change,
               "predicted_test_gain": predicted[1] - predicted[2],
               "predicted_margin_change": predicted[0], "margin_change": interval(margin[:, 1] - margin[:, 0]),
               "oracle_margin_change": interval(margin[:, 3] - margin[:, 0]),
               "predicted_oracle_margin_change": oracle[0],
               "predicted_oracle_gain": float(oracle[1] - oracle[2]),
               "minutes": (time.perf_counter() - started) / 60}
        row["gain_over_2se"] = bool(row["gain"]["mean"] > 2 * row["gain"]["se"])
        rows.append(row)
        print(f"{target} seed {seed}: recommend removes {k} ({row['planted_in_chosen']}/{len(harmful)} planted); "
              f"predicted test gain {row['predicted_test_gain']:+.4f}; retrained gain {ci(row['gain'])} "
              f"({'>' if row['gain_over_2se'] else '<='} 2 SE); mean margin predicted {row['predicted_margin_change']:+.4f}, "
              f"retrained {ci(row['margin_change'])}; random {k}: {ci(row['random_gain'])}; "
              f"all planted removed: predicted {row['predicted_oracle_gain']:+.4f}, retrained {ci(row['oracle_gain'])} "
              f"(mean margin predicted {row['predicted_oracle_margin_change']:+.4f}, retrained "
              f"{ci(row['oracle_margin_change'])})", flush=True)
    return {"target": target, "models": count, "repeats": repeats, "rows": rows}


# --- rule (development seed only) ------------------------------------------------------------------
def rule(out: Path, count: int, repeats: int, splits: int, target: str, workers: int,
         seed: int = DEV_SEED) -> dict[str, Any]:
    """Choose the zero-tie rule on the DEVELOPMENT store (seed 0, `power --development`), then check it on fresh
    seeds' stores: for `splits` validation/test splits (recommend's split seed 0…splits−1) the set each rule
    variant chooses, every distinct set retrained against the full source `repeats` times, and each choice's gain
    on its own split's test half."""
    store, prefix = store_paths(out, target, seed)
    estimate = Path(f"{prefix}-{count}-influence.h5")
    if not estimate.exists():
        raise SystemExit(f"{estimate} is missing: run `power --seeds {seed} --models {count}` first")
    snap = snapshot(store, count, out / f"snapshot-{target}-rule-{seed}.h5")
    with RunStore(store) as run:
        recipe, data = run.recipe, run.run_data()
        names = run.source_class_names
    assert data.planted is not None
    harmful = set(data.planted.harmful_classes.tolist())
    variants = {"accuracy, ties to smaller k (before)": None, "ties at 0 targets to the margin (shipped)": 0,
                "ties within 1 target to the margin": 1, "ties within 2 targets to the margin": 2}
    choices: dict[str, list[tuple[str, ...]]] = {v: [] for v in variants}
    splits_used = []
    for split in range(splits):
        rec = recommend_removal(estimate, store=snap, split_seed=split)
        splits_used.append((np.array(rec.validation_columns), np.array(rec.test_columns)))
        for name, tie in variants.items():
            if tie is None:
                eligible = [c for c in rec.candidates if c.evidence is not False]
                chosen = max(eligible, key=lambda c: (c.predicted_accuracy, -c.k))
            else:
                chosen, _ = choose_removal(rec.candidates, validation_targets=len(rec.validation_columns),
                                           full_accuracy=rec.full_predicted_accuracy, harmful=rec.harmful,
                                           fdr=rec.fdr, tie_targets=tie)
            choices[name].append(tuple(sorted(chosen.removed)))
    sets = sorted({c for v in choices.values() for c in v if c}, key=lambda c: (len(c), c))
    P = len(names)
    masks = np.ones((1 + len(sets), P), bool)
    for i, removed in enumerate(sets):
        masks[1 + i, [names.index(n) for n in removed]] = False
    started = time.perf_counter()
    correct = []  # (repeats, rows, targets): target predicted correctly
    for r in range(repeats):
        results = train_masks(recipe, data, masks, seed=recipe.subsets.seed + 1000 + r, repeat=r + 1, device="cpu",
                              executor=lambda: make_executor("local", workers, "cpu"))
        correct.append(np.stack([res.margins for res in results]) > 0)
    correct = np.array(correct)
    result: dict[str, Any] = {"seed": seed, "target": target, "models": count, "repeats": repeats,
                              "splits": splits, "planted": sorted(names[k] for k in harmful),
                              "sets": [list(c) for c in sets], "minutes": (time.perf_counter() - started) / 60,
                              "variants": {}}
    whole = {c: interval(correct[:, 1 + i].mean(1) - correct[:, 0].mean(1)) for i, c in enumerate(sets)}
    result["set_gain_all_targets"] = {", ".join(c): whole[c] for c in sets}
    print(f"{target} {'development ' if seed == DEV_SEED else 'fresh '}seed {seed}, {count} models, {splits} splits, "
          f"{repeats} repeats "
          f"({result['minutes']:.1f} min retraining); planted {result['planted']}")
    for c in sets:
        print(f"  without {', '.join(c)}: gain on all targets {ci(whole[c])}")
    for name in variants:
        gains = []
        for (_, test), chosen in zip(splits_used, choices[name]):
            if not chosen:
                gains.append(0.0)
                continue
            i = 1 + sets.index(chosen)
            gains.append(float((correct[:, i][:, test].mean(1) - correct[:, 0][:, test].mean(1)).mean()))
        kinds = {", ".join(c) or "nothing": choices[name].count(c) for c in set(choices[name])}
        planted_recall = float(np.mean([len({names.index(n) for n in c} & harmful) / len(harmful)
                                        for c in choices[name]]))
        result["variants"][name] = {"choices": kinds, "mean_test_gain": float(np.mean(gains)),
                                    "planted_recall": planted_recall,
                                    "clean_removed": float(np.mean([len({names.index(n) for n in c} - harmful)
                                                                    for c in choices[name]]))}
        v = result["variants"][name]
        print(f"  {name}: mean test-half gain over splits {v['mean_test_gain']:+.4f}; planted removed "
              f"{planted_recall:.2f}; clean removed per split {v['clean_removed']:.2f}; choices {kinds}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("check", "power", "loop", "rule"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seeds", default=None, help="power/loop: default 1,2,3; rule: default the development seed 0")
    parser.add_argument("--models", default="128,256,512", help="power: model counts; loop: the largest is used")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--images", type=int, default=None, help="planting.harmful.images (conflict strength)")
    parser.add_argument("--noise-sd", type=float, default=None, help="planting.harmful.noise_sd")
    parser.add_argument("--conflict-classes", type=int, default=None, help="planting.harmful.conflict_classes")
    parser.add_argument("--target", default="mnist5k")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--splits", type=int, default=50, help="rule: validation/test splits (split seeds 0…N−1)")
    parser.add_argument("--development", action="store_true",
                        help="power/loop: allow the development seed 0 (for choosing a rule; results go to "
                             "harm-STEP-development.json, never into the fresh-seed tables)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.kinds.split(",") if k]
    extra = {key: value for key, value in (("images", args.images), ("noise_sd", args.noise_sd),
                                           ("conflict_classes", args.conflict_classes)) if value is not None}
    seeds = [int(s) for s in (args.seeds or "1,2,3").split(",") if s]
    counts = [int(c) for c in args.models.split(",") if c]
    if args.step == "check":
        result = check(args.repeats, kinds, extra, args.target, args.workers)
    elif args.step == "power":
        result = power(args.out, seeds, counts, kinds, extra, args.target, args.workers, args.development)
    elif args.step == "rule":  # (seed 0 chose the rule; fresh seeds check it, one result per seed)
        result = [rule(args.out, max(counts), args.repeats, args.splits, args.target, args.workers, seed)
                  for seed in (seeds if args.seeds else [DEV_SEED])]
    else:
        result = loop(args.out, seeds, max(counts), args.repeats, args.target, args.workers, args.development)
    tag = ("" if args.target == "mnist5k" else f"-{args.target}") + ("-development" if args.development else "")
    path = args.out / f"harm-{args.step}{tag}.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    new = result if isinstance(result, list) else [result]
    path.write_text(json.dumps((previous if isinstance(previous, list) else [previous]) + new, indent=2))


if __name__ == "__main__":
    main()
