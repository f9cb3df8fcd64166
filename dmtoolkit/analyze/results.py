"""What the analyses return: frozen dataclasses, read by attribute in the CLI, the report and the demo.

Each type has `to_json()`, the machine-readable form `--json` prints and `report.json` holds (keys as they
have always been): `dmtoolkit.display.JsonResult`'s, from the fields (`json_field` renames or omits one) and the
properties a type lists in `json_derived`. Fields that hold arrays (images for figures) are left out of the JSON
and out of equality (`not_in_json`). This module imports neither NumPy nor torch, so formatting code can import
it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dmtoolkit.display import Displayable, JsonResult, json_field, not_in_json, rows_of

NO_STDERR = "no interval (estimate has no standard errors)"
"""What results say instead of an interval when the estimate (e.g. datamodels) has no standard errors."""


@dataclass(frozen=True)
class ClassEffect(JsonResult):
    """One source class's effect: its index in the estimate, its name, its (mean) influence, and the bounds of its
    interval at the result's `level` (None when there is no interval: no standard errors, or undefined)."""

    index: int
    name: str
    influence: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class ClassEvidence(ClassEffect):
    """A class's influence on one target with its evidence (`explain_target`): p_value one-sided (influence < 0 in
    a most-negative list, > 0 in a most-positive one), q_value its Benjamini–Hochberg adjustment over that target's
    classes (same side), significant: q_value ≤ the explanation's FDR (all three None without standard errors)."""

    p_value: float | None = None
    q_value: float | None = None
    significant: bool | None = None


