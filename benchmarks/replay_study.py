"""Where the replay estimator's first-order prediction holds (docs/gradient.md, "Replay").

Everything here compares the replay's linear prediction with the replayed pipeline itself (the same
deterministic training and transfer at other weights), so what is measured is the linearisation alone:

  curve    from the estimate's point w0, move a random fraction of the pool (pool point: drop those examples;
           other points: set them to random 0/1), `--draws` times per fraction; per target, Spearman of the
           predicted against the replayed change over the draws (averaged over targets), their Pearson
           over everything, the relative error and both rms sizes.
  horizon  down-weight single examples by ε (1e-5 … 1) in float64; the same comparison per ε.
  ceiling  the replayed pipeline at the store's held-out masks against the store's own margins (per-target
           Spearman): how well the relaxation itself stands for subset training.

    python benchmarks/replay_study.py curve STORE.h5 REPLAY.h5 -o curve.json
    python benchmarks/replay_study.py horizon STORE.h5 REPLAY.h5 -o horizon.json
    python benchmarks/replay_study.py ceiling STORE.h5 REPLAY.h5
"""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import torch

from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.lds import lds_per_target
from dmtoolkit.estimate.replay import pipeline_margins, problem_from_trainer
from dmtoolkit.train.job import RunContext


def _problem(store: str, est, dtype: torch.dtype):
    context = RunContext.from_store(store, "cpu")
    attrs = est.attrs
    problem, _, _ = problem_from_trainer(context.trainer, int(attrs["replay_seed"]), int(attrs["replay_subset_size"]),
                                         dtype)
    return context, problem


def _per_target_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean LDS of prediction `a` against truth `b` (models x targets), as `dmtoolkit evaluate` scores it."""
    return float(np.nanmean(lds_per_target(a, b)))


def curve(store: str, path: str, draws: int, seed: int) -> dict:
    est = load_estimate(path)
    _, problem = _problem(store, est, torch.float32)
    with h5py.File(path, "r", locking=False) as f:
        w0, m0 = f["replay/point"][()].astype(np.float64), f["replay/margin_at_point"][()].astype(np.float64)
    coef, cols, pool = est.matrix.astype(np.float64), est.columns, len(w0)
    rng, out = np.random.default_rng(seed), {}
    removing = bool(np.all(w0 == 1))
    for fraction in (1 / pool, 0.01, 0.05, 0.1, 0.25, 0.5) + (() if removing else (1.0,)):
        moved = max(1, round(fraction * pool))
        actual, predicted = [], []
        for _ in range(draws):
            w = w0.copy()
            chosen = rng.choice(pool, moved, replace=False)
            w[chosen] = 0.0 if removing else rng.integers(0, 2, moved)
            margins = pipeline_margins(problem, torch.as_tensor(w, dtype=torch.float32), cols).numpy()
            actual.append(margins.astype(np.float64) - m0)
            predicted.append((w - w0) @ coef)
        actual, predicted = np.array(actual), np.array(predicted)
        row = dict(moved=moved, spearman=_per_target_spearman(actual, predicted),
                   pearson=float(np.corrcoef(actual.ravel(), predicted.ravel())[0, 1]),
                   rel_error=float(np.linalg.norm(actual - predicted) / np.linalg.norm(actual)),
                   rms_actual=float(np.sqrt((actual ** 2).mean())), rms_predicted=float(np.sqrt((predicted ** 2).mean())))
        out[str(moved)] = row
        print(json.dumps(row), flush=True)
    return out


def horizon(store: str, path: str, examples: list[int]) -> dict:
    est = load_estimate(path)
    _, problem = _problem(store, est, torch.float64)
    with h5py.File(path, "r", locking=False) as f:
        w0 = torch.as_tensor(f["replay/point"][()], dtype=torch.float64)
    coef, cols, out = est.matrix.astype(np.float64), est.columns, {}
    m0 = pipeline_margins(problem, w0, cols).numpy()
    for i in examples:
        for eps in (1e-5, 1e-3, 1e-2, 0.1, 0.3, 1.0):
            w = w0.clone()
            w[i] -= eps
            actual = pipeline_margins(problem, w, cols).numpy() - m0
            predicted = -eps * coef[i]
            row = dict(example=i, eps=eps, rel_error=float(np.linalg.norm(actual - predicted) / np.linalg.norm(actual)),
                       pearson=float(np.corrcoef(actual, predicted)[0, 1]),
                       rms_actual=float(np.sqrt((actual ** 2).mean())),
                       rms_predicted=float(np.sqrt((predicted ** 2).mean())))
            out[f"{i} {eps}"] = row
            print(json.dumps(row), flush=True)
    return out


def ceiling(store: str, path: str) -> dict:
    est = load_estimate(path)
    _, problem = _problem(store, est, torch.float32)
    rows = est.test_rows
    with h5py.File(store, "r", locking=False) as f:
        masks, margins = f["masks"][()][rows], f["margins"][()][rows]
    replayed = np.stack([pipeline_margins(problem, torch.as_tensor(m, dtype=torch.float32)).numpy() for m in masks])
    cols = est.columns
    predicted = masks.astype(np.float32) @ est.matrix + est.intercept
    out = dict(replayed_vs_store=_per_target_spearman(replayed, margins),
               replayed_vs_store_columns=_per_target_spearman(replayed[:, cols], margins[:, cols]),
               linear_vs_replayed=_per_target_spearman(predicted, replayed[:, cols]),
               linear_vs_store=_per_target_spearman(predicted, margins[:, cols]))
    print(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["curve", "horizon", "ceiling"])
    parser.add_argument("store")
    parser.add_argument("estimate")
    parser.add_argument("-o", "--output")
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", default="3,117,250")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "curve":
        result = curve(args.store, args.estimate, args.draws, args.seed)
    elif args.what == "horizon":
        result = horizon(args.store, args.estimate, [int(i) for i in args.examples.split(",")])
    else:
        result = ceiling(args.store, args.estimate)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
