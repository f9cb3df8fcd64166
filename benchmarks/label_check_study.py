"""The out-of-sample label check (`dmtoolkit mislabels` on a gradient estimate) beside cleanlab, on the same
networks: the gradient estimate's own networks, retrained from its store rows, each not trained on about half
the pool.

Both read the same held-out predictions. Ours: each pool image's stated-label margin averaged over the networks
that did not train on it (`dmtoolkit.estimate.label_check`, the library's reduction), conformal p-values against
the held-out source test images scored the same way, Benjamini–Hochberg at --fdr; listed by that margin.
cleanlab 2.9 (an optional benchmark extra, `pip install cleanlab`): out-of-sample predicted probabilities (the
softmax averaged over the same held-out networks) into `cleanlab.filter.find_label_issues` (its default,
prune_by_noise_rate) for flags and `cleanlab.rank.get_label_quality_scores` (self-confidence) for the listing.
Scored against the store's planted flips: flagged count, precision and recall; the listing's AUC and its
precision where it first reaches recall 0.5 and 0.9 and at k = planted flips.

    PYTHONPATH=benchmarks OMP_NUM_THREADS=1 python benchmarks/label_check_study.py \\
        --runs runs/s1.h5 --estimate runs/s1-g16.h5 --out runs/label-check-s1.json

Without --estimate it trains --networks of the store's rows itself (an initialised store is enough), which is
how the larger-reference variant is measured: the pool recipe with its whole source test split as reference,
    sed -e 's/seed: 0/seed: 1/' -e '/test_size/d' dmtoolkit/recipes/glyphs-fashion-pool-50k.yaml > s1-ref.yaml
    dmtoolkit init s1-ref.yaml runs/s1-ref.h5
    python benchmarks/label_check_study.py --runs runs/s1-ref.h5 --networks 16 --out runs/label-check-s1-ref.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from dmtoolkit.devices import training_threads
from dmtoolkit.estimate.gradient import GradientEstimator, label_margins
from dmtoolkit.estimate.label_check import label_check, read_label_check, reference_patterns
from dmtoolkit.stats.detection import auc
from dmtoolkit.stats.pvalues import bh_adjusted, conformal_pvalues
from dmtoolkit.store import RunStore


def listing_scores(order_score: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """AUC of a listing (higher score: listed first) and its precision where it first reaches recall 0.5 / 0.9
    and at k = planted flips."""
    order = np.argsort(-order_score, kind="stable")
    hits = np.cumsum(flipped[order])
    total = int(flipped.sum())
    out = {"auc": auc(order_score, flipped)}
    for recall in (0.5, 0.9):
        k = int(np.searchsorted(hits, recall * total)) + 1
        out[f"precision_at_recall_{recall}"] = float(hits[k - 1] / k)
    out["precision_at_k_flips"] = float(hits[total - 1] / total)
    return out


def flag_scores(flagged: np.ndarray, flipped: np.ndarray, kinds: dict[str, np.ndarray]) -> dict[str, object]:
    """Flagged count, precision and recall against the flips, and what the other flags are: planted copies of
    target images (their label is the class the copy was filed under) or ordinary pool images."""
    hits = int((flagged & flipped).sum())
    others = flagged & ~flipped
    planted_other = {name: int((others & mask).sum()) for name, mask in kinds.items()}
    ordinary = others & ~np.logical_or.reduce(list(kinds.values()))
    return {"flagged": int(flagged.sum()), "flips_flagged": hits,
            "precision": hits / max(1, int(flagged.sum())), "recall": hits / max(1, int(flipped.sum())),
            "other_flags": {**planted_other, "ordinary": int(ordinary.sum())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True)
    parser.add_argument("--estimate", help="a gradient estimate of --runs: its networks are retrained (and its saved "
                        "label check compared)")
    parser.add_argument("--networks", type=int, default=16,
                        help="without --estimate: this many of the store's rows, drawn as the gradient estimator draws")
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--out")
    args = parser.parse_args()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    torch.set_num_threads(1)
    with RunStore(args.runs) as store:
        labels = np.asarray(store.source_labels)
        planted = store.planted()
        flipped = planted.flipped.astype(bool)
        kinds = {"leak copy": planted.leak_target >= 0, "decoy": planted.decoy_target >= 0,
                 "near copy": np.asarray(planted.near_copy, bool)}
        all_rows = np.arange(store.masks.shape[0])
    if args.estimate:
        with h5py.File(args.estimate, "r") as f:
            rows = json.loads(f.attrs["gradient_rows"])
    else:  # the store's rows need not be trained: each network is trained here from its row's mask and seed
        draw = GradientEstimator(args.runs, models=args.networks, device="cpu").row_seed
        rows = np.sort(np.random.default_rng(draw).permutation(all_rows)[:args.networks]).tolist()
    estimator = GradientEstimator(args.runs, models=len(rows), device="cpu")
    context = estimator._context()
    pool_margins, test_margins, trained, held_probs, seconds = [], [], [], None, 0.0
    counts = np.zeros(len(labels))
    for row in rows:
        started = time.process_time()
        job = context.job(int(row))
        with training_threads():
            network = estimator._networks(job)[-1]
        seconds += time.process_time() - started
        pool_margin, test_margin = label_margins(network)  # ours: what the estimator saves per network
        pool_margins.append(pool_margin)
        test_margins.append(test_margin)
        test_y = network.source_test.y.numpy()
        params = dict(network.params)
        with torch.no_grad():  # cleanlab's: the softmax of the same network's source logits on the pool
            z = torch.cat([network.source_logits(params, network.pool.x[s:s + 2048])
                           for s in range(0, len(network.pool.x), 2048)]).double().numpy()
        mask = np.zeros(len(labels), bool)
        mask[job.source_indices] = True
        trained.append(mask)
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        held_probs = np.where(mask[:, None], 0, probs) + (0 if held_probs is None else held_probs)
        counts += ~mask
        print(f"network row {row}: retrained and scored", flush=True)
    trained = np.array(trained)
    started = time.process_time()
    check = label_check(zip(pool_margins, test_margins, trained), reference_patterns(trained, len(test_margins[0])))
    p = conformal_pvalues(check.heldout_margin, check.reference)
    ours_seconds = time.process_time() - started
    saved = read_label_check(args.estimate) if args.estimate else None
    same = None if saved is None else float(np.nanmax(np.abs(saved.heldout_margin - check.heldout_margin)))
    started = time.process_time()
    pred = held_probs / np.maximum(counts, 1)[:, None]
    pred[counts == 0] = 1 / pred.shape[1]  # trained on by every network: no out-of-sample prediction
    pred /= pred.sum(1, keepdims=True)
    issues = find_label_issues(labels, pred)
    quality = get_label_quality_scores(labels, pred)
    cleanlab_seconds = time.process_time() - started
    result = {
        "store": args.runs, "estimate": args.estimate, "networks": len(rows), "planted_flips": int(flipped.sum()),
        "pool": len(labels), "reference": len(check.reference), "fdr": args.fdr,
        "retraining_cpu_seconds": seconds, "max_difference_from_saved_heldout_margin": same,
        "ours": {**flag_scores(bh_adjusted(p) <= args.fdr, flipped, kinds),
                 **listing_scores(-np.nan_to_num(check.heldout_margin, nan=np.inf), flipped),
                 "cpu_seconds": ours_seconds},
        "cleanlab": {**flag_scores(np.asarray(issues, bool), flipped, kinds), **listing_scores(-quality, flipped),
                     "cpu_seconds": cleanlab_seconds},
    }
    for name in ("ours", "cleanlab"):
        r = result[name]
        print(f"{name:9s} flagged {r['flagged']:5d} (flips {r['flips_flagged']}) precision {r['precision']:.2f} "
              f"recall {r['recall']:.3f} | listing AUC {r['auc']:.4f}, precision at recall 0.5 "
              f"{r['precision_at_recall_0.5']:.2f}, at 0.9 {r['precision_at_recall_0.9']:.2f}, top-{result['planted_flips']} "
              f"{r['precision_at_k_flips']:.2f} | {r['cpu_seconds']:.2f} CPU-s | other flags: {r['other_flags']}")
    print(f"reference {result['reference']} source test images; saved label check reproduced within {same}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        np.savez(Path(args.out).with_suffix(".npz"), heldout_margin=check.heldout_margin, reference=check.reference,
                 reference_labels=test_y, p=p, labels=labels, flipped=flipped, cleanlab_issues=np.asarray(issues, bool))


if __name__ == "__main__":
    main()
