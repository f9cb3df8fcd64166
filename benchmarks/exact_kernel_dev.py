"""Development study behind `--proj-dim auto` (issue 32): exact (unprojected) gradient scores in the dual form
against 512- and 2,048-dimensional projections (one per network and checkpoint), on the same retrained networks.

On one example-level store (the 400-image example store), the held-out split `dmtoolkit evaluate` uses
(`--holdout-frac 0.1`, split seed 0) is taken and `--networks` fitting rows drawn with `--seed` (nested: the
first n are the n-network ensemble; the same draw as `trak_study.py --seed`) are retrained with three
checkpoints each. Every (network, checkpoint) is scored by the library (`score_network`; exact: `proj_dim=0`,
`gram_matrices`, `exact_lambda`, `exact_scores`) for a grid of relative ridges `--lambdas` (exact only; the
projections use the library's 0.1), the kernel over the whole pool or over the examples each network trained
on, and τ weighted by each network's own q or by q averaged over networks; LDS on all targets of the held-out
models (`dmtoolkit.stats.lds.summarise_lds`).

Run on draw 0 (the development draw), it chose the library's defaults: exact scores where they fit, the kernel
over the pool, mean q, relative λ 0.1 (flat over 0.03–0.3). Out-of-sample figures come from `trak_study.py
--variants exact` on other draws and on the 5,080-image pool.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exact_kernel_dev.py stores/demo/example-runs.h5 \\
        --seed 0 --networks 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def held_out_and_drawn(store_path: Path, seed: int, count: int):  # noqa: ANN201 - a benchmark's tuple
    """The held-out split `dmtoolkit evaluate` uses (10%, split seed 0): its masks (float64) and margins, the
    `count` fitting rows drawn with `seed` (nested: the first n are the n-network ensemble) and the run context."""
    from dmtoolkit.estimate.fit import completed_rows, store_draws
    from dmtoolkit.stats.splits import split_rows
    from dmtoolkit.store import RunStore
    from dmtoolkit.train.job import RunContext

    with RunStore(store_path) as store:
        rows, draws = completed_rows(store), store_draws(store).ids
        fit_rows, test_rows = split_rows(rows, 0.1, 0, draws)
        masks, margins = np.asarray(store.masks[()], bool), np.asarray(store.margins[()], np.float64)
    drawn = np.random.default_rng(seed).permutation(fit_rows)[:count]
    return masks[test_rows].astype(np.float64), margins[test_rows], drawn, RunContext.from_store(store_path, "cpu")


def exact_gradients(net):  # noqa: ANN001, ANN201 - a library Network; a benchmark's tuple
    """One network's unprojected per-example gradients through the library: Φ of its source output on the pool,
    G of its transferred margin on the targets, q on the pool (float64) and the parameter count."""
    from dmtoolkit.estimate.gradient import Projector, _batched, _per_example

    params = dict(net.params)
    identity = Projector(sum(p.numel() for p in params.values()), 0)
    with torch.no_grad():
        phi = _per_example(lambda p, xi, yi: net.source_output(p, xi[None], yi[None])[0], params,
                           net.pool.x, net.pool.y, identity, 64)
        g = _per_example(lambda p, xi, yi: net.target_margin(p, xi[None], yi[None])[0], params,
                         net.targets.x, net.targets.y, identity, 64)
        q = _batched(lambda x, y: net.loss_weight(params, x, y), net.pool.x, net.pool.y).double()
    return phi, g, q, identity.num_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--networks", type=int, default=16)
    parser.add_argument("--lambdas", default="0.01,0.03,0.1,0.3,1")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: beside nothing, printed only)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dmtoolkit.devices import training_threads
    from dmtoolkit.estimate.gradient import exact_lambda, exact_scores, gram_matrices, score_network
    from dmtoolkit.estimate.networks import BuiltinNetworks, checkpoint_epochs
    from dmtoolkit.stats.lds import summarise_lds

    test_masks, actual, drawn, context = held_out_and_drawn(args.store, args.seed, args.networks)
    builder = BuiltinNetworks(context, epochs=checkpoint_epochs(3, context.recipe.training.epochs))
    P, T = test_masks.shape[1], actual.shape[1]
    lambdas = [float(x) for x in args.lambdas.split(",")]
    taus: dict[str, list[np.ndarray]] = {}
    qs: list[np.ndarray] = []
    started = time.process_time()
    for n, row in enumerate(drawn):
        job = context.job(int(row))
        with training_threads():
            nets = builder(job)
        for c, net in enumerate(nets):
            phi, g, q, num_params = exact_gradients(net)
            gram, cross = gram_matrices(phi, g)
            for lam in lambdas:
                for over, train in (("pool", np.arange(P)), ("trained", job.units)):
                    absolute = exact_lambda(gram, train, lam, num_params)
                    taus.setdefault(f"exact {over} λ{lam}", []).append(
                        exact_scores(gram, cross, q, train, absolute, own_q=False).numpy())
            for k in (512, 2048):
                for over, train in (("pool", np.arange(P)), ("trained", job.units)):
                    tau = score_network(net, train, slice(0, T), proj_dim=k, proj_seed=1000 + 3 * n + c, own_q=False)[0]
                    taus.setdefault(f"projection {k} {over}", []).append(tau.numpy())
            qs.append(q.numpy())
        print(f"network {n + 1}/{len(drawn)}: {time.process_time() - started:.0f}s CPU", flush=True)
    results = {}
    for m in sorted({1, 4, 16, args.networks} & set(range(1, args.networks + 1))):
        ids = range(3 * m)
        q_mean = np.mean([qs[i] for i in ids], axis=0)
        for name, values in taus.items():
            for weighting in ("own", "mean"):
                coef = np.mean([values[i] * (qs[i] if weighting == "own" else q_mean)[:, None] for i in ids], axis=0)
                results[f"{m}x3 {name} q-{weighting}"] = summarise_lds(test_masks @ coef, actual)[1]
    for name, values in taus.items():  # one network at a time (its 3 checkpoints): mean and spread over networks
        for weighting in ("own", "mean"):
            single = []
            for n in range(len(drawn)):
                ids = range(3 * n, 3 * n + 3)
                q_mean = np.mean([qs[i] for i in ids], axis=0)
                coef = np.mean([values[i] * (qs[i] if weighting == "own" else q_mean)[:, None] for i in ids], axis=0)
                single.append(summarise_lds(test_masks @ coef, actual)[1])
            results[f"each 1x3 {name} q-{weighting}"] = float(np.mean(single))
            results[f"each 1x3 {name} q-{weighting} sd"] = float(np.std(single, ddof=1)) if len(single) > 1 else 0.0
    for name, lds in results.items():
        print(f"{name:<40} {lds:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"store": str(args.store), "seed": args.seed, "rows": drawn.tolist(),
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
