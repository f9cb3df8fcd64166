"""Features or kernel: which one gives TRAK its lead over our gradient estimator? (issue 32)

`benchmarks/trak_study.py` scores the same networks with ours and with TRAK, and TRAK leads. The two differ
in how they featurise a network (each computes and projects its own per-example gradients) and in how they
turn the features into scores (kernel, λ, Q, rescaling). This script reads what traker saved in a
trak_study run: for each model ID, the projected pool gradients (`grads.mmap`, (P, k)), Q (`out_to_loss.mmap`),
and the projected target gradients (`targets_grads.mmap`, (T, k)). It scores TRAK's *own* features with the
library's scoring function (`dmtoolkit.estimate.gradient.trak_scores`), in three ways:

- `traker's rule`: a kernel over the whole pool, relative λ 0.1, each ID's inverse kernel rescaled as
  traker does (`kernel_scale="trak"`), and Q averaged over IDs. This should give TRAK's own LDS, which
  checks that the files were read correctly.
- `pool kernel + mean Q`: the same without the rescaling (our option `attribute(q="mean")`).
- `ours (default)`: a kernel over each network's own training examples, and each ID's own q.

The LDS is taken on the same held-out models as trak_study. If our rules on TRAK's features reach TRAK's LDS,
the gap comes from the featurisation; if they do not, it comes from the scoring.

    python benchmarks/trak_features_cross.py runs/trak5k/trak-study-s0-k512-c3-p0.json \\
        runs/trak5k/trak-saver-s0-k512-c3-p0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dmtoolkit.estimate.fit import completed_rows, store_draws
from dmtoolkit.estimate.gradient import relative_lambda, trak_scores
from dmtoolkit.estimate.options import GRADIENT_LAMBDA
from dmtoolkit.stats.lds import bootstrap_lds_interval, summarise_lds
from dmtoolkit.stats.splits import split_rows
from dmtoolkit.store import RunStore

RULES = ("traker's rule", "pool kernel + mean Q", "ours (default)")


def id_scores(saver: Path, model_id: int, train: np.ndarray, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(τ (P, T) without the Q factor or with the ID's own q, q (P,)) for one model ID under `rule`."""
    folder = saver / str(model_id)
    phi = torch.as_tensor(np.load(folder / "grads.mmap", mmap_mode="r").astype(np.float64))
    q = torch.as_tensor(np.load(folder / "out_to_loss.mmap", mmap_mode="r").astype(np.float64).reshape(-1))
    g = torch.as_tensor(np.load(folder / "targets_grads.mmap", mmap_mode="r").astype(np.float64))
    if rule == "ours (default)":
        lam = relative_lambda(phi[torch.as_tensor(train)], GRADIENT_LAMBDA)
        return trak_scores(phi, q, train, g, lam), q
    everything = np.arange(phi.shape[0])
    lam = relative_lambda(phi, GRADIENT_LAMBDA)
    scale = "trak" if rule == "traker's rule" else "none"
    return trak_scores(phi, q, everything, g, lam, own_q=False, kernel_scale=scale), q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="trak_study's JSON (store, drawn rows, checkpoints)")
    parser.add_argument("saver", type=Path, help="traker's save folder of that run")
    parser.add_argument("--networks", default="1,4,16")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = json.loads(args.study.read_text())
    rows, per = study["rows"], len(study["epochs"])
    with RunStore(study["store"]) as store:
        done = completed_rows(store)
        draws = store_draws(store).ids
        _, test_rows = split_rows(done, 0.1, 0, draws)  # the held-out split trak_study and evaluate use
        masks = np.asarray(store.masks[()], bool)
        margins = np.asarray(store.margins[()], np.float64)
    test_masks, actual, test_draws = masks[test_rows].astype(np.float64), margins[test_rows], draws[test_rows]
    counts = sorted(int(n) for n in args.networks.split(","))
    settings = sorted({1, per})  # checkpoints used: the last ck of each network (1: final weights)
    results = []
    for rule in RULES:  # one pass over the IDs per rule; the settings nest (first m networks, last ck checkpoints)
        tau_sum = {ck: 0.0 for ck in settings}
        q_sum = {ck: 0.0 for ck in settings}
        for i in range(counts[-1]):
            for c in range(per):
                tau, q = id_scores(args.saver, i * per + c, np.flatnonzero(masks[rows[i]]), rule)
                for ck in settings:
                    if c >= per - ck:
                        tau_sum[ck] = tau_sum[ck] + tau
                        q_sum[ck] = q_sum[ck] + q
            if i + 1 not in counts:
                continue
            for ck in settings:
                ids = (i + 1) * ck
                coef = tau_sum[ck] / ids
                if rule != "ours (default)":  # Q averaged over the IDs, as traker's finalize_scores and
                    coef = coef * (q_sum[ck] / ids)[:, None]  # attribute(q="mean") do
                predicted = test_masks @ coef.numpy()
                lds = summarise_lds(predicted, actual)[1]
                interval = bootstrap_lds_interval(predicted, actual, test_draws)
                trak = next((r["lds"] for r in study["results"] if r["method"] == "TRAK" and r["networks"] == i + 1
                             and r["checkpoints"] == ck and r.get("targets", "all") == "all"), None)
                results.append({"rule": rule, "networks": i + 1, "checkpoints": ck, "lds": lds,
                                "interval": list(interval) if interval else None, "trak_study_trak": trak})
                print(f"{rule:<22} {i + 1:>3} × {ck}  LDS {lds:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
                      f"   (TRAK in trak_study: {trak:.3f})", flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
