"""How reliable are influence estimates? Split halves that follow the mask design, read by Spearman–Brown.

Rows drawn together are one *draw*: an antithetic pair (a mask and its complement) or an orthogonal
(Hadamard) block. Their estimates are not independent (a pair cancels shared noise, a block makes the
units uncorrelated only when it is whole), so every split here — the two halves of a split-half, fit
against held-out rows — keeps a draw on one side (`dmtoolkit.stats.splits`). `draw_ids` gives the draws
of any store or recipe, so standard errors and other splits can use the same rule.

`reliability_report` (what `dmtoolkit reliability` prints) applies this to run stores: the split-half
reliability of the ranking of the source units (classes, or examples) by mean influence and of the unit ×
target-class matrix, with a verdict line each, and the agreement of two stores, which with different mask and training seeds measures what a user needs — whether another run
would give the same answer (see `CrossRun` for the assumption behind its extrapolation).

Influence comes from the library's estimator (`dmtoolkit.estimate.influence.influence_from_arrays`); the mean
over targets, Spearman and Spearman–Brown from `dmtoolkit.stats` (the per-unit mean is `rank_classes`' own).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dmtoolkit.capabilities import Capability
from dmtoolkit.display import Displayable, JsonResult, count_up, json_field
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.fit import completed_rows, store_draws
from dmtoolkit.estimate.influence import UndefinedInfluenceWarning, influence_from_arrays
from dmtoolkit.estimate.registry import estimator_names
from dmtoolkit.estimate.splits import design_draws
from dmtoolkit.recipe import Recipe, SubsetSpec
from dmtoolkit.stats.correlation import (
    MIN_DEFINED,
    TARGET_RELIABILITY,
    defined_spearman,
    models_for_reliability,
    models_needed,
    projected_reliability,
)
from dmtoolkit.stats.ranking import nanmean_rows
from dmtoolkit.stats.splits import split_halves
from dmtoolkit.store import RunStore

DEFAULT_ESTIMATOR = "difference-of-means"


# draws --------------------------------------------------------------------------------------------------
def draw_ids(design: SubsetSpec | Recipe | RunStore, num_models: int, *,
             num_units: int | None = None) -> np.ndarray:
    """Draw id (int64, 0, 1, …) of each row 0..num_models-1; rows drawn together share an id.

    `design` is a recipe's `subsets`, a recipe (`num_units`, P, is needed for an orthogonal design), or an
    open run store. The rule is the estimators' own: `dmtoolkit.estimate.splits.design_draws` for a design,
    `dmtoolkit.estimate.fit.store_draws` for a store (which detects pairs among explicit masks). The splits
    over these ids (`split_halves`, `holdout_split`) are `dmtoolkit.stats.splits`.
    """
    if not isinstance(design, (Recipe, SubsetSpec)):  # a RunStore: its own rule (explicit masks are detected)
        return store_draws(design).ids[:num_models]
    subsets = design.subsets if isinstance(design, Recipe) else design
    if num_models < 0:
        raise ValueError(f"num_models {num_models} must be non-negative")
    if subsets.design == "orthogonal" and num_units is None:
        raise ValueError("an orthogonal design's blocks depend on the number of units; pass num_units")
    return design_draws(num_models, num_units or 2, antithetic=subsets.antithetic, design=subsets.design).ids


# influence on arrays ------------------------------------------------------------------------------------
def class_influence(masks: np.ndarray, margins: np.ndarray, *, estimator: str = DEFAULT_ESTIMATOR,
                    device: str = "cpu") -> np.ndarray | None:
    """Influence (P, T) by the library's `estimator` (no standard errors); None where the estimator is
    undefined (regression with too few models). Undefined units are NaN, without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedInfluenceWarning)
        try:
            return influence_from_arrays(masks, margins, device=device, errors=False, estimator=estimator).coef_
        except UserError:
            return None


# split-half -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitHalfReliability(JsonResult):
    """Split-half correlations over several split seeds at one size."""

    count: int                          # rows asked for (both halves together)
    seeds: tuple[int, ...]
    values: tuple[float | None, ...]    # one per seed; None where undefined
    half_models: float                  # mean rows per half

    json_derived = ("mean", "sd")

    @property
    def defined(self) -> tuple[float, ...]:
        return tuple(v for v in self.values if v is not None)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.defined)) if self.defined else None

    @property
    def sd(self) -> float | None:
        return float(np.std(self.defined)) if self.defined else None

    def models_for(self, goal: float = TARGET_RELIABILITY) -> float | None:
        """Models (both halves together) whose split-half would reach `goal`, by Spearman–Brown from the mean."""
        per_half = None if self.mean is None else models_for_reliability(self.mean, self.half_models, goal)
        return None if per_half is None else 2 * per_half


