"""The report's first screen: one answer per question, each with its evidence and its caveat.

Every number here comes from an analysis result (`ClassRanking`, `Recommendation`, `CounterfactualCurve`,
`LeakageReport`, `MislabelReport`, `StoreReliability`, `LdsResult`); this module only chooses what to say
and how to word it. Pure functions over results, so they are tested without a browser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dmtoolkit.analyze.results import (
    ClassEffect,
    ClassRanking,
    CounterfactualCurve,
    LeakageReport,
    MislabelReport,
    Recommendation,
)
from dmtoolkit.display import JsonResult, count_up, json_field

SHOWN = 3  # classes each way, copies and mislabels listed on the first screen
GOAL = 0.8  # the reliability the trust answer asks of a class ranking (the toolkit's goal, docs/signal.md)

Note = Callable[[str], int]
"""Registers a note once in the report and returns its number (see `html.Notes`)."""


@dataclass(frozen=True)
class StoreTrust(JsonResult):
    """What the trust answer reads about one run store: its size, its class-ranking reliability (None: not
    class-level or not computable) and the models one run needs for 0.8 / 0.9 (from `reliability_report`)."""

    name: str
    kind: str
    models: int
    split_half: float | None = None
    full: float | None = None
    needed: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EstimateTrust:
    """An estimate's LDS on its held-out models (from `evaluate`), with the 95% bootstrap interval."""

    file: str
    kind: str
    estimator: str
    store: str | None            # name of the run store it came from (to find that store's reliability)
    lds: float | None
    interval: tuple[float, float] | None
    heldout_models: int
    evaluated: bool = True       # False: LDS could not be computed (see the notes)
    verdict: str = ""            # `evaluate`'s one-line reading of the LDS (`LdsResult.verdict`)


@dataclass(frozen=True)
class Answer(JsonResult):
    """One question on the first screen: a verdict (one sentence), its tone (good | warn | bad | info | none:
    not answerable from this folder), an optional small table, the evidence behind it and its caveats.
    `notes` are numbers of notes said once at the bottom of the page."""

    key: str
    question: str
    verdict: str
    tone: str
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    row_tones: tuple[str, ...] = json_field(None, default=())  # the page's colours, not in the JSON
    evidence: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()
    notes: tuple[int, ...] = ()


