"""Class-level analyses: rank source classes, subpopulations of a class, explain one target prediction."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dmtoolkit.analyze.estimates import (
    Estimate,
    load_estimate,
    open_source_store,
    require_kind,
)
from dmtoolkit.analyze.options import EXPLAIN_TOP, RANK_TOP, SUBPOP_SIZE
from dmtoolkit.analyze.results import ClassEffect, ClassRanking, Explanation, Subpopulation, TargetEffect
from dmtoolkit.errors import UserError


def _nanmean(matrix: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(matrix, axis=axis)


def _class_index(est: Estimate, name: str) -> int:
    if name not in est.unit_names:
        shown = ", ".join(est.unit_names[:10])
        raise UserError(f"class {name!r} is not a source class of {est.path} (classes: {shown}"
                        f"{', ...' if len(est.unit_names) > 10 else ''})")
    return est.unit_names.index(name)


def _effects(est: Estimate, units: np.ndarray, values: np.ndarray) -> tuple[ClassEffect, ...]:
    return tuple(ClassEffect(int(k), est.unit_names[k], float(values[k])) for k in units)


def rank_classes(path: str | Path, *, top: int = RANK_TOP, target_class: str | None = None) -> ClassRanking:
    """Overall influence of each source class: mean over target examples (all, or one target class).

    NaN influences (undefined units) are ignored in the mean and units with none defined are left out of
    the ranking (listed in `undefined`).
    """
    if top < 1:
        raise UserError(f"top={top} must be at least 1")
    est = load_estimate(path)
    require_kind(est, "class", "rank")
    columns = np.arange(est.matrix.shape[1])
    if target_class is not None:
        classes = np.array(est.target_classes)
        columns = np.flatnonzero(classes == target_class)
        if len(columns) == 0:
            raise UserError(f"target class {target_class!r} has no target examples in {est.path} "
                            f"(target classes: {', '.join(sorted(set(est.target_classes)))})")
    overall = _nanmean(est.matrix[:, columns], axis=1)
    defined = np.flatnonzero(np.isfinite(overall))
    ranked = _effects(est, defined[np.argsort(-overall[defined], kind="stable")], overall)  # ties: lower index first
    worst = _effects(est, defined[np.argsort(overall[defined], kind="stable")], overall)
    return ClassRanking(
        file=str(est.path), estimator=est.estimator, target_class=target_class, targets=len(columns),
        overall=ranked, undefined=tuple(est.unit_names[k] for k in np.flatnonzero(~np.isfinite(overall))),
        top=ranked[:top], bottom=worst[:top], bottom_all=worst,
    )


def subpopulation(path: str | Path, class_name: str, *, n: int = SUBPOP_SIZE, store: str | Path | None = None,
                  with_images: bool = False) -> Subpopulation:
    """The `n` target examples most positively influenced by source class `class_name`, most first.

    With `with_images`, also their images (read from the run store the estimate names, or `store`).
    """
    if n < 1:
        raise UserError(f"-n {n} must be at least 1")
    est = load_estimate(path)
    require_kind(est, "class", "subpop")
    row = est.matrix[_class_index(est, class_name)]
    finite = np.flatnonzero(np.isfinite(row))
    order = finite[np.argsort(-row[finite], kind="stable")][:n]
    targets = tuple(TargetEffect(int(est.target_index[j]), est.target_names[j], float(row[j])) for j in order)
    images = None
    if with_images:
        with open_source_store(est, store) as run:
            images = run.target_images([t.target for t in targets])
    return Subpopulation(file=str(est.path), class_name=class_name, targets=targets, images=images)


def majority_prediction(predictions: np.ndarray) -> int | None:
    """Most frequent predicted class (ties: the smallest), ignoring -1 (unknown); None if all unknown."""
    known = predictions[predictions >= 0]
    if len(known) == 0:
        return None
    return int(np.bincount(known).argmax())


def explain_target(path: str | Path, target: int, *, top: int = EXPLAIN_TOP,
                   store: str | Path | None = None) -> Explanation:
    """True and predicted label of target `target` and its most negative / positive source classes."""
    est = load_estimate(path)
    require_kind(est, "class", "explain")
    columns = np.flatnonzero(est.target_index == target)
    if len(columns) == 0:
        raise UserError(f"target {target} is not covered by {est.path} "
                        f"(targets {est.target_index[0]}..{est.target_index[-1]})")
    column = est.matrix[:, columns[0]]
    with open_source_store(est, store) as run:
        names = run.target_class_names
        true = int(run.target_labels[target])
        done = run.completed_rows()
        predictions = run.predictions[:, target][done] if len(done) else np.zeros(0, np.int16)
        margins = run.margins[:, target][done] if len(done) else np.zeros(0, np.float32)
    predicted = majority_prediction(predictions.astype(np.int64))
    finite = np.flatnonzero(np.isfinite(column))
    order = finite[np.argsort(column[finite], kind="stable")]
    return Explanation(
        file=str(est.path), target=int(target), true_label=names[true],
        predicted_label=names[predicted] if predicted is not None else None,
        models=len(done), fraction_correct=float((margins > 0).mean()) if len(margins) else None,
        most_negative=_effects(est, order[:top], column), most_positive=_effects(est, order[::-1][:top], column),
    )


def class_positions(path: str | Path, names: list[str], *, target_class: str | None = None) -> dict[str, int | None]:
    """1-based position of each named source class in `rank_classes` order (1 = most positive); None if undefined."""
    ranking = rank_classes(path, top=1, target_class=target_class)
    positions = {e.name: i + 1 for i, e in enumerate(ranking.overall)}
    missing = [n for n in names if n not in positions and n not in ranking.undefined]
    if missing:
        raise UserError(f"{path}: no source class named {missing[0]!r}")
    return {n: positions.get(n) for n in names}
