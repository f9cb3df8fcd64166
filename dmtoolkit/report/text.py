"""Plain-text renderings of analysis results, as the CLI prints them: pure functions from result to str.

No printing here and no click: the CLI echoes what these return (one line per "\\n"-separated line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmtoolkit.analyze.results import (
    NO_STDERR,
    ClassEffect,
    ClassEvidence,
    ClassRanking,
    CounterfactualResult,
    DemoSummary,
    Explanation,
    LeakageReport,
    LeakageScore,
    LeakPair,
    MislabelCandidate,
    MislabelReport,
    Recommendation,
    SourceCopy,
    Subpopulation,
)
from dmtoolkit.display import count_up, register_text, type_name

if TYPE_CHECKING:
    from dmtoolkit.analyze.reliability import CrossRun, ReliabilityReport, StoreReliability
    from dmtoolkit.estimate.lds import LdsResult
    from dmtoolkit.store_checks import Spread, StoreSummary


def signed(value: float | None, digits: int = 4) -> str:
    """`+0.1234`; "-" for an undefined value."""
    return "-" if value is None else f"{value:+.{digits}f}"


def _fixed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def interval(low: float | None, high: float | None, digits: int = 4) -> str:
    """`[-0.1234, +0.5678]`; `[-]` when the bound is undefined."""
    if low is None or high is None:
        return "[-]"
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _level_heading(level: float | None) -> str:
    return f"{100 * level:g}% interval" if level is not None else ""


def format_ranking(ranking: ClassRanking) -> str:
    """The most positive and most negative classes, numbered, with their mean influence and its interval (or a
    line saying why there is none)."""
    scope = f"target class {ranking.target_class}" if ranking.target_class else "all targets"
    shown = ranking.level is not None
    lines = [f"mean influence over {ranking.targets} target examples ({scope})", ranking.interval_note]
    if shown:
        lines.append(f"  {'':3}  {'class':<20} {'mean':>7}  {_level_heading(ranking.level)}")

    def row(i: int, e: ClassEffect) -> str:
        text = f"  {i:3d}. {e.name:<20} {signed(e.influence)}"
        return text + f"  {interval(e.low, e.high)}" if shown else text

    lines.append("most positive:")
    lines += [row(i, e) for i, e in enumerate(ranking.top, 1)]
    from dmtoolkit.report.summary import negative_heading

    lines.append(f"{negative_heading(ranking.bottom)}:")  # says so when the list holds classes that help
    lines += [row(i, e) for i, e in enumerate(ranking.bottom, 1)]
    return "\n".join(lines)


def format_subpopulation(subpop: Subpopulation) -> str:
    """The target examples a class helps most, one per line with its influence and interval."""
    lines = [f"target examples most helped by source class {subpop.class_name}:", subpop.interval_note]
    if subpop.level is not None:
        lines += [f"  {t.name:<12} {signed(t.influence)}  {interval(t.low, t.high)}" for t in subpop.targets]
    else:
        lines += [f"  {t.name:<12} {signed(t.influence)}" for t in subpop.targets]
    return "\n".join(lines)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _classes(effects: tuple[ClassEffect, ...], with_interval: bool) -> str:
    def one(e: ClassEffect) -> str:
        if not with_interval:
            return f"{e.name} ({signed(e.influence, 3)})"
        q = f", q={_g(e.q_value)}" if isinstance(e, ClassEvidence) and e.q_value is not None else ""
        return f"{e.name} ({signed(e.influence, 3)} {interval(e.low, e.high, 3)}{q})"

    return ", ".join(one(e) for e in effects)


def evidence_line(which: str, e: ClassEffect, fdr: float) -> str:
    """`most negative class c4: -1.000 [-1.300, -0.700], p=0.001 (q=0.01): negative at FDR 5%` (which: "negative"
    or "positive"), or "... not distinguishable from 0 at FDR 5%", or "... no interval (...)" without errors."""
    head = f"most {which} class {e.name}: {signed(e.influence, 3)}"
    if not isinstance(e, ClassEvidence) or e.p_value is None:
        return f"{head}: {NO_STDERR}"
    verdict = which if e.significant else "not distinguishable from 0"
    return (f"{head} {interval(e.low, e.high, 3)}, p={_g(e.p_value)} (q={_g(e.q_value)}): {verdict} at "
            f"FDR {100 * fdr:g}%")


def format_explanation(explanation: Explanation, top: int | None = None) -> str:
    """Labels, the `top` most negative and positive classes, and the verification when one was run."""
    correct = explanation.fraction_correct
    shown = explanation.level is not None
    lines = [
        f"target {explanation.target}: true {explanation.true_label}, predicted "
        f"{explanation.predicted_label or 'unknown'} (majority of {explanation.models} models; correct in "
        f"{'-' if correct is None else f'{correct:.0%}'})",
    ]
    for which, effects in (("negative", explanation.most_negative), ("positive", explanation.most_positive)):
        if effects:
            lines.append(evidence_line(which, effects[0], explanation.fdr))
    lines += [
        "most negative classes: " + _classes(explanation.most_negative[:top], shown),
        "most positive classes: " + _classes(explanation.most_positive[:top], shown),
    ]
    if shown:
        lines.append(explanation.interval_note)
    v = explanation.verify
    if v is not None:
        lines.append(f"verify: without {v.class_name} correct {v.correct_removed}/{v.repeats}, "
                     f"with it {v.correct_kept}/{v.repeats}")
    return "\n".join(lines)


ORDER_MEANING = {"bottom": "most negative mean influence first", "top": "most positive mean influence first",
                 "random": "a random order per repeat"}


def format_counterfactual(result: CounterfactualResult) -> str:
    """Target accuracy (mean ± std over repeats) per number of classes removed, then the classes removed at each k
    (per repeat when the repeats remove different classes)."""
    lines = [f"order {result.order} ({ORDER_MEANING.get(result.order, result.order)}), {result.repeats} repeats:"]
    lines += [f"  k={k:<4d} target accuracy {mean:.4f} ± {std:.4f}"
              for k, mean, std in zip(result.k, result.accuracy_mean, result.accuracy_std)]
    lines.append("classes removed:")
    for k in result.k:
        removed = result.removed_at(k)
        if len(removed) == 1:
            lines.append(f"  k={k:<4d} {', '.join(removed[0]) or 'none'}")
        else:
            lines += [f"  k={k:<4d} repeat {r}: {', '.join(names) or 'none'}" for r, names in enumerate(removed, 1)]
    return "\n".join(lines)


def _p(value: float | None) -> str:
    return "     -" if value is None else f"{value:>6.0e}" if value < 1e-3 else f"{value:>6.4f}"


def _leak_table(pairs: tuple[LeakPair, ...], show_score: bool) -> list[str]:
    width = max([len(p.source_id) for p in pairs] + [6])
    lines = [f"{'rank':>4}  {'source':<{width}} {'label':<6} {'target':>6} {'label':<6} {'influence':>10} "
             f"{'score':>6} {'pixel':>6} {'feat':>6} {'p':>6} {'q':>6}  category"]
    for p in pairs:
        z = f"{p.ranking_score:>6.2f}" if show_score else " " * 6
        feat = "     -" if p.feature_score is None else f"{p.feature_score:>6.3f}"
        lines.append(f"{p.rank:>4}  {p.source_id:<{width}} {p.source_label:<6} {p.target:>6} "
                     f"{p.target_label:<6} {p.influence:>+10.4f} {z} {p.pixel_score:>6.3f} {feat} {_p(p.p_value)} "
                     f"{_p(p.q_value)}  {p.category}")
    return lines


def _leak_score(name: str, s: LeakageScore | None) -> str | None:
    if s is None:
        return None
    return (f"  {name:<22} {s.k:>4} pairs, precision {_fixed(s.precision_at_k)}, recall {_fixed(s.recall_at_k)} "
            f"({s.hits} of {s.planted_leaks} planted leaks), decoys {s.decoys_flagged}")


def _copy_table(copies: tuple[SourceCopy, ...], thresholded: bool) -> list[str]:
    width = max([len(c.source_id) for c in copies] + [6])
    lines = [f"  {'source':<{width}} {'label':<6} {'target':>6} {'label':<6} {'pixel':>6}  {'kind':<10} "
             f"{'influence':>10} {'q':>6}  models"]
    for c in copies:
        influence = "         -" if c.influence is None else f"{c.influence:>+10.4f}"
        models = ("confirm (significant influence)" if c.confirmed else "do not confirm" if c.confirmed is False
                  else "cannot tell (no influence for this pair)" if thresholded else "cannot tell (no standard errors)")
        lines.append(f"  {c.source_id:<{width}} {c.source_label:<6} {c.target:>6} {c.target_label:<6} "
                     f"{c.pixel_score:>6.3f}  {c.kind:<10} {influence} {_p(c.q_value)}  {models}")
    return lines


def format_leakage(report: LeakageReport, copies_shown: int = 50) -> str:
    """The one-line answer; the pixel copies of target test images (at most `copies_shown` rows) with the ids to
    remove, before any influence evidence; what the models add; the flagged pairs, the browsing list and, with
    planted ground truth, how the flagged set and the influence-only, pixel-only and top-k detectors score."""
    lines = [report.message]
    if report.copies:
        lines.append(f"copies of target test images ({len(report.copies)}), from pixels:")
        lines += _copy_table(report.copies[:copies_shown], report.thresholded)
        if len(report.copies) > copies_shown:
            lines.append(f"  ... and {len(report.copies) - copies_shown} more (--json or --csv lists every copy)")
    lines.append("source example ids to remove: " + (", ".join(report.removal_ids) or "none"))
    lines += [line for line in (report.pixel_evidence, report.models_add) if line]
    lines.append(f"evidence: {report.evidence}; near duplicate: pixel score >= {report.near_duplicate}")
    if report.features:
        lines.append(report.features)
    if report.flagged:
        lines += ["flagged by influence and pixels (likely copies the models learned from):"]
        lines += _leak_table(report.flagged, report.ranking != "influence")
    lines += [f"top {len(report.pairs)} pairs by {report.ranking} (browsing):"]
    lines += _leak_table(report.pairs, report.ranking != "influence")
    if report.planted is not None:
        lines.append("planted leaks:")
        lines += [line for line in (_leak_score("flagged", report.planted),
                                    _leak_score("influence only (FDR)", report.planted_influence_only),
                                    _leak_score("pixels only", report.planted_pixel_only),
                                    _leak_score(f"features only (top {len(report.pairs)})",
                                                report.planted_feature_top),
                                    _leak_score(f"top {len(report.pairs)}", report.planted_top)) if line]
    return "\n".join(lines)


def format_mislabels(report: MislabelReport) -> str:
    """The one-line answer, candidates with their evidence and, with planted flips, the AUC and precision/recall."""
    width = max([len(c.source_id) for c in report.candidates] + [6])
    names = max([len(c.label) for c in report.candidates] + [6])  # class names such as "fashion-mnist:Shirt"
    checked = any(c.heldout_margin is not None for c in report.candidates)
    head = f" {'held-out':>8}" if checked else ""
    lines = [report.message, f"evidence: {report.evidence}",
             f"{'rank':>4}  {'source':<{width}} {'label':<{names}}{head} {'score':>9} {'p src':>6} {'p tgt':>6} {'p':>6} "
             f"{'q':>6}"]

    def label(c: MislabelCandidate) -> str:
        if not checked:
            return ""
        return f" {'':>8}" if c.heldout_margin is None else f" {c.heldout_margin:>+8.2f}"

    lines += [f"{c.rank:>4}  {c.source_id:<{width}} {c.label:<{names}}{label(c)} {c.score:>+9.5f} {_p(c.source_p)} "
              f"{_p(c.target_p)} {_p(c.p_value)} {_p(c.q_value)}{'  flagged' if c.flagged else ''}"
              for c in report.candidates]
    for name, s in (("flagged", report.planted), (f"top {len(report.candidates)}", report.planted_top)):
        if s is not None:
            lines.append(f"planted flips, {name}: {s.k} examples, precision {_fixed(s.precision_at_k)}, recall "
                         f"{_fixed(s.recall_at_k)} ({s.hits} of {s.flipped}); AUC of the ranking {_fixed(s.auc)}")
    return "\n".join(lines)


def format_demo(summary: DemoSummary) -> str:
    """The demo's figures: report path, scale, LDS, digit ranks, counterfactuals, detection scores."""
    lines = [f"report: {summary.report}",
             f"scale: {summary.class_models} class-level and {summary.example_models} example-level "
             "models (docs/signal.md shows how each figure grows with models)"]
    lines += [f"LDS {name}: {'undefined' if value is None else f'{value:.3f}'}" for name, value in summary.lds.items()]
    lines.append("digit glyph class rank for MNIST digit d: "
                 + " ".join(f"{d}:{rank}" for d, rank in summary.digit_ranks.items()))
    for order, cf in summary.counterfactual.items():
        rows = ", ".join(f"k={k}: {m:.3f}±{s:.3f}" for k, m, s in zip(cf.k, cf.accuracy_mean, cf.accuracy_std))
        lines.append(f"counterfactual ({order} classes removed): {rows}")
    leak, flips = summary.leakage, summary.mislabels
    if leak is not None:
        lines.append(f"leakage (flagged at FDR 5%): {leak.k} pairs, precision {_fixed(leak.precision_at_k)}, recall "
                     f"{_fixed(leak.recall_at_k)} ({leak.hits} of {leak.planted_leaks} planted leaks), decoys "
                     f"flagged {leak.decoys_flagged}")
    if flips is not None:
        lines.append(f"mislabels (flagged at FDR 5%): {flips.k} examples, precision {_fixed(flips.precision_at_k)}, "
                     f"recall {_fixed(flips.recall_at_k)}; ranking AUC {_fixed(flips.auc)}")
    return "\n".join(lines)


