"""Class-level analyses: rank source classes, subpopulations of a class, explain one target prediction."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dmtoolkit.analyze.estimates import (
    Estimate,
    load_estimate,
    require_kind,
    store_path_of,
)
from dmtoolkit.errors import UserError
from dmtoolkit.store import RunStore


def _nanmean(matrix: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(matrix, axis=axis)


def _class_index(est: Estimate, name: str) -> int:
    if name not in est.unit_names:
        shown = ", ".join(est.unit_names[:10])
        raise UserError(f"--class {name!r} is not a source class of {est.path} (classes: {shown}"
                        f"{', ...' if len(est.unit_names) > 10 else ''})")
    return est.unit_names.index(name)


def _entry(est: Estimate, k: int, value: float) -> dict[str, Any]:
    return {"index": int(k), "name": est.unit_names[k], "influence": float(value)}


def rank_classes(path: str | Path, *, top: int = 10, target_class: str | None = None,
                 png: str | Path | None = None) -> dict[str, Any]:
    """Overall influence of each source class: mean over target examples (all, or one target class).

    Returns {"overall": [...all classes, best first...], "top": [...], "bottom": [...most negative first...]};
    NaN influences (undefined units) are ignored in the mean and units with none defined are left out.
    """
    if top < 1:
        raise UserError(f"--top {top} must be at least 1")
    est = load_estimate(path)
    require_kind(est, "class", "rank")
    columns = np.arange(est.matrix.shape[1])
    if target_class is not None:
        classes = np.array(est.target_classes)
        columns = np.flatnonzero(classes == target_class)
        if len(columns) == 0:
            raise UserError(f"--target-class {target_class!r} has no target examples in {est.path} "
                            f"(target classes: {', '.join(sorted(set(est.target_classes)))})")
    overall = _nanmean(est.matrix[:, columns], axis=1)
    defined = np.flatnonzero(np.isfinite(overall))
    order = defined[np.argsort(-overall[defined], kind="stable")]  # ties: lower index first, both ways
    ranked = [_entry(est, k, overall[k]) for k in order]
    worst = [_entry(est, k, overall[k]) for k in defined[np.argsort(overall[defined], kind="stable")]]
    result = {
        "file": str(est.path), "estimator": est.estimator, "target_class": target_class,
        "targets": len(columns), "overall": ranked, "undefined": [est.unit_names[k] for k in
                                                                       np.flatnonzero(~np.isfinite(overall))],
        "top": ranked[:top], "bottom": worst[:top], "bottom_all": worst,
    }
    if png is not None:
        from dmtoolkit.report.plots import bar_chart
        shown = result["top"] + [e for e in result["bottom"][::-1] if e not in result["top"]]
        scope = f"target class {target_class}" if target_class else "all target examples"
        bar_chart([e["name"] for e in shown], [e["influence"] for e in shown],
                  f"Source classes by mean influence ({scope})", png)
    return result


def subpopulation(path: str | Path, class_name: str, *, n: int = 16, png: str | Path | None = None,
                  store: str | Path | None = None) -> dict[str, Any]:
    """The `n` target examples most positively influenced by source class `class_name`, with an image grid."""
    if n < 1:
        raise UserError(f"-n {n} must be at least 1")
    est = load_estimate(path)
    require_kind(est, "class", "subpop")
    k = _class_index(est, class_name)
    row = est.matrix[k]
    finite = np.flatnonzero(np.isfinite(row))
    order = finite[np.argsort(-row[finite], kind="stable")][:n]
    targets = [{"target": int(est.target_index[j]), "name": est.target_names[j], "influence": float(row[j])}
               for j in order]
    result = {"file": str(est.path), "class": class_name, "targets": targets}
    if png is not None:
        images = target_images(store_path_of(est, store), [t["target"] for t in targets])
        from dmtoolkit.report.plots import image_grid
        image_grid(images, [f"{t['name']}\n{t['influence']:+.3f}" for t in targets],
                   f"Target images most helped by source class {class_name}", png)
    return result


def target_images(store_path: Path, indices: list[int]) -> list[np.ndarray]:
    with RunStore(store_path) as store:
        images = store.file["target/images"]
        return [images[j] for j in indices]


def majority_prediction(predictions: np.ndarray) -> int | None:
    """Most frequent predicted class (ties: the smallest), ignoring -1 (unknown); None if all unknown."""
    known = predictions[predictions >= 0]
    if len(known) == 0:
        return None
    return int(np.bincount(known).argmax())


def explain_target(path: str | Path, target: int, *, top: int = 5, store: str | Path | None = None) -> dict[str, Any]:
    """True and predicted label of target `target` and its most negative / positive source classes."""
    est = load_estimate(path)
    require_kind(est, "class", "explain")
    columns = np.flatnonzero(est.target_index == target)
    if len(columns) == 0:
        raise UserError(f"--target {target} is not covered by {est.path} "
                        f"(targets {est.target_index[0]}..{est.target_index[-1]})")
    column = est.matrix[:, columns[0]]
    with RunStore(store_path_of(est, store)) as run:
        names = run.strings("target/class_names")
        true = int(run.file["target/labels"][target])
        done = run.completed_rows()
        predictions = run.file["predictions"][:, target][done] if len(done) else np.zeros(0, np.int16)
        margins = run.file["margins"][:, target][done] if len(done) else np.zeros(0, np.float32)
    predicted = majority_prediction(predictions.astype(np.int64))
    finite = np.flatnonzero(np.isfinite(column))
    order = finite[np.argsort(column[finite], kind="stable")]
    return {
        "file": str(est.path), "target": int(target),
        "true_label": names[true],
        "predicted_label": names[predicted] if predicted is not None else None,
        "models": len(done),
        "fraction_correct": float((margins > 0).mean()) if len(margins) else None,
        "most_negative": [_entry(est, k, column[k]) for k in order[:top]],
        "most_positive": [_entry(est, k, column[k]) for k in order[::-1][:top]],
    }


def class_positions(path: str | Path, names: list[str], *, target_class: str | None = None) -> dict[str, int | None]:
    """1-based position of each named source class in `rank_classes` order (1 = most positive); None if undefined."""
    ranking = rank_classes(path, top=1, target_class=target_class)
    positions = {e["name"]: i + 1 for i, e in enumerate(ranking["overall"])}
    est = load_estimate(path)
    missing = [n for n in names if n not in est.unit_names]
    if missing:
        raise UserError(f"{path}: no source class named {missing[0]!r}")
    return {n: positions.get(n) for n in names}