@dataclass(frozen=True, repr=False)
class ClassRanking(Displayable):
    """Source classes ranked by mean influence over target examples (`rank_classes`).

    file: the estimate read; estimator: "influence" or "datamodels"; target_class: the target class averaged
    over (None: all targets); targets: how many target examples the mean is over;
    overall: every class with a defined mean, most positive first (ties: lower index first);
    undefined: names of classes whose influence is undefined (NaN) on all of those targets;
    top: the first `top` of `overall`; bottom: the `top` most negative, most negative first;
    bottom_all: every defined class, most negative first.
    level: nominal coverage of the classes' intervals (None when there are none); interval_note: how the intervals
    were made (the standard error of a mean over targets comes from refitting the estimator on the per-model mean
    margin, so correlation across targets counts), or why there are none.
    """

    file: str
    estimator: str
    target_class: str | None
    targets: int
    overall: tuple[ClassEffect, ...]
    undefined: tuple[str, ...]
    top: tuple[ClassEffect, ...]
    bottom: tuple[ClassEffect, ...]
    bottom_all: tuple[ClassEffect, ...]
    level: float | None = None
    interval_note: str = NO_STDERR

    json_order = ("file", "estimator", "target_class", "targets", "level", "interval_note")

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Every class with a defined mean, most positive first (`overall`), ranked from 1."""
        columns = ("index", "name", "influence", "low", "high")
        return ("rank", *columns), [(i, *row) for i, row in enumerate(rows_of(self.overall, columns), 1)]


@dataclass(frozen=True)
class TargetEffect(JsonResult):
    """A source class's influence on one target example: its index in the run store, its name ("j:class"), and the
    bounds of its interval (None without one)."""

    target: int
    name: str
    influence: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, repr=False)
class Subpopulation(Displayable):
    """The target examples most positively influenced by one source class (`subpopulation`), most first.

    images: uint8 (n, H, W, C) images of those targets, in the same order, when asked for (for a figure);
    not part of the JSON. level / interval_note: as in ClassRanking.
    """

    file: str
    class_name: str = json_field("class")
    targets: tuple[TargetEffect, ...]
    images: Any = not_in_json()
    level: float | None = None
    interval_note: str = NO_STDERR

    json_order = ("file", "class", "level", "interval_note")

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        columns = ("target", "name", "influence", "low", "high")
        return columns, rows_of(self.targets, columns)


@dataclass(frozen=True)
class Verification(JsonResult):
    """Retraining check of an explanation: `repeats` models without class `class_name` and `repeats` with it
    (pair r shares its training seeds); how many classify the target correctly in each group."""

    class_name: str = json_field("class")
    repeats: int
    correct_removed: int
    correct_kept: int
    rate_removed: float
    rate_kept: float


@dataclass(frozen=True, repr=False)
class Explanation(Displayable):
    """Why one target example is (mis)classified (`explain_target`, `verify_explanation`).

    true_label / predicted_label: target class names (predicted: the majority over completed models, None if
    no model recorded a prediction); models: completed models; fraction_correct: share of them with a
    positive margin (None without models); most_negative / most_positive: classes by influence on this
    target, most extreme first (ClassEvidence: interval, one-sided p-value, BH q over this target's classes);
    level / interval_note: as in ClassRanking; fdr: the rate `significant` is judged at; verify: the retraining
    check, when one was run (else the key is absent).
    """

    file: str
    target: int
    true_label: str
    predicted_label: str | None
    models: int
    fraction_correct: float | None
    most_negative: tuple[ClassEffect, ...]
    most_positive: tuple[ClassEffect, ...]
    verify: Verification | None = json_field(omit="none", default=None)
    level: float | None = None
    fdr: float = 0.05
    interval_note: str = NO_STDERR

    json_order = ("file", "target", "true_label", "predicted_label", "models", "fraction_correct", "level", "fdr",
                  "interval_note")

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """The most negative, then the most positive classes, with their evidence (`side` says which list)."""
        columns = ("index", "name", "influence", "low", "high", "p_value", "q_value", "significant")
        blank = {"p_value": None, "q_value": None, "significant": None}  # a ClassEffect has no evidence
        rows = [(side, *({**blank, **e.to_json()}[c] for c in columns))
                for side, effects in (("negative", self.most_negative), ("positive", self.most_positive))
                for e in effects]
        return ("side", *columns), rows


@dataclass(frozen=True)
class CounterfactualCurve:
    """Target accuracy by number of classes removed, as a figure or table shows it (from a result or a file).

    file: the counterfactual file; order: bottom | top | random; repeats: retrainings per k;
    k: numbers of classes removed; mean / std: accuracy over repeats per k (std ddof=1, 0 for one repeat).
    """

    file: str
    order: str
    repeats: int
    k: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def rows(self) -> list[dict[str, Any]]:
        """One {"k", "mean", "std"} per k (the report's table and JSON)."""
        return [{"k": k, "mean": m, "std": s} for k, m, s in zip(self.k, self.mean, self.std)]


@dataclass(frozen=True, repr=False)
class CounterfactualResult(Displayable):
    """Counterfactual retraining (`counterfactual`): accuracy with the first k classes of `order` removed.

    file: OUT.h5 written; accuracy: (repeats, len(k)) per retrained model; accuracy_mean / accuracy_std: over
    repeats per k; removed_first: names of the classes the first repeat removes, in removal order (max k);
    removed_per_repeat: the same for every repeat (one order for bottom and top, its own for each random repeat);
    at k the first k of a repeat's names are removed (`removed_at`).
    """

    file: str
    order: str
    repeats: int
    k: tuple[int, ...]
    accuracy_mean: tuple[float, ...]
    accuracy_std: tuple[float, ...]
    accuracy: tuple[tuple[float, ...], ...]
    removed_first: tuple[str, ...]
    removed_per_repeat: tuple[tuple[str, ...], ...] = ()

    json_derived = (("removed", "removed_by_k"),)

    def removed_at(self, k: int) -> tuple[tuple[str, ...], ...]:
        """The classes removed at `k`, one tuple per repeat (one tuple in all when every repeat removes the same)."""
        orders = self.removed_per_repeat or (self.removed_first,)
        removed = tuple(order[:k] for order in orders)
        return removed[:1] if len(set(removed)) == 1 else removed

    @property
    def removed_by_k(self) -> dict[str, tuple[tuple[str, ...], ...]]:
        """`removed_at` of every k, keyed by k as a string (the JSON's "removed")."""
        return {str(k): self.removed_at(k) for k in self.k}

    @property
    def curve(self) -> CounterfactualCurve:
        return CounterfactualCurve(self.file, self.order, self.repeats, self.k, self.accuracy_mean, self.accuracy_std)

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Target accuracy (mean, std over repeats) per number of classes removed."""
        return ("k", "accuracy_mean", "accuracy_std"), list(zip(self.k, self.accuracy_mean, self.accuracy_std))


LEAK_CATEGORIES = ("likely copy", "influence only", "near duplicate only", "not significant")
"""What the evidence says about a pair: significant influence and near-duplicate content (flagged), significant
influence on a look-alike (functionally similar, not a copy), a copy whose influence is not significant, or
neither."""


@dataclass(frozen=True)
class RemovalCandidate(JsonResult):
    """One candidate removal set of `recommend_removal`: the k most negative classes on the validation part.

    predicted_margin_change: predicted change of the mean validation margin (removal − full source), with its
    interval (None when the estimate has no standard errors); predicted_accuracy: predicted share of validation
    targets with margin > 0 after the removal; predicted_accuracy_change: that minus the full source's;
    evidence: every removed class has evidence of harm (Benjamini–Hochberg at the recommendation's FDR; None
    when the estimate has no standard errors to test with).
    """

    k: int
    removed: tuple[str, ...]
    predicted_margin_change: float
    margin_change_low: float | None
    margin_change_high: float | None
    predicted_accuracy: float
    predicted_accuracy_change: float
    evidence: bool | None = None


@dataclass(frozen=True)
class PredictionTrust(JsonResult):
    """How far `recommend`'s predicted gain should be trusted, from facts about its store and the removal.

    models: fitted models behind the estimate; classes: P; kept_mean / kept_min / kept_max: classes a fitted model
    kept (None without the store); removed: k; reach: k / ((1 − α)·P), how far the removal moves from the full
    source toward the store's mean subset (the linear model is fitted on subsets of about α·P classes, so the full
    source and the removal are both extrapolations; 0: nothing removed, 1: down to the mean subset);
    beyond: P − k − kept_max, how many classes the source after the removal holds beyond the largest subset a model
    kept; regime: "near" (reach ≤ 1/2), "far" or "unknown" (no store); flipped / validation_targets: the predicted
    accuracy change in targets; margin_change / margin_low / margin_high: the mean-margin prediction and interval;
    command: a `dmtoolkit counterfactual` command that retrains the removal (None when nothing is removed or the
    store cannot be retrained); command_note: what the command removes and which recipe it needs; studies: what
    the documented studies measured, labelled as such (docs/signal.md, with their commands).
    """

    models: int
    classes: int
    removed: int
    validation_targets: int
    flipped: int
    margin_change: float
    margin_low: float | None = None
    margin_high: float | None = None
    kept_mean: float | None = None
    kept_min: int | None = None
    kept_max: int | None = None
    regime: str = "unknown"
    command: str | None = None
    command_note: str = ""
    studies: str = ""

    json_derived = ("reach", "beyond", "statement", "brief", "confirm")
    json_order = ("models", "classes", "removed", "kept_mean", "kept_min", "kept_max", "reach", "beyond", "regime")

    @property
    def reach(self) -> float | None:
        if self.kept_mean is None or self.classes - self.kept_mean <= 0:
            return None
        return self.removed / (self.classes - self.kept_mean)

    @property
    def beyond(self) -> int | None:
        return None if self.kept_max is None else self.classes - self.removed - self.kept_max

    @property
    def statement(self) -> str:
        """One line: where the prediction sits relative to the store's subsets, what its accuracy figure rests on,
        and what the documented studies found there."""
        if self.removed == 0:
            return "how far to trust it: nothing is removed, so there is no predicted gain to trust"
        k, P = self.removed, self.classes
        noun = "class" if k == 1 else "classes"
        if self.kept_mean is None:
            where = (f"removing {k} of {P} {noun}; the run store is not at hand, so how far this lies from the "
                     "subsets the models were trained on is unknown")
        else:
            reach = self.reach
            beyond = self.beyond
            more = "" if beyond is None or beyond <= 0 else f", {beyond} more than any model kept"
            where = (f"the {self.models} models behind it each kept {self.kept_min}–{self.kept_max} of {P} classes "
                     f"(mean {self.kept_mean:.1f}), so both the full source ({P}) and the source without {k} {noun} "
                     f"({P - k}{more}) are extrapolations of the linear model"
                     + ("" if reach is None else f"; removing {k} goes {100 * reach:.0f}% of the way from the full "
                        f"source to the mean subset ({self.regime})"))
        margin = (f"{self.margin_change:+.3f}" if self.margin_low is None or self.margin_high is None else
                  f"{self.margin_change:+.3f} [{self.margin_low:+.3f}, {self.margin_high:+.3f}]")
        figure = (f"the predicted accuracy change is {self.flipped:+d} of {self.validation_targets} validation "
                  f"targets; read the mean-margin change, {margin}, which uses all of them")
        return f"how far to trust it: {where}; {figure}" + (f"; {self.studies}" if self.studies else "")

    @property
    def brief(self) -> str:
        """A few words for the report's removal card: near or far from the store's subsets, and from how many."""
        if self.removed == 0:
            return "nothing removed"
        if self.kept_mean is None or self.reach is None:
            return f"removing {self.removed} of {self.classes} classes, its distance from the store's subsets unknown"
        return (f"{self.regime}: removing {self.removed} of {self.classes} classes goes {100 * self.reach:.0f}% of the "
                f"way from the full source to the {self.kept_min}–{self.kept_max}-class subsets of the "
                f"{self.models} models")

    @property
    def confirm(self) -> str:
        """The line that says how to confirm the prediction by retraining."""
        if self.command is None:
            return "" if self.removed == 0 else f"confirm by retraining: {self.command_note}"
        return f"confirm by retraining before acting: {self.command}" + (
            f" ({self.command_note})" if self.command_note else "")


@dataclass(frozen=True, repr=False)
class Recommendation(Displayable):
    """Which classes to remove (`recommend_removal`): every candidate k and the chosen one.

    validation_columns / test_columns: the target columns k was chosen on / left untouched for verification
    (split by `split_seed`); full_predicted_accuracy: the linear predictor's validation accuracy of the full
    source; chosen: the candidate with the best predicted validation accuracy among those whose classes all have
    evidence of harm, ties decided by the mean-margin evidence (`dmtoolkit.analyze.recommend.choose_removal`);
    harmful: how many of the most negative classes in a row have that evidence (Benjamini–Hochberg at `fdr` on
    one-sided p-values of the mean validation influence < 0), None when the estimate has no standard errors and
    every candidate was eligible; reason: one line that says why `chosen` was chosen; trust: how far its predicted
    gain should be trusted (`PredictionTrust`).
    """

    file: str
    estimator: str
    validation_fraction: float
    split_seed: int
    validation_columns: tuple[int, ...]
    test_columns: tuple[int, ...]
    full_predicted_accuracy: float
    candidates: tuple[RemovalCandidate, ...]
    chosen: RemovalCandidate
    level: float | None = None
    interval_note: str = NO_STDERR
    fdr: float | None = None
    harmful: int | None = None
    removal_evidence: tuple[ClassEvidence, ...] = ()
    reason: str = ""
    trust: PredictionTrust | None = None

    json_derived = ("validation_targets", "test_targets", "message", "explanation")
    json_order = ("file", "estimator", "validation_fraction", "split_seed", "validation_targets", "test_targets",
                  "validation_columns", "test_columns", "full_predicted_accuracy", "level", "interval_note", "fdr",
                  "harmful", "message", "explanation", "removal_evidence", "chosen")

    @property
    def validation_targets(self) -> int:
        return len(self.validation_columns)

    @property
    def test_targets(self) -> int:
        return len(self.test_columns)

    @property
    def explanation(self) -> list[str]:
        """Lines that say why: the rule's reason for `chosen` (`reason`), and every candidate whose mean margin change
        has an interval above 0 but whose classes did not all pass the evidence gate."""
        lines = [self.reason] if self.reason else []
        phrase = f"FDR {100 * (self.fdr or 0):g}%"
        blocked = [c for c in self.candidates if c.evidence is False and c.margin_change_low is not None
                   and c.margin_change_low > 0]
        if blocked:
            rows = ", ".join(f"k = {c.k}: {c.predicted_margin_change:+.2f} [{c.margin_change_low:+.2f}, "
                             f"{c.margin_change_high:+.2f}]" for c in blocked[:3])
            more = f" and {len(blocked) - 3} more" if len(blocked) > 3 else ""
            lines.append(f"not chosen although the mean margin change's interval excludes 0 ({rows}{more}): as a set "
                         f"these classes are predicted to help, but not every one of them has evidence of harm at "
                         f"{phrase} (only the first {self.harmful} in the table's order do), which the rule requires; "
                         "retrain without them before acting on it")
        return lines

    @property
    def message(self) -> str:
        """One line a user can act on."""
        chosen = self.chosen
        if chosen.k == 0 and self.harmful == 0:
            return (f"remove nothing: no source class has evidence of harm on the validation targets at "
                    f"FDR {100 * (self.fdr or 0):g}%")
        if chosen.k == 0:
            return ("remove nothing: no removal of the most negative classes is predicted to raise validation "
                    "accuracy")
        gain = f"{chosen.predicted_accuracy_change:+.3f}"
        interval = ""
        if chosen.margin_change_low is not None and chosen.margin_change_high is not None:
            interval = (f"; mean margin {chosen.predicted_margin_change:+.3f} [{chosen.margin_change_low:+.3f}, "
                        f"{chosen.margin_change_high:+.3f}]")
            if chosen.margin_change_low <= 0:
                interval += " (its interval includes no gain: verify by retraining before acting)"
        flipped = round(chosen.predicted_accuracy_change * len(self.validation_columns))
        noun = "class" if chosen.k == 1 else "classes"
        return (f"remove {chosen.k} {noun} ({', '.join(chosen.removed)}): predicted validation accuracy {gain} "
                f"({flipped:+d} of {len(self.validation_columns)} targets){interval}")

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Every candidate k with its predicted changes; `chosen` marks the recommended one."""
        columns = ("k", "removed", "predicted_accuracy", "predicted_accuracy_change", "predicted_margin_change",
                   "margin_change_low", "margin_change_high", "evidence")
        return (*columns, "chosen"), [(*row, row[0] == self.chosen.k) for row in rows_of(self.candidates, columns)]


@dataclass(frozen=True)
class LeakPair(JsonResult):
    """A (source example, target example) pair and its evidence.

    source / source_id / source_label: pool index, example id and class name of the source example;
    target / target_label: target test index and class; influence: the estimate's entry;
    ranking_score: the score browsing ranks pairs by (see LEAK_RANKINGS); pixel_score: near-duplicate score
    of the two images (`near_duplicate_matrix`, in [-1, 1]); p_value: one-sided p-value of influence > 0 from
    the estimate's design-valid standard error, q_value its Benjamini–Hochberg adjustment within its family
    (the pixel copies, or every other pair; `leakage.family_q_values`) (both None when the estimate has no standard errors); category: one of LEAK_CATEGORIES; flagged: a
    likely copy at the report's FDR; feature_score: cosine similarity of the two images' standardised
    features in one model trained on the whole pool (`dmtoolkit.analyze.features`; None when not computed).
    """

    rank: int
    source: int
    source_id: str
    source_label: str
    target: int
    target_label: str
    influence: float
    ranking_score: float
    pixel_score: float
    p_value: float | None = None
    q_value: float | None = None
    category: str = "not significant"
    flagged: bool = False
    feature_score: float | None = None

    json_order = ("rank", "source", "source_id", "source_label", "target", "target_label", "influence", "ranking_score",
                  "pixel_score", "feature_score")


@dataclass(frozen=True)
class SourceCopy(JsonResult):
    """A source example that copies a target test image, found from pixels alone (no models needed).

    source / source_id / source_label: pool index, example id and class name of the source example;
    target / target_label: target test index and class; pixel_score: `near_duplicate_matrix` of the two images;
    exact: identical pixels (same shape, max abs difference 0), else a near copy (pixel score ≥ the report's
    `near_duplicate`, up to a one-pixel shift, brightness and contrast); influence / p_value / q_value: the
    estimate's entry for the pair and its evidence (None when the estimate does not cover that target or has
    no standard errors); confirmed: the influence is significant at the report's FDR (the models learned from
    the copy), None when the estimate cannot tell (no standard errors, or target not covered).
    """

    source: int
    source_id: str
    source_label: str
    target: int
    target_label: str
    pixel_score: float
    exact: bool
    influence: float | None = None
    p_value: float | None = None
    q_value: float | None = None
    confirmed: bool | None = None

    json_derived = ("kind",)
    json_order = ("source", "source_id", "source_label", "target", "target_label", "kind", "exact")

    @property
    def kind(self) -> str:
        """"exact copy" or "near copy"."""
        return "exact copy" if self.exact else "near copy"


@dataclass(frozen=True)
class LeakageScore(JsonResult):
    """Pairs scored against planted leaks: k pairs, planted_leaks findable (their target is covered by the
    estimate), hits (exact pairs), precision and recall (None when undefined; precision@k / recall@k for a
    top-k list), decoys_flagged (pairs whose source is a planted decoy)."""

    k: int
    planted_leaks: int
    hits: int
    precision_at_k: float | None
    recall_at_k: float | None
    decoys_flagged: int


@dataclass(frozen=True, repr=False)
class LeakageReport(Displayable):
    """Leakage evidence (`detect_leakage`).

    copies: every source example that copies a target test image by its pixels (exact or near, see
    `SourceCopy`), from a scan of all source examples against all target test images; contamination whatever
    the models say, and what every rendering leads with. pixel_evidence: how the scan was made; models_add:
    what the influence evidence adds to it (or why it cannot); scanned: (source examples, target test images)
    compared; thresholded: the estimate has standard errors, so influence can flag pairs. flagged: likely copies at `fdr` (significant influence and pixel score ≥ `near_duplicate`), most
    significant first, one per source example; influence_only: significant pairs that are not near duplicates
    (look-alikes), near_duplicate_only: near duplicates without significant influence (both one per source);
    pairs: the `top` pairs by `ranking`, for browsing; evidence: how p-values were made, or why there are
    none; message: the one-line answer; pool_images / covered_target_images: every source and covered target
    image (see `images_of`; not in the JSON). planted: the flagged set scored against planted leaks, with the
    influence-only, pixel-only, feature-only (best feature match per source, top k) and top-k detectors beside
    it (None / absent when nothing is planted); features: how feature scores were made (or why not);
    source_images / target_images: uint8 images of `pairs`, for figures (not in the JSON).
    """

    file: str
    estimator: str
    ranking: str
    one_per_source: bool
    pairs: tuple[LeakPair, ...]
    fdr: float = 0.05
    near_duplicate: float = 0.985
    evidence: str = ""
    message: str = ""
    flagged: tuple[LeakPair, ...] = ()
    influence_only: tuple[LeakPair, ...] = ()
    near_duplicate_only: tuple[LeakPair, ...] = ()
    planted: LeakageScore | None = json_field(omit="none", default=None)
    planted_influence_only: LeakageScore | None = json_field(omit="none", default=None)
    planted_pixel_only: LeakageScore | None = json_field(omit="none", default=None)
    planted_top: LeakageScore | None = json_field(omit="none", default=None)
    planted_feature_top: LeakageScore | None = json_field(omit="none", default=None)
    features: str = ""
    copies: tuple[SourceCopy, ...] = ()
    pixel_evidence: str = ""
    models_add: str = ""
    scanned: tuple[int, int] = json_field(default=(0, 0), convert=lambda counts: {
        "source_examples": counts[0], "target_test_images": counts[1]})
    thresholded: bool = json_field(None, default=True)
    source_images: Any = not_in_json()
    target_images: Any = not_in_json()
    pool_images: Any = not_in_json()
    covered_target_images: Any = not_in_json()
    target_index: Any = not_in_json()
    target_test_images: Any = not_in_json()

    json_derived = ("verdict", ("remove", "removal_ids"))
    json_order = ("file", "estimator", "ranking", "one_per_source", "fdr", "near_duplicate", "evidence", "features",
                  "message", "verdict", "copies", "pixel_evidence", "models_add", "scanned", "remove", "flagged",
                  "influence_only", "near_duplicate_only", "pairs", "planted", "planted_influence_only",
                  "planted_pixel_only", "planted_feature_top")

    def images_of(self, pair: LeakPair | SourceCopy) -> tuple[Any, Any]:
        """(source image, target image) of any pair or copy of this report (from the images it read)."""
        import numpy as np

        if self.target_test_images is not None:
            return self.pool_images[pair.source], self.target_test_images[pair.target]
        column = int(np.searchsorted(self.target_index, pair.target))
        return self.pool_images[pair.source], self.covered_target_images[column]

    @property
    def removal_ids(self) -> list[str]:
        """Source example ids to remove: every pixel copy of a target test image, then any other flagged pair's
        source (each id once)."""
        return list(dict.fromkeys([c.source_id for c in self.copies] + [p.source_id for p in self.flagged]))

    @property
    def verdict(self) -> str:
        """"contamination" (pixel copies), "influence only" (significant influence, no copies), "no evidence"
        (neither, with evidence thresholds) or "no copies; no threshold" (no copies, estimate cannot flag)."""
        if self.copies:
            return "contamination"
        if self.flagged or self.influence_only:
            return "influence only"
        return "no evidence" if self.thresholded else "no copies; no threshold"

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Flagged copies, near duplicates and influence-only look-alikes first, then the browsing pairs (each
        pair once; `category` and `flagged` say which)."""
        columns = ("rank", "source", "source_id", "source_label", "target", "target_label", "influence",
                   "ranking_score", "pixel_score", "feature_score", "p_value", "q_value", "category", "flagged")
        seen: set[tuple[int, int]] = set()
        pairs = []
        for pair in (*self.flagged, *self.near_duplicate_only, *self.influence_only, *self.pairs):
            if (pair.source, pair.target) not in seen:
                seen.add((pair.source, pair.target))
                pairs.append(pair)
        return columns, rows_of(pairs, columns)


@dataclass(frozen=True)
class MislabelCandidate(JsonResult):
    """A source example that may hurt, rank 1 strongest evidence (or most harmful without evidence).

    label: its (possibly flipped) class name; score: see MISLABEL_SCORES (more negative = more harmful);
    p_value: evidence that it hurts both the source task and some target (max of source_p and target_p,
    an intersection-union test), q_value its Benjamini–Hochberg adjustment; source_p: one-sided p-value of
    its influence on source accuracy < 0 (None when the store records no source accuracy); target_p: Simes'
    combination of its one-sided p-values of influence < 0 over the targets; flagged: passes at the report's
    FDR. With the out-of-sample label check (`dmtoolkit.estimate.label_check`; absent otherwise):
    heldout_margin, its stated-label margin averaged over the models (networks) not trained on it; p_value is then the
    conformal p-value of that against the held-out source test images. planted_flip /
    original_label: planted ground truth, None when the store has none (keys then absent).
    """

    rank: int
    source: int
    source_id: str
    label: str
    score: float
    planted_flip: bool | None = json_field(omit="none", default=None)
    original_label: str | None = json_field(omit="none", default=None)
    p_value: float | None = None
    q_value: float | None = None
    source_p: float | None = None
    target_p: float | None = None
    flagged: bool = False
    heldout_margin: float | None = json_field(omit="none", default=None)

    json_order = ("rank", "source", "source_id", "label", "score", "p_value", "q_value", "source_p", "target_p",
                  "flagged")


@dataclass(frozen=True)
class MislabelScore(JsonResult):
    """Candidates scored against planted label flips: k candidates, flipped examples in the store, AUC of the
    ranking for flipped vs not (None when undefined), precision@k, hits (flipped among the k), recall."""

    k: int
    flipped: int
    auc: float | None
    precision_at_k: float | None
    hits: int
    recall_at_k: float | None = None


@dataclass(frozen=True, repr=False)
class MislabelReport(Displayable):
    """Mislabel evidence (`detect_mislabels`): by: the browsing score; candidates: the `top` by evidence (by
    score without it); flagged: those passing Benjamini–Hochberg at `fdr`; evidence / message as in
    LeakageReport; planted: the flagged set scored against planted flips (AUC of the whole ranking),
    planted_top: the top-k list scored (None / absent when nothing is planted)."""

    file: str
    estimator: str
    by: str
    candidates: tuple[MislabelCandidate, ...]
    planted: MislabelScore | None = json_field(omit="none", default=None)
    fdr: float = 0.05
    evidence: str = ""
    message: str = ""
    flagged: tuple[MislabelCandidate, ...] = ()
    planted_top: MislabelScore | None = json_field(omit="none", default=None)

    json_order = ("file", "estimator", "by", "fdr", "evidence", "message", "flagged")

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        columns = ("rank", "source", "source_id", "label", "score", "source_p", "target_p", "p_value", "q_value",
                   "flagged")
        if any(c.heldout_margin is not None for c in self.candidates):
            columns += ("heldout_margin",)
        return columns, rows_of(self.candidates, columns)


@dataclass(frozen=True, repr=False)
class DemoSummary(Displayable):
    """What the demo found (what `dmtoolkit demo` prints; `to_json()` for --json).

    out: the demo folder; scale: quick | default | full; class_models / example_models: models per store;
    lds: mean LDS per estimate (None: undefined); digit_ranks: for MNIST digit d, the position of glyph
    class d among the source classes ranked for target class d (1 = most positive); counterfactual: per
    removal order, the retraining result; leakage / mislabels: detection scores against the planted truth
    (None without it); report: the HTML page.
    """

    out: str
    scale: str
    class_models: int = json_field(None)
    example_models: int = json_field(None)
    lds: Mapping[str, float | None]
    digit_ranks: Mapping[str, int | None]
    counterfactual: Mapping[str, CounterfactualResult]
    leakage: LeakageScore | None
    mislabels: MislabelScore | None
    report: str

    json_derived = ("models",)
    json_order = ("out", "scale", "models")

    @property
    def models(self) -> dict[str, int]:
        """Models per store: {"class": class_models, "example": example_models}."""
        return {"class": self.class_models, "example": self.example_models}

    def _table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """The mean LDS of each estimate the demo made."""
        return ("estimate", "lds"), list(self.lds.items())
