"""Leakage: source examples that copy a target test image, by their pixels (`dmtoolkit.analyze.copies`, no model
needed) and by their influence on it (`detect_leakage`), with the one-line answer and what the models add.

The detector looks only at the estimate and the images; planted leaks are read afterwards, only to score what it
returned (`score_leakage`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dmtoolkit.analyze.copies import CopyScan, find_copies, near_duplicate_scores
from dmtoolkit.analyze.estimates import OpenedEstimate, as_opened_of_kind
from dmtoolkit.analyze.evidence import check_detection, fdr_phrase, influence_pvalues, share_phrase
from dmtoolkit.analyze.features import feature_similarity
from dmtoolkit.analyze.options import DETECT_FDR, DETECT_TOP, LEAK_RANKINGS, NEAR_DUPLICATE
from dmtoolkit.analyze.results import LeakageReport, LeakageScore, LeakPair, SourceCopy
from dmtoolkit.capabilities import Capability
from dmtoolkit.stats.detection import per_target_z, two_way_z
from dmtoolkit.stats.pvalues import bh_adjusted
from dmtoolkit.stats.ranking import top_pairs

# one scorer per name in options.LEAK_RANKINGS (the names the CLI offers), in the same order
LEAK_SCORERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "two-way-z": two_way_z, "target-z": per_target_z, "influence": lambda m: m}


_COPY_SCANS: dict[tuple[int, int, int, int, float], CopyScan] = {}  # (store file identity, threshold) -> its scan


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
    the estimate's design-valid standard errors, Benjamini–Hochberg at `fdr` within two families
    (`family_q_values`): the pixel copies, chosen before influence is looked at, and every other (source,
    covered target) pair. It confirms copies the models learned from (`SourceCopy.confirmed`); a pair with both is a likely
    copy and is flagged (one per source example, its most significant); significant pairs without
    near-duplicate content are listed as influence only (look-alikes, or altered copies pixels miss), near
    duplicates without significant influence as near duplicate only. Besides, the `top` pairs by `ranking` are
    listed for browsing (each source once unless `all_pairs`). Planted ground truth, when the store has it, is
    read after detection to score the flagged set and, beside it, the influence-only and pixel-only detectors
    and the top-k list. With `features`, every listed pair also gets a feature-space similarity from one model
    trained on the whole pool with the run's recipe (`feature_similarity`, a few seconds on `device`); it is
    shown, not used to flag.
    """
    check_detection(top, fdr, "ranking ", ranking, LEAK_RANKINGS)
    opened = as_opened_of_kind(path, store, "example", "leakage")
    est = opened.estimate
    with opened.using_store() as run:  # a stale or foreign store is refused before any arithmetic
        run.require(Capability.IMAGES, "leakage")
        defined = np.isfinite(est.matrix)
        scores = np.where(defined, LEAK_SCORERS[ranking](est.matrix), np.nan)
        p, evidence = influence_pvalues(est, "greater")
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
        q = family_q_values(p, copy, defined)
        significant = (q <= fdr) & defined
        if copy.any():  # without copies every pair is one family, as it always was
            evidence += (f"; Benjamini–Hochberg within two families: the {int(copy.sum())} pixel-copy pairs (chosen "
                         "by pixels alone) and every other pair")
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


def family_q_values(p: np.ndarray, copy: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values within two families of pairs: the pixel copies (`copy`) and every other
    defined pair. The copies are chosen by their pixels alone, before any influence is looked at, so testing
    them among themselves keeps the FDR within that family; among all P × T pairs (52 million at a 52,376-image
    pool and 1,000 targets) a true copy would need p ≈ 1e-7, which a few networks cannot give. Undefined pairs
    get q = 1."""
    q = np.ones(p.shape, np.float64)
    for family in (copy & defined, defined & ~copy):
        if family.any():
            q[family] = bh_adjusted(p[family])
    return q


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
            line += " but no near-duplicate pixels" + (
                f" ({share_phrase(look_alikes, sources)} of the pool, too many to be copies: a real but ordinary effect)"
                if _many(look_alikes, sources) else " (look-alikes or altered copies)")
        return line
    if has_evidence and look_alikes:
        what = (f"{share_phrase(look_alikes, sources)} of the pool, too many to be copies: a real but ordinary "
                "effect" if _many(look_alikes, sources) else "look-alikes or altered copies: check them by eye")
        return (f"no pixel copies of target test images; {_plural(look_alikes, 'source example', 'source examples')} "
                f"with significant influence on a target test image at {fdr_phrase(fdr)} but no near-duplicate "
                f"pixels ({what})")
    if has_evidence:
        return (f"no evidence of leakage at {fdr_phrase(fdr)}: none of the {sources} source examples copies one of "
                f"the {targets} target test images (pixels), and none has significant influence on one")
    return (f"no pixel copies of target test images among {sources} source examples; no influence threshold: the "
            "estimate has no standard errors (pairs below are for browsing only)")


MANY_INFLUENCE_ONLY = (0.05, 100)
"""Share of the pool and count above which influence-only flags are said to be evidence of an effect, not of
copying: at 52,376 pool images and 16 networks the gradient estimate flagged 65% of the pool (docs/gradient.md)."""


def _many(look_alikes: int, pool: int) -> bool:
    """Influence-only flags too many to be leaks (`MANY_INFLUENCE_ONLY`)."""
    return look_alikes >= MANY_INFLUENCE_ONLY[1] and look_alikes > MANY_INFLUENCE_ONLY[0] * pool


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
                f"; they are {share_phrase(look_alikes, pool)} of the pool, more than leaks plausibly are: here a flag says "
                "only that the influence is reliably non-zero (a real but ordinary effect), not that it is a copy; "
                "trust the pixel copies above" if _many(look_alikes, pool) else ""))


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
