"""Which source classes to remove: a removal set chosen on a validation part of the target data.

Class influences are a linear predictor of the transferred model's margins (`f̂(S) = intercept + Σ_k coef_k ·
1[k ∈ S]`, see `dmtoolkit.estimate.base`), so removing a set R from the full source changes target j's
predicted margin by −Σ_{k∈R} coef_kj. `recommend_removal`:

1. splits the target examples once, by a seeded permutation, into a *validation* part and a *test* part
   (`split_targets`); the test part is never looked at, so a retraining study can verify the recommendation
   on it;
2. orders the classes by mean influence over the validation part, most negative first (`removal_ranking`);
3. for each k predicts the validation accuracy (share of predicted margins > 0) and the change of mean margin
   with the k most negative classes removed, with an interval for the margin change from the design-valid
   standard errors (estimator refitted on the per-model mean validation margin, units treated as
   uncorrelated, which holds for difference of means under random, antithetic and orthogonal masks);
4. tests each class's mean validation influence for being below zero (one-sided p-values from those standard
   errors, Benjamini–Hochberg at `fdr`) and lets a removal set be chosen only if all its classes have that
   evidence of harm, so a source with no detectably harmful class gets "remove nothing";
5. recommends, among those, the k with the highest predicted validation accuracy (k = 0, "remove nothing", is
   always a candidate). Ties (the same number of validation targets predicted correct) are decided by the
   mean-margin evidence: the tied k with the largest predicted mean-margin gain whose interval lies above 0; the
   smaller k when no tied k has such an interval (`choose_removal`). Accuracy predicted on a few hundred targets
   often cannot tell a removal from the full source (+0 targets) even when the mean-margin gain is clear; before
   this tie rule a flagged planted harmful class with mean-margin gain +0.034 [+0.031, +0.038] was kept for that
   reason (docs/signal.md, issue 34). Chosen on the development seed only (`benchmarks/harm_study.py rule`: over
   50 validation/test splits of seed 0's store the previous rule kept the full source on 2, this one removed the
   planted class on all 50; widening "tie" to within 1 or 2 targets changed nothing, so ties are exact).
6. says how far to trust the predicted gain (`PredictionTrust`): how far the removal lies from the subsets the
   store's models were trained on, how many targets the accuracy figure rests on, what the documented studies
   measured there, and the `dmtoolkit counterfactual` command that retrains it.

Why the evidence gate: the linear predictor's gain keeps rising with k for the most negative order, while
retrained accuracy peaks early and then falls (each class removed also removes training data the predictor
does not charge for). Without the gate the rule chose k = 18 on the default setting (retrained −0.009); the
gate is a rule the toolkit already uses for its detectors, not a tuned threshold. Its verified test gains are
in docs/signal.md.

By default k runs up to (1 − α)·P: removing more leaves fewer classes than the models behind the estimate were
trained on, and the linear predictor would extrapolate past both ends of what it saw. How far to trust a
prediction without retraining is measured in docs/signal.md (benchmarks/removal_study.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmtoolkit.analyze.classes import check_level, mean_influence_refit, percent
from dmtoolkit.analyze.estimates import Estimate, OpenedEstimate, as_opened, require_kind
from dmtoolkit.analyze.evidence import fdr_phrase
from dmtoolkit.analyze.options import DETECT_FDR, INTERVAL_LEVEL, RECOMMEND_SPLIT_SEED, RECOMMEND_VALIDATION_FRACTION
from dmtoolkit.analyze.results import NO_STDERR, ClassEvidence, PredictionTrust, Recommendation, RemovalCandidate
from dmtoolkit.analyze.retrain import check_ks
from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import UserError
from dmtoolkit.stats.intervals import interval_bounds
from dmtoolkit.stats.pvalues import bh_adjusted, check_fdr, one_sided_pvalues
from dmtoolkit.stats.ranking import nanmean_rows, rank_order


def split_targets(num_targets: int, validation_fraction: float = RECOMMEND_VALIDATION_FRACTION,
                  seed: int = RECOMMEND_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) target column indices, each sorted: the first ⌊fraction·T⌋ of a seeded permutation
    are validation, the rest test. The same arguments give the same split on every machine."""
    if not 0 < validation_fraction < 1:
        raise UserError(f"validation fraction {validation_fraction} must be between 0 and 1 (e.g. 0.5)")
    count = int(np.floor(validation_fraction * num_targets))
    if count < 1 or count >= num_targets:
        raise UserError(f"a validation fraction of {validation_fraction} of {num_targets} target examples leaves "
                        "one part empty; use a fraction nearer 0.5")
    permutation = np.random.default_rng(seed).permutation(num_targets)
    return np.sort(permutation[:count]), np.sort(permutation[count:])


