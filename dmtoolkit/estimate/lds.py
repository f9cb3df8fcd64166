"""Linear datamodeling score (LDS): how well an estimate predicts margins of models it never saw.

For each target example, LDS is the Spearman rank correlation, over the estimate's test rows (models
held out from fitting and from choosing any setting), between the predicted and the true margin. Every
estimator is a linear predictor, f̂(S) = intercept + Σ_k coef_k · 1[k ∈ S] (undefined, NaN,
coefficients count 0), so LDS needs no per-estimator code.

A constant prediction (e.g. a datamodel whose chosen λ zeroed every weight) ranks nothing and scores
0, so abstaining is not rewarded; a target whose true held-out margins are all equal has no defined
score and is left out of the mean, median and histogram (counted as `undefined_targets`).

The estimate file must name this store's current content hash; otherwise the rows it recorded may
mean something else, and `evaluate` refuses.

The mean LDS carries a percentile bootstrap interval over the test models (`lds_interval`): the held-out
draws, by the estimators' own rule (`store_draws`: an antithetic pair, an orthogonal block, else a
model; held-out splits keep them whole), are resampled with replacement and the mean LDS recomputed, so the
interval says how much the score would move on another set of test models of the same size (the estimate
itself is held fixed). Fewer than 3 held-out draws give no interval.

The arithmetic on arrays (per-target score, summary, bootstrap) is `dmtoolkit.stats.lds`; this module applies it to
an estimate file and its run store and words the verdict.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dmtoolkit.display import Displayable, JsonResult, count_up, json_field
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.base import linear_prediction
from dmtoolkit.estimate.blocks import TargetColumns, row_blocks
from dmtoolkit.estimate.files import OpenedEstimate, load_estimate
from dmtoolkit.estimate.fit import store_draws
from dmtoolkit.stats.intervals import percentile_interval
from dmtoolkit.stats.lds import (
    BOOTSTRAP_RESAMPLES,
    INTERVAL_LEVEL,
    bootstrap_lds_interval,
    bootstrap_lds_means,
    summarise_lds,
)
from dmtoolkit.stats.splits import split_rows
from dmtoolkit.store import RunStore

LDS_WEAK = 0.1
"""Below this mean LDS an estimate better than chance still predicts little: "weak"."""
LDS_USEFUL = 0.3
"""From this mean LDS an estimate is called useful (docs/signal.md's goal for example-level datamodels)."""
LDS_GOALS = (LDS_WEAK, LDS_USEFUL)
CURVE_SEED = 1
"""Seed of the split of the fitting models in two halves for the LDS curve."""

HISTOGRAM_EDGES = np.round(np.linspace(-1, 1, 21), 10)


@dataclass(frozen=True)
class LdsCurve(JsonResult):
    """How LDS grows with models in this store: the estimator refitted, with the estimate's settings, on half of
    its fitting models (whole draws), scored on the same test models as the estimate itself.

    half_models / full_models: fitting models of the refit and of the estimate; half_lds / full_lds: their mean
    LDS; gain: LDS gained per doubling of models, (full − half) / log2(full_models / half_models), with a paired
    bootstrap interval over the test models' draws (`gain_interval`, same level as the LDS interval);
    needed: for each goal in LDS_GOALS, the fitting models a log-linear extrapolation of the two points needs
    (full_models when already reached; None when the gain's interval does not exclude 0, so the store cannot
    tell). Two points of a curve that bends: read `needed` as an order of magnitude.
    """

    half_models: int
    full_models: int
    half_lds: float | None
    full_lds: float | None
    gain: float | None = json_field("gain_per_doubling")
    gain_interval: tuple[float, float] | None
    needed: dict[str, float | None]

    method: ClassVar[str] = ("estimator refitted on half the fitting models (whole draws), LDS on the same test "
                             "models, log-linear extrapolation")
    json_derived = ("method",)
    json_order = ("method",)

    @property
    def rising(self) -> bool:
        """The gain's interval lies above 0: more models measurably helped in this store."""
        return self.gain_interval is not None and self.gain_interval[0] > 0


def lds_verdict(mean: float | None, interval: tuple[float, float] | None, curve: LdsCurve | None,
                curve_note: str = "") -> str:
    """One line a practitioner can read: is the LDS better than chance, weak, moderate or useful, and (when it is
    not useful) how many models this store's own curve says would be needed, or why it cannot tell."""
    if mean is None:
        return "verdict: LDS undefined (every held-out target has constant margins): nothing to judge"
    shown = f"LDS {mean:.3f}" + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")
    if interval is None:
        shown += ", no interval (fewer than 3 held-out draws)"
    if mean <= 0 or (interval is not None and interval[0] <= 0):
        head = f"verdict: no better than chance ({shown}): its rankings are not evidence"
    elif mean < LDS_WEAK:
        head = f"verdict: weak ({shown}): better than chance but predicts little; treat rankings as leads"
    elif mean < LDS_USEFUL:
        head = f"verdict: moderate ({shown}): predicts held-out margins in part"
    else:
        return f"verdict: useful ({shown}): predicts held-out margins (goal {LDS_USEFUL}, docs/signal.md)"
    if curve is None:
        return head + (f"; {curve_note}" if curve_note else "")
    if not curve.rising:
        return (f"{head}; this store cannot tell how many models would be needed (LDS did not clearly rise from "
                f"{curve.half_models:,} to {curve.full_models:,} fitting models): train several times more")
    wanted = " and ".join(f"about {count_up(n)} for {goal}" for goal, n in
                          ((goal, curve.needed[str(goal)]) for goal in LDS_GOALS if goal > mean) if n is not None)
    return (f"{head}; fitting models needed by this store's curve (a rough log-linear extrapolation): {wanted}")


@dataclass(frozen=True, repr=False)
class LdsResult(Displayable):
    """LDS of one estimate on its test rows: summary, per-target scores and a histogram over [-1, 1].

    `print(result)` shows what `dmtoolkit evaluate` prints; `result.to_frame()` has one row per target.
    """

    estimator: str
    estimate_file: Path
    store: Path
    heldout_models: int
    targets: tuple[int, int]
    lds_mean: float | None
    lds_median: float | None
    undefined_targets: int
    constant_predictions: int
    lds_per_target: tuple[float | None, ...]
    histogram_edges: tuple[float, ...] = json_field(None)
    histogram_counts: tuple[int, ...] = json_field(None)
    lds_interval: tuple[float, float] | None = None  # 95% bootstrap over held-out draws
    heldout_units: int = 0                            # held-out draws resampled (JSON key kept)
    curve: LdsCurve | None = None                     # LDS at half the fitting models (when computed)
    curve_note: str = ""                              # why there is no curve, when there is none

    json_derived = ("verdict", "histogram")
    json_order = ("estimator", "estimate_file", "store", "heldout_models", "targets", "lds_mean", "lds_median",
                  "lds_interval", "heldout_units", "undefined_targets", "constant_predictions", "verdict", "curve",
                  "curve_note")

    @property
    def verdict(self) -> str:
        """The one-line reading of the LDS (`lds_verdict`)."""
        return lds_verdict(self.lds_mean, self.lds_interval, self.curve, self.curve_note)

    @property
    def histogram(self) -> dict[str, tuple[float, ...] | tuple[int, ...]]:
        """{"edges": histogram_edges, "counts": histogram_counts}."""
        return {"edges": self.histogram_edges, "counts": self.histogram_counts}

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """LDS of each target example (None where its held-out margins are constant)."""
        return ("target", "lds"), [(self.targets[0] + i, v) for i, v in enumerate(self.lds_per_target)]


def _needed(full_models: int, full: float, gain: float, goal: float) -> float:
    return float(full_models) if full >= goal else float(full_models * 2 ** ((goal - full) / gain))


def lds_curve(est: Any, store: RunStore, masks: np.ndarray, actual: np.ndarray, draws: np.ndarray,
              full_predicted: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, level: float = INTERVAL_LEVEL,
              seed: int = CURVE_SEED) -> LdsCurve:
    """`LdsCurve` of an estimate: its estimator refitted on half its fitting (and selection) models, whole
    draws (`split_rows` with `seed`), scored on the test models (`masks`, `actual`, their `draws`)
    beside the estimate's own prediction `full_predicted`."""
    from dmtoolkit.estimate.refit import refit_on_rows

    rows = np.union1d(est.fit_rows, est.selection_rows)
    half, _ = split_rows(rows, 0.5, seed, store_draws(store).ids)
    values = store.margins if est.columns == slice(0, store.num_targets) else TargetColumns(store.margins, est.columns)
    with warnings.catch_warnings():  # the half fit's own warnings (undefined units, λ paths) are not the user's
        warnings.simplefilter("ignore")
        refit = refit_on_rows(est, store, values, half)
    half_predicted = linear_prediction(masks, refit.coef_, refit.intercept_)
    half_lds, full_lds = summarise_lds(half_predicted, actual)[1], summarise_lds(full_predicted, actual)[1]
    doublings = float(np.log2(len(rows) / len(half))) if len(half) else 0.0
    gain = interval = None
    needed: dict[str, float | None] = {str(goal): None for goal in LDS_GOALS}
    if half_lds is not None and full_lds is not None and doublings > 0:
        gain = (full_lds - half_lds) / doublings
        a = bootstrap_lds_means(half_predicted, actual, draws, resamples=resamples)
        b = bootstrap_lds_means(full_predicted, actual, draws, resamples=resamples)
        if a is not None and b is not None:  # paired resamples; NaN where either is undefined
            interval = percentile_interval((b - a) / doublings, level, resamples / 2)
            if interval is not None and interval[0] > 0:
                needed = {str(goal): _needed(len(rows), full_lds, gain, goal) for goal in LDS_GOALS}
    return LdsCurve(half_models=len(half), full_models=len(rows), half_lds=half_lds, full_lds=full_lds, gain=gain,
                    gain_interval=interval, needed=needed)


def evaluate(store_path: str | Path | None, estimate_path: str | Path | OpenedEstimate, *, block_rows: int = 1024,
             resamples: int = BOOTSTRAP_RESAMPLES, curve: bool | None = None) -> LdsResult:
    """LDS of an ESTIMATE.h5 on its test rows: mean, median, per target, histogram, and a verdict.

    `curve`: also refit the estimator on half its fitting models to see how LDS grows with models here
    (`lds_curve`, one refit at half the cost of the original fit); None (default) does so only when the verdict
    is not "useful" (mean LDS below LDS_USEFUL, or its interval reaching 0), where the models needed matter.
    Estimators that retrain networks (gradient) are never refitted; the verdict says so.

    `estimate_path`: an estimate file, read with the run store at `store_path` (opened as given: a missing one is
    "no such store"), or an `OpenedEstimate`, read with its already checked store (`store_path` None, or that
    store's path).
    """
    from dmtoolkit.estimate.registry import estimator_entry

    opened = estimate_path if isinstance(estimate_path, OpenedEstimate) else None
    if opened is not None and store_path is not None and Path(store_path).resolve() != (
            opened.store_path.resolve() if opened.store_path is not None else None):
        raise ValueError(f"evaluate: {store_path} is not the run store {estimate_path.estimate.path} was opened with "
                         f"({opened.store_path})")
    est = opened.estimate if opened is not None else load_estimate(estimate_path)
    rows = est.test_rows
    if len(rows) < 3:
        raise StoreError(f"{est.path}: only {len(rows)} held-out test models, LDS needs at least 3; "
                         "refit with a larger --holdout-frac or train more models")
    if opened is None:
        if store_path is None:
            raise ValueError("evaluate: give the run store of an estimate file (or an OpenedEstimate)")
        opened = OpenedEstimate(est, store_path, run=RunStore(store_path), keep_open=False)
    with opened.using_store() as store:
        draws = store_draws(store).ids[rows]  # the draws: a pair's or a block's models are one
        margins = TargetColumns(store.margins, est.columns)
        predicted, actual, test_masks = [], [], []
        for _, (masks, block) in row_blocks([store.masks, margins], rows, block_rows):
            predicted.append(linear_prediction(masks, est.matrix, est.intercept))
            actual.append(block)
            test_masks.append(np.asarray(masks, bool))
        predicted, actual = np.concatenate(predicted), np.concatenate(actual)
        lds, mean, median = summarise_lds(predicted, actual)
        interval = bootstrap_lds_interval(predicted, actual, draws, resamples=resamples) if mean is not None else None
        # no interval means fewer than 3 held-out draws: a curve's paired gain could not be judged either
        weak = mean is not None and interval is not None and (mean < LDS_USEFUL or interval[0] <= 0)
        fitted = len(np.union1d(est.fit_rows, est.selection_rows))
        found, note = None, ""
        if curve is False or (curve is None and not weak):
            note = "" if curve is None else "curve not computed"
        elif estimator_entry(est.estimator).retrains:
            note = (f"how many models would help is not estimated here: {est.estimator} estimates retrain networks, "
                    "so refitting on half the models is not cheap (see docs/signal.md for its curve)")
        elif fitted < 4:
            note = f"too few fitting models ({fitted}) to refit on half of them and see how LDS grows"
        else:
            try:
                found = lds_curve(est, store, np.concatenate(test_masks), actual, draws, predicted, resamples=resamples)
            except (UserError, ValueError) as error:  # e.g. too few models left to choose λ on half of them
                note = f"the estimator could not be refitted on half its {fitted} fitting models ({error})"
    finite = lds[np.isfinite(lds)]
    counts, edges = np.histogram(finite, bins=HISTOGRAM_EDGES)
    return LdsResult(
        estimator=est.estimator, estimate_file=est.path, store=store.path, heldout_models=len(rows),
        targets=(est.columns.start, est.columns.stop), lds_mean=mean, lds_median=median,
        undefined_targets=int(len(lds) - len(finite)),
        constant_predictions=int((np.ptp(predicted, axis=0) == 0).sum()),
        lds_per_target=tuple(float(v) if np.isfinite(v) else None for v in lds),
        histogram_edges=tuple(edges.tolist()), histogram_counts=tuple(int(c) for c in counts),
        lds_interval=interval, heldout_units=len(np.unique(draws)), curve=found, curve_note=note,
    )
