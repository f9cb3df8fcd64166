"""Class-level analyses: rank source classes, subpopulations of a class, explain one target prediction.

Every influence they show comes with an interval at `level` from the estimate's design-valid standard errors
(none for estimators without them, e.g. datamodels: the result says so). A mean over targets is itself a
linear estimate, so its standard error comes from refitting the estimator on the per-model mean margin
(`dmtoolkit.estimate.refit`), which counts the correlation between targets that averaging per-target errors
would ignore. `explain_target` also tests its listed classes (one-sided p, Benjamini–Hochberg over the
target's classes; `dmtoolkit.analyze.evidence`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dmtoolkit.analyze.estimates import (
    Estimate,
    OpenedEstimate,
    as_opened,
    require_kind,
)
from dmtoolkit.analyze.options import (
    DETECT_FDR,
    EXPLAIN_TOP,
    INTERVAL_LEVEL,
    MIN_EVIDENCE_DOF,
    RANK_TOP,
    SUBPOP_SIZE,
)
from dmtoolkit.analyze.results import (
    NO_STDERR,
    ClassEffect,
    ClassEvidence,
    ClassRanking,
    Explanation,
    Subpopulation,
    TargetEffect,
)
from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.difference_of_means import UndefinedInfluenceWarning
from dmtoolkit.estimate.refit import refit_on_values
from dmtoolkit.stats.intervals import interval_bounds
from dmtoolkit.stats.pvalues import bh_adjusted, check_fdr, one_sided_pvalues
from dmtoolkit.stats.ranking import nanmean_rows, rank_order
from dmtoolkit.store import RunStore


def _class_index(est: Estimate, name: str) -> int:
    if name not in est.unit_names:
        shown = ", ".join(est.unit_names[:10])
        raise UserError(f"class {name!r} is not a source class of {est.path} (classes: {shown}"
                        f"{', ...' if len(est.unit_names) > 10 else ''})")
    return est.unit_names.index(name)


def check_level(level: float) -> None:
    if not 0 < level < 1:
        raise UserError(f"level={level} must be between 0 and 1 (e.g. 0.9 for 90% intervals)")


def percent(level: float) -> str:
    """0.9 -> "90%"."""
    return f"{100 * level:g}%"


def _law(dof: int | None) -> str:
    return f"Student t, {dof} dof" if dof else "normal"


def _method(est: Estimate) -> str:
    return str(est.attrs.get("stderr_method", "standard errors"))


def _few_units(dof: int | None) -> str:
    if dof is not None and dof < MIN_EVIDENCE_DOF:
        return f"; only {dof + 1} draws, so intervals and p-values rest on few draw means: train more models"
    return ""


def _opt(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _effects(est: Estimate, units: np.ndarray, values: np.ndarray, low: np.ndarray | None = None,
             high: np.ndarray | None = None) -> tuple[ClassEffect, ...]:
    if low is None or high is None:
        return tuple(ClassEffect(int(k), est.unit_names[k], float(values[k])) for k in units)
    return tuple(ClassEffect(int(k), est.unit_names[k], float(values[k]), _opt(low[k]), _opt(high[k])) for k in units)


def mean_influence_refit(est: Estimate, run: RunStore, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray | None,
                                                                                       int | None]:
    """(coef, stderr, dof) of each unit's influence on the per-model mean margin over the estimate's `columns`:
    the estimator refitted on that mean (its fit rows and draws), so the error counts the correlation
    between targets. For an estimator linear in the margins coef equals the mean of the columns' coefficients."""
    values = np.zeros(run.num_models, np.float64)
    rows = np.sort(est.fit_rows)
    block = run.margins[:, est.columns] if len(est.target_index) else np.zeros((run.num_models, 0), np.float32)
    values[rows] = block[rows][:, columns].astype(np.float64).mean(1)
    with warnings.catch_warnings():  # undefined units were reported when the estimate was fitted (and are listed)
        warnings.simplefilter("ignore", UndefinedInfluenceWarning)
        refit = refit_on_values(est, run, values)
    stderr = getattr(refit, "stderr_", None)
    return (np.asarray(refit.coef_[:, 0], np.float64), None if stderr is None else np.asarray(stderr[:, 0], np.float64),
            getattr(refit, "stderr_dof_", None))


