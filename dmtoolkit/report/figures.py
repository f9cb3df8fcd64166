"""Figures of analysis results: the one place a result becomes a plot, for `--png` and the HTML report.

Each function draws one result with `dmtoolkit.report.plots`, writes the PNG to `path` when given and
returns its bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dmtoolkit.analyze.options import LEAK_FIGURE_PAIRS
from dmtoolkit.analyze.results import ClassRanking, CounterfactualCurve, LeakageReport, Subpopulation, TargetEffect
from dmtoolkit.report import plots

if TYPE_CHECKING:
    from dmtoolkit.analyze.overview import EstimateAnalyses


def rank_figure(ranking: ClassRanking, path: str | Path | None = None) -> bytes:
    """Bars of the top classes and then the bottom ones (most negative last), each class once, with error bars of
    their intervals when the ranking has them."""
    shown = list(ranking.top) + [e for e in ranking.bottom[::-1] if e not in ranking.top]
    scope = f"target class {ranking.target_class}" if ranking.target_class else "all target examples"
    intervals = [(e.low, e.high) for e in shown] if ranking.level is not None else None
    bars = f", {100 * ranking.level:g}% intervals" if ranking.level is not None else ", no intervals"
    return plots.bar_chart([e.name for e in shown], [e.influence for e in shown],
                           f"Source classes by mean influence ({scope}{bars})", path, intervals=intervals)


def subpop_figure(subpop: Subpopulation, path: str | Path | None = None) -> bytes:
    """The subpopulation's target images with name and influence; needs `subpopulation(..., with_images=True)`."""
    if subpop.images is None:
        raise ValueError("subpop_figure needs the images: call subpopulation(..., with_images=True)")
    def caption(t: TargetEffect) -> str:
        bounds = f"\n[{t.low:+.2f}, {t.high:+.2f}]" if t.low is not None and t.high is not None else ""
        return f"{t.name}\n{t.influence:+.3f}{bounds}"

    return plots.image_grid(list(subpop.images), [caption(t) for t in subpop.targets],
                            f"Target images most helped by source class {subpop.class_name}", path)


def leakage_figure(report: LeakageReport, path: str | Path | None = None, *, pairs: int = LEAK_FIGURE_PAIRS) -> bytes:
    """The flagged pairs (likely copies), source image beside target image, with ids and evidence; when none is
    flagged, the first `pairs` pairs of the browsing list, titled so."""
    if report.flagged:
        shown = report.flagged[:pairs]
        title = f"Likely copies at FDR {100 * report.fdr:g}% (source | target)"
    else:
        shown = report.pairs[:pairs]
        title = "No pair flagged: top pairs for browsing (source | target)"
    images = [report.images_of(p) for p in shown]
    captions = [f"#{p.rank} src {p.source_id} / tgt {p.target}  infl {p.influence:+.3f}  pix {p.pixel_score:.2f}"
                + (f"  q {p.q_value:.1g}" if p.q_value is not None else "") for p in shown]
    return plots.pair_grid(images, captions, title, path)


def counterfactual_figure(curves: CounterfactualCurve | Sequence[CounterfactualCurve],
                          path: str | Path | None = None) -> bytes:
    """Target accuracy (mean ± std over repeats) by classes removed: one line per curve.

    One curve is labelled by its order; several (the orders side by side, paper Fig. 2a) also by file.
    """
    curves = [curves] if isinstance(curves, CounterfactualCurve) else list(curves)
    if len(curves) == 1:
        series = {curves[0].order: (curves[0].k, curves[0].mean, curves[0].std)}
        title = f"Counterfactual retraining ({curves[0].order})"
    else:
        series = {f"{c.order} ({Path(c.file).name})": (c.k, c.mean, c.std) for c in curves}
        title = "Counterfactual retraining, all orders"
    return plots.line_plot(series, "classes removed (k)", "target accuracy", title, path)


def lds_figure(edges: Sequence[float], counts: Sequence[int], heldout_models: int,
               path: str | Path | None = None) -> bytes:
    """Histogram of per-target LDS (Spearman) over target examples."""
    return plots.histogram(edges, counts, "Spearman LDS", f"LDS ({heldout_models} held-out models)", path)


def estimate_figures(analyses: EstimateAnalyses) -> list[tuple[str, bytes]]:
    """The report's figures of one estimate's analyses, in page order, each with its caption."""
    shown = []
    if analyses.rank is not None:
        shown.append(("Source classes by mean influence", rank_figure(analyses.rank)))
    shown += [(f"Subpopulation of {sub.class_name}", subpop_figure(sub)) for sub in analyses.subpopulations]
    if analyses.leakage is not None:
        shown.append(("Leakage candidates, source | target", leakage_figure(analyses.leakage)))
    if analyses.lds is not None:
        lds = analyses.lds
        shown.append(("LDS over target examples", lds_figure(lds.histogram_edges, lds.histogram_counts,
                                                              lds.heldout_models)))
    return shown
