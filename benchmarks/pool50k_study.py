"""The gradient estimator at a practitioner's pool size: 52,376 source images (issue 32, item 5).

The store is `glyphs-fashion-pool-50k.yaml` (every glyph class plus 25,000 Fashion-MNIST distractors, 100
planted leaks of which 20 near copies, 100 decoys, 522 flipped labels; 64 example-level models, 4 epochs)
with planting, source, mask and training seeds all set to `--seed` (1 by default: fresh; seed 0 is the
development store). It is trained (or resumed) as OUT/s{seed}.h5 unless `--runs` names an existing one.

For every N in `--networks` (nested: the rows are a seeded draw from the fitting rows, and the 4 include the 1)
the gradient estimator is fitted with the library (`fit_gradient`, the call `dmtoolkit gradient` makes), with
`--holdout-frac` 0.5 so half the models (32) are held out for LDS, and whole groups by default (each network
is retrained beside the rows it was trained with, `models_per_batch` x one training, so it reproduces the
stored row; `--alone` trains it alone). Fits run one at a time, each in its own spawned process with one
torch thread, which records its process CPU seconds and peak resident memory (VmHWM, `peak_resident`). An estimate that
exists is reused; its timing is read from its sidecar OUT/s{seed}-g{N}.h5.json, or, for an estimate made by
the CLI under `/usr/bin/time -v`, from that log (OUT/g{N}.log).

Every estimate is scored the way the CLI scores it: `evaluate` (LDS [95%] on the held-out models),
`detect_leakage` (features off; the planted leaks scored as flagged likely copies = a pixel copy whose
influence is significant within the copies' own family, as influence flags alone, as pixel copies alone — the
pixel scan needs no models — and as the top-k ranking, k = planted leaks) and `detect_mislabels` (flagged at
FDR 5%: harm to the source task, scored by the same networks, and to a target; AUC of the listing, top-k
precision with k = planted flips).

    .venv/bin/python benchmarks/pool50k_study.py --out runs/pool50k --seed 1 --networks 1,4,16

Writes OUT/pool50k.json and OUT/pool50k.md (one row per network count, and issue 32's goals).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from detector_study import RECIPES, _num, _seeds  # benchmarks/ is on sys.path

from dmtoolkit.analyze import detect_leakage, detect_mislabels
from dmtoolkit.estimate.files import load_estimate, open_estimate, read_extra
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.recipe import Recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.store import RunStore

RECIPE = "glyphs-fashion-pool-50k.yaml"
# issue 32's goals at the >= 50,000-image pool
GOAL_LEAK_RECALL, GOAL_LEAK_PRECISION, GOAL_LEAK_NETWORKS = 0.9, 0.9, 16
GOAL_FLIP_RECALL, GOAL_FLIP_PRECISION = 0.5, 0.9


def study_recipe(seed: int) -> Recipe:
    return recipe_with(RECIPES / RECIPE, _seeds(seed), origin=f"pool-50k study seed {seed}")


def fit_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fit one estimate in this (spawned, one-thread) process; its CPU seconds and peak memory."""
    import torch

    from dmtoolkit.estimate.gradient import fit_gradient

    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    fit_gradient(job["runs"], job["path"], models=job["networks"], whole_groups=job["whole_groups"], device="cpu",
                 holdout_frac=job["holdout_frac"])
    return {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            **peak_resident(), "job": job}


