"""Example-level analyses: leakage (source copies of target test images) and mislabel candidates.

Detectors look only at the estimate (and, for the near-duplicate score shown beside each pair, at the
images); planted ground truth is read afterwards, only to score what the detectors returned.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmtoolkit.analyze.estimates import (
    Estimate,
    OpenedEstimate,
    as_opened,
    require_kind,
)
from dmtoolkit.analyze.evidence import fdr_phrase
from dmtoolkit.analyze.features import feature_similarity
from dmtoolkit.analyze.options import (
    DETECT_FDR,
    DETECT_TOP,
    LEAK_RANKINGS,
    MIN_EVIDENCE_DOF,
    MISLABEL_SCORES,
    NEAR_DUPLICATE,
)
from dmtoolkit.analyze.results import (
    LeakageReport,
    LeakageScore,
    LeakPair,
    MislabelCandidate,
    MislabelReport,
    MislabelScore,
    SourceCopy,
)
from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.refit import refit_on_values
from dmtoolkit.estimate.registry import estimator_entry
from dmtoolkit.stats.pvalues import bh_adjusted, check_fdr, one_sided_pvalues, simes
from dmtoolkit.stats.ranking import rank_order

SHIFT = 1
"""Pixels a source image may be shifted by (each way) when compared: a near copy may be moved by one pixel."""


def _grey(images: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 (n, H, W, C) -> float (n, h, w) grey in [0, 1], resized (bilinear, antialiased) to `size`."""
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0).mean(1, keepdim=True)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(len(x), -1).double()
    x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, 1), 0.0)


def _shifted(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """Every copy of the images moved by up to `shift` pixels each way (zero fill), no shift first."""
    padded = F.pad(x, (shift, shift, shift, shift))
    h, w = x.shape[-2:]
    offsets = sorted(((dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)),
                     key=lambda o: (o != (0, 0), o))
    return [padded[:, shift + dy: shift + dy + h, shift + dx: shift + dx + w] for dy, dx in offsets]


def near_duplicate_matrix(source: np.ndarray, target: np.ndarray, *, shift: int = SHIFT) -> np.ndarray:
    """Pixel near-duplicate score of every (source, target) pair, (n_source, n_target) in [-1, 1].

    Pearson correlation of the grey images at the source resolution (targets resized to it), maximised
    over shifts of the source image by up to `shift` pixels: 1 means identical up to brightness and
    contrast (a copy, or a copy moved by a pixel); a constant image scores 0.
    """
    src = _grey(source, None)
    tgt = _unit_rows(_grey(target, tuple(src.shape[-2:])))
    best = None
    for moved in _shifted(src, shift):
        scores = _unit_rows(moved) @ tgt.T
        best = scores if best is None else torch.maximum(best, scores)
    return best.numpy() if best is not None else np.zeros((len(source), len(target)))


def near_duplicate_scores(a: np.ndarray, b: np.ndarray, *, shift: int = SHIFT) -> np.ndarray:
    """`near_duplicate_matrix` of each pair (a[i], b[i]) only."""
    if len(a) == 0:
        return np.zeros(0)
    return np.array([near_duplicate_matrix(a[i: i + 1], b[i: i + 1], shift=shift)[0, 0] for i in range(len(a))])


SCAN_BLOCK = 1 << 22
"""Floats per block of the copy scan (each operand and each score block at most about this many)."""

SCAN_SLACK = 1e-4
"""The float32 scan keeps pairs within this of the threshold; each is then rescored exactly (float64)."""


@dataclass(frozen=True)
class CopyScan:
    """Every (source, target) pair of an exhaustive copy scan: pixel score ≥ the threshold, or byte-identical.

    source / target: indices into the scanned arrays; score: `near_duplicate_matrix` of the pair (exact, float64,
    for identical pairs and near the threshold; to float32 precision, about 1e-6, elsewhere);
    exact: the two images are identical (same shape, max abs pixel difference 0). Exact pairs first (by source,
    then target index), then near pairs by score (highest first), then by source and target index.
    """

    source: np.ndarray
    target: np.ndarray
    score: np.ndarray
    exact: np.ndarray

    def __len__(self) -> int:
        return len(self.source)


def _canonical(image: np.ndarray) -> np.ndarray:
    """An H×W×C image with its colour channels folded to one when they are all equal: a grey image stored as RGB
    (as a folder read as 3 channels keeps it) is the same picture as the grey original."""
    if image.ndim == 3 and image.shape[-1] > 1 and (image == image[..., :1]).all():
        return image[..., :1]
    return image


def _digest(image: np.ndarray) -> bytes:
    image = np.ascontiguousarray(_canonical(image))
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).digest()