def format_lds(result: LdsResult) -> str:
    """The verdict first, then the LDS summary line, the curve (LDS at half the fitting models) when computed, and
    a text histogram of the per-target scores."""
    if result.lds_mean is None:
        return f"LDS undefined on all {result.heldout_models} held-out models (constant margins)"
    first, stop = result.targets
    interval = ("" if result.lds_interval is None else
                f" [{result.lds_interval[0]:.3f}, {result.lds_interval[1]:.3f}] (95% bootstrap over "
                f"{result.heldout_units} held-out draws)")
    lines = [result.verdict,
             f"{result.estimator} LDS on {result.heldout_models} held-out models, targets {first}:{stop}: "
             f"mean {result.lds_mean:.3f}{interval}, median {result.lds_median:.3f}"]
    curve = result.curve
    if curve is not None:
        gain = ("" if curve.gain is None else f"; {curve.gain:+.3f} per doubling of models" + (
            "" if curve.gain_interval is None else
            f" [{curve.gain_interval[0]:+.3f}, {curve.gain_interval[1]:+.3f}]"))
        lines.append(f"curve: refitted on half the fitting models ({curve.half_models:,} of {curve.full_models:,}, "
                     f"whole draws), LDS {_value(curve.half_lds)} vs {_value(curve.full_lds)} on the same "
                     f"held-out models{gain}")
    counts, edges = result.histogram_counts, result.histogram_edges
    scale = 40 / max(max(counts), 1)
    for count, low, high in zip(counts, edges, edges[1:]):
        if count:
            lines.append(f"  [{low:+.1f}, {high:+.1f})  {count:5d}  {'#' * max(1, round(count * scale))}")
    return "\n".join(lines)