def peak_resident() -> dict[str, Any]:
    """This process's own peak resident memory: VmHWM of /proc/self/status (the peak of its current address
    space). Not `ru_maxrss`: Linux keeps that across fork and exec, so a spawned process reports at least
    the RSS its parent had when it started it (a parent holding a 52k-pool leakage analysis made a 2 GB fit
    read 5.9 GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"peak_rss_bytes": int(line.split()[1]) * 1024, "measured_by": "VmHWM"}
    except OSError:
        pass
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "measured_by": "getrusage (includes the parent's RSS at start)"}


def time_log(path: Path) -> dict[str, Any] | None:
    """CPU seconds (user + system) and peak memory from a `/usr/bin/time -v` log, None without one."""
    if not path.exists():
        return None
    text = path.read_text()
    found = {key: re.search(rf"{key}: ([0-9.]+)", text)
             for key in ("User time \\(seconds\\)", "System time \\(seconds\\)", "Maximum resident set size \\(kbytes\\)")}
    if not all(found.values()):
        return None
    user, system, rss = (float(m.group(1)) for m in found.values())
    return {"cpu_seconds": user + system, "peak_rss_bytes": int(rss) * 1024, "measured_by": f"/usr/bin/time -v ({path.name})"}


def timing_of(path: Path, out: Path, networks: int) -> dict[str, Any] | None:
    sidecar = Path(str(path) + ".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    return time_log(out / f"g{networks}.log")


def analyse(path: Path, runs: Path, timing: dict[str, Any], per_model_seconds: float,
            planted: dict[str, int]) -> dict[str, Any]:
    networks = read_extra(path, "gradient/rows")
    seconds = read_extra(path, "gradient/seconds")
    n = len(networks)
    row: dict[str, Any] = {
        "file": path.name, "networks": n, "network_rows": networks.tolist(), "network_seconds": seconds.tolist(),
        "margin_error": read_extra(path, "gradient/margin_error").tolist(),
        "cpu_seconds": timing["cpu_seconds"], "cpu_minutes": timing["cpu_seconds"] / 60,
        "peak_rss_gib": timing["peak_rss_bytes"] / 2 ** 30, "measured_by": timing["measured_by"],
        "cpu_per_network_seconds": timing["cpu_seconds"] / n,
        "cpu_per_network_over_one_training": timing["cpu_seconds"] / n / per_model_seconds,
        "has_stderr": load_estimate(path).stderr is not None}
    with open_estimate(path, runs) as opened:  # the store opened and hash-checked once for every analysis
        lds = evaluate(None, opened)
        leak = detect_leakage(opened, features=False, top=max(1, planted["leaks"]))
        flips = detect_mislabels(opened, top=max(1, planted["flips"]))
        halves = mislabel_halves(opened, flips.fdr)
    row.update(lds=lds.lds_mean, lds_interval=list(lds.lds_interval), test_models=lds.heldout_models)
    row.update(leakage_message=leak.message, mislabels_message=flips.message, leaks_flagged=len(leak.flagged),
               influence_only_flagged=len(leak.influence_only), flips_flagged=len(flips.flagged))
    for key in ("planted", "planted_influence_only", "planted_pixel_only", "planted_top"):
        score = getattr(leak, key)
        row[f"leak_{key}"] = None if score is None else score.to_json()
    for key in ("planted", "planted_top"):
        score = getattr(flips, key)
        row[f"flip_{key}"] = None if score is None else score.to_json()
    row["source_task_scores"] = read_extra(path, "source_task/coef") is not None
    reference = read_extra(path, "label_check/reference")  # mislabels flags from the label check when present
    row["label_check_reference"] = None if reference is None else int(len(reference))
    row["mislabels_evidence"] = flips.evidence
    row["flip_halves"] = halves
    row["copy_effects"] = copy_effects(leak.copies, runs)
    return row


def copy_effects(copies: Any, runs: Path) -> dict[str, Any]:
    """What each pixel copy does to its twin target in the store's own models, split by whether influence
    confirmed it: the difference of the twin's mean margin between the models trained with and without the
    copy (every trained row, the held-out ones included: this is a check on the data, not an estimate),
    a one-sided Welch p-value, and the twin's mean margin. A copy that moves its twin by nothing measurable
    here cannot be confirmed by any influence estimate, so these bound what the leak recall can reach."""
    from scipy import stats

    from dmtoolkit.estimate.fit import completed_rows

    with RunStore(runs) as store:
        rows = completed_rows(store)
        masks, margins = store.masks[()][rows].astype(bool), store.margins[()][rows]
    groups: dict[str, list[tuple[float, float, float]]] = {"confirmed": [], "not confirmed": []}
    for copy in copies:
        trained, twin = masks[:, copy.source], margins[:, copy.target].astype(float)
        if trained.all() or not trained.any():
            continue
        effect = twin[trained].mean() - twin[~trained].mean()
        p = stats.ttest_ind(twin[trained], twin[~trained], equal_var=False, alternative="greater").pvalue
        groups["confirmed" if copy.confirmed else "not confirmed"].append((effect, p, twin.mean()))
    out: dict[str, Any] = {"models": len(rows)}
    for name, values in groups.items():
        if values:
            effect, p, margin = np.array(values).T
            out[name] = {"copies": len(values), "median_effect": float(np.median(effect)),
                         "share_p_below_0.05": float((p < 0.05).mean()), "median_twin_margin": float(np.median(margin))}
    return out


def mislabel_halves(opened: Any, fdr: float) -> dict[str, Any] | None:
    """The two halves of `mislabels`' intersection–union test (`harm_pvalues`, the library's own), each flagged
    on its own by Benjamini–Hochberg at `fdr` and scored against the planted flips, with the AUC of its
    p-values: which half limits the flags."""
    from dmtoolkit.analyze.mislabels import harm_pvalues
    from dmtoolkit.stats.detection import auc
    from dmtoolkit.stats.pvalues import benjamini_hochberg

    run = opened.run()
    harm = harm_pvalues(opened.estimate, run)
    if harm.source is None or harm.target is None:
        return None
    truth = run.planted()
    if truth is None or not truth.flipped.any():  # nothing to score the halves against
        return None
    flipped = truth.flipped.astype(bool)
    out = {}
    for name, p in (("source", harm.source), ("target", harm.target)):
        flagged = benjamini_hochberg(p, fdr)
        hits = int((flagged & flipped).sum())
        out[name] = {"flagged": int(flagged.sum()), "hits": hits,
                     "precision": hits / int(flagged.sum()) if flagged.any() else None,
                     "recall": hits / int(flipped.sum()), "auc_of_p": auc(-p, flipped)}
    return out


def _get(row: dict[str, Any], key: str, field: str) -> float | None:
    score = row.get(key)
    return None if score is None else score.get(field)


def _pr(row: dict[str, Any], key: str) -> str:
    p, r = _get(row, key, "precision_at_k"), _get(row, key, "recall_at_k")
    return f"{_num(p, '.2f')} / {_num(r, '.2f')}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| networks | CPU-min | CPU per network / one training | peak RSS (GiB) | LDS [95%] (held-out models) | "
             "leaks: flagged likely copies P / R | influence flags P / R | top-k ranking P / R (k = planted leaks) | "
             "pixel scan P / R | flips flagged P / R (n) | flip AUC | flip top-k P |",
             "|" + "---|" * 12]
    for r in rows:
        lo, hi = r["lds_interval"]
        lines.append(
            f"| {r['networks']} | {r['cpu_minutes']:.1f} | {r['cpu_per_network_seconds']:.0f} s / "
            f"{r['cpu_per_network_seconds'] / r['cpu_per_network_over_one_training']:.1f} s = "
            f"{r['cpu_per_network_over_one_training']:.0f}x | {r['peak_rss_gib']:.2f} | {r['lds']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"({r['test_models']}) | {_pr(r, 'leak_planted')} | {_pr(r, 'leak_planted_influence_only')} | "
            f"{_pr(r, 'leak_planted_top')} | {_pr(r, 'leak_planted_pixel_only')} | {_pr(r, 'flip_planted')} "
            f"({r['flips_flagged']}) | {_num(_get(r, 'flip_planted', 'auc'))} | "
            f"{_num(_get(r, 'flip_planted_top', 'precision_at_k'), '.2f')} |")
    lines += ["", "| networks | mislabels: source-task half alone, flagged (flips) | target half alone, flagged (flips) "
              "| both (the rule), flagged (flips) |", "|---|---|---|---|"]
    for r in rows:
        halves = r.get("flip_halves") or {}
        cell = lambda h: "-" if h is None else f"{h['flagged']} ({h['hits']})"  # noqa: E731
        both = r.get("flip_planted") or {}
        lines.append(f"| {r['networks']} | {cell(halves.get('source'))} | {cell(halves.get('target'))} | "
                     f"{r['flips_flagged']} ({both.get('hits', '-')}) |")
    lines += ["", "| networks | pixel copies | what each does to its twin in the store's models: median effect on the "
              "twin's margin, share with Welch p < 0.05, median twin margin |", "|---|---|---|"]
    for r in rows:
        effects = r.get("copy_effects") or {}
        for name in ("confirmed", "not confirmed"):
            if name in effects:
                e = effects[name]
                lines.append(f"| {r['networks']} | {e['copies']} {name} by influence | {e['median_effect']:+.3f}, "
                             f"{e['share_p_below_0.05']:.2f}, {e['median_twin_margin']:.2f} "
                             f"({effects['models']} models) |")
    return "\n".join(lines)


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 32's goals at this pool, each estimate on its own: leaks by the flagged set or the influence flags."""
    def leak_met(r: dict[str, Any]) -> bool:
        return r["networks"] <= GOAL_LEAK_NETWORKS and any(
            (_get(r, k, "recall_at_k") or 0) >= GOAL_LEAK_RECALL and (_get(r, k, "precision_at_k") or 0) >= GOAL_LEAK_PRECISION
            for k in ("leak_planted", "leak_planted_influence_only"))

    def flip_met(r: dict[str, Any]) -> bool:
        return ((_get(r, "flip_planted", "recall_at_k") or 0) >= GOAL_FLIP_RECALL
                and (_get(r, "flip_planted", "precision_at_k") or 0) >= GOAL_FLIP_PRECISION)

    leaks, flips = [r["networks"] for r in rows if leak_met(r)], [r["networks"] for r in rows if flip_met(r)]
    return {"leaks": f"flagged recall >= {GOAL_LEAK_RECALL} at precision >= {GOAL_LEAK_PRECISION} from <= "
                     f"{GOAL_LEAK_NETWORKS} networks", "leaks_met_at": leaks, "leaks_met": bool(leaks),
            "flips": f"flagged recall >= {GOAL_FLIP_RECALL} at precision >= {GOAL_FLIP_PRECISION}",
            "flips_met_at": flips, "flips_met": bool(flips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1, help="planting, source, mask and training seed (0: development)")
    parser.add_argument("--runs", type=Path, help="an existing store of this recipe (default: OUT/s{seed}.h5, trained)")
    parser.add_argument("--networks", default="1,4,16")
    parser.add_argument("--holdout-frac", type=float, default=0.5)
    parser.add_argument("--alone", action="store_true", help="retrain each network alone, not with its group")
    parser.add_argument("--workers", type=int, default=2, help="store training processes")
    parser.add_argument("--analyze-only", action="store_true", help="fit nothing; score the estimates that exist")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs or args.out / f"s{args.seed}.h5"
    if args.runs is None and not args.analyze_only:
        ensure_trained(runs, study_recipe(args.seed), workers=args.workers, device="cpu", progress=False)
    with RunStore(runs) as store:
        rows = store.completed_rows()
        per_model_seconds = float(store.column("seconds")[rows].mean())
        truth = store.planted()
    planted = {"leaks": int((truth.leak_target >= 0).sum()) if truth is not None else 0,
               "flips": int(truth.flipped.sum()) if truth is not None else 0}
    stem = runs.stem
    results = []
    for n in sorted(int(x) for x in args.networks.split(",") if x):
        path = args.out / f"{stem}-g{n}.h5"
        if not path.exists() and not args.analyze_only:
            job = {"runs": str(runs), "path": str(path), "networks": n, "whole_groups": not args.alone,
                   "holdout_frac": args.holdout_frac}
            with multiprocessing.get_context("spawn").Pool(1) as pool:  # one fit at a time, its own process
                timing = pool.apply(fit_job, (job,))
            Path(str(path) + ".json").write_text(json.dumps(timing, indent=2))
        timing = timing_of(path, args.out, n) if path.exists() else None
        if timing is None:
            print(f"{path.name}: not fitted (or no timing), skipped", flush=True)
            continue
        row = analyse(path, runs, timing, per_model_seconds, planted)
        results.append(row)
        print(f"{n} networks: {row['cpu_minutes']:.1f} CPU-min, LDS {row['lds']:.3f}; {row['leakage_message']}; "
              f"{row['mislabels_message']}", flush=True)
    figures = {"store": str(runs), "models": int(len(rows)), "per_model_seconds": per_model_seconds,
               "planted": planted, "holdout_frac": args.holdout_frac, "whole_groups": not args.alone,
               "estimates": results, "goals": goals(results)}
    (args.out / "pool50k.json").write_text(json.dumps(figures, indent=2, default=float))
    text = table(results) + "\n\n" + json.dumps(figures["goals"], indent=2)
    (args.out / "pool50k.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
