"""Do checkpoints along training raise the gradient estimator's LDS? (issue 32, TRAK's ensembling)

On one trained example-level store, for each seed in `--seeds` and each checkpoint setting in `--checkpoints`
(a count: 1 = the final weights, 3 = epochs 10, 20, 30 of 30), `fit_gradient` retrains `--models` networks
(the same rows, seeds and held-out split for every setting of a seed: the seed draws them) and `evaluate`
scores the estimate on the store's held-out rows. Seconds: the process CPU time of each fit (when it ran
in this invocation) and the wall seconds the file records per network (`gradient/seconds`). The comparison is paired: at a seed the networks and test
rows are the same, only the checkpoints scored differ. Estimates are kept in `--out` (a rerun reuses them).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/gradient_checkpoints.py stores/example-runs.h5 \\
        --out runs/checkpoints --seeds 1,2,3,4,5 --models 4 --checkpoints 1,3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--checkpoints", default="1,3")
    parser.add_argument("--proj-dim", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dmtoolkit.estimate.files import load_estimate
    from dmtoolkit.estimate.gradient import fit_gradient
    from dmtoolkit.estimate.lds import evaluate

    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(c) for c in args.checkpoints.split(",")]
    rows = []
    for seed in seeds:
        for count in counts:
            path = args.out / f"gradient-m{args.models}-c{count}-s{seed}.h5"
            seconds = None
            if not path.exists():
                started = time.process_time()
                fit_gradient(args.store, path, models=args.models, seed=seed, checkpoints=count, proj_dim=args.proj_dim)
                seconds = time.process_time() - started
            result = evaluate(args.store, path)
            attrs = load_estimate(path).attrs
            with h5py.File(path, "r") as f:
                network_seconds = float(f["gradient/seconds"][()].sum())
            rows.append({"seed": seed, "checkpoints": count, "lds": result.lds_mean, "interval": result.lds_interval,
                         "heldout_models": result.heldout_models, "cpu_seconds": seconds,
                         "network_seconds": network_seconds,
                         "recorded": json.loads(attrs["gradient_checkpoints"])[0]})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "checkpoints.json").write_text(json.dumps(rows, indent=1))
    print(f"\nLDS from {args.models} networks on {rows[0]['heldout_models']} held-out models, per seed:")
    print("seed  " + "  ".join(f"c={c:<5}" for c in counts))
    table = {c: np.array([r["lds"] for r in rows if r["checkpoints"] == c]) for c in counts}
    for k, seed in enumerate(seeds):
        print(f"{seed:<5} " + "  ".join(f"{table[c][k]:+.4f}" for c in counts))
    for c in counts[1:]:
        diff = table[c] - table[counts[0]]
        print(f"c={c} minus c={counts[0]}: mean {diff.mean():+.4f}, sd {diff.std(ddof=1) if len(diff) > 1 else 0:.4f}, "
              f"min {diff.min():+.4f}, max {diff.max():+.4f} ({int((diff > 0).sum())} of {len(diff)} seeds higher)")
    for c in counts:
        print(f"c={c}: mean LDS {table[c].mean():+.4f} (sd {table[c].std(ddof=1) if len(seeds) > 1 else 0:.4f})")


if __name__ == "__main__":
    main()
