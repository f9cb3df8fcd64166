"""Mistake debugging at scale: does removing a misclassified target's most negative class make it correct?

Uses the influence store and estimate of the removal study's default setting (run that first:
`benchmarks/removal_study.py --out OUT --settings default`). For each repeat r = 1..R one retraining
(`train_masks`, run seed = recipe's + 2000 + r, training seed moved by r, so independent of the store and of the
removal study) trains the full source and every single-class removal (P + 1 models sharing their training
randomness, so the class is the only difference between the full model and a removal). Then, for every target
the full model of repeat r misclassifies (margin ≤ 0):

* *most negative*: the class `explain_target` lists first (most negative influence on that target, with its
  interval and its BH q over the target's classes) is removed — is the target correct in that model?
* *random*: a class drawn uniformly from the other P − 1 classes is removed — the exact expectation over the
  draw (the mean over those P − 1 single-class removals), so the baseline has no draw noise.

Reported: both rates per repeat, their mean and 95% t interval over repeats (repeats are the independent
units; targets within a repeat share a model), the paired difference, and the same split by whether the
most negative class's evidence passes BH at 5%. `explain --verify` is the one-target form of this.

    .venv/bin/python benchmarks/mistake_study.py --out runs/removal --repeats 10

Writes OUT/mistakes.json and OUT/mistakes.md (and OUT/mistakes-retrain.npz, the margins of every retraining).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from removal_study import interval  # benchmarks/ is on sys.path when this script runs

from dmtoolkit.analyze import explain_target, load_estimate
from dmtoolkit.analyze.retrain import train_masks
from dmtoolkit.run.executors import make_executor
from dmtoolkit.store import RunStore

SEED_OFFSET = 2000


def retrain(store: Path, out: Path, repeats: int, workers: int) -> np.ndarray:
    """Margins (R, P + 1, T): row 0 the full source, row 1 + k the source without class k. Repeat r depends only
    on r, so saved repeats are kept and only the missing ones are trained."""
    path = out / "mistakes-retrain.npz"
    margins: list[np.ndarray] = []
    minutes = 0.0
    if path.exists():
        saved = np.load(path)
        if saved["margins"].shape[0] >= repeats:
            return saved["margins"][:repeats]
        margins, minutes = list(saved["margins"]), float(saved["minutes"])
    with RunStore(store) as run:
        recipe, data, P = run.recipe, run.run_data(), run.num_units
    masks = np.ones((P + 1, P), bool)
    masks[np.arange(1, P + 1), np.arange(P)] = False
    started = time.perf_counter()
    for r in range(len(margins), repeats):
        results = train_masks(recipe, data, masks, seed=recipe.subsets.seed + SEED_OFFSET + r, repeat=r + 1,
                              device="cpu", executor=lambda: make_executor("local", workers, "cpu"))
        margins.append(np.stack([res.margins for res in results]))
        print(f"mistakes: repeat {r + 1}/{repeats} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    margins_array = np.stack(margins).astype(np.float32)
    np.savez(path, margins=margins_array, minutes=minutes + (time.perf_counter() - started) / 60)
    return margins_array


def analyze(estimate: Path, margins: np.ndarray) -> dict[str, Any]:
    est = load_estimate(estimate)
    repeats, rows, _ = margins.shape
    T = len(est.target_index)
    P = rows - 1
    full = margins[:, 0][:, est.target_index]  # (R, columns of the estimate)
    misclassified = np.flatnonzero((full <= 0).any(0))
    worst: dict[int, tuple[int, bool]] = {}
    for c in misclassified:  # the explanation a user sees: most negative class, its BH decision at 5%
        explanation = explain_target(estimate, int(est.target_index[c]))
        first = explanation.most_negative[0]
        worst[int(c)] = (first.index, bool(first.significant))
    per_repeat: dict[str, list[float]] = {"worst": [], "random": [], "worst_significant": [],
                                          "random_significant": [], "count": [], "count_significant": []}
    for r in range(repeats):
        wrong = np.flatnonzero(full[r] <= 0)
        fixed_worst, fixed_random, significant = [], [], []
        for c in wrong:
            k, sig = worst[int(c)]
            correct = margins[r, 1:, est.target_index[c]] > 0  # (P,) correct after removing each class
            fixed_worst.append(float(correct[k]))
            fixed_random.append(float((correct.sum() - correct[k]) / (P - 1)))
            significant.append(sig)
        sig_mask = np.array(significant, bool)
        per_repeat["worst"].append(float(np.mean(fixed_worst)))
        per_repeat["random"].append(float(np.mean(fixed_random)))
        per_repeat["count"].append(len(wrong))
        per_repeat["count_significant"].append(int(sig_mask.sum()))
        if sig_mask.any():
            per_repeat["worst_significant"].append(float(np.mean(np.array(fixed_worst)[sig_mask])))
            per_repeat["random_significant"].append(float(np.mean(np.array(fixed_random)[sig_mask])))
    result: dict[str, Any] = {
        "estimate": str(estimate), "repeats": repeats, "classes": P, "targets": T,
        "misclassified_per_repeat": interval(np.array(per_repeat["count"])),
        "misclassified_any_repeat": len(misclassified),
        "rate_most_negative_removed": interval(np.array(per_repeat["worst"])),
        "rate_random_removed": interval(np.array(per_repeat["random"])),
        "difference": interval(np.array(per_repeat["worst"]) - np.array(per_repeat["random"])),
        "significant_per_repeat": interval(np.array(per_repeat["count_significant"])),
        "per_repeat": per_repeat,
    }
    if len(per_repeat["worst_significant"]) == repeats:
        result["significant_only"] = {
            "rate_most_negative_removed": interval(np.array(per_repeat["worst_significant"])),
            "rate_random_removed": interval(np.array(per_repeat["random_significant"])),
            "difference": interval(np.array(per_repeat["worst_significant"])
                                   - np.array(per_repeat["random_significant"]))}
    return result


def _ci(x: dict[str, float]) -> str:
    return f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def table(result: dict[str, Any]) -> str:
    lines = [f"### Mistake debugging ({result['repeats']} repeats, {result['classes']} classes, "
             f"{result['misclassified_per_repeat']['mean']:.0f} misclassified targets per repeat of "
             f"{result['targets']})", "",
             "| targets | most negative class removed: now correct | random class removed: now correct | "
             "difference |", "|---|---|---|---|",
             f"| all misclassified | {_ci(result['rate_most_negative_removed'])} | "
             f"{_ci(result['rate_random_removed'])} | {_ci(result['difference'])} |"]
    if "significant_only" in result:
        s = result["significant_only"]
        lines.append(f"| most negative class passes BH 5% ({result['significant_per_repeat']['mean']:.0f} per repeat)"
                     f" | {_ci(s['rate_most_negative_removed'])} | {_ci(s['rate_random_removed'])} | "
                     f"{_ci(s['difference'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the removal study's output folder")
    parser.add_argument("--setting", default="default")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    store, estimate = args.out / f"{args.setting}-runs.h5", args.out / f"{args.setting}-influence.h5"
    if not estimate.exists():
        raise SystemExit(f"{estimate} is missing: run benchmarks/removal_study.py --out {args.out} "
                         f"--settings {args.setting} first")
    margins = retrain(store, args.out, args.repeats, args.workers)
    result = analyze(estimate, margins)
    (args.out / "mistakes.json").write_text(json.dumps(result, indent=2))
    text = table(result)
    (args.out / "mistakes.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
