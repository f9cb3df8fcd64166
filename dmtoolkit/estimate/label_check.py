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

Measured at the 52,376-image pool (docs/gradient.md, "The label check"; `benchmarks/label_check_study.py`
puts it beside cleanlab on the same networks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmtoolkit.estimate.base import ExtraDataset

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
                         "mean stated-label source margin of each pool example over the networks not trained on it "
                         "(NaN: every network trained on it)", "unit", "source margin"),
            ExtraDataset(NETWORKS, self.heldout_networks.astype(np.int32),
                         "how many networks were not trained on each pool example", "unit", "networks"),
            ExtraDataset(REFERENCE, self.reference.astype(np.float32),
                         "the same score for each held-out source test example, over the held-out networks of a "
                         f"pool example drawn at random (seed {PATTERN_SEED}): the null of a correct label",
                         "source test example", "source margin"),
        ]


def reference_patterns(trained: np.ndarray, tests: int, seed: int = PATTERN_SEED) -> np.ndarray:
    """(tests,) the pool image whose held-out pattern each reference image is scored over: drawn at random among
    those with at least one network not trained on them. `trained` (networks, P) bool."""
    candidates = np.flatnonzero((~np.asarray(trained, bool)).any(0))
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


def read_label_check(path: str | Path) -> LabelCheck | None:
    """The label check an estimate file carries (None when it has none)."""
    import h5py

    with h5py.File(path, "r") as f:
        if HELDOUT not in f or REFERENCE not in f:
            return None
        return LabelCheck(f[HELDOUT][()], f[NETWORKS][()], f[REFERENCE][()])