def removal_ranking(coef: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Class indices by mean influence over target `columns`, most negative first (ties: lower index first);
    classes with no defined influence there come last."""
    return rank_order(nanmean_rows(np.asarray(coef, np.float64), columns), descending=False, undefined="last")


def predicted_removal_change(coef: np.ndarray, intercept: np.ndarray, removed: np.ndarray,
                             columns: np.ndarray) -> tuple[float, float, float]:
    """(change of mean margin, predicted accuracy after removal, predicted accuracy of the full source) on target
    `columns` when the classes `removed` leave the full source, by the linear predictor (NaN coefficients
    count 0). Accuracy is the share of predicted margins above 0."""
    coef = np.nan_to_num(np.asarray(coef, np.float64)[:, columns])
    full = np.asarray(intercept, np.float64)[columns] + coef.sum(0)
    after = full - coef[np.asarray(removed, int)].sum(0)
    return float((after - full).mean()), float((after > 0).mean()), float((full > 0).mean())


NEAR_REACH = 0.5
"""A removal going at most this share of the way from the full source to the store's mean subset counts as "near".
Coarse, from the documented studies (docs/signal.md): with 36 classes and α = 0.5 (18 left out per model), removals
of 1–2 classes (planted harm) retrained above the prediction and the default setting's 6 at it (+0.004 both), while
the retrained curve fell below 0 from 16 and 18 retrained −0.009 against +0.012 predicted."""

DOCUMENTED_STUDIES = {
    "near": ("documented studies, not this store (docs/signal.md; benchmarks/harm_study.py loop, "
             "benchmarks/removal_study.py): near removals retrained to more than predicted for planted harmful "
             "classes (1–2 of 36 classes, 7 fresh seeds: +0.010…+0.025 retrained, +0.004…+0.010 predicted) and to "
             "less once (one class of 135: −0.001 retrained, +0.006 predicted)"),
    "far": ("documented study, not this store (docs/signal.md; benchmarks/removal_study.py): far removals "
            "retrained to less than predicted (18 of 36 classes: −0.009 retrained, +0.012 predicted); the "
            "prediction keeps rising with k where retraining peaks early"),
}
"""What the documented studies measured, quoted by `PredictionTrust` with that label (update with docs/signal.md)."""


def choose_removal(candidates: list[RemovalCandidate] | tuple[RemovalCandidate, ...], *, validation_targets: int,
                   full_accuracy: float, harmful: int | None, fdr: float | None,
                   most_negative: ClassEvidence | None = None, tie_targets: int = 0) -> tuple[RemovalCandidate, str]:
    """The rule's last step and one line that says why: among the candidates whose classes all have evidence of
    harm (`evidence` not False), the best predicted validation accuracy; ties (the same number of validation
    targets predicted correct, or within `tie_targets` of the best: a study option, the shipped rule uses 0) go to
    the tied k with the largest predicted mean-margin gain whose interval lies above 0, else to the smaller k."""
    phrase = fdr_phrase(fdr or 0)
    eligible = [c for c in candidates if c.evidence is not False]
    correct = {c.k: round(c.predicted_accuracy * validation_targets) for c in eligible}
    top = max(correct.values())
    tied = [c for c in eligible if correct[c.k] >= top - tie_targets]
    supported = [c for c in tied if c.margin_change_low is not None and c.margin_change_low > 0]
    chosen = (max(supported, key=lambda c: (c.predicted_margin_change, -c.k)) if supported
              else min(tied, key=lambda c: c.k))
    gate = ("among all k (no standard errors, so no evidence gate)" if harmful is None else
            f"among removals of classes with evidence of harm at {phrase} (k ≤ {harmful})")
    flips = lambda c: f"{round(c.predicted_accuracy_change * validation_targets):+d} of {validation_targets}"  # noqa: E731
    margin = lambda c: (f"{c.predicted_margin_change:+.3f}" + (  # noqa: E731
        "" if c.margin_change_low is None else f" [{c.margin_change_low:+.3f}, {c.margin_change_high:+.3f}]"))
    if chosen.k == 0 and harmful == 0:
        detail = "" if most_negative is None or most_negative.q_value is None else (
            f"; the most negative class on the validation targets, {most_negative.name}, has mean influence "
            f"{most_negative.influence:+.4f} with q = {most_negative.q_value:.2g}")
        return chosen, (f"why nothing: only classes with evidence of harm (mean validation influence below 0 at "
                        f"{phrase}) may be removed, and no class has it{detail}")
    others = [c for c in eligible if c.k > 0]
    if chosen.k == 0 and len(tied) == 1:
        best = max(others, key=lambda c: (c.predicted_accuracy, -c.k)) if others else None
        gate = "" if harmful is None else f" among the {harmful} most negative classes with evidence of harm at {phrase}"
        return chosen, (f"why nothing: no removal{gate} is predicted to raise validation accuracy above the full "
                        f"source's {full_accuracy:.3f}" + (
                            "" if best is None else f" (best: k = {best.k}, {best.predicted_accuracy_change:+.3f})"))
    ks = ", ".join(str(c.k) for c in tied)
    if len(tied) > 1 and chosen.k == 0:
        return chosen, (f"why nothing: k = {ks} are predicted to give the same validation accuracy ({flips(tied[-1])} "
                        "targets), and no tied removal's mean-margin gain has an interval above 0 to decide the tie")
    if len(tied) > 1:
        return chosen, (f"why k = {chosen.k}: {gate}, k = {ks} are predicted to give the same validation accuracy "
                        f"({flips(chosen)} targets, a difference the accuracy of {validation_targets} targets cannot "
                        f"show), so the mean-margin evidence decides: k = {chosen.k} has the largest predicted gain "
                        f"whose interval lies above 0 ({margin(chosen)})")
    return chosen, (f"why k = {chosen.k}: {gate}, it has the best predicted validation accuracy "
                    f"({chosen.predicted_accuracy_change:+.3f}, {flips(chosen)} targets; mean margin {margin(chosen)})")


def prediction_trust(est: Estimate, chosen: RemovalCandidate, validation_targets: int,
                     kept: np.ndarray | None, recipe_name: str | None, retrainable: bool,
                     store: str | Path | None = None) -> PredictionTrust:
    """How far `chosen`'s predicted gain should be trusted: `kept` the number of classes each fitted model kept (None
    without the store), the counterfactual command that retrains the removal, and the documented studies' findings
    for a removal that near (or far); `store` the run store read, when not the one the estimate names."""
    num_units, num_targets = est.matrix.shape
    k = chosen.k
    base = dict(models=len(est.fit_rows), classes=num_units, removed=k, validation_targets=validation_targets,
                flipped=round(chosen.predicted_accuracy_change * validation_targets),
                margin_change=chosen.predicted_margin_change, margin_low=chosen.margin_change_low,
                margin_high=chosen.margin_change_high)
    if k == 0:
        return PredictionTrust(**base)
    regime, kept_mean, kept_min, kept_max = "unknown", None, None, None
    if kept is not None and len(kept):
        kept_mean, kept_min, kept_max = float(np.mean(kept)), int(np.min(kept)), int(np.max(kept))
        span = num_units - kept_mean
        regime = "near" if span > 0 and k / span <= NEAR_REACH + 1e-9 else "far"
    studies = DOCUMENTED_STUDIES.get(regime, "")
    if not retrainable:
        command, note = None, (f"the run store behind {est.path} is not at hand or is imported (no recipe), so "
                               "`dmtoolkit counterfactual` cannot retrain it here")
    else:
        bottom = removal_ranking(est.matrix, np.arange(num_targets))[:k]
        same = {est.unit_names[j] for j in bottom} == set(chosen.removed)
        command = (f"dmtoolkit counterfactual RECIPE.yaml --influence {est.path} --order bottom --k 0,{k} "
                   f"--repeats 10 -o counterfactual-k{k}.h5")
        recipe = f"RECIPE.yaml: the recipe {store or est.store_path} was made with" + (
            f" ({recipe_name!r})" if recipe_name else "")
        if same:
            note = (f"{recipe}; its --order bottom removes the same {k} (most negative over all targets), and it "
                    "reports accuracy on all targets, the validation ones included")
        else:
            names = ", ".join(est.unit_names[j] for j in bottom)
            note = (f"{recipe}; careful: its --order bottom removes the {k} most negative over all targets "
                    f"({names}), not exactly the {k} chosen on the validation targets")
    return PredictionTrust(**base, kept_mean=kept_mean, kept_min=kept_min, kept_max=kept_max, regime=regime,
                           command=command, command_note=note, studies=studies)


def _default_ks(num_units: int, alpha: float | None) -> list[int]:
    """0 … ⌊(1 − α)·P⌋ (α: share of classes kept in the store's masks; ⌊P/2⌋ when the store is not at hand)."""
    limit = int(np.floor((1 - alpha) * num_units + 1e-9)) if alpha is not None else num_units // 2
    return list(range(0, max(1, min(limit, num_units - 1)) + 1))


@dataclass
class _StoreFacts:
    """What `recommend_removal` reads from the estimate's run store: α (mean share of classes kept over the fitted
    rows), classes kept per fitted model, the recipe's name and whether its classes can be retrained, and the
    per-class mean influence over the validation columns refitted on the mean margin with its standard error and
    dof (or why there is none)."""

    alpha: float | None = None
    kept: np.ndarray | None = None
    recipe_name: str | None = None
    retrainable: bool = False
    coef: np.ndarray | None = None
    stderr: np.ndarray | None = None
    dof: int | None = None
    note: str = ""


def _from_store(opened: OpenedEstimate, columns: np.ndarray) -> _StoreFacts:
    """The store's facts (`_StoreFacts`); without the store, Nones and the reason there is no interval."""
    facts, est = _StoreFacts(), opened.estimate
    with opened.using_store(required=False) as run:  # a stale estimate is refused here, as everywhere
        if run is None:
            facts.note = f"no interval (the run store {est.store_path} is not there; pass --store STORE.h5)"
            return facts
        rows = np.sort(est.fit_rows)
        masks = np.asarray(run.masks[rows] if len(rows) else run.masks[()], bool)
        facts.alpha, facts.kept = float(masks.mean()), masks.sum(1)
        facts.retrainable = run.has(Capability.RECIPE)
        facts.recipe_name = run.recipe.name if facts.retrainable else None
        if est.stderr is None:
            facts.note = NO_STDERR
            return facts
        facts.coef, facts.stderr, facts.dof = mean_influence_refit(est, run, columns)
    if facts.stderr is None:
        facts.note = NO_STDERR
    return facts


def harmful_prefix(order: np.ndarray, passing: np.ndarray) -> int:
    """How many classes at the head of `order` in a row have evidence of harm (`passing`, per class: e.g.
    Benjamini–Hochberg over all classes of the one-sided p-values that the mean influence is below zero)."""
    count = 0
    while count < len(order) and passing[order[count]]:
        count += 1
    return count


def recommend_removal(path: str | Path | OpenedEstimate, *, ks: Sequence[int] | None = None,
                      validation_fraction: float = RECOMMEND_VALIDATION_FRACTION,
                      split_seed: int = RECOMMEND_SPLIT_SEED, level: float = INTERVAL_LEVEL,
                      fdr: float = DETECT_FDR, store: str | Path | None = None) -> Recommendation:
    """The removal set (k most negative classes on the validation part) with the best predicted validation
    accuracy, beside every candidate k (`ks`, e.g. [0, 2, 4]; 0 is always added); see the module
    docstring for the rule and its limits."""
    check_level(level)
    check_fdr(fdr)
    opened = as_opened(path, store)
    est, store = opened.estimate, opened.store
    require_kind(est, "class", "recommend")
    num_units, num_targets = est.matrix.shape
    if num_units < 2:
        raise UserError(f"{est.path} has {num_units} source class; there is nothing to choose between")
    validation, test = split_targets(num_targets, validation_fraction, split_seed)
    facts = _from_store(opened, validation)
    mean_coef, stderr, dof, note = facts.coef, facts.stderr, facts.dof, facts.note
    if ks is None:
        ks = _default_ks(num_units, facts.alpha)
    else:
        ks = sorted(set(check_ks(ks, num_units)) | {0})
    order = removal_ranking(est.matrix, validation)
    harmful, evidence = None, ()
    if stderr is not None:  # one family: Benjamini–Hochberg over every class's p-value that its mean is below 0
        p = one_sided_pvalues(mean_coef, stderr, dof, "less")
        q = bh_adjusted(p)
        harmful = harmful_prefix(order, q <= fdr)
        shown = order[:min(max(ks) + 1, num_units)]
        evidence = tuple(ClassEvidence(index=int(k), name=est.unit_names[k], influence=float(mean_coef[k]),
                                       p_value=float(p[k]), q_value=float(q[k]), significant=bool(q[k] <= fdr))
                         for k in shown)
    candidates = []
    full_accuracy = 0.0
    for k in ks:
        removed = order[:k]
        change, accuracy, full_accuracy = predicted_removal_change(est.matrix, est.intercept, removed, validation)
        low = high = None
        if stderr is not None:
            se = float(np.sqrt(np.sum(np.nan_to_num(stderr[removed]) ** 2)))
            lo, hi = interval_bounds(np.array([change]), np.array([se]), level, dof)
            low, high = float(lo[0]), float(hi[0])
        candidates.append(RemovalCandidate(
            k=k, removed=tuple(est.unit_names[j] for j in removed), predicted_margin_change=change,
            margin_change_low=low, margin_change_high=high, predicted_accuracy=accuracy,
            predicted_accuracy_change=accuracy - full_accuracy, evidence=None if harmful is None else k <= harmful))
    best, reason = choose_removal(candidates, validation_targets=len(validation), full_accuracy=full_accuracy,
                                  harmful=harmful, fdr=fdr if stderr is not None else None,
                                  most_negative=evidence[0] if evidence else None)
    trust = prediction_trust(est, best, len(validation), facts.kept, facts.recipe_name, facts.retrainable, store)
    if stderr is not None and not note:
        note = (f"{percent(level)} intervals on the margin change; per-class errors from {est.estimator} refitted "
                f"on the per-model mean validation margin, summed as uncorrelated; {harmful} most negative "
                f"{'class has' if harmful == 1 else 'classes have'} evidence of harm at {fdr_phrase(fdr)} and only "
                "those may be removed")
    elif stderr is None:
        note += "; without standard errors no class can be tested for harm, so every k was eligible"
    return Recommendation(
        file=str(est.path), estimator=est.estimator, validation_fraction=validation_fraction, split_seed=split_seed,
        validation_columns=tuple(int(j) for j in validation), test_columns=tuple(int(j) for j in test),
        full_predicted_accuracy=full_accuracy, candidates=tuple(candidates), chosen=best,
        level=level if stderr is not None else None, interval_note=note,
        fdr=fdr if stderr is not None else None, harmful=harmful, removal_evidence=evidence, reason=reason,
        trust=trust)