# store and cross-run reliability --------------------------------------------------------------------------
# Agreement here is Spearman over the entries defined in both estimates (a unit in every model, or a target
# class without test examples, is NaN and left out), None with fewer than MIN_DEFINED of them (`defined_spearman`).
GOALS = (0.8, 0.9)


def class_target_matrix(influence: np.ndarray, target_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(P, C) average influence of each source unit on the target examples of each target class (NaN for a
    class without examples): the per-class × per-target-class answer, less noisy than single targets."""
    labels = np.asarray(target_labels)
    columns = [nanmean_rows(influence, np.flatnonzero(labels == c)) if (labels == c).any()
               else np.full(len(influence), np.nan) for c in range(num_classes)]
    return np.stack(columns, axis=1) if columns else np.empty((len(influence), 0))


@dataclass(frozen=True)
class WithinStore(JsonResult):
    """Split-half reliability of one answer (the class ranking or the class × target-class matrix) in one store.

    `split.values` are the Spearman correlations between two halves of whole draws, one per split
    seed; `full` is their mean taken by Spearman–Brown from `split.half_models` to all `models`, i.e. the
    expected agreement of this store with an independent store of the same size *if* the halves were as
    independent as two runs (they share the store's mask seed and training seed, so this can overstate it).
    `needed` is the models one run needs for reliability 0.8 and 0.9 (its agreement with another such run).
    """

    split: SplitHalfReliability = json_field("split_half")
    models: int

    json_derived = ("full", "needed")

    @property
    def full(self) -> float | None:
        return projected_reliability(self.split.mean,
                                     self.models / self.split.half_models if self.split.half_models else 0)

    @property
    def needed(self) -> dict[str, float | None]:
        return models_needed(self.split.mean, self.split.half_models, GOALS)


def reduced_margins(margins: np.ndarray, target_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(m, 1 + C): each model's mean margin over all targets, then over each target class's targets (0 for a class
    without targets; `answers_of_reduced` marks it undefined). The estimators are linear in the margins, so the
    influence on these columns is the per-unit mean influence and the unit × target-class matrix, computed
    without the (P, T) matrix: what makes example-level stores cheap."""
    labels = np.asarray(target_labels)
    margins = np.asarray(margins, dtype=np.float64)
    columns = [margins.mean(1)] + [margins[:, labels == c].mean(1) if (labels == c).any()
                                   else np.zeros(len(margins)) for c in range(num_classes)]
    return np.stack(columns, axis=1)


def answers_of_reduced(influence: np.ndarray, target_labels: np.ndarray,
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-unit mean influence, unit × target-class matrix) from influence on `reduced_margins` (NaN columns for
    target classes without examples, as `class_target_matrix`)."""
    labels = np.asarray(target_labels)
    matrix = np.array(influence[:, 1:], dtype=np.float64)
    matrix[:, [not (labels == c).any() for c in range(num_classes)]] = np.nan
    return np.asarray(influence[:, 0], dtype=np.float64), matrix


def split_half_agreements(masks: np.ndarray, margins: np.ndarray, draws: Sequence[int] | np.ndarray,
                          target_labels: np.ndarray, num_classes: int, *, seeds: Sequence[int] = range(10),
                          estimator: str = DEFAULT_ESTIMATOR,
                          reduced: bool = False) -> tuple[SplitHalfReliability, SplitHalfReliability]:
    """Split-half reliability of the per-unit ranking and of the unit × target-class matrix over `seeds`,
    from one influence fit per half (`split_halves`: whole draws on each side). With `reduced`,
    `margins` are `reduced_margins` (the same answers, fitted on 1 + C columns instead of T)."""
    ranking, matrix, halves = [], [], []
    for seed in seeds:
        first, second = split_halves(draws, seed=seed)
        halves.append((len(first) + len(second)) / 2)
        fits = [class_influence(masks[rows], margins[rows], estimator=estimator) if len(rows) >= 2 else None
                for rows in (first, second)]
        if fits[0] is None or fits[1] is None:
            ranking.append(None)
            matrix.append(None)
            continue
        if reduced:
            (rank_a, matrix_a), (rank_b, matrix_b) = (answers_of_reduced(f, target_labels, num_classes) for f in fits)
        else:
            a, b = fits
            rank_a, rank_b = nanmean_rows(a), nanmean_rows(b)
            matrix_a, matrix_b = (class_target_matrix(f, target_labels, num_classes) for f in fits)
        ranking.append(defined_spearman(rank_a, rank_b))
        matrix.append(defined_spearman(matrix_a, matrix_b))
    half = float(np.mean(halves)) if halves else 0.0
    make = lambda values: SplitHalfReliability(len(masks), tuple(seeds), tuple(values), half)  # noqa: E731
    return make(ranking), make(matrix)


@dataclass(frozen=True)
class StoreReliability(JsonResult):
    """One class-level store: where it is, how it was seeded, and the split-half reliability of its answers."""

    path: str
    models: int                      # completed rows
    mask_seed: int | None            # the recipe's subsets.seed (None: imported, not known)
    training_seed: int | None        # the recipe's training (or trainer) seed (None: imported, not known)
    randomness: str                  # shared | per-model | per-pair | seed-blocks | unknown
    ranking: WithinStore
    matrix: WithinStore
    kind: str = "class"              # the store's unit (mask column): class | example

    json_derived = ("verdicts",)
    json_order = ("path", "kind")

    @property
    def answers(self) -> tuple[tuple[str, str], ...]:
        """(attribute, label) of the two answers, named for the store's kind."""
        return (("ranking", f"{self.kind} ranking"), ("matrix", f"{self.kind} x target class"))

    @property
    def verdicts(self) -> dict[str, str]:
        """One readable line per answer (`reliability_verdict`)."""
        return {attr: reliability_verdict(label + (" matrix" if attr == "matrix" else ""), getattr(self, attr))
                for attr, label in self.answers}


def reliability_verdict(label: str, within: WithinStore) -> str:
    """Is `label` (e.g. "class ranking") reproducible at this store's size, and how many models would make it so.

    Read from the split-half mean taken by Spearman–Brown to the whole store (`within.full`): below 0.5 not
    reproducible, below 0.8 partly, from 0.8 reproducible; the models needed for 0.8 (and 0.9) come from the same
    formula. A split-half at or below 0 cannot be extrapolated: the store is too small to say how many models.
    """
    split = within.split
    if split.mean is None:
        return f"the {label} cannot be judged: no split-half is defined (too few models or undefined influence)"
    half = f"split-half {split.mean:+.2f} ± {split.sd:.2f}"
    needed = within.needed
    if split.mean <= 0:
        return (f"the {label} is not reproducible at this store size ({half}); a split-half at or below 0 cannot be "
                "extrapolated to the models needed: train several times more models and rerun")
    full = within.full
    shown = f"{half}, {within.models:,} models ≈ {full:.2f}"
    if full < 0.5:
        verdict = f"the {label} is not reproducible at this store size ({shown})"
    elif full < TARGET_RELIABILITY:
        verdict = f"the {label} is partly reproducible ({shown})"
    elif full < 0.9:
        verdict = f"the {label} is reproducible ({shown})"
    else:
        return f"the {label} is highly reproducible ({shown})"
    goal = "0.8" if full < TARGET_RELIABILITY else "0.9"
    return verdict + ("" if needed[goal] is None else f"; about {count_up(needed[goal])} models needed for {goal}")


@dataclass(frozen=True)
class CrossRun(JsonResult):
    """Agreement of one answer between two stores, read as the reliability of one run of `models` models.

    Assumption (classical test theory): each store's answer is the true answer plus independent noise whose
    variance falls as 1/models. Then the correlation of two runs is sqrt(ρ1·ρ2), their reliabilities, and
    the observed `correlation` is the reliability of a run of the geometric mean of the two sizes
    (sqrt(m1·m2), exact when m1 = m2). `needed` extrapolates it by Spearman–Brown to the models per run for
    0.8 and 0.9; `predicted` is sqrt(ρ1·ρ2) from the stores' own split-halves taken to full size, so a
    `correlation` well below `predicted` says the split-halves are optimistic (shared seeds, not data).
    Spearman stands in for Pearson throughout, which the formulas assume.
    """

    correlation: float | None
    models: float
    predicted: float | None

    json_derived = ("needed",)

    @classmethod
    def between(cls, x: np.ndarray, y: np.ndarray, a: WithinStore, b: WithinStore) -> CrossRun:
        """Agreement of answers `x` and `y` (same shape) from two runs whose split-halves are `a` and `b`."""
        predicted = None if a.full is None or b.full is None else float(np.sqrt(a.full * b.full))
        return cls(defined_spearman(x, y), float(np.sqrt(a.models * b.models)), predicted)

    @property
    def needed(self) -> dict[str, float | None]:
        return models_needed(self.correlation, self.models, GOALS)


def cross_verdict(label: str, cross: CrossRun) -> str:
    """How well two runs agree on `label`, read as the reliability of one run (see `CrossRun`)."""
    if cross.correlation is None:
        return f"the two runs' {label}s cannot be compared (fewer than {MIN_DEFINED} entries defined in both)"
    agree = f"the two runs agree {cross.correlation:+.2f} on the {label}"
    needed = cross.needed
    if cross.correlation >= 0.9:
        return agree + ": reproducible"
    if cross.correlation <= 0:
        return agree + ": not reproducible, and too little agreement to extrapolate the models needed"
    goal = "0.8" if cross.correlation < TARGET_RELIABILITY else "0.9"
    return agree + ("" if needed[goal] is None else f"; about {count_up(needed[goal])} models per run needed for {goal}")


@dataclass(frozen=True, repr=False)
class ReliabilityReport(Displayable):
    """What `dmtoolkit reliability` prints: each store's split-halves and, for two stores, their agreement
    (`ranking`, `matrix`; None for one store) and warnings when the two are not independent runs."""

    estimator: str
    stores: tuple[StoreReliability, ...]
    ranking: CrossRun | None = json_field(None, default=None)  # in the JSON's "cross_run"
    matrix: CrossRun | None = json_field(None, default=None)
    warnings: tuple[str, ...] = ()

    goals: ClassVar[tuple[float, ...]] = GOALS
    json_derived = ("goals", "verdicts", "cross_run")
    json_order = ("estimator", "goals", "verdicts", "stores", "cross_run")

    @property
    def verdicts(self) -> list[str]:
        """The lines a practitioner reads first: each store's ranking verdict and, for two stores, their
        agreement on it."""
        store_lines = [s.verdicts["ranking"] if len(self.stores) == 1 else f"{s.path}: {s.verdicts['ranking']}"
                       for s in self.stores]
        if self.ranking is not None:
            store_lines.append(cross_verdict(self.stores[0].answers[0][1], self.ranking))
        return store_lines

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """One row per store and answer (split-half mean and sd, full, models for 0.8 / 0.9); for two stores, one
        row per answer for their agreement (store "cross-run", its Spearman in `full`)."""
        rows = [(store.path, answer, within.split.mean, within.split.sd, within.full, within.needed["0.8"],
                 within.needed["0.9"])
                for store in self.stores for answer in ("ranking", "matrix") for within in [getattr(store, answer)]]
        rows += [("cross-run", answer, None, None, cross.correlation, cross.needed["0.8"], cross.needed["0.9"])
                 for answer, cross in (("ranking", self.ranking), ("matrix", self.matrix)) if cross is not None]
        return ("store", "answer", "split_half", "split_half_sd", "full", "models_for_0.8", "models_for_0.9"), rows

    @property
    def cross_run(self) -> dict[str, Any] | None:
        """For two stores, their agreement on each answer and its verdict line (None for one store)."""
        if self.ranking is None or self.matrix is None:
            return None
        return {"ranking": self.ranking, "matrix": self.matrix,
                "verdicts": {attr: cross_verdict(label, getattr(self, attr)) for attr, label in self.stores[0].answers}}


@dataclass(frozen=True)
class _StoreAnswers:
    """What the cross-run comparison needs from a store besides its `StoreReliability`."""

    unit_names: list[str]
    target_class_names: list[str]
    target_labels: np.ndarray
    ranking: np.ndarray              # (P,) mean influence over all targets, on all completed rows
    matrix: np.ndarray               # (P, C)


def _seeds(store: RunStore) -> tuple[int | None, int | None]:
    """(mask seed, training seed) from the store's recipe; None for an imported store (not recorded)."""
    if not store.has(Capability.RECIPE):
        return None, None
    return store.recipe.subsets.seed, store.recipe.seeding[0]


def _check_estimator(estimator: str) -> None:
    names = estimator_names("influence")
    if estimator not in names:
        raise UserError(f"estimator {estimator!r} does not give class influence; use one of: {', '.join(names)}")


def _read_store(path: str | Path, estimator: str, seeds: Sequence[int]) -> tuple[StoreReliability, _StoreAnswers]:
    """A class-level store's answers from its (P, T) influence; an example-level store's (P source examples, often
    thousands) from influence on `reduced_margins`, the same numbers at a fraction of the cost."""
    with RunStore(path) as store:
        kind = store.kind
        rows = completed_rows(store, minimum=4)
        masks, margins = store.read_rows(rows)
        draws = draw_ids(store, store.num_models)[rows]
        labels, classes = store.target_labels, store.target_class_names
        names, (mask_seed, training_seed), randomness = store.unit_names, _seeds(store), store.randomness
    reduced = kind == "example"
    if reduced:
        margins = reduced_margins(margins, labels, len(classes))
    ranking, matrix = split_half_agreements(masks, margins, draws, labels, len(classes), seeds=seeds,
                                            estimator=estimator, reduced=reduced)
    influence = class_influence(masks, margins, estimator=estimator)
    if influence is None:
        influence = np.full((masks.shape[1], margins.shape[1]), np.nan)
    report = StoreReliability(str(path), len(rows), mask_seed, training_seed, randomness,
                              WithinStore(ranking, len(rows)), WithinStore(matrix, len(rows)), kind=kind)
    if reduced:
        answers = _StoreAnswers(names, classes, labels, *answers_of_reduced(influence, labels, len(classes)))
    else:
        answers = _StoreAnswers(names, classes, labels, nanmean_rows(influence),
                                class_target_matrix(influence, labels, len(classes)))
    return report, answers


def _check_comparable(a: StoreReliability, b: StoreReliability, x: _StoreAnswers, y: _StoreAnswers) -> None:
    """Two stores answer the same question: same source units (in order) and the same target test set."""
    where = f"{a.path} and {b.path}"
    if x.unit_names != y.unit_names:
        raise UserError(f"{where} have different source classes ({len(x.unit_names)} vs {len(y.unit_names)}, or in "
                        "another order); cross-run agreement needs the same classes")
    if x.target_class_names != y.target_class_names or not np.array_equal(x.target_labels, y.target_labels):
        raise UserError(f"{where} have different target sets ({len(x.target_labels)} vs {len(y.target_labels)} "
                        "examples, or other labels); cross-run agreement needs the same target test set")


def independence_warnings(a: StoreReliability, b: StoreReliability) -> tuple[str, ...]:
    """Why two stores are not independent runs (then their agreement overstates reproducibility)."""
    out, where = [], f"{a.path} and {b.path}"
    tail = "they are not independent runs and their agreement overstates reproducibility"
    for what, x, y in (("mask seed", a.mask_seed, b.mask_seed), ("training seed", a.training_seed, b.training_seed)):
        if x is None or y is None:
            out.append(f"{where}: {what} not recorded (imported store); cannot tell whether the runs are independent")
        elif x == y:
            out.append(f"{where} share {what} {x}: {tail}")
    return tuple(out)


def reliability_report(path: str | Path, other: str | Path | None = None, *, estimator: str = DEFAULT_ESTIMATOR,
                       seeds: Sequence[int] = range(10)) -> ReliabilityReport:
    """Split-half reliability of a class-level store's class ranking and class × target-class matrix (split
    `seeds`), and with `other` the two stores' agreement (see `CrossRun` for how it is extrapolated)."""
    _check_estimator(estimator)
    first, x = _read_store(path, estimator, seeds)
    if other is None:
        return ReliabilityReport(estimator, (first,))
    second, y = _read_store(other, estimator, seeds)
    _check_comparable(first, second, x, y)
    return ReliabilityReport(estimator, (first, second),
                             CrossRun.between(x.ranking, y.ranking, first.ranking, second.ranking),
                             CrossRun.between(x.matrix, y.matrix, first.matrix, second.matrix),
                             independence_warnings(first, second))
