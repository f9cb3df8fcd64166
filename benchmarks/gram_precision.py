"""The exact kernel's Gram matrices with float32 block products (the library's default, `GRAM_PRECISION`) against
float64 throughout: CPU time, and what it does to the scores and the LDS.

1. Time, on one thread, `gram_matrices` of random float32 gradients at the 5,080-image pool's shape (5,080 pool
   images × 40,020 parameters, 1,000 targets; `--shape P,p,T` for another), each precision `--repeats` times;
   the ratio is float64 / float32 measured in the same run.
2. On real networks (`--store`, e.g. the 400-image example store): `--networks` fitting rows drawn as
   `exact_kernel_dev.py` draws them (held-out split of `dmtoolkit evaluate`, seed `--seed`), retrained with their
   final weights, scored exactly (pool kernel, q averaged over the networks, relative λ 0.1) with each precision:
   the largest score difference relative to the largest score, and the LDS of each on the held-out models.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gram_precision.py \\
        --store stores/demo/example-runs.h5 --networks 4 --seed 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def _timed(phi: torch.Tensor, g: torch.Tensor, precision: str, repeats: int) -> float:
    from dmtoolkit.estimate.gradient import gram_matrices

    seconds = []
    for _ in range(repeats):
        started = time.process_time()
        gram_matrices(phi, g, precision=precision)
        seconds.append(time.process_time() - started)
    return float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="5080,40020,1000", help="P,p,T of the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", type=Path, default=None, help="an example-level store for the real networks")
    parser.add_argument("--networks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    pool, params, targets = (int(x) for x in args.shape.split(","))
    rng = torch.Generator().manual_seed(0)
    phi, g = torch.randn(pool, params, generator=rng), torch.randn(targets, params, generator=rng)
    times = {precision: _timed(phi, g, precision, args.repeats) for precision in ("float32", "float64")}
    print(f"gram_matrices at P={pool}, p={params}, T={targets}, one thread (median of {args.repeats}): float32 "
          f"{times['float32']:.1f} s, float64 {times['float64']:.1f} s CPU; ratio float64/float32 "
          f"{times['float64'] / times['float32']:.2f}", flush=True)
    del phi, g
    if args.store is not None:
        _real_networks(args)


def _real_networks(args: argparse.Namespace) -> None:
    from exact_kernel_dev import exact_gradients, held_out_and_drawn

    from dmtoolkit.devices import training_threads
    from dmtoolkit.estimate.gradient import exact_lambda, exact_scores, gram_matrices
    from dmtoolkit.estimate.networks import BuiltinNetworks
    from dmtoolkit.estimate.options import GRADIENT_LAMBDA
    from dmtoolkit.stats.lds import summarise_lds

    test_masks, actual, drawn, context = held_out_and_drawn(args.store, args.seed, args.networks)
    builder = BuiltinNetworks(context)
    pool = np.arange(test_masks.shape[1])
    taus: dict[str, list[np.ndarray]] = {"float32": [], "float64": []}
    qs, worst = [], 0.0
    for row in drawn:
        with training_threads():
            net = builder(context.job(int(row)))[-1]
        phi, g, q, num_params = exact_gradients(net)
        for precision in taus:
            gram, cross = gram_matrices(phi, g, precision=precision)
            lam = exact_lambda(gram, pool, GRADIENT_LAMBDA, num_params)
            taus[precision].append(exact_scores(gram, cross, q, pool, lam, own_q=False).numpy())
        worst = max(worst, float(np.abs(taus["float32"][-1] - taus["float64"][-1]).max()
                                 / np.abs(taus["float64"][-1]).max()))
        qs.append(q.numpy())
    q_mean = np.mean(qs, axis=0)[:, None]
    lds = {precision: summarise_lds(test_masks @ (np.mean(values, axis=0) * q_mean), actual)[1]
           for precision, values in taus.items()}
    print(f"{args.store}, {len(drawn)} networks (seed {args.seed}, final weights): largest score difference "
          f"{worst:.2g} of the largest score; LDS float32 {lds['float32']:.4f}, float64 {lds['float64']:.4f}")


if __name__ == "__main__":
    main()