def format_recommendation(rec: Recommendation) -> str:
    """The recommendation in one line, why (for "remove nothing", and for rows the evidence gate kept out), then
    every candidate k with its predicted changes and whether all its classes have evidence of harm."""
    gate = rec.harmful is not None
    trust = [] if rec.trust is None or rec.chosen.k == 0 else [rec.trust.statement, rec.trust.confirm]
    lines = [rec.message, *rec.explanation, *trust,
             f"chosen on {len(rec.validation_columns)} validation targets (split seed {rec.split_seed}); the other "
             f"{len(rec.test_columns)} are left for verification. {rec.interval_note}",
             f"  {'k':>3}  {'pred. accuracy':>14}  {'change':>7}  {'mean margin change':>18}  "
             f"{_level_heading(rec.level) if rec.level is not None else ''}"
             f"{'  all harmful' if gate else ''}".rstrip()]
    for c in rec.candidates:
        mark = "*" if c.k == rec.chosen.k else " "
        text = (f"{mark} {c.k:>3}  {c.predicted_accuracy:>14.3f}  {c.predicted_accuracy_change:>+7.3f}  "
                f"{signed(c.predicted_margin_change):>18}")
        if rec.level is not None:
            text += f"  {interval(c.margin_change_low, c.margin_change_high)}"
        if gate:
            text += f"  {'yes' if c.evidence else 'no':>11}"
        lines.append(text)
    if gate:
        lines.append(f"all harmful: every removed class has evidence of harm at FDR {100 * (rec.fdr or 0):g}% "
                     "(only such rows may be chosen)")
    return "\n".join(lines)