def signed(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def bracket(low: float | None, high: float | None, digits: int = 3) -> str:
    return "–" if low is None or high is None else f"[{signed(low, digits)}, {signed(high, digits)}]"


def models(value: float | None) -> str:
    """A number of models, rounded up as the CLI prints it (`dmtoolkit reliability`)."""
    return "–" if value is None else count_up(value)


def negative_heading(effects: Sequence[ClassEffect]) -> str:
    """The honest heading of a "most negative first" column: what its values are."""
    if effects and all(e.influence > 0 for e in effects):
        return "least positive (none negative)"
    if effects and any(e.influence >= 0 for e in effects):
        return "most negative first (≥ 0: helps least)"
    return "most negative"


def includes_zero(e: ClassEffect) -> bool:
    return e.low is not None and e.high is not None and e.low <= 0 <= e.high


def classes_answer(ranking: ClassRanking | None, file: str | None, note: Note) -> Answer:
    """Which source classes help and which hurt, with intervals."""
    question = "Which source classes help, which hurt?"
    if ranking is None:
        return Answer("classes", question, "Not answered: no class-level estimate here "
                      "(run `dmtoolkit influence` on a class-level store).", "none")
    top, bottom = ranking.top[:SHOWN], ranking.bottom[:SHOWN]
    level = f"{100 * ranking.level:g}%" if ranking.level is not None else None
    def named(e: ClassEffect) -> str:
        return e.name + (" (interval includes 0)" if includes_zero(e) else "")

    if bottom and bottom[0].influence < 0:
        verdict = f"Helps most: {named(top[0])}. Hurts most: {named(bottom[0])}."
    elif top:
        verdict = f"Helps most: {named(top[0])}. No class hurts on average: every mean influence is positive."
    else:
        verdict = "No class has a defined influence."
    header = ("", "class", f"influence [{level} interval]" if level else "influence (no interval)")
    rows, tones = [], []
    for group, effects in (("helps most", top), (negative_heading(bottom), bottom)):
        for i, e in enumerate(effects):
            shown = signed(e.influence) + (f" {bracket(e.low, e.high)}" if e.low is not None else "")
            rows.append((group if i == 0 else "", e.name, shown))
            tones.append("muted" if includes_zero(e) else "good" if e.influence > 0 else "bad")
    caveats = []
    unclear = [e.name for e in (*top[:1], *bottom[:1]) if includes_zero(e)]
    if unclear:
        caveats.append(f"The interval of {' and '.join(unclear)} includes 0: not distinguishable from no effect.")
    if ranking.level is None:
        caveats.append("No intervals: this estimate has no standard errors, so no class can be told from noise.")
    evidence = (f"Mean influence on the margin over {ranking.targets} target examples, from {file} "
                f"({ranking.estimator}).",)
    return Answer("classes", question, verdict, "info", header, tuple(rows), tuple(tones), evidence,
                  tuple(caveats), (note(ranking.interval_note),))


def removal_answer(rec: Recommendation | None, curves: Sequence[CounterfactualCurve], file: str | None,
                   note: Note) -> Answer:
    """What removing the harmful classes would do: the recommendation, and the retrained check when one exists."""
    question = "What would removing them do?"
    if rec is None:
        return Answer("removal", question, "Not answered: `recommend` needs a class-level influence estimate "
                      "(see the notes).", "none")
    chosen = rec.chosen
    verdict = rec.message[:1].upper() + rec.message[1:] + "."
    tone = "info" if chosen.k == 0 else "good"
    if chosen.k and chosen.margin_change_low is not None and chosen.margin_change_low <= 0:
        tone = "warn"
    evidence = [f"Linear prediction on {len(rec.validation_columns)} validation targets of {file}; "
                f"{len(rec.test_columns)} targets left for verification."]
    if rec.harmful:
        evidence.append(f"The {rec.harmful} most negative {'class has' if rec.harmful == 1 else 'classes have'} "
                        f"evidence of harm at FDR {100 * (rec.fdr or 0):g}%; only those may be removed.")
    elif rec.harmful == 0:
        evidence.append(f"No class has evidence of harm at FDR {100 * (rec.fdr or 0):g}%, so none may be removed.")
    rows, tones, header = [], [], ()
    bottom = [c for c in curves if c.order == "bottom"]
    others = {c.order: c for c in curves if c.order != "bottom"}
    for curve in bottom:
        header = ("retrained without", "target accuracy", "± std", "repeats")
        for k, mean, std in zip(curve.k, curve.mean, curve.std):
            label = "nothing (full source)" if k == 0 else f"{k} most negative"
            rows.append((label, f"{mean:.3f}", f"{std:.3f}", str(curve.repeats)))
            tones.append("")
            for order, other in others.items():
                if k and k in other.k:
                    j = other.k.index(k)
                    rows.append((f"{k} {order}", f"{other.mean[j]:.3f}", f"{other.std[j]:.3f}", str(other.repeats)))
                    tones.append("muted")
    caveats = []
    if bottom:
        caveats.append("The retraining removes the classes most negative over all targets, which can differ "
                       "from the recommendation's validation-half choice.")
    elif chosen.k and rec.trust is not None and rec.trust.command is not None:
        caveats.append(f"Not retrained; the prediction is {rec.trust.brief} (how far to trust it: under Removal "
                       f"candidates below). Verify with `{rec.trust.command}`.")
    elif chosen.k:
        ks = ",".join(str(k) for k in sorted({0, chosen.k}))
        caveats.append(f"Not retrained: verify with `dmtoolkit counterfactual RECIPE.yaml --influence {file} "
                       f"--order bottom --k {ks}`.")
    removals = [c for c in rec.candidates if c.k]
    if chosen.k == 0 and removals:
        best = max(removals, key=lambda c: (c.predicted_accuracy, -c.k))
        if best.evidence is False and best.predicted_accuracy_change > 0:
            margin = signed(best.predicted_margin_change) + (
                f" {bracket(best.margin_change_low, best.margin_change_high)}"
                if best.margin_change_low is not None else "")
            caveats.append(f"Removing the {best.k} most negative would be predicted to change validation accuracy "
                           f"by {signed(best.predicted_accuracy_change)} (mean margin {margin}), but not all of "
                           "them have evidence of harm: a prediction alone is no reason to remove them.")
    return Answer("removal", question, verdict, tone, header, tuple(rows), tuple(tones), tuple(evidence),
                  tuple(caveats), (note(rec.interval_note),))


@dataclass(frozen=True)
class Copy:
    """A source example that copies a target test image, as the report lists it."""

    source_id: str
    source_label: str
    target: int
    target_label: str
    pixel_score: float
    kind: str
    influence: str  # do the models confirm it (significant influence on that target): yes | no | – (cannot tell)


def copies_of(report: LeakageReport) -> list[Copy]:
    """The source images that copy target test images, from the leakage result's pixel scan over every pair."""
    return [Copy(c.source_id, c.source_label, c.target, c.target_label, c.pixel_score, c.kind,
                 "yes" if c.confirmed else "no" if c.confirmed is False else "–")
            for c in report.copies]


def leakage_answer(report: LeakageReport | None, file: str | None, note: Note) -> Answer:
    """Contamination: copies of target test images named first, then what the influence evidence says."""
    question = "Is the target test set leaked into the source?"
    if report is None:
        return Answer("leakage", question, "Not answered: leakage needs an example-level estimate with its run "
                      "store (`dmtoolkit influence` on a store made with subsets.kind: example).", "none")
    copies = copies_of(report)
    evidence = [f"A copy has pixel score ≥ {report.near_duplicate} against a target test image; pixels need no "
                "models."]
    if copies:
        ids = ", ".join(c.source_id for c in copies[:SHOWN]) + (f" and {len(copies) - SHOWN} more"
                                                                 if len(copies) > SHOWN else "")
        noun = "image copies" if len(copies) == 1 else "images copy"
        verdict = f"Contamination: {len(copies)} source {noun} a target test image. " + (
            f"Remove {ids}." if len(ids) <= 80 else f"Remove {'it' if len(copies) == 1 else 'them'} (ids below).")
        tone = "bad"
    else:
        verdict = report.message[:1].upper() + report.message[1:] + "."
        tone = "warn" if report.flagged or report.influence_only else "info"
    header = ("source", "label", "target test #", "label", "pixel score", "models confirm") if copies else ()
    rows = tuple((c.source_id, c.source_label, str(c.target), c.target_label, f"{c.pixel_score:.3f}", c.influence)
                 for c in copies[:SHOWN])
    caveats = []
    if copies:
        caveats.append("Copies of test images are contamination whatever the models say: they inflate the target "
                       "test score.")
        evidence.append(f"{report.models_add[:1].upper()}{report.models_add[1:]} ({file}).")
    if report.influence_only:
        caveats.append(f"{len(report.influence_only)} significant pair(s) do not look alike: look-alikes the "
                       "models learn from, not copies (listed under Example level).")
    return Answer("leakage", question, verdict, tone, header, rows, ("bad",) * len(rows), tuple(evidence),
                  tuple(caveats))


def mislabel_answer(report: MislabelReport | None, file: str | None, note: Note) -> Answer:
    """Likely mislabelled source examples: the flagged ones, else the strongest candidates, said to be unflagged."""
    question = "Which source images look mislabelled?"
    if report is None:
        return Answer("mislabels", question, "Not answered: needs an example-level estimate with its run store.",
                      "none")
    verdict = report.message[:1].upper() + report.message[1:] + "."
    shown = list(report.flagged[:SHOWN]) or list(report.candidates[:SHOWN])
    checked = any(c.heldout_margin is not None for c in shown)  # the out-of-sample label check
    header = (("source", "label") + (("held-out margin",) if checked else ()) + ("q", "flagged")) if shown else ()
    rows = tuple((c.source_id, c.label) + ((f"{c.heldout_margin:+.2f}",) if checked else ())
                 + ("–" if c.q_value is None else f"{c.q_value:.3g}", "yes" if c.flagged else "no (candidate)")
                 for c in shown)
    tones = tuple("warn" if c.flagged else "muted" for c in shown)
    caveats = ["A flag is a reason to look at the image and its label, not proof; an unflagged candidate has no "
               "evidence at this FDR."]
    if checked:
        caveats.append("Ranked by how far models that never saw each image disagree with its label, not by "
                       "influence: the estimate's LDS verdict does not apply to this list.")
    if report.planted is not None and report.planted.auc is not None:
        caveats.append(f"Against the planted flips in this store the ranking has AUC {report.planted.auc:.2f}.")
    evidence = (f"From {file}: {report.evidence}.",)
    return Answer("mislabels", question, verdict, "warn" if report.flagged else "info", header, rows, tones,
                  evidence, tuple(caveats))


def _needed_text(store: StoreTrust | None) -> str:
    if store is None:
        return "train more models (a larger store), then refit"
    n8, n9 = store.needed.get("0.8"), store.needed.get("0.9")
    if n8 is None:
        return (f"{store.name} has {store.models} models, too few for its split halves to agree at all; train "
                "several times more")
    return (f"{store.name} has {store.models} models; its split halves say about {models(n8)} for a reproducible "
            f"{store.kind} ranking (0.8), {models(n9)} for 0.9")


def trust_answer(stores: Sequence[StoreTrust], estimates: Sequence[EstimateTrust]) -> Answer:
    """How far to trust the answers: reliability of the class ranking, LDS of each estimate with its interval, and
    a warning with the models needed when a store is too small to answer."""
    question = "How far can you trust this?"
    by_name = {s.name: s for s in stores}
    rows, tones, caveats = [], [], []
    for s in stores:
        ok = s.full is not None and s.full >= GOAL
        rows.append((f"{s.name}: {s.kind} ranking reliability", signed(s.full, 2) if s.full is not None else "–",
                     f"{s.models:,} models; 0.8 at {models(s.needed.get('0.8'))}"))
        tones.append("" if ok else "bad" if s.full is None or s.full <= 0 else "warn")
        if not ok and s.kind == "class":
            caveats.append(f"Too small to answer reliably: {_needed_text(s)}.")
        elif not ok:  # leakage and mislabels flag per pair at their FDR; the mean ranking is for browsing
            caveats.append(f"{s.name}: the ranking of source examples by mean influence is not yet reproducible "
                           f"({_needed_text(s)}); flagged copies and mislabels rest on their own evidence (FDR).")
    weak, faint = [], []
    for e in estimates:
        if not e.evaluated:
            continue
        bad = e.lds is None or e.lds <= 0 or (e.interval is not None and e.interval[0] <= 0)  # as `evaluate` reads it
        rows.append((f"{e.file}: LDS ({e.estimator})", signed(e.lds, 2) + (f" {bracket(*e.interval, 2)}"
                                                                          if e.interval else ""),
                     f"{e.heldout_models} held-out models"))
        thin = not bad and e.verdict.startswith("verdict: weak")  # `evaluate`'s reading: better than chance, barely
        tones.append("bad" if bad else "warn" if thin else "")
        if thin:
            faint.append(e.file)
            caveats.append(f"{e.file}: {e.verdict.removeprefix('verdict: ')}.")
        if bad:
            weak.append(e.file)
            reading = e.verdict.removeprefix("verdict: ") or (f"LDS {signed(e.lds, 3)}: no better than chance")
            caveats.append(f"{e.file}: {reading}. Do not act on its {'ranking' if e.kind == 'class' else 'flags'} "
                           f"alone; to answer: {_needed_text(by_name.get(e.store or ''))}.")
    if not rows:
        return Answer("trust", question, "Not measured: no run store for reliability and no estimate with "
                      "held-out models for LDS.", "none")
    if weak:
        verdict = f"Low: {', '.join(weak)} {'predicts' if len(weak) == 1 else 'predict'} held-out models no " \
                  "better than chance (LDS ≤ 0, or its interval reaches 0)."
        tone = "bad"
    elif any(st.kind == "class" and (st.full is None or st.full < GOAL) for st in stores):
        small = [st for st in stores if st.kind == "class" and (st.full is None or st.full < GOAL)]
        verdict = "Not yet: " + "; ".join(
            f"{st.name}'s {st.kind} ranking has reliability {signed(st.full, 2)} at {st.models:,} models"
            + (f", about {models(st.needed.get('0.8'))} needed for 0.8" if st.needed.get("0.8") else "")
            for st in small) + "."
        tone = "warn"
    elif faint:
        verdict = (f"Partly: {', '.join(faint)} {'predicts' if len(faint) == 1 else 'predict'} held-out models only "
                   "weakly; treat what rests on it as leads to check.")
        tone = "warn"
    else:
        verdict = "Reasonably: " + ("the class ranking reproduces and " if any(st.kind == "class" for st in stores)
                                    else "") + "every evaluated estimate predicts held-out models."
        tone = "good"
    evidence = ("Reliability: how well two halves of the models agree on the ranking, taken to the full "
                "store. LDS: how well the estimate predicts models held out from fitting (0 = chance), with its 95% "
                "bootstrap interval.",)
    return Answer("trust", question, verdict, tone, ("measure", "value", "from"), tuple(rows), tuple(tones),
                  evidence, tuple(caveats))
