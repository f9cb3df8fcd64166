"""Mislabel candidates: source examples with evidence that they hurt the source task itself and a target
(`detect_mislabels`), and the per-example harm score the candidates are listed by (`mislabel_scores`).

The detector looks only at the estimate (and the store's source accuracy, refitted the estimate's way); planted
label flips are read afterwards, only to score what it returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dmtoolkit.analyze.estimates import OpenedEstimate, as_opened_of_kind
from dmtoolkit.analyze.evidence import check_detection, fdr_phrase, influence_pvalues, share_phrase
from dmtoolkit.analyze.options import DETECT_FDR, DETECT_TOP, MISLABEL_SCORES
from dmtoolkit.analyze.results import MislabelCandidate, MislabelReport, MislabelScore
from dmtoolkit.estimate.label_check import LabelCheck, read_label_check
from dmtoolkit.estimate.refit import refit_on_values
from dmtoolkit.estimate.registry import estimator_entry
from dmtoolkit.estimate.source_task import read_source_task
from dmtoolkit.stats.detection import auc
from dmtoolkit.stats.pvalues import bh_adjusted, fewest_flaggable, one_sided_pvalues, simes
from dmtoolkit.stats.ranking import rank_order

if TYPE_CHECKING:
    from dmtoolkit.analyze.estimates import Estimate
    from dmtoolkit.store import RunStore


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


@dataclass(frozen=True)
class HarmPValues:
    """Per source example, the two halves of the mislabel test: `source`, the one-sided p-value of harm to the
    source task (None when it cannot be tested), `target`, Simes' combination of its p-values of harm over the
    targets (None without standard errors; 1 where no entry is defined), and the evidence line saying how."""

    source: np.ndarray | None
    target: np.ndarray | None
    evidence: str


def harm_pvalues(est: Estimate, run: RunStore) -> HarmPValues:
    """Both halves of `detect_mislabels`' test for every source example of `est` (its checked run store `run`):
    harm to the source task from the estimator refitted on the store's source accuracy, or, for estimators that
    retrain networks (gradient, replay), from the source-task scores their networks saved
    (`dmtoolkit.estimate.source_task`); harm to a target from Simes over the targets."""
    p_pairs, evidence = influence_pvalues(est, "less")
    if p_pairs is None:
        return HarmPValues(None, None, evidence)
    refittable = not estimator_entry(est.estimator).retrains  # refitting would retrain its networks
    source_p = None
    if refittable:
        accuracy = run.column("source_accuracy") if "source_accuracy" in run.file else None
        if accuracy is not None and np.isfinite(accuracy[est.fit_rows]).all():
            refit = refit_on_values(est, run, accuracy)
            source_p = one_sided_pvalues(refit.coef_[:, 0], refit.stderr_[:, 0], refit.stderr_dof_, "less")
    else:
        task = read_source_task(est.path)
        if task.coef is not None and task.stderr is not None:  # scored by its own networks
            source_p = one_sided_pvalues(task.coef, task.stderr, est.stderr_dof, "less")
    target_p = np.where(np.isfinite(est.matrix).any(1), simes(p_pairs, axis=1), 1.0)
    if source_p is None and not refittable:
        evidence += (f"; this {est.estimator} estimate has no source-task scores (its "
                     "networks gave no source_test, or an older version made it), so only harm to the targets is "
                     "tested; to test harm to the source task too, fit it again (with your own trainer, its "
                     "gradient_networks must give source_test: docs/trainers.md)")
    elif source_p is None:
        evidence += "; the store has no source accuracy, so only harm to the targets is tested"
    elif not refittable:
        evidence += ("; the source task scored by the same networks (mean source margin over the held-out source "
                     "test examples)")
    else:
        evidence += "; source accuracy refitted the same way"
    return HarmPValues(source_p, target_p, evidence)


def detect_mislabels(path: str | Path | OpenedEstimate, *, fdr: float = DETECT_FDR, top: int = DETECT_TOP,
                     store: str | Path | None = None, by: str = MISLABEL_SCORES[0]) -> MislabelReport:
    """Source examples with evidence that they are mislabelled: they hurt the source task itself *and* a target.

    A mislabelled image teaches the source model a wrong label, so including it lowers source accuracy,
    which an ordinary image that merely does not help the target does not. Per source example: source_p,
    the one-sided p-value of its influence on the store's source accuracy < 0 (the estimate's estimator
    refitted on that column with the estimate's fit rows and draws; for the gradient estimator, the
    source-task scores its own networks computed, `dmtoolkit.estimate.source_task`), and target_p, Simes'
    combination of its one-sided p-values of influence < 0 over the targets. Its p-value is the larger of the
    two (an intersection-union test of "hurts both"); Benjamini–Hochberg at `fdr` flags. Stores without
    source accuracy, and gradient estimates without source-task scores, use target_p alone (the evidence
    line says so). Candidates are listed by p-value (by `by` score, see `mislabel_scores`, when the estimate
    has no standard errors, only target_p is tested, or it comes from a few networks: on the demo example store
    the gradient estimate's 16-network target_p ordered the planted flips with AUC 0.67, max(source_p,
    target_p) with 0.84, its worst score with 0.95, and listing its flagged first lowered the AUC at the
    52,376-image pool). Planted label flips, when
    the store has them, are read after detection to score the flagged set and the ranking's AUC.
    """
    check_detection(top, fdr, "by=", by, MISLABEL_SCORES)
    opened = as_opened_of_kind(path, store, "example", "mislabels")
    est = opened.estimate
    score = mislabel_scores(est.matrix, by)
    defined = np.isfinite(score)
    with opened.using_store() as run:
        labels, names = run.source_labels, run.source_class_names
        harm = harm_pvalues(est, run)
        planted = run.planted()  # scoring only: read after detection
    source_p, target_p, evidence = harm.source, harm.target, harm.evidence
    refittable = not estimator_entry(est.estimator).retrains
    check = read_label_check(est.path)  # the store's models' (or the gradient's own networks') label margins
    p = q = bound = None
    if check is not None:  # models that never saw an image disagree with its label: the direct evidence
        p, defined = check.pvalues(), np.isfinite(check.heldout_margin)
        q = np.ones_like(p)  # images every model trained on cannot be tested (known from the masks alone)
        q[defined] = bh_adjusted(p[defined])
        order = rank_order(check.heldout_margin, descending=False)  # the untested (NaN) are left out
        flagged_rows = order[q[order] <= fdr]  # a prefix: the p-value only grows with the margin
        bound = _reference_bound(check, fdr, int(defined.sum()))
        evidence = (_label_evidence(check, fdr, int(defined.sum()), bound[1]) + "; p and q are the label check's; the "
                    f"p-values of harm to the source task and to a target are shown beside it ({evidence})")
    elif target_p is not None:
        if source_p is not None:
            evidence += "; p = max(source, Simes over targets)"
        p = target_p if source_p is None else np.maximum(source_p, target_p)
        q = bh_adjusted(np.where(defined, p, 1.0))
        order = np.lexsort((score, p))  # most significant first, ties: most harmful
        order = order[defined[order]]
        flagged_rows = order[q[order] <= fdr]
        if source_p is None or not refittable:  # listed by score, which ranks flips better than p or flags do
            # (target harm alone, or a few networks: the worst score ordered the demo store's planted flips with
            # AUC 0.95 from 16 gradient networks, their p-values with 0.84 even with the source task)
            order = rank_order(score, descending=False)
            evidence += f"; listed by {by} score, flags marked (it ranks planted flips better: docs/gradient.md)"
    else:
        order = rank_order(score, descending=False)
        flagged_rows = order[:0]
    if check is None and est.attrs.get("gradient_q") == "mean":  # ranked by influence, weighted by the mean q
        evidence += ("; this gradient estimate weights every network by q averaged over them (--q mean, best for LDS), "
                     "which ranks flips by influence poorly (AUC 0.57 against 0.98 with --q own --kernel-over "
                     "trained on the demo store, 16 networks): refit with those to hunt flips")
    flipped = planted.flipped.astype(bool) if planted is not None else None

    def candidate(rank: int, i: int) -> MislabelCandidate:
        opt = lambda a: None if a is None else float(a[i])  # noqa: E731
        return MislabelCandidate(
            rank=rank, source=int(i), source_id=est.unit_names[i], label=names[labels[i]], score=float(score[i]),
            planted_flip=None if flipped is None else bool(flipped[i]),
            original_label=None if planted is None else names[planted.original_labels[i]],
            p_value=opt(p), q_value=opt(q), source_p=opt(source_p), target_p=opt(target_p),
            flagged=bool(q is not None and q[i] <= fdr),
            heldout_margin=None if check is None else float(check.heldout_margin[i]))

    candidates = tuple(candidate(r + 1, i) for r, i in enumerate(order[:top]))
    flagged = tuple(candidate(r + 1, i) for r, i in enumerate(flagged_rows))
    if p is None:
        message = "no evidence threshold: the estimate has no standard errors (candidates below are for browsing only)"
    elif not flagged and bound is not None and 0 < bound[0] < bound[1]:  # the reference's size is what stops it
        beyond, fewest = bound
        message = (f"no evidence of mislabelled source examples at {fdr_phrase(fdr)}: {beyond} image"
                   f"{'s disagree with their' if beyond != 1 else ' disagrees with its'} label more than every one of the "
                   f"{len(check.reference):,} held-out source test images, but against so small a reference the test "
                   f"needs {fewest:,} such images before it can flag any; the list starts with the most disagreeing, "
                   "so read it from the top")
    elif not flagged:
        message = f"no evidence of mislabelled source examples at {fdr_phrase(fdr)}"
    elif check is not None:
        many = 's' if len(flagged) != 1 else ''
        message = (f"{len(flagged)} source example{many} likely mislabelled at {fdr_phrase(fdr)} (models that "
                   "never saw them disagree with their label more than with the held-out source test images)")
    else:
        many = 's' if len(flagged) != 1 else ''
        message = (f"{len(flagged)} source example{many} likely mislabelled at {fdr_phrase(fdr)} (they hurt the "
                   "source task and the target)" if source_p is not None else
                   f"{len(flagged)} source example{many} ({share_phrase(len(flagged), int(defined.sum()))} of the pool) hurt "
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


def _reference_bound(check: LabelCheck, fdr: float, tested: int) -> tuple[int, int]:
    """How many images disagree more than every reference image (the smallest p-value), and the fewest such
    Benjamini–Hochberg at `fdr` can flag (`fewest_flaggable`)."""
    beyond = int(np.sum(check.heldout_margin < np.min(check.reference))) if len(check.reference) else 0
    return beyond, fewest_flaggable(tested, 1 / (len(check.reference) + 1), fdr)


def _label_evidence(check: LabelCheck, fdr: float, tested: int, fewest: int) -> str:
    """How the label check decides, and the bound its reference's size puts on it (`fewest`, from
    `_reference_bound`)."""
    n = len(check.reference)
    models = np.median(check.heldout_networks[check.heldout_networks > 0])
    text = (f"label checked out of sample: each image's stated-label margin averaged over the models not trained "
            f"on it (median {models:g}), against the same for {n:,} held-out source test images (conformal "
            f"p-value; Benjamini–Hochberg at {fdr_phrase(fdr)}); listed by that margin, most disagreeing first")
    untested = len(check.heldout_margin) - tested
    if untested:
        text += f"; {untested:,} images that every model trained on are untested (not listed)"
    if fewest > 1:
        text += (f"; with {n:,} reference images no p-value is below 1/{n + 1:,}, so over {tested:,} images it can "
                 f"flag only when at least {fewest:,} disagree more than every reference image (a larger source "
                 "test set gives it more power)")
    return text


def _score_flips(rows: np.ndarray, flipped: np.ndarray, area: float | None) -> MislabelScore:
    k, hits, total = len(rows), int(flipped[rows].sum()), int(flipped.sum())
    return MislabelScore(k=k, flipped=total, auc=area, precision_at_k=hits / k if k else None, hits=hits,
                         recall_at_k=hits / total if total else None)
