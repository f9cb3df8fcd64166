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
5. recommends, among those, the k with the highest predicted validation accuracy (ties: the smaller k; k = 0,
   "remove nothing", is always a candidate).

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

import warnings
from pathlib import Path

import numpy as np

from dmtoolkit.analyze.classes import check_level, interval_bounds, mean_influence_refit, percent
from dmtoolkit.analyze.estimates import Estimate, load_estimate, open_source_store, require_kind
from dmtoolkit.analyze.evidence import benjamini_hochberg, check_fdr, fdr_phrase, one_sided_pvalues
from dmtoolkit.analyze.options import DETECT_FDR, INTERVAL_LEVEL, RECOMMEND_SPLIT_SEED, RECOMMEND_VALIDATION_FRACTION
from dmtoolkit.analyze.results import NO_STDERR, Recommendation, RemovalCandidate
from dmtoolkit.analyze.retrain import check_ks, parse_ks
from dmtoolkit.errors import UserError


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
    coef = np.asarray(coef, np.float64)[:, columns]
    defined = np.isfinite(coef).any(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(coef, axis=1)
    order = np.argsort(np.where(defined, mean, np.inf), kind="stable")
    return order


def predicted_removal_change(coef: np.ndarray, intercept: np.ndarray, removed: np.ndarray,
                             columns: np.ndarray) -> tuple[float, float, float]:
    """(change of mean margin, predicted accuracy after removal, predicted accuracy of the full source) on target
    `columns` when the classes `removed` leave the full source, by the linear predictor (NaN coefficients
    count 0). Accuracy is the share of predicted margins above 0."""
    coef = np.nan_to_num(np.asarray(coef, np.float64)[:, columns])
    full = np.asarray(intercept, np.float64)[columns] + coef.sum(0)
    after = full - coef[np.asarray(removed, int)].sum(0)
    return float((after - full).mean()), float((after > 0).mean()), float((full > 0).mean())


def _default_ks(num_units: int, alpha: float | None) -> list[int]:
    """0 … ⌊(1 − α)·P⌋ (α: share of classes kept in the store's masks; ⌊P/2⌋ when the store is not at hand)."""
    limit = int(np.floor((1 - alpha) * num_units + 1e-9)) if alpha is not None else num_units // 2
    return list(range(0, max(1, min(limit, num_units - 1)) + 1))


def _from_store(est: Estimate, columns: np.ndarray, store: str | Path | None) -> tuple[
        float | None, np.ndarray | None, np.ndarray | None, int | None, str]:
    """(α, per-class mean influence over `columns` refitted on the mean margin, its standard error, dof, why there
    is none) read from the estimate's run store (α: mean share of classes kept over the fitted rows); Nones and a
    reason without it."""
    run = open_source_store(est, store, required=False)  # a stale estimate is refused here, as everywhere
    if run is None:
        return None, None, None, None, (f"no interval (the run store {est.store_path} is not there; "
                                        "pass --store STORE.h5)")
    with run:
        rows = np.sort(est.fit_rows)
        alpha = float(np.asarray(run.masks[rows] if len(rows) else run.masks[()], bool).mean())
        if est.stderr is None:
            return alpha, None, None, None, NO_STDERR
        coef, stderr, dof = mean_influence_refit(est, run, columns)
    if stderr is None:
        return alpha, None, None, None, NO_STDERR
    return alpha, coef, stderr, dof, ""


def harmful_prefix(order: np.ndarray, coef: np.ndarray, stderr: np.ndarray, dof: int | None, fdr: float) -> int:
    """How many classes at the head of `order` in a row have evidence that their mean influence is below zero
    (one-sided p-values, Benjamini–Hochberg over all classes at `fdr`)."""
    passing = benjamini_hochberg(one_sided_pvalues(coef, stderr, dof, "less"), fdr)
    count = 0
    while count < len(order) and passing[order[count]]:
        count += 1
    return count


def recommend_removal(path: str | Path, *, ks: list[int] | str | None = None,
                      validation_fraction: float = RECOMMEND_VALIDATION_FRACTION,
                      split_seed: int = RECOMMEND_SPLIT_SEED, level: float = INTERVAL_LEVEL,
                      fdr: float = DETECT_FDR, store: str | Path | None = None) -> Recommendation:
    """The removal set (k most negative classes on the validation part) with the best predicted validation
    accuracy, beside every candidate k (`ks` a list or a spec like "0,2,4"; 0 is always added); see the module
    docstring for the rule and its limits."""
    check_level(level)
    check_fdr(fdr)
    est = load_estimate(path)
    require_kind(est, "class", "recommend")
    num_units, num_targets = est.matrix.shape
    if num_units < 2:
        raise UserError(f"{est.path} has {num_units} source class; there is nothing to choose between")
    validation, test = split_targets(num_targets, validation_fraction, split_seed)
    alpha, mean_coef, stderr, dof, note = _from_store(est, validation, store)
    if ks is None:
        ks = _default_ks(num_units, alpha)
    else:
        ks = sorted(set(parse_ks(ks, num_units) if isinstance(ks, str) else check_ks(list(ks), num_units)) | {0})
    order = removal_ranking(est.matrix, validation)
    harmful = None if stderr is None else harmful_prefix(order, mean_coef, stderr, dof, fdr)
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
    best = max((c for c in candidates if c.evidence is not False), key=lambda c: (c.predicted_accuracy, -c.k))
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
        fdr=fdr if stderr is not None else None, harmful=harmful)