# reliability ---------------------------------------------------------------------------------------------
def _value(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _models(value: float | None) -> str:
    """Models needed, rounded up; "-" when no positive reliability allows an extrapolation."""
    return "-" if value is None else count_up(value)


def _store_block(store: StoreReliability) -> list[str]:
    seed = lambda v: "unknown" if v is None else str(v)  # noqa: E731
    lines = [f"{store.path}: {store.models} models, mask seed {seed(store.mask_seed)}, training seed "
             f"{seed(store.training_seed)} ({store.randomness} randomness)",
             f"  {'answer':<24}{'split-half':>16}{'full':>8}{'for 0.8':>10}{'for 0.9':>10}"]
    for attr, label in store.answers:
        within = getattr(store, attr)
        split = within.split
        half = "-" if split.mean is None else f"{split.mean:.3f} ± {split.sd:.3f}"
        lines.append(f"  {label:<24}{half:>16}{_value(within.full):>8}{_models(within.needed['0.8']):>10}"
                     f"{_models(within.needed['0.9']):>10}")
    lines.append(f"  {store.verdicts['matrix']}")
    return lines


def _cross_block(report: ReliabilityReport) -> list[str]:
    first, second = report.stores
    crosses: list[tuple[str, CrossRun | None]] = [(label, getattr(report, attr)) for attr, label in first.answers]
    models = crosses[0][1].models if crosses[0][1] is not None else 0
    lines = [f"cross-run agreement of {first.path} and {second.path} (as one run of {models:,.0f} models)",
             f"  {'answer':<24}{'Spearman':>10}{'predicted':>11}{'for 0.8':>10}{'for 0.9':>10}"]
    for label, cross in crosses:
        if cross is not None:
            lines.append(f"  {label:<24}{_value(cross.correlation):>10}{_value(cross.predicted):>11}"
                         f"{_models(cross.needed['0.8']):>10}{_models(cross.needed['0.9']):>10}")
    return lines


def format_reliability(report: ReliabilityReport) -> str:
    """The verdict lines first, then each store's split-half table and, for two stores, their agreement; warnings
    are the CLI's to print."""
    splits = len(report.stores[0].ranking.split.seeds)
    kind = report.stores[0].kind
    lines = [f"verdict: {line}" for line in report.verdicts]
    lines += [f"reliability of {report.estimator} {kind} influence",
              f"  split-half: Spearman between halves of whole draws (mean ± sd over {splits} splits)",
              "  full: Spearman-Brown to all models; for 0.8 / 0.9: models one run needs to agree that well with "
              "another such run"]
    if kind == "example":
        lines.append("  example ranking: source examples by mean influence over all targets; example x target "
                     "class: mean influence on each target class's examples")
    for store in report.stores:
        lines += _store_block(store)
    if len(report.stores) == 2:
        lines += _cross_block(report)
        lines.append("  predicted = sqrt(full1 * full2), what the split-halves expect; lower Spearman means the "
                     "split-halves are optimistic")
    return "\n".join(lines)


# run stores ----------------------------------------------------------------------------------------------
def _spread(spread: Spread | None, digits: int = 3) -> str:
    """`0.500 ± 0.010 (min 0.480, max 0.520)`; "n/a" without completed rows."""
    if spread is None:
        return "n/a"
    f = lambda v: f"{v:.{digits}f}"  # noqa: E731
    return f"{f(spread.mean)} ± {f(spread.std)} (min {f(spread.min)}, max {f(spread.max)})"


def format_store_summary(summary: StoreSummary) -> str:
    """`dmtoolkit store info`: the summary as aligned lines for a terminal."""
    src, tgt, models = summary.source, summary.target, summary.models
    lines = [
        f"store       {summary.path}",
        f"recipe      {summary.recipe} ({summary.recipe_hash[:12]})",
        f"subsets     {summary.kind}-level, alpha {summary.alpha}, seed {summary.seed}, "
        f"randomness {summary.randomness}",
        f"models      {models.completed}/{models.total} completed",
        f"trainer     {summary.trainer}",
        f"masks       {tuple(summary.shapes.masks)} bool   margins {tuple(summary.shapes.margins)} float32",
        f"source      {src.dataset}: {src.classes} classes, {src.pool_examples} pool examples, "
        f"{src.test_examples} test",
        f"target      {tgt.dataset}: {tgt.classes} classes, {tgt.train_examples} train, {tgt.test_examples} test",
        f"source acc  {_spread(summary.source_accuracy)}",
        f"target acc  {_spread(summary.target_accuracy)}",
        f"seconds     {_spread(summary.seconds_per_model, 2)} per model",
    ]
    if summary.label_margins is not None:
        lines.append(f"label check {summary.label_margins} of {models.completed} completed models recorded their source "
                     "margins" + (" (mislabels can check each pool label against the models that never saw it)"
                                  if summary.label_margins else
                                  " (the trainer gives none: docs/trainers.md, source_margins)"))
    if summary.imported is not None:
        files = ", ".join(f"{role} {v['path']} (sha256 {v['sha256'][:12]})"
                          for role, v in summary.imported.files.items())
        lines.append(f"imported    design {summary.imported.design}; from {files or 'in-memory arrays'}")
    if summary.planted is not None:
        p = summary.planted
        lines.append(f"planted     {p.leaks} leaks ({p.near_copy_leaks} near copies), {p.decoys} decoys, "
                     f"{p.flipped} flipped labels")
        if p.harmful is not None:
            classes = ", ".join(f"{name} ({kind})" for name, kind in p.harmful.items())
            lines.append(f"            {len(p.harmful)} harmful classes: {classes}")
    return "\n".join(lines)


# print(result) in a notebook shows what the CLI prints (dmtoolkit.display): result type -> its formatter.
# By dotted name, so this module imports neither estimate.lds, reliability nor store_checks (they need NumPy).
register_text({type_name(cls): formatter for cls, formatter in (
    (ClassRanking, format_ranking), (Subpopulation, format_subpopulation), (Explanation, format_explanation),
    (CounterfactualResult, format_counterfactual), (LeakageReport, format_leakage), (MislabelReport, format_mislabels),
    (DemoSummary, format_demo), (Recommendation, format_recommendation))})
register_text({"dmtoolkit.estimate.lds.LdsResult": format_lds,
               "dmtoolkit.analyze.reliability.ReliabilityReport": format_reliability,
               "dmtoolkit.store_checks.StoreSummary": format_store_summary})