def _exact_pairs(source: np.ndarray, target: np.ndarray) -> set[tuple[int, int]]:
    """(source, target) index pairs whose images are identical pixel for pixel (after folding equal colour
    channels, `_canonical`), by hashing every image once."""
    if source.shape[1:3] != target.shape[1:3]:
        return set()
    by_bytes: dict[bytes, list[int]] = {}
    for j in range(len(target)):
        by_bytes.setdefault(_digest(target[j]), []).append(j)
    pairs = set()
    for i in range(len(source)):
        for j in by_bytes.get(_digest(source[i]), ()):
            if np.array_equal(_canonical(source[i]), _canonical(target[j])):
                pairs.add((i, j))
    return pairs


_COPY_SCANS: dict[tuple[int, int, int, int, float], CopyScan] = {}  # (store file identity, threshold) -> its scan


def find_copies(source: np.ndarray, target: np.ndarray, *, threshold: float, shift: int = SHIFT,
                block: int = SCAN_BLOCK) -> CopyScan:
    """Every source image that copies a target image: pixel score ≥ `threshold` or identical pixels.

    Exhaustive (every source against every target) and blocked: the grey images, normalised to zero mean and
    unit norm, become matrices whose products are the correlations; a source block is shifted by up to `shift`
    pixels (as `near_duplicate_matrix`), each shift multiplied by each target block in float32 (at most about
    `block` floats per operand and per score block; the normalised targets are kept between source blocks
    when they take at most 16 blocks, else recomputed), the best shift kept. Pairs within SCAN_SLACK of the
    threshold are rescored in float64 by `near_duplicate_matrix` itself, so whether a pair is kept does not
    depend on float32 rounding. Byte-identical pairs are found by hashing and kept whatever their score (a
    constant image scores 0 but is still a copy).
    """
    source, target = np.asarray(source), np.asarray(target)
    rows, cols, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    if len(source) and len(target):
        size = tuple(_grey(source[:1], None).shape[-2:])
        pixels = size[0] * size[1]
        per_target = max(1, min(len(target), block // pixels))
        per_source = max(1, min(len(source), block // max(pixels, per_target)))
        starts = range(0, len(target), per_target)
        prepare = lambda t: _unit_rows(_grey(target[t: t + per_target], size)).float()  # noqa: E731
        kept = [prepare(t) for t in starts] if len(target) * pixels <= 16 * block else None  # else: per source block
        for s in range(0, len(source), per_source):
            moved = [_unit_rows(m).float() for m in _shifted(_grey(source[s: s + per_source], None), shift)]
            offset = 0
            for tgt in kept if kept is not None else map(prepare, starts):
                best = moved[0] @ tgt.T
                for m in moved[1:]:
                    torch.maximum(best, m @ tgt.T, out=best)
                i, j = torch.nonzero(best >= threshold - SCAN_SLACK, as_tuple=True)
                rows.append(i.numpy() + s)
                cols.append(j.numpy() + offset)
                scores.append(best[i, j].double().numpy())
                offset += len(tgt)
    i, j, score = (np.concatenate(x) for x in (rows, cols, scores))
    exact_pairs = _exact_pairs(source, target)
    missing = sorted(exact_pairs - set(zip(i.tolist(), j.tolist())))
    if missing:
        extra_i, extra_j = (np.array(x, np.int64) for x in zip(*missing))
        i, j = np.concatenate([i, extra_i]), np.concatenate([j, extra_j])
        score = np.concatenate([score, np.full(len(missing), np.nan)])
    exact = np.array([(a, b) in exact_pairs for a, b in zip(i.tolist(), j.tolist())], bool)
    band = exact | ~(score >= threshold + SCAN_SLACK)  # exact, near the threshold or not scored: rescore in float64
    if band.any():
        score[band] = near_duplicate_scores(source[i[band]], target[j[band]], shift=shift)
    score = np.clip(score, -1.0, 1.0)  # rounding can put a copy's correlation a hair above 1
    keep = exact | (score >= threshold)
    i, j, score, exact = i[keep], j[keep], score[keep], exact[keep]
    order = np.lexsort((j, i, np.where(exact, 0.0, -score), ~exact))
    return CopyScan(i[order], j[order], score[order], exact[order])


def per_target_z(matrix: np.ndarray) -> np.ndarray:
    """Each column standardised over the source examples: (x − mean) / std, NaN ignored; 0 where std is 0.

    Targets whose margins vary a lot get large influences everywhere; ranking z-scores asks instead which
    source example stands out *for that target*, as a copy of it should.
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN (undefined) column: NaN, scored 0 below
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


def _example_estimate(path: str | Path | OpenedEstimate, store: str | Path | None, command: str) -> OpenedEstimate:
    opened = as_opened(path, store)
    require_kind(opened.estimate, "example", command)
    return opened


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


def _influence_pvalues(est: Estimate, side: str) -> tuple[np.ndarray | None, str]:
    """One-sided p-values of every entry from the estimate's standard errors, and how they were made (or why
    there are none)."""
    if est.stderr is None:
        if est.attrs.get("stderr_missing"):  # the estimator says why this estimate has none (e.g. one network)
            return None, str(est.attrs["stderr_missing"])
        return None, (f"{est.estimator} estimates carry no standard errors, so no p-values and nothing is flagged; "
                      "for evidence thresholds fit `dmtoolkit influence` (difference of means or regression)")
    if not np.isfinite(est.stderr).any():
        return None, ("the estimate's standard errors are undefined (fewer than 2 draws: one orthogonal "
                      "block or pair), so no p-values and nothing is flagged; train more models")
    method = est.attrs.get("stderr_method", "standard errors")
    dof = est.stderr_dof
    law = f"Student t, {dof} dof" if dof else "normal"
    evidence = f"one-sided p-values from {method} ({law})"
    if dof is not None and dof < MIN_EVIDENCE_DOF and estimator_entry(est.estimator).retrains:
        evidence += (f"; only {dof + 1} networks, so every p-value rests on the same few networks and the FDR is "
                     "not guaranteed: fit more networks (--models)")
    elif dof is not None and dof < MIN_EVIDENCE_DOF:
        evidence += (f"; only {dof + 1} draws, so every p-value rests on the same few draw means and the "
                     "FDR is not guaranteed: train more models (more pairs or blocks)")
    return one_sided_pvalues(est.matrix, est.stderr, dof, side), evidence


def _best(scores: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row with any `where`, the column of its largest score among them: (rows, columns)."""
    rows = np.flatnonzero(where.any(1))
    columns = np.argmax(np.where(where[rows], scores[rows], -np.inf), axis=1)
    return rows, columns


def detect_leakage(path: str | Path | OpenedEstimate, *, fdr: float = DETECT_FDR, top: int = DETECT_TOP,
                   store: str | Path | None = None, ranking: str = LEAK_RANKINGS[0], all_pairs: bool = False,
                   near_duplicate: float = NEAR_DUPLICATE, features: bool = True,
                   device: str | None = None) -> LeakageReport:
    """Source examples that copy a target test image: by their pixels, and by their influence on it.

    Pixel evidence first, and without models: every source example is compared with every target test image
    of the run store (`find_copies`: identical pixels, or pixel score ≥ `near_duplicate`, a shift-tolerant
    correlation); each such pair is a copy (`LeakageReport.copies`), contamination whatever the estimate says,
    and its source is among the ids to remove. Influence evidence: one-sided p-values of influence > 0 from
    the estimate's design-valid standard errors, Benjamini–Hochberg over every (source, covered target) pair at
    `fdr`. It confirms copies the models learned from (`SourceCopy.confirmed`); a pair with both is a likely
    copy and is flagged (one per source example, its most significant); significant pairs without
    near-duplicate content are listed as influence only (look-alikes, or altered copies pixels miss), near
    duplicates without significant influence as near duplicate only. Besides, the `top` pairs by `ranking` are
    listed for browsing (each source once unless `all_pairs`). Planted ground truth, when the store has it, is
    read after detection to score the flagged set and, beside it, the influence-only and pixel-only detectors
    and the top-k list. With `features`, every listed pair also gets a feature-space similarity from one model
    trained on the whole pool with the run's recipe (`feature_similarity`, a few seconds on `device`); it is
    shown, not used to flag.
    """
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    if ranking not in LEAK_RANKINGS:
        raise UserError(f"ranking {ranking!r} is not one of {', '.join(LEAK_RANKINGS)}")
    check_fdr(fdr)
    opened = _example_estimate(path, store, "leakage")
    est = opened.estimate
    with opened.using_store() as run:  # a stale or foreign store is refused before any arithmetic
        run.require(Capability.IMAGES, "leakage")
        defined = np.isfinite(est.matrix)
        scores = np.where(defined, LEAK_SCORERS[ranking](est.matrix), np.nan)
        p, evidence = _influence_pvalues(est, "greater")
        pool = run.source_images(np.arange(est.matrix.shape[0]))
        target_test = run.target_images(np.arange(run.num_targets))
        src_labels, tgt_labels = run.source_labels, run.target_labels
        src_names, tgt_names = run.source_class_names, run.target_class_names
        feature, feature_note = None, "feature similarity not computed (features=False)"
        if features and not run.has(Capability.BUILTIN_NETWORKS):
            feature_note = (f"feature similarity not computed: this store's rows come from trainer "
                            f"{run.trainer}, whose features the toolkit cannot read")
        elif features:
            similarity = feature_similarity(run, device=device)
            feature = similarity.matrix[:, est.target_index]
            feature_note = (f"feature similarity: cosine of standardised {similarity.layer} features of one model "
                            f"trained on the whole pool (seed {similarity.seed}, {similarity.seconds:.0f} s)")
        planted = run.planted()  # scoring only: read after detection
        st = os.stat(run.path)  # one scan per store file as it is now and threshold (the report asks several times)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, near_duplicate)
    targets_all = target_test[est.target_index]
    scan = _COPY_SCANS.get(key)
    if scan is None:
        scan = _COPY_SCANS[key] = find_copies(pool, target_test, threshold=near_duplicate)
    column_of = {int(j): c for c, j in enumerate(est.target_index)}
    covered = np.array([int(j) in column_of for j in scan.target], bool)
    scan_columns = np.array([column_of.get(int(j), -1) for j in scan.target], np.int64)
    pixel = np.full(est.matrix.shape, -np.inf)  # scores of copy pairs only; any other pair is scored on demand
    pixel[scan.source[covered], scan_columns[covered]] = scan.score[covered]
    copy = np.isfinite(pixel) & defined  # copies the influence lists below can speak about
    if p is not None:
        q = bh_adjusted(np.where(defined, p, 1.0))
        significant = (q <= fdr) & defined
    else:
        q, significant = None, np.zeros_like(defined)
    significance = -np.log(np.maximum(p, 1e-300)) if p is not None else scores

    def pixel_of(i: int, c: int) -> float:
        if np.isfinite(pixel[i, c]):
            return float(pixel[i, c])
        return float(near_duplicate_scores(pool[i: i + 1], targets_all[c: c + 1])[0])

    def pair(rank: int, i: int, c: int, category: str | None = None) -> LeakPair:
        if category is None:
            category = ("likely copy" if significant[i, c] and copy[i, c] else "influence only" if significant[i, c]
                        else "near duplicate only" if copy[i, c] else "not significant")
        j = int(est.target_index[c])
        return LeakPair(rank=rank, source=int(i), source_id=est.unit_names[i], source_label=src_names[src_labels[i]],
                        target=j, target_label=tgt_names[tgt_labels[j]], influence=float(est.matrix[i, c]),
                        ranking_score=float(scores[i, c]), pixel_score=pixel_of(i, c),
                        p_value=None if p is None else float(p[i, c]), q_value=None if q is None else float(q[i, c]),
                        category=category, flagged=category == "likely copy",
                        feature_score=None if feature is None else float(feature[i, c]))

    def listed(rows: np.ndarray, columns: np.ndarray, order_by: np.ndarray, category: str) -> tuple[LeakPair, ...]:
        order = np.argsort(-order_by[rows, columns], kind="stable")
        return tuple(pair(r + 1, rows[k], columns[k], category) for r, k in enumerate(order))

    def source_copy(k: int) -> SourceCopy:
        i, j, c = int(scan.source[k]), int(scan.target[k]), int(scan_columns[k])
        known = c >= 0 and bool(defined[i, c])
        return SourceCopy(source=i, source_id=est.unit_names[i], source_label=src_names[src_labels[i]], target=j,
                          target_label=tgt_names[tgt_labels[j]], pixel_score=float(scan.score[k]),
                          exact=bool(scan.exact[k]), influence=float(est.matrix[i, c]) if known else None,
                          p_value=float(p[i, c]) if known and p is not None else None,
                          q_value=float(q[i, c]) if known and q is not None else None,
                          confirmed=bool(significant[i, c]) if known and p is not None else None)

    copies = tuple(source_copy(k) for k in range(len(scan)))
    flagged = listed(*_best(significance, significant & copy), significance, "likely copy")
    influence_only = listed(*_best(significance, significant & ~copy), significance, "influence only")
    influence_only = tuple(x for x in influence_only if x.source not in {f.source for f in flagged})
    near_only = listed(*_best(pixel, copy & ~significant), pixel, "near duplicate only")
    near_only = tuple(x for x in near_only if x.source not in {f.source for f in flagged})
    units, columns = top_pairs(scores, top, one_per_source=not all_pairs)
    pairs = tuple(pair(r + 1, i, c) for r, (i, c) in enumerate(zip(units, columns)))
    message = _leak_message(copies, len(influence_only), fdr, p is not None, pool.shape[0], target_test.shape[0])
    pixel_evidence = (f"pixel evidence needs no models: all {len(pool)} source examples were compared with all "
                      f"{len(target_test)} target test images; an exact copy has identical pixels, a near copy a "
                      f"pixel score >= {near_duplicate} (correlation of the grey images, up to a one-pixel shift, "
                      "brightness and contrast)")
    models_add = _models_add(copies, len(influence_only), fdr, p is not None, len(est.target_index),
                             len(target_test), len(pool))
    kwargs = {}
    if planted is not None:
        score = lambda rows, cols: score_leakage(rows, est.target_index[cols], planted.leak_target,  # noqa: E731
                                                 planted.decoy_target, est.target_index)
        kwargs = {"planted": score(np.array([f.source for f in flagged], int),
                                   np.searchsorted(est.target_index, [f.target for f in flagged]).astype(int)),
                  "planted_influence_only": score(*_best(significance, significant)) if p is not None else None,
                  "planted_pixel_only": score(*_best(pixel, copy)),
                  "planted_feature_top": None if feature is None else score(*top_pairs(
                      np.where(defined, feature, np.nan), top, one_per_source=True)),
                  "planted_top": score(units, columns)}
    return LeakageReport(file=str(est.path), estimator=est.estimator, ranking=ranking, one_per_source=not all_pairs,
                         pairs=pairs, fdr=fdr, near_duplicate=near_duplicate, evidence=evidence, message=message,
                         features=feature_note, copies=copies, pixel_evidence=pixel_evidence, models_add=models_add,
                         scanned=(len(pool), len(target_test)), thresholded=p is not None,
                         flagged=flagged, influence_only=influence_only, near_duplicate_only=near_only,
                         source_images=pool[units], target_images=targets_all[columns],
                         pool_images=pool, covered_target_images=targets_all, target_index=est.target_index,
                         target_test_images=target_test, **kwargs)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _leak_message(copies: tuple[SourceCopy, ...], look_alikes: int, fdr: float, has_evidence: bool,
                  sources: int, targets: int) -> str:
    """The one-line answer: pixel copies first (by id), then what influence found; "no evidence of leakage" only
    when there is neither a copy nor an influence flag."""
    if copies:
        exact = sum(c.exact for c in copies)
        ids = list(dict.fromkeys(c.source_id for c in copies))
        shown = ", ".join(f"{c.source_id} = target {c.target} ({c.kind})" for c in copies[:5])
        more = f" and {len(copies) - 5} more" if len(copies) > 5 else ""
        pairs = "" if len(ids) == len(copies) else f" in {len(copies)} pairs"
        line = (f"contamination: {_plural(len(ids), 'source example copies', 'source examples copy')} target test "
                f"images{pairs} ({exact} exact, {len(copies) - exact} near): {shown}{more}; pixel evidence, no models "
                "needed")
        judged = [c for c in copies if c.confirmed is not None]  # pairs the estimate covers with a defined entry
        if has_evidence and judged:
            confirmed = sum(bool(c.confirmed) for c in judged)
            line += f"; influence confirms {confirmed} of the {len(judged)} it covers at {fdr_phrase(fdr)}"
        if look_alikes:
            line += f"; {_plural(look_alikes, 'more source example', 'more source examples')} with significant influence"
            line += " but no near-duplicate pixels (look-alikes or altered copies)"
        return line
    if has_evidence and look_alikes:
        return (f"no pixel copies of target test images; {_plural(look_alikes, 'source example', 'source examples')} "
                f"with significant influence on a target test image at {fdr_phrase(fdr)} but no near-duplicate "
                "pixels (look-alikes or altered copies: check them by eye)")
    if has_evidence:
        return (f"no evidence of leakage at {fdr_phrase(fdr)}: none of the {sources} source examples copies one of "
                f"the {targets} target test images (pixels), and none has significant influence on one")
    return (f"no pixel copies of target test images among {sources} source examples; no influence threshold: the "
            "estimate has no standard errors (pairs below are for browsing only)")


MANY_INFLUENCE_ONLY = (0.05, 100)
"""Share of the pool and count above which influence-only flags are said to be evidence of an effect, not of
copying: at 52,376 pool images and 16 networks the gradient estimate flagged 65% of the pool (docs/gradient.md)."""


def _models_add(copies: tuple[SourceCopy, ...], look_alikes: int, fdr: float, has_evidence: bool,
                covered: int, targets: int, pool: int) -> str:
    """What the influence evidence adds to the pixel scan, or why it cannot add anything."""
    scope = "" if covered == targets else f" (the estimate covers {covered} of the {targets} target test images)"
    if not has_evidence:
        return ("what the models add: nothing here, the estimate has no standard errors, so it can neither confirm "
                "which copies the models learned from nor flag look-alikes and altered copies that pixels miss; fit "
                f"`dmtoolkit influence` (difference of means or regression) for that{scope}")
    judged = [c for c in copies if c.confirmed is not None]
    confirmed = sum(bool(c.confirmed) for c in judged)
    return (f"what the models add: influence evidence at {fdr_phrase(fdr)} confirms {confirmed} of the "
            f"{_plural(len(judged), 'copy', 'copies')} it can judge (the models learned from them) and flags "
            f"{_plural(look_alikes, 'more source example', 'more source examples')} with significant influence but "
            f"no near-duplicate pixels: look-alikes, or non-identical leaks (augmented, re-rendered) that pixels "
            f"miss{scope}" + (
                f"; they are {_share(look_alikes, pool)} of the pool, more than leaks plausibly are: here a flag says "
                "only that the influence is reliably non-zero (a real but ordinary effect), not that it is a copy; "
                "trust the pixel copies above" if look_alikes >= MANY_INFLUENCE_ONLY[1]
                and look_alikes > MANY_INFLUENCE_ONLY[0] * pool else ""))


def score_leakage(units: np.ndarray, targets: np.ndarray, leak: np.ndarray, decoy: np.ndarray,
                  covered_targets: np.ndarray) -> LeakageScore:
    """Precision and recall of (source, target) pairs against planted leaks; decoys among them."""
    units, targets = np.asarray(units, int), np.asarray(targets, int)
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


def detect_mislabels(path: str | Path | OpenedEstimate, *, fdr: float = DETECT_FDR, top: int = DETECT_TOP,
                     store: str | Path | None = None, by: str = MISLABEL_SCORES[0]) -> MislabelReport:
    """Source examples with evidence that they are mislabelled: they hurt the source task itself *and* a target.

    A mislabelled image teaches the source model a wrong label, so including it lowers source accuracy,
    which an ordinary image that merely does not help the target does not. Per source example: source_p,
    the one-sided p-value of its influence on the store's source accuracy < 0 (the estimate's estimator
    refitted on that column with the estimate's fit rows and draws), and target_p, Simes'
    combination of its one-sided p-values of influence < 0 over the targets. Its p-value is the larger of the
    two (an intersection-union test of "hurts both"); Benjamini–Hochberg at `fdr` flags. Stores without
    source accuracy, and estimators that cannot be refitted on it (the gradient estimator), use target_p
    alone (the evidence line says so). Candidates are listed by p-value (by `by` score, see
    `mislabel_scores`, when the estimate has no standard errors or only target_p is tested: on the demo example
    store the gradient estimate's 16-network target_p ordered the planted flips with AUC 0.67, its worst score
    with 0.95, and listing its flagged first lowered the AUC at the 52,376-image pool). Planted label flips, when
    the store has them, are read after detection to score the flagged set and the ranking's AUC.
    """
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    if by not in MISLABEL_SCORES:
        raise UserError(f"by={by!r} is not one of {', '.join(MISLABEL_SCORES)}")
    check_fdr(fdr)
    opened = _example_estimate(path, store, "mislabels")
    est = opened.estimate
    score = mislabel_scores(est.matrix, by)
    defined = np.isfinite(score)
    p_pairs, evidence = _influence_pvalues(est, "less")
    with opened.using_store() as run:
        labels, names = run.source_labels, run.source_class_names
        source_p = None
        accuracy = run.column("source_accuracy") if "source_accuracy" in run.file else None
        refittable = not estimator_entry(est.estimator).retrains  # refitting would retrain its networks
        if p_pairs is not None and refittable and accuracy is not None and np.isfinite(accuracy[est.fit_rows]).all():
            refit = refit_on_values(est, run, accuracy)
            source_p = one_sided_pvalues(refit.coef_[:, 0], refit.stderr_[:, 0], refit.stderr_dof_, "less")
        planted = run.planted()  # scoring only: read after detection
    p = q = target_p = None
    if p_pairs is not None:
        target_p = np.where(defined, simes(p_pairs, axis=1), 1.0)
        if source_p is None and not refittable:
            evidence += (f"; the {est.estimator} estimator scores target margins only (its influence on the source "
                         "accuracy would need its networks again), so only harm to the targets is tested")
        elif source_p is None:
            evidence += "; the store has no source accuracy, so only harm to the targets is tested"
        else:
            evidence += "; source accuracy refitted the same way; p = max(source, Simes over targets)"
        p = target_p if source_p is None else np.maximum(source_p, target_p)
        q = bh_adjusted(np.where(defined, p, 1.0))
        order = np.lexsort((score, p))  # most significant first, ties: most harmful
        order = order[defined[order]]
        flagged_rows = order[q[order] <= fdr]
        if source_p is None:  # target harm alone: listed by score, which ranks flips better than p or flags do
            order = rank_order(score, descending=False)
            evidence += f"; listed by {by} score, flags marked (it ranks planted flips better: docs/gradient.md)"
    else:
        order = rank_order(score, descending=False)
        flagged_rows = order[:0]
    flipped = planted.flipped.astype(bool) if planted is not None else None

    def candidate(rank: int, i: int) -> MislabelCandidate:
        opt = lambda a: None if a is None else float(a[i])  # noqa: E731
        return MislabelCandidate(
            rank=rank, source=int(i), source_id=est.unit_names[i], label=names[labels[i]], score=float(score[i]),
            planted_flip=None if flipped is None else bool(flipped[i]),
            original_label=None if planted is None else names[planted.original_labels[i]],
            p_value=opt(p), q_value=opt(q), source_p=opt(source_p), target_p=opt(target_p),
            flagged=bool(q is not None and q[i] <= fdr))

    candidates = tuple(candidate(r + 1, i) for r, i in enumerate(order[:top]))
    flagged = tuple(candidate(r + 1, i) for r, i in enumerate(flagged_rows))
    if p is None:
        message = "no evidence threshold: the estimate has no standard errors (candidates below are for browsing only)"
    elif not flagged:
        message = f"no evidence of mislabelled source examples at {fdr_phrase(fdr)}"
    else:
        many = 's' if len(flagged) != 1 else ''
        message = (f"{len(flagged)} source example{many} likely mislabelled at {fdr_phrase(fdr)} (they hurt the "
                   "source task and the target)" if source_p is not None else
                   f"{len(flagged)} source example{many} ({_share(len(flagged), int(defined.sum()))} of the pool) hurt "
                   f"a target at {fdr_phrase(fdr)}: mislabel candidates, not confirmed (harm to the source task was not "
                   "tested; with many networks ordinary images pass this too: read the list by score)")
    scored = scored_top = None
    if flipped is not None:
        ranking = np.full(len(score), -np.inf)  # the listing order (p-value, then score) as a score
        ranking[order] = -np.arange(len(order), dtype=np.float64)
        area = auc(ranking[defined], flipped[defined])
        scored, scored_top = (_score_flips(rows, flipped, area) for rows in (flagged_rows, order[:top]))
    return MislabelReport(file=str(est.path), estimator=est.estimator, by=by, candidates=candidates, planted=scored,
                          fdr=fdr, evidence=evidence, message=message, flagged=flagged, planted_top=scored_top)


def _share(part: int, whole: int) -> str:
    """3 of 400 -> "0.8%"; 7,441 of 52,376 -> "14%"."""
    share = 100 * part / max(whole, 1)
    return f"{share:.2g}%" if share < 10 else f"{share:.0f}%"


def _score_flips(rows: np.ndarray, flipped: np.ndarray, area: float | None) -> MislabelScore:
    k, hits, total = len(rows), int(flipped[rows].sum()), int(flipped.sum())
    return MislabelScore(k=k, flipped=total, auc=area, precision_at_k=hits / k if k else None, hits=hits,
                         recall_at_k=hits / total if total else None)
