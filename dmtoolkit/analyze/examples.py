"""Example-level analyses: leakage (source copies of target test images) and mislabel candidates.

Detectors look only at the estimate (and, for the near-duplicate score shown beside each pair, at the
images); planted ground truth is read afterwards, only to score what the detectors returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmtoolkit.analyze.estimates import (
    Estimate,
    load_estimate,
    open_source_store,
    require_kind,
)
from dmtoolkit.analyze.options import DETECT_TOP, LEAK_RANKINGS, MISLABEL_SCORES
from dmtoolkit.analyze.results import (
    LeakageReport,
    LeakageScore,
    LeakPair,
    MislabelCandidate,
    MislabelReport,
    MislabelScore,
)
from dmtoolkit.errors import UserError

COMPARE_SIZE = 16


def normalise_images(images: np.ndarray, size: int = COMPARE_SIZE) -> np.ndarray:
    """uint8 (n, H, W, C) -> float (n, size*size): grey, resized (bilinear, antialiased), in [0, 1]."""
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0).mean(1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.reshape(len(x), -1).double().numpy()


def near_duplicate_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel near-duplicate score of each pair (a[i], b[i]): Pearson correlation after resizing, in [-1, 1].

    1 means identical up to brightness and contrast; a constant image scores 0.
    """
    x, y = normalise_images(a), normalise_images(b)
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    denom = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    return np.where(denom > 0, (x * y).sum(1) / np.where(denom > 0, denom, 1), 0.0)


def per_target_z(matrix: np.ndarray) -> np.ndarray:
    """Each column standardised over the source examples: (x − mean) / std, NaN ignored; 0 where std is 0.

    Targets whose margins vary a lot get large influences everywhere; ranking z-scores asks instead which
    source example stands out *for that target*, as a copy of it should.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, std = np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
        return np.where(std > 0, (matrix - mean) / np.where(std > 0, std, 1), 0.0)


def two_way_z(matrix: np.ndarray) -> np.ndarray:
    """Standardised within its target column plus within its source row.

    A copy of a target stands out both among the sources for that target and among the targets for that
    source; a source that helps many look-alike targets (an in-distribution image, a near-duplicate of a
    whole class) stands out only in the first way.
    """
    return per_target_z(matrix) + per_target_z(matrix.T).T


# one scorer per name in options.LEAK_RANKINGS (the names the CLI offers), in the same order
LEAK_SCORERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "two-way-z": two_way_z, "target-z": per_target_z, "influence": lambda m: m}


def _example_estimate(path: str | Path, command: str) -> Estimate:
    est = load_estimate(path)
    require_kind(est, "example", command)
    return est


def top_pairs(matrix: np.ndarray, n: int, one_per_source: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(unit, column) indices of the n largest finite entries, largest first (ties: row-major order).

    With `one_per_source`, each unit contributes only its largest entry.
    """
    scores = np.where(np.isfinite(matrix), matrix, -np.inf)
    if one_per_source:
        defined = np.flatnonzero(np.isfinite(matrix).any(1))
        best = np.argmax(scores[defined], axis=1)
        order = np.argsort(-scores[defined, best], kind="stable")[:n]
        return defined[order], best[order]
    n = min(n, int(np.isfinite(matrix).sum()))
    order = np.argsort(-scores.ravel(), kind="stable")[:n]
    return np.unravel_index(order, matrix.shape)


