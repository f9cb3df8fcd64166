"""Example-level analyses: leakage (source copies of target test images) and mislabel candidates.

Detectors look only at the estimate (and, for the near-duplicate score shown beside each pair, at the
images); planted ground truth is read afterwards, only to score what the detectors returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dmtoolkit.analyze.estimates import (
    Estimate,
    load_estimate,
    require_kind,
    store_path_of,
)
from dmtoolkit.errors import UserError
from dmtoolkit.store import RunStore

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


def _example_estimate(path: str | Path, command: str) -> Estimate:
    est = load_estimate(path)
    require_kind(est, "example", command)
    return est


def top_pairs(matrix: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit, column) indices of the n largest finite entries, largest first (ties: row-major order)."""
    flat = np.where(np.isfinite(matrix), matrix, -np.inf).ravel()
    n = min(n, int(np.isfinite(matrix).sum()))
    order = np.argsort(-flat, kind="stable")[:n]
    return np.unravel_index(order, matrix.shape)


def per_target_z(matrix: np.ndarray) -> np.ndarray:
    """Each column standardised over the source examples: (x − mean) / std, NaN ignored; 0 where std is 0.

    Targets whose margins vary a lot get large influences everywhere; ranking z-scores asks instead which
    source example stands out *for that target*, as a copy of it should.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, std = np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
        return np.where(std > 0, (matrix - mean) / np.where(std > 0, std, 1), 0.0)


def detect_leakage(path: str | Path, *, top: int = 20, store: str | Path | None = None, per_target: bool = False,
                   png: str | Path | None = None, png_pairs: int = 12) -> dict[str, Any]:
    """(source example, target example) pairs ranked by example-level influence, each with a pixel score.

    `per_target=True` ranks by the influence standardised within each target (see `per_target_z`).
    With planted ground truth in the store, adds precision@k / recall@k (k = top) for planted leaks
    (the exact pair) and the number of flagged pairs whose source example is a planted decoy.
    """
    if top < 1:
        raise UserError(f"--top {top} must be at least 1")
    est = _example_estimate(path, "leakage")
    ranking = per_target_z(est.matrix) if per_target else est.matrix
    units, columns = top_pairs(np.where(np.isfinite(est.matrix), ranking, np.nan), top)
    targets = est.target_index[columns]
    with RunStore(store_path_of(est, store)) as run:
        f = run.file
        src_images = np.stack([f["source/images"][i] for i in units]) if len(units) else None
        tgt_images = np.stack([f["target/images"][j] for j in targets]) if len(units) else None
        src_labels, tgt_labels = f["source/labels"][()], f["target/labels"][()]
        src_names, tgt_names = run.strings("source/class_names"), run.strings("target/class_names")
        scores = near_duplicate_scores(src_images, tgt_images) if len(units) else np.zeros(0)
        pairs = [{"rank": r + 1, "source": int(i), "source_id": est.unit_names[i],
                  "source_label": src_names[src_labels[i]], "target": int(j), "target_label": tgt_names[tgt_labels[j]],
                  "influence": float(est.matrix[i, c]), "ranking_score": float(ranking[i, c]), "pixel_score": float(s)}
                 for r, (i, c, j, s) in enumerate(zip(units, columns, targets, scores))]
        result: dict[str, Any] = {"file": str(est.path), "estimator": est.estimator,
                                  "ranking": "per-target z-score" if per_target else "influence", "pairs": pairs}
        if run.has_planted:  # scoring only: read after detection
            leak, decoy = f["source/planted_leak"][()], f["source/planted_decoy"][()]
            result["planted"] = score_leakage(units, targets, leak, decoy, est.target_index)
    if png is not None:
        from dmtoolkit.report.plots import pair_grid
        shown = pairs[:png_pairs]
        pair_grid([(src_images[p["rank"] - 1], tgt_images[p["rank"] - 1]) for p in shown],
                  [f"#{p['rank']} src {p['source_id']} / tgt {p['target']}  infl {p['influence']:+.3f}  "
                   f"pix {p['pixel_score']:.2f}" for p in shown], "Leakage candidates (source | target)", png)
    return result


def score_leakage(units: np.ndarray, targets: np.ndarray, leak: np.ndarray, decoy: np.ndarray,
                  covered_targets: np.ndarray) -> dict[str, Any]:
    """precision@k and recall@k of flagged (source, target) pairs against planted leaks; decoys flagged."""
    k = len(units)
    hits = int(sum(leak[i] == j for i, j in zip(units, targets)))
    findable = int(np.isin(leak[leak >= 0], covered_targets).sum())
    return {"k": k, "planted_leaks": findable, "hits": hits,
            "precision_at_k": hits / k if k else None,
            "recall_at_k": hits / findable if findable else None,
            "decoys_flagged": int(sum(decoy[i] >= 0 for i in units))}


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for `positive` (Mann-Whitney, ties count half); None if undefined."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detect_mislabels(path: str | Path, *, top: int = 20, store: str | Path | None = None) -> dict[str, Any]:
    """Source examples ranked by mean influence over the target set, most negative first.

    With planted label flips in the store, adds the AUC of (− mean influence) for flipped examples and
    precision@k (k = top).
    """
    if top < 1:
        raise UserError(f"--top {top} must be at least 1")
    est = _example_estimate(path, "mislabels")
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(est.matrix)
        counts = finite.sum(1)
        mean = np.where(counts > 0, np.where(finite, est.matrix, 0).sum(1) / np.maximum(counts, 1), np.nan)
    defined = np.flatnonzero(np.isfinite(mean))
    order = defined[np.argsort(mean[defined], kind="stable")]
    flagged = order[:top]
    with RunStore(store_path_of(est, store)) as run:
        f = run.file
        labels, names = f["source/labels"][()], run.strings("source/class_names")
        candidates = [{"rank": r + 1, "source": int(i), "source_id": est.unit_names[i],
                       "label": names[labels[i]], "mean_influence": float(mean[i])} for r, i in enumerate(flagged)]
        result: dict[str, Any] = {"file": str(est.path), "estimator": est.estimator, "candidates": candidates}
        if run.has_planted:  # scoring only: read after detection
            flipped = f["source/planted_flip"][()].astype(bool)
            original = f["source/original_labels"][()]
            for c in candidates:
                c["planted_flip"] = bool(flipped[c["source"]])
                c["original_label"] = names[original[c["source"]]]
            k = len(flagged)
            result["planted"] = {
                "k": k, "flipped": int(flipped.sum()),
                "auc": auc(-mean[defined], flipped[defined]),
                "precision_at_k": float(flipped[flagged].mean()) if k else None,
                "hits": int(flipped[flagged].sum()),
            }
    return result