def _rank_intervals(est: Estimate, columns: np.ndarray, overall: np.ndarray, level: float,
                    run: RunStore | None) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Bounds of the mean influences' intervals and how they were made, or (None, None, why there are none);
    `run` is the estimate's run store as `OpenedEstimate.run` checked it (None: not there)."""
    if est.stderr is None:
        return None, None, NO_STDERR
    if run is None:
        return None, None, (f"no interval (the run store {est.store_path} is not there to refit the mean over "
                            "targets; pass --store STORE.h5)")
    coef, stderr, dof = mean_influence_refit(est, run, columns)
    if stderr is None:
        return None, None, NO_STDERR
    complete = np.isfinite(est.matrix[:, columns]).all(1) & np.isfinite(coef)
    scale = float(np.abs(overall[complete]).max()) if complete.any() else 0.0
    if not np.allclose(coef[complete], overall[complete], rtol=1e-4, atol=1e-4 * scale + 1e-7):
        return None, None, (f"no interval ({est.estimator} is not linear in the margins: refitted on the mean margin "
                            "it does not give the mean influence)")
    stderr = np.where(complete, stderr, np.nan)  # units with some undefined entries: the mean is over fewer targets
    low, high = interval_bounds(overall, stderr, level, dof)
    note = (f"{percent(level)} intervals; the error of each mean over {len(columns)} targets is from {est.estimator} "
            f"refitted on the per-model mean margin ({_method(est)}, {_law(dof)}){_few_units(dof)}")
    return low, high, note


def rank_classes(path: str | Path | OpenedEstimate, *, top: int = RANK_TOP, target_class: str | None = None,
                 level: float | None = INTERVAL_LEVEL, store: str | Path | None = None) -> ClassRanking:
    """Overall influence of each source class: mean over target examples (all, or one target class).

    NaN influences (undefined units) are ignored in the mean and units with none defined are left out of
    the ranking (listed in `undefined`). Each mean gets a `level` interval (None: no intervals, e.g. when only
    the order is needed) whose standard error comes from refitting the estimator on the per-model mean margin
    over those targets, read from the run store (the one the estimate names, or `store`); without standard
    errors, or when the store it names is gone, the ranking says why it has no intervals. A store that is there
    but is not the one the estimate was computed from, in its current state (another run, or more models trained
    since: a stale estimate), is refused (`OpenedEstimate.run`), with or without intervals. `path`: an estimate
    file, or an `OpenedEstimate` whose store is already open and checked (`store` is then chosen there).
    """
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    if level is not None:
        check_level(level)
    opened = as_opened(path, store)
    est = opened.estimate
    require_kind(est, "class", "rank")
    columns = np.arange(est.matrix.shape[1])
    if target_class is not None:
        classes = np.array(est.target_classes)
        columns = np.flatnonzero(classes == target_class)
        if len(columns) == 0:
            raise UserError(f"target class {target_class!r} has no target examples in {est.path} "
                            f"(target classes: {', '.join(sorted(set(est.target_classes)))})")
    overall = nanmean_rows(est.matrix, columns)
    low = high = None
    note = "no interval (not asked for)"
    with opened.using_store(required=False) as run:  # a stale estimate is refused here, as everywhere
        if level is not None:
            low, high, note = _rank_intervals(est, columns, overall, level, run)
    ranked = _effects(est, rank_order(overall), overall, low, high)  # ties: lower first; undefined left out
    worst = _effects(est, rank_order(overall, descending=False), overall, low, high)
    return ClassRanking(
        file=str(est.path), estimator=est.estimator, target_class=target_class, targets=len(columns),
        overall=ranked, undefined=tuple(est.unit_names[k] for k in np.flatnonzero(~np.isfinite(overall))),
        top=ranked[:top], bottom=worst[:top], bottom_all=worst,
        level=level if low is not None else None, interval_note=note,
    )


def subpopulation(path: str | Path | OpenedEstimate, class_name: str, *, n: int = SUBPOP_SIZE, store: str | Path | None = None,
                  with_images: bool = False, level: float = INTERVAL_LEVEL) -> Subpopulation:
    """The `n` target examples most positively influenced by source class `class_name`, most first, each with
    its `level` interval from the estimate's standard errors (none without them).

    With `with_images`, also their images (read from the run store the estimate names, or `store`).
    """
    if n < 1:
        raise UserError(f"-n {n} must be at least 1")
    check_level(level)
    opened = as_opened(path, store)
    est = opened.estimate
    require_kind(est, "class", "subpop")
    k = _class_index(est, class_name)
    row = est.matrix[k]
    order = rank_order(row)[:n]
    if est.stderr is None:
        low = high = np.full(len(row), np.nan)
        note, shown_level = NO_STDERR, None
    else:
        low, high = interval_bounds(row, est.stderr[k], level, est.stderr_dof)
        note = f"{percent(level)} intervals from {_method(est)} ({_law(est.stderr_dof)}){_few_units(est.stderr_dof)}"
        shown_level = level
    targets = tuple(TargetEffect(int(est.target_index[j]), est.target_names[j], float(row[j]), _opt(low[j]),
                                 _opt(high[j])) for j in order)
    images = None
    with opened.using_store(required=with_images) as run:  # a stale estimate is refused here, as everywhere
        if run is not None and with_images:
            run.require(Capability.IMAGES, "subpop --png")
            images = run.target_images([t.target for t in targets])
    return Subpopulation(file=str(est.path), class_name=class_name, targets=targets, images=images,
                         level=shown_level, interval_note=note)


