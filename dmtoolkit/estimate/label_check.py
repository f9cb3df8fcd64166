"""Does a pool image's own label agree with networks that never saw it? The out-of-sample label check that
`dmtoolkit mislabels` flags from when an estimate carries it.

A few-network estimator that retrains networks on the store's subsets (the gradient estimator) holds, for every
pool image, networks that were *not* trained on it: to them the image is as unseen as a test image. Each network
gives every pool image its stated-label margin (source logit of its label minus the largest other,
`Network.source_task_margin`) and the same for the held-out source test images. Per pool image, the mean of that
margin over the networks that did not train on it is its score (`heldout_margin`; NaN when every network trained
on it); a flipped label makes it strongly negative. Ordinary hard images are misclassified out of sample too, so
the score alone is no evidence; the reference is the source test images, correctly labelled and unseen by every
network, each scored the same way over the held-out pattern of a pool image drawn at random (so reference and
pool scores average over equally many, equally related networks). The conformal p-value of a pool image's score
against that reference (`dmtoolkit.stats.pvalues.conformal_pvalues`) is valid when correctly labelled pool images
are exchangeable with the test images, and Benjamini–Hochberg over those p-values controls the share of false
flags. Its power is bounded by the reference's size n: no p-value is below 1 / (n + 1), so with P pool images it
can flag only when about P / (fdr · (n + 1)) images or more each look worse than every reference image.

The subset models of an example-level store are such networks too: the built-in trainer (and any trainer that
returns them) records every model's stated-label margins on the whole pool and the source test set
(`source_margins`, `source_test_margins`), so every estimate fitted on such a store carries the label check of
its fitting models (`store_label_check`), whatever its estimator.

Measured at the 52,376-image pool (docs/gradient.md, "The label check"; `benchmarks/label_check_study.py`
puts it beside cleanlab on the same networks) and on the example stores (docs/signal.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmtoolkit.estimate.base import ExtraDataset
from dmtoolkit.store import RunStore

HELDOUT, NETWORKS, REFERENCE = "label_check/heldout_margin", "label_check/heldout_networks", "label_check/reference"
PATTERN_SEED = 20261206  # which pool image's held-out pattern each reference image is scored over


@dataclass(frozen=True)
class LabelCheck:
    """Per pool image, its mean stated-label margin over the networks not trained on it (`heldout_margin`, NaN
    when none) and how many they were (`heldout_networks`); `reference`, the same score of each held-out source
    test image (see the module docstring)."""

    heldout_margin: np.ndarray
    heldout_networks: np.ndarray
    reference: np.ndarray

    def pvalues(self) -> np.ndarray:
        """Per pool image, the conformal p-value of its label disagreeing more than the reference's."""
        from dmtoolkit.stats.pvalues import conformal_pvalues

        return conformal_pvalues(self.heldout_margin, self.reference)

    def datasets(self) -> list[ExtraDataset]:
        return [
            ExtraDataset(HELDOUT, self.heldout_margin.astype(np.float32),
                         "mean stated-label source margin of each pool example over the models (networks) not trained on "
                         "it (NaN: every model trained on it)", "unit", "source margin"),
            ExtraDataset(NETWORKS, self.heldout_networks.astype(np.int32),
                         "how many models (networks) were not trained on each pool example", "unit", "models"),
            ExtraDataset(REFERENCE, self.reference.astype(np.float32),
                         "the same score for each held-out source test example, over the held-out models of a "
                         f"pool example drawn at random (seed {PATTERN_SEED}): the null of a correct label",
                         "source test example", "source margin"),
        ]


def reference_patterns(trained: np.ndarray, tests: int, seed: int = PATTERN_SEED) -> np.ndarray:
    """(tests,) the pool image whose held-out pattern each reference image is scored over: drawn at random among
    those with at least one network not trained on them. `trained` (networks, P) bool."""
    return patterns_among((~np.asarray(trained, bool)).any(0), tests, seed)


def patterns_among(held_somewhere: np.ndarray, tests: int, seed: int = PATTERN_SEED) -> np.ndarray:
    """`reference_patterns` given only which pool images some network was not trained on (P,) bool."""
    candidates = np.flatnonzero(held_somewhere)
    if len(candidates) == 0:
        return np.zeros(0, np.int64)
    return np.random.default_rng(seed).choice(candidates, size=tests, replace=True)


def label_check(networks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], patterns: np.ndarray) -> LabelCheck:
    """Reduce per-network (pool margins (P,), test margins (n,), trained (P,) bool) to the label check, one
    network at a time; `patterns` (n,) from `reference_patterns` over the same networks' `trained`."""
    total = count = ref_total = ref_count = None
    for pool_margin, test_margin, trained in networks:
        held = ~np.asarray(trained, bool)
        if total is None:
            total, count = np.zeros(len(held)), np.zeros(len(held), np.int64)
            ref_total, ref_count = np.zeros(len(patterns)), np.zeros(len(patterns), np.int64)
        total += np.where(held, pool_margin, 0.0)
        count += held
        ref_held = held[patterns]
        ref_total += np.where(ref_held, test_margin, 0.0)
        ref_count += ref_held
    if total is None:
        raise ValueError("no networks")
    with np.errstate(invalid="ignore", divide="ignore"):
        return LabelCheck(np.where(count > 0, total / np.maximum(count, 1), np.nan), count,
                          ref_total / np.maximum(ref_count, 1))


def store_label_check(store: RunStore, rows: np.ndarray, block: int = 256) -> LabelCheck | None:
    """The label check over the store's models `rows`, from the stated-label margins their trainer recorded
    (`source_margins`, `source_test_margins`); rows without them are skipped. None when the store keeps none
    (class level, older stores, trainers that give none) or has no source test examples to compare with.
    Reads `block` rows at a time, so memory stays bounded for large pools."""
    pool_margins, test_margins = store.source_margins, store.source_test_margins
    if pool_margins is None or test_margins is None or test_margins.shape[1] == 0:
        return None
    rows = np.sort(np.asarray(rows, np.int64))
    usable, held_somewhere = [], np.zeros(pool_margins.shape[1], bool)
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        given = np.isfinite(test_margins[chunk]).all(1) & np.isfinite(pool_margins[chunk]).all(1)
        if given.any():
            usable.append(chunk[given])
            held_somewhere |= (~np.asarray(store.masks[chunk[given]], bool)).any(0)
    usable = np.concatenate(usable) if usable else np.zeros(0, np.int64)
    if len(usable) == 0:
        return None

    def models():
        for start in range(0, len(usable), block):
            chunk = usable[start:start + block]
            masks, pool, test = store.masks[chunk], pool_margins[chunk], test_margins[chunk]
            for r in range(len(chunk)):
                yield pool[r].astype(np.float64), test[r].astype(np.float64), masks[r]

    return label_check(models(), patterns_among(held_somewhere, test_margins.shape[1]))


def read_label_check(path: str | Path) -> LabelCheck | None:
    """The label check an estimate file carries (None when it has none)."""
    import h5py

    with h5py.File(path, "r") as f:
        if HELDOUT not in f or REFERENCE not in f:
            return None
        return LabelCheck(f[HELDOUT][()], f[NETWORKS][()], f[REFERENCE][()])