def detect_leakage(path: str | Path, *, top: int = DETECT_TOP, store: str | Path | None = None,
                   ranking: str = LEAK_RANKINGS[0], all_pairs: bool = False) -> LeakageReport:
    """(source example, target example) pairs ranked by example-level influence, each with a pixel score.

    `ranking` scores each pair (see LEAK_RANKINGS); by default each source example is flagged at most once,
    with its best-scoring target (a copy has one twin; `all_pairs` lists every pair instead).
    With planted ground truth in the store, adds precision@k / recall@k (k = top) for planted leaks
    (the exact pair) and the number of flagged pairs whose source example is a planted decoy.
    The report keeps the images of each pair (read for the pixel score anyway) for figures.
    """
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    if ranking not in LEAK_RANKINGS:
        raise UserError(f"ranking {ranking!r} is not one of {', '.join(LEAK_RANKINGS)}")
    est = _example_estimate(path, "leakage")
    scores = LEAK_SCORERS[ranking](est.matrix)
    units, columns = top_pairs(np.where(np.isfinite(est.matrix), scores, np.nan), top, one_per_source=not all_pairs)
    targets = est.target_index[columns]
    with open_source_store(est, store) as run:
        src_images, tgt_images = run.source_images(units), run.target_images(targets)
        src_labels, tgt_labels = run.source_labels, run.target_labels
        src_names, tgt_names = run.source_class_names, run.target_class_names
        planted = run.planted()  # scoring only: read after detection
    pixel = near_duplicate_scores(src_images, tgt_images) if len(units) else np.zeros(0)
    pairs = tuple(LeakPair(rank=r + 1, source=int(i), source_id=est.unit_names[i],
                           source_label=src_names[src_labels[i]], target=int(j), target_label=tgt_names[tgt_labels[j]],
                           influence=float(est.matrix[i, c]), ranking_score=float(scores[i, c]), pixel_score=float(s))
                  for r, (i, c, j, s) in enumerate(zip(units, columns, targets, pixel)))
    score = None
    if planted is not None:
        score = score_leakage(units, targets, planted.leak_target, planted.decoy_target, est.target_index)
    return LeakageReport(file=str(est.path), estimator=est.estimator, ranking=ranking, one_per_source=not all_pairs,
                         pairs=pairs, planted=score, source_images=src_images, target_images=tgt_images)


def score_leakage(units: np.ndarray, targets: np.ndarray, leak: np.ndarray, decoy: np.ndarray,
                  covered_targets: np.ndarray) -> LeakageScore:
    """precision@k and recall@k of flagged (source, target) pairs against planted leaks; decoys flagged."""
    k = len(units)
    hits = int(sum(leak[i] == j for i, j in zip(units, targets)))
    findable = int(np.isin(leak[leak >= 0], covered_targets).sum())
    return LeakageScore(k=k, planted_leaks=findable, hits=hits,
                        precision_at_k=hits / k if k else None,
                        recall_at_k=hits / findable if findable else None,
                        decoys_flagged=int(sum(decoy[i] >= 0 for i in units)))


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for `positive` (Mann-Whitney, ties count half); None if undefined."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mislabel_scores(matrix: np.ndarray, by: str) -> np.ndarray:
    """Per source example, how much it hurts: its mean influence over the targets, or its most negative one
    ("worst": a mislabelled image does its harm on the few targets that resemble it, which a mean dilutes).
    NaN where no entry is defined."""
    finite = np.isfinite(matrix)
    with np.errstate(invalid="ignore"):
        if by == "worst":
            return np.where(finite.any(1), np.where(finite, matrix, np.inf).min(1), np.nan)
        counts = finite.sum(1)
        return np.where(counts > 0, np.where(finite, matrix, 0).sum(1) / np.maximum(counts, 1), np.nan)


def detect_mislabels(path: str | Path, *, top: int = DETECT_TOP, store: str | Path | None = None,
                     by: str = MISLABEL_SCORES[0]) -> MislabelReport:
    """Source examples ranked by how much they hurt the target set (`mislabel_scores`), most harmful first.

    With planted label flips in the store, adds the AUC of (− score) for flipped examples and
    precision@k (k = top).
    """
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    if by not in MISLABEL_SCORES:
        raise UserError(f"by={by!r} is not one of {', '.join(MISLABEL_SCORES)}")
    est = _example_estimate(path, "mislabels")
    score = mislabel_scores(est.matrix, by)
    defined = np.flatnonzero(np.isfinite(score))
    flagged = defined[np.argsort(score[defined], kind="stable")][:top]
    with open_source_store(est, store) as run:
        labels, names = run.source_labels, run.source_class_names
        planted = run.planted()  # scoring only: read after detection
    flipped = planted.flipped.astype(bool) if planted is not None else None
    candidates = tuple(MislabelCandidate(
        rank=r + 1, source=int(i), source_id=est.unit_names[i], label=names[labels[i]], score=float(score[i]),
        planted_flip=None if flipped is None else bool(flipped[i]),
        original_label=None if planted is None else names[planted.original_labels[i]]) for r, i in enumerate(flagged))
    scored = None
    if flipped is not None:
        k = len(flagged)
        scored = MislabelScore(k=k, flipped=int(flipped.sum()), auc=auc(-score[defined], flipped[defined]),
                               precision_at_k=float(flipped[flagged].mean()) if k else None,
                               hits=int(flipped[flagged].sum()))
    return MislabelReport(file=str(est.path), estimator=est.estimator, by=by, candidates=candidates, planted=scored)