def majority_prediction(predictions: np.ndarray) -> int | None:
    """Most frequent predicted class (ties: the smallest), ignoring -1 (unknown); None if all unknown."""
    known = predictions[predictions >= 0]
    if len(known) == 0:
        return None
    return int(np.bincount(known).argmax())


def _evidence(est: Estimate, units: np.ndarray, column: np.ndarray, low: np.ndarray, high: np.ndarray,
              p: np.ndarray | None, q: np.ndarray | None, fdr: float) -> tuple[ClassEvidence, ...]:
    if p is None or q is None:
        return tuple(ClassEvidence(int(k), est.unit_names[k], float(column[k])) for k in units)
    return tuple(ClassEvidence(int(k), est.unit_names[k], float(column[k]), _opt(low[k]), _opt(high[k]),
                               float(p[k]), float(q[k]), bool(q[k] <= fdr)) for k in units)


def explain_target(path: str | Path | OpenedEstimate, target: int, *, top: int = EXPLAIN_TOP, store: str | Path | None = None,
                   level: float = INTERVAL_LEVEL, fdr: float = DETECT_FDR) -> Explanation:
    """True and predicted label of target `target` and its most negative / positive source classes.

    Each listed class has its `level` interval and a one-sided p-value (influence < 0 for the most negative,
    > 0 for the most positive) from the estimate's standard errors, with its Benjamini–Hochberg q over this
    target's classes (same side) and whether q ≤ `fdr`. Without standard errors (datamodels) all are None.
    """
    check_level(level)
    check_fdr(fdr)
    opened = as_opened(path, store)
    est = opened.estimate
    require_kind(est, "class", "explain")
    columns = np.flatnonzero(est.target_index == target)
    if len(columns) == 0:
        raise UserError(f"target {target} is not covered by {est.path} "
                        f"(targets {est.target_index[0]}..{est.target_index[-1]})")
    column = est.matrix[:, columns[0]]
    with opened.using_store() as run:
        names = run.target_class_names
        true = int(run.target_labels[target])
        done = run.completed_rows()
        predictions = run.predictions[:, target][done] if len(done) else np.zeros(0, np.int16)
        margins = run.margins[:, target][done] if len(done) else np.zeros(0, np.float32)
    predicted = majority_prediction(predictions.astype(np.int64))
    finite = np.flatnonzero(np.isfinite(column))
    order = rank_order(column, descending=False)
    low = high = np.full(len(column), np.nan)
    p_less = q_less = p_greater = q_greater = None
    note, shown_level = NO_STDERR, None
    if est.stderr is not None:
        se, dof = est.stderr[:, columns[0]], est.stderr_dof
        low, high = interval_bounds(column, se, level, dof)
        p_less, p_greater = (one_sided_pvalues(column, se, dof, side) for side in ("less", "greater"))
        q_less, q_greater = np.ones(len(column)), np.ones(len(column))
        q_less[finite], q_greater[finite] = bh_adjusted(p_less[finite]), bh_adjusted(p_greater[finite])
        note = (f"{percent(level)} intervals from {_method(est)} ({_law(dof)}); p one-sided, q Benjamini–Hochberg "
                f"over this target's {len(finite)} classes{_few_units(dof)}")
        shown_level = level
    return Explanation(
        file=str(est.path), target=int(target), true_label=names[true],
        predicted_label=names[predicted] if predicted is not None else None,
        models=len(done), fraction_correct=float((margins > 0).mean()) if len(margins) else None,
        most_negative=_evidence(est, order[:top], column, low, high, p_less, q_less, fdr),
        most_positive=_evidence(est, order[::-1][:top], column, low, high, p_greater, q_greater, fdr),
        level=shown_level, fdr=fdr, interval_note=note,
    )


def class_positions(path: str | Path | OpenedEstimate, names: list[str], *, target_class: str | None = None) -> dict[str, int | None]:
    """1-based position of each named source class in `rank_classes` order (1 = most positive); None if undefined."""
    ranking = rank_classes(path, top=1, target_class=target_class, level=None)
    positions = {e.name: i + 1 for i, e in enumerate(ranking.overall)}
    missing = [n for n in names if n not in positions and n not in ranking.undefined]
    if missing:
        raise UserError(f"{ranking.file}: no source class named {missing[0]!r}")
    return {n: positions.get(n) for n in names}
